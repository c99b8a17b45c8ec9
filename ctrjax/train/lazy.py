"""Lazy (row-sparse) optimisers for the embedding tables: a step changes only the rows its batch
touches, and only their optimiser state (``config.optimizer.embeddings = "lazy_adam" | "lazy_adagrad"
| "lazy_sgd"``; "dense" keeps optax over everything).

optax is dense: for a [V, D] table it materialises a [V, D] gradient and rewrites the table and
every moment in every step, so a step costs O(V) however few rows the batch uses. Here, per schema
table with N id slots in the batch (every field that uses the table):

  1. u = the distinct ids of those slots, with padding id 0 prepended, from one fixed-size sort
     (``distinct_with_padding``: N + 1 entries, the rest filled with the out-of-range sentinel V),
     so u[0] = 0;
  2. the model runs with each table replaced by its compact rows ``table[u]`` [N + 1, D], through a
     clone whose schema gives the table N + 1 rows; every FeatureEmbedding sees the ids replaced by
     their index in u (padding stays 0, so its padding mask still works), the rest of the model the
     original ids. The gradient exists only for the compact rows;
  3. optax's own element-wise transform (scale_by_adam, scale_by_rss, identity) updates the gathered
     rows and their gathered state, at the learning rate of the dense parameters;
  4. rows and state are scattered back; fill slots and padding are dropped, so row 0 never moves.

A table no bigger than N + 1 rows (genres, hours; ``uses_whole_table``) keeps its ids and its full
size, as a compact table would not be smaller; its update is applied only where a presence mask
is set. Either way a step costs O(N + that table), never O(V) for a table bigger than the batch.

The tables are the leaves ``(..., "embedding", table)`` of the params, for every schema table: each
FeatureEmbedding is named "embedding" (the models' convention; a nested one, like Wide&Deep's
first-order weights, is optimised lazily too). Everything else, numeric-field vectors included,
stays with optax. A model must use the schema's vocab sizes for nothing but its FeatureEmbedding
tables (the clone changes them); a parameter sized from them, or a FeatureEmbedding named otherwise,
fails flax's parameter shape check.

Semantics (TF LazyAdam, torch SparseAdam): a row absent from the batch keeps its value and state bit
for bit, so its Adam moments do not decay. Adam's bias correction uses the global step count (the
transform's count, incremented every step), not a per-row count. Where a step touches every row, or
every step touches the same rows, lazy Adam equals dense optax.adam; lazy Adagrad and SGD equal
dense optax.adagrad / optax.sgd for any batches (a zero gradient leaves those unchanged), and are
only cheaper.

The mba/touched penalty on ``params["embedding"]`` is fused: it is computed on the compact rows with
the row weights gathered at u, with no second unique or gather (full_table penalises every row, so
validate_config rejects it here). Gradient clipping (``optimizer.grad_clip_norm``) scales the dense
and the compact-row gradients by their joint global norm, which equals the dense gradient's norm
(each touched row is one compact row).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from ctrjax.data.schema import PAD_ID, Schema
from ctrjax.layers import FeatureEmbedding
from ctrjax.train.regularizers import EmbeddingRegularizer

EMBEDDING_OPTIMIZERS = ("dense", "lazy_adam", "lazy_adagrad", "lazy_sgd")
ParamPath = tuple[str, ...]          # a leaf's keys in the params tree


def embedding_optimizer(optimizer_cfg: ml_collections.ConfigDict) -> str:
  """``config.optimizer.embeddings``; "dense" for a config saved before the field existed."""
  return optimizer_cfg.get("embeddings", "dense")


class Compact(NamedTuple):
  """A batch's view of the schema tables, one entry per table."""
  index: dict[str, jax.Array]     # int32[R]: the table row behind each compact row (V at fill slots)
  touched: dict[str, jax.Array]   # bool[R]: rows the batch uses (never padding, never a fill slot)
  batch: dict                     # the batch with each table's ids replaced by compact row indices


@dataclasses.dataclass(frozen=True)
class LazyEmbeddings:
  """The row-sparse optimiser of a model's embedding tables; make one with ``build``.

  Tables and their state are handled as flat dicts {params path: array}; ``split``, ``merge`` and
  ``init`` convert to and from the nested trees the train state holds."""
  model: nn.Module                          # built as Model(schema=..., ...); cloned per batch
  transform: optax.GradientTransformation   # element-wise: per-row state leaves + scalar counts
  clip_norm: float                          # joint global-norm clipping; 0 = off

  @classmethod
  def build(cls, optimizer_cfg: ml_collections.ConfigDict, model: nn.Module) -> "LazyEmbeddings | None":
    """None for "dense" (optax over everything); the value itself is checked by validate_config."""
    kind = embedding_optimizer(optimizer_cfg)
    if kind == "dense":
      return None
    transform = {"lazy_adam": lambda: optax.scale_by_adam(optimizer_cfg.b1, optimizer_cfg.b2,
                                                          optimizer_cfg.eps),
                 "lazy_adagrad": optax.scale_by_rss,   # optax.adagrad's defaults
                 "lazy_sgd": optax.identity}[kind]()
    return cls(model, transform, float(optimizer_cfg.grad_clip_norm))

  @property
  def schema(self) -> Schema:
    return self.model.schema

  def split(self, params: dict) -> tuple[dict, dict[ParamPath, jax.Array]]:
    """params -> (the tree optax updates, {path: table [V, D]})."""
    flat = traverse_util.flatten_dict(params)
    dense = traverse_util.unflatten_dict({p: v for p, v in flat.items() if not self._is_table(p)})
    return dense, {p: v for p, v in flat.items() if self._is_table(p)}

  def _is_table(self, path: ParamPath) -> bool:
    return path[-2:-1] == ("embedding",) and path[-1] in self.schema.tables

  @staticmethod
  def merge(dense: dict, tables: dict[ParamPath, jax.Array]) -> dict:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(dense), **tables})

  def init(self, tables: dict[ParamPath, jax.Array]) -> dict:
    """The tables' optimiser state as the train state holds it: a tree {path...: transform state}."""
    return traverse_util.unflatten_dict({p: self.transform.init(w) for p, w in tables.items()})

  def compact(self, batch: dict) -> Compact:
    """The rows each table's fields use in ``batch``, and the batch re-indexed into them."""
    batch = {k: dict(v) if isinstance(v, dict) else v for k, v in batch.items()}
    index, touched = {}, {}
    for table, rows in self.schema.tables.items():
      fields = [f for f in self.schema.fields if f.has_ids and f.table == table]
      ids = jnp.concatenate([jnp.ravel(batch[f.group][f.name]) for f in fields])
      if uses_whole_table(rows, ids.size):
        index[table] = jnp.arange(rows, dtype=ids.dtype)
        touched[table] = jnp.zeros(rows, bool).at[ids].set(True).at[PAD_ID].set(False)
        continue
      u, inverse = distinct_with_padding(ids, fill_value=rows)
      index[table], touched[table] = u, (u != PAD_ID) & (u < rows)
      offset = 0
      for f in fields:
        x = batch[f.group][f.name]
        batch[f.group][f.name] = inverse[offset:offset + x.size].reshape(x.shape)
        offset += x.size
    return Compact(index, touched, batch)

  def gather(self, tables: dict[ParamPath, jax.Array], compact: Compact) -> dict[ParamPath, jax.Array]:
    """Each table's compact rows [R, D] (zeros at fill slots)."""
    return {p: _take(w, compact.index[p[-1]]) for p, w in tables.items()}

  def apply(self, variables: dict, batch: dict, compact: Compact, **kwargs):
    """The model on ``batch`` with ``variables["params"]`` holding the compact tables: every
    FeatureEmbedding gets ``compact.batch`` instead."""
    sizes = {t: i.shape[0] for t, i in compact.index.items()}
    schema = Schema(tuple(dataclasses.replace(f, vocab_size=sizes[f.table], rows=None) if f.has_ids else f
                          for f in self.schema.fields))

    def reindexed_ids(next_fun, args, call_kwargs, context):
      if isinstance(context.module, FeatureEmbedding) and context.method_name == "__call__":
        args, call_kwargs = ((compact.batch, *args[1:]), call_kwargs) if args else (
            args, {**call_kwargs, "batch": compact.batch})
      return next_fun(*args, **call_kwargs)

    with nn.intercept_methods(reindexed_ids):
      return self.model.clone(schema=schema).apply(variables, batch, **kwargs)

  def penalty(self, rows: dict[ParamPath, jax.Array], compact: Compact,
              regularizer: EmbeddingRegularizer | None, row_weights: dict[str, jax.Array]) -> jax.Array:
    """The mba/touched penalty of the batch on ``params["embedding"]``
    (``EmbeddingRegularizer.penalty``), from the compact rows."""
    if regularizer is None or regularizer.mode == "none":
      return jnp.zeros(())
    total = jnp.zeros((), jnp.float32)
    for t in self.schema.tables:
      factor = _take(row_weights[t], compact.index[t]) * compact.touched[t]
      total += jnp.sum(factor * jnp.sum(jnp.square(rows["embedding", t]), axis=-1))
    return regularizer.coefficient * total

  def update(self, tables: dict[ParamPath, jax.Array], opt_state: dict, compact: Compact,
             rows: dict[ParamPath, jax.Array], grads: dict[ParamPath, jax.Array],
             learning_rate: jax.Array) -> tuple[dict[ParamPath, jax.Array], dict]:
    """One optimiser step on the touched rows: (new tables, new ``opt_state`` tree)."""
    opt_state = traverse_util.flatten_dict(opt_state)
    new_tables, new_state = {}, {}
    for p, table in tables.items():
      index, touched = compact.index[p[-1]], compact.touched[p[-1]]
      target = jnp.where(touched, index, table.shape[0])     # out of range: dropped by the scatter
      updates, state = self.transform.update(grads[p], _rows_of(opt_state[p], index, table.shape))
      new_rows = optax.apply_updates(rows[p], optax.tree.scale(-learning_rate, updates))
      new_tables[p] = table.at[target].set(new_rows, mode="drop")
      new_state[p] = _scattered(opt_state[p], state, target, table.shape)
    return new_tables, traverse_util.unflatten_dict(new_state)

  def clip(self, grads):
    """``grads`` scaled to global norm ``clip_norm`` when above it (optax's rule); as is when off."""
    if self.clip_norm <= 0:
      return grads
    return optax.clip_by_global_norm(self.clip_norm).update(grads, optax.EmptyState())[0]


def uses_whole_table(rows: int, slots: int) -> bool:
  """Whether a table of ``rows`` rows with ``slots`` id slots in a batch is used whole: its compact
  form (slots + 1 rows) would not be smaller."""
  return rows <= slots + 1


def distinct_with_padding(ids: jax.Array, fill_value: int) -> tuple[jax.Array, jax.Array]:
  """(u, inverse): the distinct values of [PAD_ID, *ids] ascending (so u[0] = PAD_ID), filled up to
  ``ids.size + 1`` entries with ``fill_value``, and the index in u of each id. Equals
  ``jnp.unique(..., size=, fill_value=, return_inverse=True)`` with one sort of (id, position)
  pairs, where jnp.unique sorts positions and then gathers the ids (~30% slower here)."""
  x = jnp.concatenate([jnp.full(1, PAD_ID, ids.dtype), jnp.ravel(ids)])
  sorted_ids, order = jax.lax.sort((x, jnp.arange(x.size, dtype=ids.dtype)), num_keys=1)
  first = jnp.concatenate([jnp.ones(1, bool), sorted_ids[1:] != sorted_ids[:-1]])
  rank = jnp.cumsum(first, dtype=ids.dtype) - 1                  # index in u of each sorted id
  u = jnp.full(x.size, fill_value, ids.dtype).at[jnp.where(first, rank, x.size)].set(sorted_ids, mode="drop")
  inverse = jnp.zeros_like(x).at[order].set(rank)
  return u, inverse[1:]


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """Rows ``index`` of ``x``; zeros for the out-of-range fill slots."""
  return jnp.take(x, index, axis=0, mode="fill", fill_value=0)


def _rows_of(state, index: jax.Array, shape: tuple[int, ...]):
  """The rows ``index`` of every leaf of a table's optimiser ``state`` that is per row (has the
  table's ``shape``); other leaves (Adam's step count) as they are."""
  return jax.tree.map(lambda x: _take(x, index) if x.shape == shape else x, state)


def _scattered(state, rows_state, target: jax.Array, shape: tuple[int, ...]):
  """``state`` with ``rows_state`` (from ``_rows_of``) written back at rows ``target``, out-of-range
  targets dropped; other leaves replaced."""
  return jax.tree.map(lambda full, part: full.at[target].set(part, mode="drop") if full.shape == shape
                      else part, state, rows_state)
