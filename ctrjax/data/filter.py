"""The DIN paper's "Filter" regulariser (§6.5): keep only the most frequent ids of one table.

Ids of ``table`` ranked by their training-split count (ties: smaller id first); all but the
``top_k`` most frequent become the OOV id 1, in every field that uses the table and in every split
(train and evaluation see the same vocabulary). Padding 0 and OOV 1 are unchanged. Applied to
host batches before the transfer, so models and steps are unaware of it.
"""
from __future__ import annotations

import numpy as np

from ctrjax.data.schema import FIRST_ID, OOV_ID, Schema


class IdFrequencyFilter:

  def __init__(self, schema: Schema, counts: dict[str, np.ndarray], table: str, top_k: int):
    if table not in schema.tables:
      raise ValueError(f"config.regularizer.filter_table={table!r} is not an embedding table; "
                       f"tables: {sorted(schema.tables)}")
    if top_k < 1:
      raise ValueError(f"config.regularizer.filter_top_k={top_k!r}: expected >= 1 (0 = no filter)")
    n = np.asarray(counts[table], np.int64)
    order = FIRST_ID + np.argsort(-n[FIRST_ID:], kind="stable")       # most frequent first
    self.remap = np.full(len(n), OOV_ID, np.int32)
    self.remap[:FIRST_ID] = np.arange(FIRST_ID)
    kept = order[:top_k]
    self.remap[kept] = kept
    self.fields = [(f.group, f.name) for f in schema.fields if f.has_ids and f.table == table]
    total = max(int(n[FIRST_ID:].sum()), 1)
    self.summary = (f"filter: keeping the {len(kept):,} most frequent of {len(n) - FIRST_ID:,} ids of "
                    f"table {table!r} ({n[kept].sum() / total:.1%} of its training occurrences); "
                    f"the rest become OOV")

  def __call__(self, batch: dict) -> dict:
    out = {g: dict(v) if isinstance(v, dict) else v for g, v in batch.items()}
    for group, name in self.fields:
      out[group][name] = self.remap[batch[group][name]]
    return out
