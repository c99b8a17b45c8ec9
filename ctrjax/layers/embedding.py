"""Embedding layer by feature group: one table per schema table, shared by every field that names it."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import MODEL_GROUPS, Schema


def masked_sum(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Sum of ``x`` [..., D] over ``axis`` (an axis of ``mask``, which lacks x's feature axis D),
  counting only positions where ``mask`` is true."""
  return jnp.sum(x * mask[..., None].astype(x.dtype), axis=axis % mask.ndim)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Mean over the unmasked positions; 0 (never NaN) when none is unmasked."""
  count = jnp.sum(mask, axis=axis % mask.ndim).astype(x.dtype)[..., None]
  return masked_sum(x, mask, axis) / jnp.maximum(count, 1.0)


class FeatureEmbedding(nn.Module):
  """Looks up every model-input field of a batch.

  Returns {group: {field: embedding}} with [B, D] for item/user/context fields and [B, T, D] for
  behaviour fields. Multi-valued ids (a trailing value axis) are mean-pooled over non-padding ids;
  id 0 (padding) always embeds to exactly zero, so it receives no gradient. A numeric field is
  embedded as value x a learned vector (AutoInt §4.3).
  """
  schema: Schema
  dim: int
  embedding_init: Callable = nn.initializers.truncated_normal(stddev=0.02)

  @nn.compact
  def __call__(self, batch: dict) -> dict[str, dict[str, jax.Array]]:
    tables = {name: self.param(name, self.embedding_init, (rows, self.dim))
              for name, rows in self.schema.tables.items()}
    out: dict[str, dict[str, jax.Array]] = {g: {} for g in MODEL_GROUPS}
    for f in self.schema.fields:
      if f.group not in MODEL_GROUPS:
        continue
      x = batch[f.group][f.name]
      if f.has_ids:
        valid = x != 0
        e = jnp.take(tables[f.table], x, axis=0) * valid[..., None].astype(jnp.float32)
        multi_valued = x.ndim == (3 if f.group == "behavior" else 2)
        out[f.group][f.name] = masked_mean(e, valid, axis=-1) if multi_valued else e
      else:
        v = self.param(f"numeric_{f.name}", self.embedding_init, (self.dim,))
        out[f.group][f.name] = x.astype(jnp.float32)[..., None] * v
    return out
