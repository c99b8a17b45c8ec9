"""L2 regularisers on embedding tables, added to the loss inside the jitted train step.

For a batch m, with lambda = ``config.regularizer.weight`` and c the coefficient its
``config.regularizer.weight_convention`` gives (``paper``: c = lambda / 2; ``no_half``: c = lambda):

  mba         c * sum_tables sum_{j in P_m} ||w_j||^2 / max(n_j, 1)   (DIN paper eq. 6)
  touched     c * sum_tables sum_{j in P_m} ||w_j||^2
  full_table  c * sum_tables sum_{j >= 1}   ||w_j||^2    (FuxiCTR/DeepCTR style, for comparison)
  none        0

With ``paper`` (the default) the mba gradient on a present row is lambda * w_j / max(n_j, 1), DIN
eq. 7's update, so the papers' lambda (DIN 0.01, MIAN 1e-3) means what they say. ``no_half`` is the
convention ctrjax used before December 2026 (gradient 2 * lambda * w_j / n_j); the results produced
then name it in their commands.

P_m is the set of ids present in the batch: every id >= 1 occurring anywhere in any field that
uses the table (candidate, behaviour positions, values of multi-valued fields), counted once
however often it occurs (alpha_mj in {0, 1}). n_j is the id's number of occurrences in the training
split, candidate and behaviour occurrences of a shared table together (``Dataset.counts``). Ids
never seen there (OOV id 1, ids only in valid/test) have n_j = 0 and use n_j = 1: full weight, as
for the rarest training id. Padding id 0 is never penalised. For mba/touched the gradient is
exactly zero on every row absent from the batch.

mba/touched find P_m with a fixed-size ``jnp.unique`` over the table's N id slots in the batch
(N static) and gather only those rows, so their cost scales with the batch, not with the table;
a table with at most N rows uses a dense presence mask instead (cheaper than sorting N slots).
The per-row factors (``row_weights``) are passed in as data, kept in the train state, rather
than closed over, so a 10M-row table does not become an HLO constant.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ctrjax.data.schema import PAD_ID, Schema
from ctrjax.errors import ConfigError

MODES = ("none", "mba", "touched", "full_table")
WEIGHT_CONVENTIONS = {"paper": 0.5, "no_half": 1.0}   # penalty coefficient = lambda x this


@dataclasses.dataclass(frozen=True)
class EmbeddingRegularizer:
  """The penalty of ``mode`` (see the module docstring); make one with ``build``."""
  mode: str
  weight: float                                                       # lambda, as configured
  coefficient: float                                                  # c, multiplying the sums
  sources: tuple[tuple[str, int, tuple[tuple[str, str], ...]], ...]  # (table, rows, ((group, field), ...))
  factors: dict[str, np.ndarray]                                      # host copy of row_weights()

  @classmethod
  def build(cls, schema: Schema, counts: dict[str, np.ndarray], mode: str, weight: float,
            weight_convention: str = "paper") -> "EmbeddingRegularizer":
    """Validates the settings (errors name the config field or table) and precomputes row weights;
    ``counts`` (table -> int[V] training-split occurrences) is only read for mba."""
    if mode not in MODES:
      raise ConfigError(f"config.regularizer.mode={mode!r}: expected one of {MODES}")
    if not weight >= 0:  # also rejects NaN
      raise ConfigError(f"config.regularizer.weight={weight!r}: expected >= 0")
    if weight_convention not in WEIGHT_CONVENTIONS:
      raise ConfigError(f"config.regularizer.weight_convention={weight_convention!r}: expected one of "
                       f"{tuple(WEIGHT_CONVENTIONS)}")
    fields: dict[str, list[tuple[str, str]]] = {}
    for f in schema.fields:
      if f.has_ids:
        fields.setdefault(f.table, []).append((f.group, f.name))
    vocab_sizes = schema.vocab_sizes
    factors = {} if mode == "none" else {
        t: _row_factors(t, vocab_sizes[t], rows, counts, mode, [n for _, n in fields[t]])
        for t, rows in schema.tables.items()}
    sources = tuple((t, rows, tuple(fields[t])) for t, rows in schema.tables.items())
    return cls(mode, float(weight), float(weight) * WEIGHT_CONVENTIONS[weight_convention], sources, factors)

  def row_weights(self) -> dict[str, jax.Array]:
    """Table -> float32[V] per-row factor (0 at padding); {} for mode none."""
    return {t: jnp.asarray(w) for t, w in self.factors.items()}

  def penalty(self, tables: dict[str, jax.Array], batch: dict,
              row_weights: dict[str, jax.Array]) -> jax.Array:
    """Scalar penalty for ``batch`` (the unpacked device batch); ``tables`` is
    ``params["embedding"]`` (entries that are not schema tables are ignored)."""
    total = jnp.zeros((), jnp.float32)
    if self.mode == "none":
      return total
    for table, rows, fields in self.sources:
      w, c = tables[table], row_weights[table]
      if self.mode == "full_table":
        total += jnp.sum(c * jnp.sum(jnp.square(w), axis=-1))
        continue
      ids = jnp.concatenate([jnp.ravel(batch[g][n]) for g, n in fields])
      ids = jnp.where(ids == PAD_ID, rows, ids)  # padding joins the fill sentinel `rows`
      if rows <= ids.size:
        # A table no bigger than the batch's id slots (genres, hours): a dense presence mask costs
        # O(rows + slots) <= O(2 slots), far less than sorting the slots (40k for genres in MIAN).
        present = jnp.zeros(rows, w.dtype).at[ids].max(1.0, mode="drop")
        total += jnp.sum(present * c * jnp.sum(jnp.square(w), axis=-1))
        continue
      present = jnp.unique(ids, size=ids.size, fill_value=rows)
      # Out-of-range sentinel slots gather zeros, and their gradient is dropped.
      w_present = jnp.take(w, present, axis=0, mode="fill", fill_value=0)
      c_present = jnp.take(c, present, axis=0, mode="fill", fill_value=0)
      total += jnp.sum(c_present * jnp.sum(jnp.square(w_present), axis=-1))
    return self.coefficient * total


def _row_factors(table: str, vocab_size: int, rows: int, counts: dict[str, np.ndarray], mode: str,
                 field_names: list[str]) -> np.ndarray:
  """float32[rows]: 1/max(n_j, 1) for mba, else 1; 0 at padding id 0 and at the padding rows beyond
  ``vocab_size`` (``Schema.padded_rows``)."""
  w = np.zeros(rows)
  w[:vocab_size] = 1.0
  if mode == "mba":
    where = f"regularizer counts for table {table!r} (fields {field_names})"
    if table not in counts:
      raise ValueError(f"{where}: missing (counts has tables {sorted(counts)})")
    n = np.asarray(counts[table])
    if n.shape != (vocab_size,):
      raise ValueError(f"{where}: shape {n.shape} != (vocab_size={vocab_size},)")
    if np.any(n < 0):
      raise ValueError(f"{where}: negative count at id {int(np.argmax(n < 0))}")
    w[:vocab_size] = 1.0 / np.maximum(n, 1)
  w[PAD_ID] = 0.0
  return w.astype(np.float32)
