"""FinalMLP (Mao et al., AAAI'23), as its official code (FuxiCTR model_zoo/FinalMLP).

Two MLP streams over the flattened field vectors x = ⊕_f e_f (``field_vectors``), each with its own
feature-selection gate: x_k' = x ∘ 2σ(MLP_gate_k(c_k)) (gate MLP ``fs_hidden`` ReLU, output F·d,
sigmoid ×2, so a gate starts near 1). The gate input c_k is the concatenation of the fields named
in ``fs1_context`` / ``fs2_context``; none named: a learned vector (d, initialised to 0), as the
official default. The streams' outputs o₁ = MLP₁(x₁'), o₂ = MLP₂(x₂') are fused by multi-head
bilinear aggregation (``InteractionAggregation``):
logit = w₁ᵀo₁ + w₂ᵀo₂ + Σ_h o₁ₕᵀ W_h o₂ₕ + b.
MLP₁ is ``dnn``; MLP₂ shares its settings but the widths, ``mlp2_hidden`` (the official code gives
each stream its own activation, dropout and BatchNorm switch too).
Defaults from the official FinalMLP_default config template (embedding 16 there too).
Deviation: a named context reuses the model's shared field vectors; the official code looks the
context fields up in a separate embedding table.
"""
import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, MLP, FeatureEmbedding, pooled_fields
from ctrjax.layers.interaction import InteractionAggregation


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  dnn: DNN = DNN((1024, 512))             # stream 1; stream 2 shares all but the widths
  mlp2_hidden: Sequence[int] = (1024, 512, 256)
  feature_selection: bool = True
  fs_hidden: Sequence[int] = (1024, 512)
  fs1_context: Sequence[str] = ()
  fs2_context: Sequence[str] = ()
  num_heads: int = 2
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = pooled_fields(emb, batch["behavior"]["mask"] if emb["behavior"] else None, self.pooling)
    x = jnp.concatenate(list(fields.values()), axis=-1)                          # [B, F·d]
    towers = (self.dnn, dataclasses.replace(self.dnn, hidden=tuple(self.mlp2_hidden)))
    streams = []
    for k, (dnn, context) in enumerate(zip(towers, (self.fs1_context, self.fs2_context)), start=1):
      stream_input = self._select(f"fs{k}", fields, context, x) if self.feature_selection else x
      streams.append(dnn.tower(name=f"mlp{k}")(stream_input, train))
    return {"logit": InteractionAggregation(self.num_heads, name="fusion")(*streams)}

  def _select(self, name: str, fields: dict, context: Sequence[str], x: jax.Array) -> jax.Array:
    """x ∘ 2σ(gate MLP(context)): the stream's feature-selection gate."""
    unknown = [c for c in context if c not in fields]
    if unknown:
      raise ValueError(f"model.{name}_context={tuple(context)!r}: unknown field(s) {unknown}; "
                       f"choose from {list(fields)}")
    if context:
      gate_input = jnp.concatenate([fields[c] for c in context], axis=-1)
    else:
      bias = self.param(f"{name}_context_bias", nn.initializers.zeros, (self.embed_dim,))
      gate_input = jnp.broadcast_to(bias, (x.shape[0], self.embed_dim))
    gate = MLP(self.fs_hidden, "relu", output_dim=x.shape[-1], name=f"{name}_gate")(gate_input, False)
    return x * 2.0 * jax.nn.sigmoid(gate)
