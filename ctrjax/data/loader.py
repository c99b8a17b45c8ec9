"""Batch loader: each grain element is a whole batch, gathered with one fancy-index per column.

Per-row grain pipelines cost ~30-45 us of Python per row (README, Loader), far too slow for CTR;
here grain only sees batch indices. Training element ``i`` is global batch ``i``: epoch ``i // bpe``
shuffled by a permutation seeded with ``(seed, epoch)``, so the stream is deterministic and its
position is the grain iterator state (``{"next_index": step}``), checkpointed with the model.

Last partial batch policy:
  * train: dropped (``rows % batch_size`` random rows skipped per epoch, a different set each epoch);
  * eval: padded to the full batch with row 0 and ``meta.weight = 0``; loss and metrics ignore
    weight-0 rows, so every evaluation row is seen exactly once with static shapes (no recompiles).

Multi-process: every process computes the same global batch and keeps its contiguous slice
``[p * B/P, (p+1) * B/P)``, which is exactly its devices' part of the global array
(``jax.make_array_from_process_local_data``).
"""
from __future__ import annotations

import grain
import numpy as np

from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import MODEL_GROUPS


def gather(dataset: Dataset, split: str, rows: np.ndarray, weight: np.ndarray) -> dict:
  """Rows -> batch dict grouped by feature group (the structure every model consumes).

  {item|user|context: {field: [b, ...]}, behavior: {field: [b, T, ...], "mask": bool[b, T]},
   label: float32[b], meta: {field: [b], "weight": float32[b]}}
  """
  cols = dataset.columns[split]
  schema = dataset.schema
  batch: dict = {g: {} for g in (*MODEL_GROUPS, "meta")}
  for f in schema.fields:
    if f.group != "label":
      batch[f.group][f.name] = cols[f.name][rows]
  batch["label"] = cols[schema.label.name][rows].astype(np.float32)
  key = schema.behavior_key
  if key is not None:
    ids = batch["behavior"][key.name]
    batch["behavior"]["mask"] = ids != 0 if ids.ndim == 2 else (ids != 0).any(-1)
  batch["meta"]["weight"] = weight
  return {g: v for g, v in batch.items() if not isinstance(v, dict) or v or g == "meta"}


class EpochBatchSource(grain.sources.RandomAccessDataSource):
  """Random-access source whose item i is (this process's slice of) global batch i."""

  def __init__(self, dataset_path: str, split: str, batch_size: int, *, seed: int = 0,
               num_epochs: int = 1, shuffle: bool = True, drop_remainder: bool = True,
               process_index: int = 0, process_count: int = 1):
    if batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
    self.dataset_path, self.split, self.batch_size = str(dataset_path), split, batch_size
    self.seed, self.num_epochs, self.shuffle, self.drop_remainder = seed, num_epochs, shuffle, drop_remainder
    self.process_index, self.process_count = process_index, process_count
    self.num_rows = Dataset(self.dataset_path, validate=False).num_rows(split)
    self.batches_per_epoch = (self.num_rows // batch_size if drop_remainder
                              else -(-self.num_rows // batch_size))
    if self.batches_per_epoch == 0:
      raise ValueError(f"split {split!r} has {self.num_rows} rows, fewer than one batch of {batch_size}")
    self._dataset = None
    self._perm_epoch, self._perm = None, None

  def __len__(self) -> int:
    return self.batches_per_epoch * self.num_epochs

  def order(self, epoch: int) -> np.ndarray:
    """The rows of ``epoch`` in their training order (batch b: rows [b * B, (b+1) * B))."""
    if not self.shuffle:
      return np.arange(self.num_rows)
    if self._perm_epoch != epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
      self._perm_epoch = epoch
    return self._perm

  def __getitem__(self, index: int) -> dict:
    if self._dataset is None:
      self._dataset = Dataset(self.dataset_path, validate=False)
    epoch, b = divmod(int(index), self.batches_per_epoch)
    rows = self.order(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
    weight = np.ones(self.batch_size, np.float32)
    if len(rows) < self.batch_size:
      weight[len(rows):] = 0.0
      rows = np.concatenate([rows, np.zeros(self.batch_size - len(rows), rows.dtype)])
    local = self.batch_size // self.process_count
    sl = slice(self.process_index * local, (self.process_index + 1) * local)
    return gather(self._dataset, self.split, rows[sl], weight[sl])

  def __getstate__(self):
    d = dict(self.__dict__)
    d.update(_dataset=None, _perm_epoch=None, _perm=None)
    return d


def make_iterator(source: EpochBatchSource, num_threads: int = 2, prefetch: int = 16, transform=None):
  """Checkpointable grain iterator over ``source`` with thread prefetching (no worker processes:
  on 2 cores they only slow things down). ``transform`` (e.g. the transfer
  to device) runs in the prefetch threads too, so it overlaps with the train step."""
  ds = grain.MapDataset.source(source)
  if transform is not None:
    ds = ds.map(transform)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  return iter(ds)
