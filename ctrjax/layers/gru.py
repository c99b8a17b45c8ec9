"""GRU with attentional variants (DIEN's AIGRU, AGRU, AUGRU) as a masked scan (DIEN paper §4.2-4.3).

One cell, in the DIEN paper's notation (eq. 1-4), with the reset gate applied before the
candidate's matmul as in TensorFlow's GRUCell (the DIEN official code), not after it as in
PyTorch and flax's nn.GRUCell:
  r = σ(W_r [x ; h] + b_r),  z = σ(W_z [x ; h] + b_z)        (reset and update gate)
  c = tanh(W_c [x ; r ∘ h] + b_c)                              (candidate)
  h' = (1 − s) ∘ h + s ∘ c                                     (s: the share of the candidate)
gru_type picks s and, with the attention score a_t of the step:
  gru:   s = z
  aigru: s = z, on the input a_t · x_t (attention on the input)
  agru:  s = a_t (the attention replaces the update gate)
  augru: 'paper' (eq. 7-8, FuxiCTR): s = a_t · z, so a_t = 0 keeps the state exactly;
         'official_tf' (VecAttGRUCell): TF's keep gate 1 − z is scaled by 1 − a_t, i.e.
         s = 1 − (1 − a_t)(1 − z): a_t = 0 is a plain GRU step, a_t = 1 replaces the state by c.
Gate biases start like TF's GRUCell (1.0 on r and on TF's keep gate 1 − z, hence −1.0 on z);
kernels Glorot-uniform, the TF default; candidate bias 0.

Masked scan over [B, T] sequences: at a step with mask False the state is kept, so left padding
(oldest -> newest, newest at slot T-1) is invisible and the final state is the state after the
newest behaviour; the per-step outputs at leading padding are the initial state, 0.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

GRU_TYPES = ("gru", "aigru", "agru", "augru")
AUGRU_VARIANTS = ("paper", "official_tf")


def check_gru_type(gru_type: str, augru_variant: str, prefix: str = "") -> None:
  """Raises a ValueError naming the field (``prefix`` + name) for an unknown type or variant."""
  if gru_type not in GRU_TYPES:
    raise ValueError(f"{prefix}gru_type={gru_type!r}; choose from {GRU_TYPES}")
  if augru_variant not in AUGRU_VARIANTS:
    raise ValueError(f"{prefix}augru_variant={augru_variant!r}; choose from {AUGRU_VARIANTS}")


class AttentionalGRUCell(nn.Module):
  """One masked step: (h [B, H], (x [B, D], a [B], valid [B])) -> (h', h'), h' = h where invalid."""
  units: int
  gru_type: str = "gru"
  augru_variant: str = "paper"
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, state: jax.Array, step: tuple[jax.Array, jax.Array, jax.Array]):
    x, attention, valid = step
    a = attention[:, None]
    if self.gru_type == "aigru":
      x = a * x
    gates = nn.sigmoid(nn.Dense(2 * self.units, kernel_init=self.kernel_init,
                                bias_init=self._gate_bias_init, name="gates")(
        jnp.concatenate([x, state], axis=-1)))
    reset, update = jnp.split(gates, 2, axis=-1)
    candidate = jnp.tanh(nn.Dense(self.units, kernel_init=self.kernel_init, name="candidate")(
        jnp.concatenate([x, reset * state], axis=-1)))
    share = self._candidate_share(update, a)
    new_state = jnp.where(valid[:, None], (1.0 - share) * state + share * candidate, state)
    return new_state, new_state

  def _candidate_share(self, update: jax.Array, a: jax.Array) -> jax.Array:
    if self.gru_type in ("gru", "aigru"):
      return update
    if self.gru_type == "agru":
      return jnp.broadcast_to(a, update.shape)
    if self.augru_variant == "paper":
      return a * update
    return 1.0 - (1.0 - a) * (1.0 - update)

  def _gate_bias_init(self, key, shape, dtype=jnp.float32):
    del key
    return jnp.concatenate([jnp.ones(shape[0] // 2, dtype), -jnp.ones(shape[0] // 2, dtype)])


class GRU(nn.Module):
  """Runs the cell over inputs [B, T, D] with mask [B, T] (True = valid) and, for the attentional
  types, attention [B, T]; the state starts at 0. Returns (outputs [B, T, H], final state [B, H])."""
  units: int
  gru_type: str = "gru"
  augru_variant: str = "paper"

  @nn.compact
  def __call__(self, inputs: jax.Array, mask: jax.Array, attention: jax.Array | None = None):
    check_gru_type(self.gru_type, self.augru_variant, prefix="GRU ")
    if self.gru_type == "gru":
      if attention is not None:
        raise ValueError("GRU gru_type='gru' takes no attention scores")
      attention = jnp.ones(mask.shape, inputs.dtype)
    elif attention is None:
      raise ValueError(f"GRU gru_type={self.gru_type!r} needs attention scores")
    scan = nn.scan(AttentionalGRUCell, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    initial = jnp.zeros((inputs.shape[0], self.units), inputs.dtype)
    final, outputs = scan(self.units, self.gru_type, self.augru_variant, name="cell")(
        initial, (inputs, attention, mask))
    return outputs, final
