"""Masked attention pooling shared by the sequence models (DIN, FESeq, MIAN, ...).

Masks are True at valid positions. Masked scores are filled with -1e9, not -inf, so a row with
no valid position yields zero weights and a zero pooled vector instead of NaN.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.layers.mlp import MLP

MASK_FILL = -1e9

_SCORES = {"tanh": jnp.tanh, "linear": lambda s: s}


def score_activation(name: str):
  """Score function by config name: "tanh" (MIAN eq. 8) or "linear"."""
  if name not in _SCORES:
    raise ValueError(f"unknown attention score {name!r}; choose from {sorted(_SCORES)}")
  return _SCORES[name]


def masked_softmax(scores: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """Softmax over the positions where ``mask`` is True; all-zero for a row with none."""
  weights = jax.nn.softmax(jnp.where(mask, scores, MASK_FILL), axis=axis)
  return jnp.where(mask, weights, 0.0)


@jax.jit
def attention_pool(scores: jax.Array, values: jax.Array, mask: jax.Array):
  """(Σ_t α_t v_t [B, D], α [B, T]) with α = masked softmax of ``scores`` [B, T] over ``values``
  [B, T, D]; zeros for an empty row. The weighted sum is element-wise rather than a matmul so it
  stays exact float32 on GPUs whose default matmul precision is TF32."""
  alpha = masked_softmax(scores, mask)
  return jnp.sum(alpha[..., None] * values, axis=-2), alpha


class ScoredAttentionPool(nn.Module):
  """Scores each token with s_t = f(V_t · w + b) (f = tanh or identity) and pools by
  ``attention_pool``.

  per_token_weights: False shares one (w, b) over positions (MIAN's IBIM); True gives each
  position its own (w_t, b_t) (IUIM/ICIM field-specific W^j, b^j; GIM's W_l). A bias shared by
  every token cancels in the softmax under the linear score, so that case has no bias at all.
  """
  score: str = "tanh"
  per_token_weights: bool = False
  kernel_init: nn.initializers.Initializer = nn.initializers.truncated_normal(stddev=0.02)

  @nn.compact
  def __call__(self, values: jax.Array, mask: jax.Array):
    activation = score_activation(self.score)
    shape = values.shape[-2:] if self.per_token_weights else values.shape[-1:]
    scores = jnp.sum(values * self.param("kernel", self._init_score_vectors, shape), axis=-1)
    if self.per_token_weights or self.score != "linear":
      scores = scores + self.param("bias", nn.initializers.zeros, shape[:-1])
    return attention_pool(activation(scores), values, mask)

  def _init_score_vectors(self, key, shape, dtype=jnp.float32):
    """Each score vector is a (width -> 1) Dense kernel: initialise it as one, so fan-based
    initialisers (Xavier) see fan_in = width and fan_out = 1."""
    width = shape[-1]
    if len(shape) == 1:
      return self.kernel_init(key, (width, 1), dtype)[:, 0]
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: self.kernel_init(k, (width, 1), dtype)[:, 0])(keys)


DIN_WEIGHTINGS = ("raw", "softmax")


class LocalActivationUnit(nn.Module):
  """DIN's local activation unit (DIN paper §4.3, Fig. 2).

  For query q [B, D] and keys K [B, T, D]: u_t = [q ; k_t ; q − k_t ; q ∘ k_t] (the paper's "out
  product" is the element-wise product, per its authors), s_t = MLP(u_t) -> one unnormalised
  score. weighting 'raw' (the paper): a_t = s_t at valid positions, 0 at padding, no
  normalisation, so the pooled vector keeps the intensity of the user's interest; 'softmax' (both
  official codes): a = masked softmax of s (divided by √D when scale_by_sqrt_d, the DIN demo).
  Returns (Σ_t a_t k_t [B, D], a [B, T]); an empty history gives zeros.
  """
  hidden: tuple[int, ...] = (80, 40)
  activation: str = "dice"
  weighting: str = "raw"
  scale_by_sqrt_d: bool = False
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_normal()

  @nn.compact
  def __call__(self, query: jax.Array, keys: jax.Array, mask: jax.Array, train: bool = False):
    if self.weighting not in DIN_WEIGHTINGS:
      raise ValueError(f"din attention weighting={self.weighting!r}; choose from {DIN_WEIGHTINGS}")
    q = jnp.broadcast_to(query[:, None, :], keys.shape)
    units = jnp.concatenate([q, keys, q - keys, q * keys], axis=-1)             # [B, T, 4D]
    scores = MLP(self.hidden, self.activation, output_dim=1, kernel_init=self.kernel_init,
                 name="scorer")(units, train)[..., 0]                            # [B, T]
    if self.weighting == "softmax":
      if self.scale_by_sqrt_d:
        scores = scores / jnp.sqrt(keys.shape[-1])
      return attention_pool(scores, keys, mask)
    weights = jnp.where(mask, scores, 0.0)
    return jnp.sum(weights[..., None] * keys, axis=-2), weights
