"""The masked Transformer block of every sequence model (BST, MIAN, SASRec, TiSASRec, FESeq).

Masks follow flax's convention (True = may attend). ``attention_mask`` builds
  allow[i, j] = (valid_j ∨ i = j) ∧ (¬causal ∨ j ≤ i)
(FESeq's get_mask in the official code): a padded key is hidden from every other query, and the
diagonal keeps a padded query's row non-empty (no NaN). Outputs at padded query slots are
meaningless; every model masks them downstream.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.layers.attention import masked_softmax
from ctrjax.layers.mlp import XAVIER, apply_activation

NORMS = ("pre_ln", "post_ln", "none")


def attention_mask(valid: jax.Array, causal: bool) -> jax.Array:
  """allow [B, 1, L, L] from valid [B, L] (module docstring)."""
  length = valid.shape[-1]
  diagonal = jnp.eye(length, dtype=bool)
  allow = valid[:, None, None, :] | diagonal
  if causal:
    allow = allow & jnp.tril(jnp.ones((length, length), bool))
  return allow


class MaskedSelfAttention(nn.Module):
  """Multi-head self-attention over x [B, L, D] with an explicit mask allow [B, 1, L, L].

  e_ij = q_i · (k_j + K_ij) / √(D/H), α = masked softmax_j, z_i = Σ_j α_ij (v_j + V_ij), then an
  output projection. K_ij, V_ij (broadcastable to [B, L, L, D]) are optional per-pair terms added after
  the projections (TiSASRec eq. 5-6: relative time and position embeddings); without them this is
  standard attention. Dropout (``attention_dropout``) acts on α. The projections are Dense [D, D]
  named query/key/value/out (flax's MultiHeadDotProductAttention draws its [D, H, D/H] kernels from
  the same flattened shape, so both initialise alike). Returns (output, α [B, H, L, L] before dropout).
  """
  num_heads: int
  attention_dropout: float = 0.0
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = XAVIER

  @nn.compact
  def __call__(self, x, allow, train: bool, key_terms=None, value_terms=None):
    b, length, width = x.shape
    heads = (b, length, self.num_heads, width // self.num_heads)

    def project(name):
      return nn.Dense(width, use_bias=self.use_bias, kernel_init=self.kernel_init, name=name)(x).reshape(heads)

    def per_pair(terms):
      return jnp.broadcast_to(terms, (b, length, length, width)).reshape(b, length, length, *heads[2:])

    q, k, v = project("query"), project("key"), project("value")
    scores = jnp.einsum("blhc,bmhc->bhlm", q, k)
    if key_terms is not None:
      scores = scores + jnp.einsum("blhc,blmhc->bhlm", q, per_pair(key_terms))
    alpha = masked_softmax(scores / jnp.sqrt(heads[-1]).astype(x.dtype), allow)
    dropped = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha)
    z = jnp.einsum("bhlm,bmhc->blhc", dropped, v)
    if value_terms is not None:
      z = z + jnp.einsum("bhlm,blmhc->blhc", dropped, per_pair(value_terms))
    out = nn.Dense(width, use_bias=self.use_bias, kernel_init=self.kernel_init, name="out")(z.reshape(x.shape))
    return out, alpha


class TransformerBlock(nn.Module):
  """One self-attention block over tokens x [B, L, D] -> [B, L, D].

  norm 'pre_ln' (Xiong et al. 2020; MIAN eq. 3-5; the SASRec paper, whose stack then needs a final
    LayerNorm):  S = X + Drop(MHSA(LN(X))),  F = S + Drop(FFN(LN(S)));
  'post_ln' (the original Transformer; BST, and FuxiCTR's SASRec/TiSASRec):
    S = LN(X + Drop(MHSA(X))),  F = LN(S + Drop(FFN(S)));
  'none' (FESeq eq. 7-8; the official code's layer_norm=False):  S = X + Drop(MHSA(X)),  F = S + Drop(FFN(S)).
  FFN = Dense(ffn_hidden, default D) -> ffn_activation -> Dense(D). ``mask`` is either the padding
  mask valid [B, L] (every query sees every valid token) or an explicit allow [B, 1, L, L]
  (``attention_mask``, e.g. causal). attention_bias switches the q/k/v/out projection biases (as
  PyTorch's MHA; a key bias only shifts every score of a query alike, so it never gets a gradient);
  attention_dropout acts on the attention weights; key_terms / value_terms go to MaskedSelfAttention.
  """
  num_heads: int
  ffn_hidden: int | None = None        # None: the token width D
  ffn_activation: str = "relu"
  dropout: float = 0.0
  attention_dropout: float = 0.0
  norm: str = "pre_ln"
  attention_bias: bool = True
  kernel_init: nn.initializers.Initializer = XAVIER

  @nn.compact
  def __call__(self, x, mask, train: bool, key_terms=None, value_terms=None):
    if self.norm not in NORMS:
      raise ValueError(f"TransformerBlock norm={self.norm!r}; choose from {NORMS}")
    width = x.shape[-1]
    allow = attention_mask(mask, causal=False) if mask.ndim == 2 else mask
    attention = MaskedSelfAttention(self.num_heads, self.attention_dropout, self.attention_bias,
                                    self.kernel_init, name="attention")

    def self_attention(h):
      return attention(h, allow, train, key_terms, value_terms)[0]

    def ffn(h):
      h = nn.Dense(self.ffn_hidden or width, kernel_init=self.kernel_init, name="ffn_hidden")(h)
      h = apply_activation(self.ffn_activation, h, train)
      return nn.Dense(width, kernel_init=self.kernel_init, name="ffn_out")(h)

    drop = nn.Dropout(self.dropout, deterministic=not train)
    identity = lambda h: h
    ln_attention = nn.LayerNorm(name="ln_attention") if self.norm != "none" else identity
    ln_ffn = nn.LayerNorm(name="ln_ffn") if self.norm != "none" else identity
    if self.norm == "pre_ln":
      x = x + drop(self_attention(ln_attention(x)))
      return x + drop(ffn(ln_ffn(x)))
    x = ln_attention(x + drop(self_attention(x)))
    return ln_ffn(x + drop(ffn(x)))
