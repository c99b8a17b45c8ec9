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

  id_dropout (the DIN paper's "Dropout" regulariser, §6.5): in training each id occurrence is
  discarded with this probability (its vector zeroed) and the kept ones are scaled by 1/(1 − p),
  so sums and means keep their expectation; evaluation sees every id. Uses the 'dropout' rng.

  A table padded beyond its vocab size (``Schema.padded_rows``, for row sharding) is initialised as
  the unpadded one, its padding rows zero.
  """
  schema: Schema
  dim: int
  embedding_init: Callable = nn.initializers.truncated_normal(stddev=0.02)
  id_dropout: float = 0.0

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict[str, dict[str, jax.Array]]:
    if not 0.0 <= self.id_dropout < 1.0:
      raise ValueError(f"model.id_dropout={self.id_dropout!r}: expected a probability in [0, 1)")
    vocab_sizes = self.schema.vocab_sizes
    tables = {name: self.param(name, _zero_padded(self.embedding_init, vocab_sizes[name]), (rows, self.dim))
              for name, rows in self.schema.tables.items()}
    out: dict[str, dict[str, jax.Array]] = {g: {} for g in MODEL_GROUPS}
    for f in self.schema.fields:
      if f.group not in MODEL_GROUPS:
        continue
      x = batch[f.group][f.name]
      if f.has_ids:
        valid = x != 0
        factor = valid.astype(jnp.float32)
        if train and self.id_dropout:
          keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.id_dropout, x.shape)
          factor = factor * keep / (1.0 - self.id_dropout)
        e = jnp.take(tables[f.table], x, axis=0) * factor[..., None]
        multi_valued = x.ndim == (3 if f.group == "behavior" else 2)
        out[f.group][f.name] = masked_mean(e, valid, axis=-1) if multi_valued else e
      else:
        v = self.param(f"numeric_{f.name}", self.embedding_init, (self.dim,))
        out[f.group][f.name] = x.astype(jnp.float32)[..., None] * v
    return out


def _zero_padded(init: Callable, vocab_size: int) -> Callable:
  """``init`` for the first ``vocab_size`` rows of the shape it is asked for, zeros below them."""
  def padded(key, shape, dtype=jnp.float32):
    if shape[0] == vocab_size:
      return init(key, shape, dtype)
    return jnp.pad(init(key, (vocab_size, *shape[1:]), dtype), ((0, shape[0] - vocab_size), (0, 0)))
  return padded


def pooled_fields(emb: dict, behavior_mask: jax.Array | None, pooling: str = "sum") -> dict[str, jax.Array]:
  """One [B, d] vector per field: user, item and context fields as embedded, each behaviour field
  pooled over the valid positions ('sum', the DIN paper's eq. 1, or 'mean'). The field list of
  the Embedding&MLP family (BaseModel, Wide&Deep, PNN, DeepFM)."""
  pools = {"sum": masked_sum, "mean": masked_mean}
  if pooling not in pools:
    raise ValueError(f"model.pooling={pooling!r}; choose from {sorted(pools)}")
  fields = {name: v for g in ("user", "item", "context") for name, v in emb[g].items()}
  fields.update({name: pools[pooling](v, behavior_mask, axis=1) for name, v in emb["behavior"].items()})
  return fields


def behavior_aligned_item(schema: Schema, emb: dict) -> jax.Array:
  """The candidate as a behaviour-shaped token [B, D_b]: for each behaviour field (schema order),
  the item field with the same embedding table (hist_item_id -> item_id, hist_genres ->
  item_genres), so query and keys live in one space (DIN's q − k_t, q ∘ k_t)."""
  by_table = {f.table: f.name for f in schema.group("item") if f.has_ids}
  parts = []
  for f in schema.group("behavior"):
    if f.table not in by_table:
      raise ValueError(f"behaviour field {f.name!r} (table {f.table!r}) has no candidate-item field "
                       f"on the same table; item fields: {[g.name for g in schema.group('item')]}")
    parts.append(emb["item"][by_table[f.table]])
  return jnp.concatenate(parts, axis=-1)
