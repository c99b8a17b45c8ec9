"""Streaming writer of the on-disk dataset format (see README "Dataset format").

Rows arrive in chunks (``append``); each column of each split goes to a raw temporary file, so
memory stays bounded by the chunk size whatever the dataset size. ``finalize`` turns the raw files
into ``.npy`` files (header + streamed copy), writes per-table id counts over the training split,
the vocabularies, ``schema.json``, ``stats.json`` and the content's ``fingerprint.txt``
(dataset.fingerprint), then renames the directory into place: a
directory with ``stats.json`` is complete, a crashed prep leaves only ``<dir>.partial``.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

from ctrjax.data.dataset import FINGERPRINT_FILE, content_digest
from ctrjax.data.schema import OOV_ID, SPLITS, Field, Schema, SchemaError

NAN_POLICIES = ("error", "zero")


class DatasetWriter:
  """Writes a dataset directory chunk by chunk.

  numeric_nan_policy: 'error' raises on a NaN/Inf numeric value naming field, split and row;
    'zero' replaces it by 0 and counts replacements per field in stats.json["nan_replaced"].
  A label other than 0 or 1 raises, naming split, row and value (labels are clicks; see
  ``Dataset.validate`` for why soft labels are not supported).
  """

  def __init__(self, out_dir: str | pathlib.Path, schema: Schema, numeric_nan_policy: str = "error"):
    if numeric_nan_policy not in NAN_POLICIES:
      raise ValueError(f"numeric_nan_policy={numeric_nan_policy!r} not in {NAN_POLICIES}")
    self.out_dir = pathlib.Path(out_dir)
    self.tmp_dir = self.out_dir.with_name(self.out_dir.name + ".partial")
    self.schema = schema
    self.nan_policy = numeric_nan_policy
    shutil.rmtree(self.tmp_dir, ignore_errors=True)
    (self.tmp_dir / "raw").mkdir(parents=True)
    self.rows = {s: 0 for s in SPLITS}
    self.positives = {s: 0.0 for s in SPLITS}
    self.counts = {t: np.zeros(v, np.int64) for t, v in schema.tables.items()}
    self.oov = {s: {} for s in SPLITS}
    self.nan_replaced: dict[str, int] = {}
    self._files = {}

  def _file(self, split: str, name: str):
    key = (split, name)
    if key not in self._files:
      self._files[key] = open(self.tmp_dir / "raw" / f"{split}.{name}.bin", "wb")
    return self._files[key]

  def append(self, split: str, columns: dict[str, np.ndarray]) -> None:
    """Appends one chunk of rows to ``split``; every schema field must be present."""
    if split not in SPLITS:
      raise SchemaError(f"split {split!r} not in {SPLITS}")
    missing = [f.name for f in self.schema.fields if f.name not in columns]
    extra = sorted(set(columns) - {f.name for f in self.schema.fields})
    if missing or extra:
      raise SchemaError(f"split {split!r}: chunk is missing fields {missing} / has unknown fields {extra}")
    n = len(columns[self.schema.label.name])
    for f in self.schema.fields:
      col = self._check(split, f, np.asarray(columns[f.name]), n)
      self._file(split, f.name).write(np.ascontiguousarray(col).tobytes())
      if f.has_ids:
        if split == "train":
          self.counts[f.table] += np.bincount(col.ravel(), minlength=f.vocab_size)
        self.oov[split][f.name] = self.oov[split].get(f.name, 0) + int((col == OOV_ID).sum())
    self.positives[split] += float(np.asarray(columns[self.schema.label.name], np.float64).sum())
    self.rows[split] += n

  def _check(self, split: str, f: Field, col: np.ndarray, n: int) -> np.ndarray:
    where = f"field {f.name!r}, split {split!r}"
    if col.shape != (n, *f.shape):
      raise SchemaError(f"{where}: chunk shape {col.shape} != ({n}, *{f.shape})")
    if np.issubdtype(col.dtype, np.floating) and not np.issubdtype(np.dtype(f.dtype), np.floating):
      raise SchemaError(f"{where}: float values for a {f.dtype} field")
    if np.issubdtype(col.dtype, np.floating):
      bad = ~np.isfinite(col)
      if bad.any():
        row = self.rows[split] + int(np.argwhere(bad)[0][0])
        if self.nan_policy == "error":
          raise SchemaError(f"{where}: non-finite value at row {row} (numeric_nan_policy='error'; "
                            f"use 'zero' to replace and count)")
        self.nan_replaced[f.name] = self.nan_replaced.get(f.name, 0) + int(bad.sum())
        col = np.where(bad, 0, col)
    if f.has_ids and col.size:
      lo, hi = int(col.min()), int(col.max())
      if lo < 0 or hi >= f.vocab_size:
        row = self.rows[split] + int(np.argwhere((col < 0) | (col >= f.vocab_size))[0][0])
        raise SchemaError(f"{where}: id {hi if hi >= f.vocab_size else lo} at row {row} outside "
                          f"[0, vocab_size={f.vocab_size})")
    if f.group == "label":
      bad = (col != 0) & (col != 1)
      if bad.any():
        i = int(np.argmax(bad))
        raise SchemaError(f"{where}: label {col[i]} at row {self.rows[split] + i} is not 0 or 1")
    return col.astype(f.dtype, copy=False)

  def finalize(self, stats: dict | None = None, vocabs: dict[str, list[str]] | None = None) -> pathlib.Path:
    """Writes .npy files, counts, vocabularies, schema.json and stats.json; returns the directory.

    stats: extra entries for stats.json (provenance, the prep command, protocol, ...).
    vocabs: table -> raw values, where value i is id i (ids 0 and 1 are '<pad>' and '<oov>').
    """
    for fh in self._files.values():
      fh.close()
    if self.rows["train"] == 0:
      raise SchemaError(f"{self.out_dir}: the train split is empty")
    for split in SPLITS:
      (self.tmp_dir / split).mkdir()
      for f in self.schema.fields:
        raw = self.tmp_dir / "raw" / f"{split}.{f.name}.bin"
        raw.touch()
        with open(self.tmp_dir / split / f"{f.name}.npy", "wb") as out, open(raw, "rb") as src:
          np.lib.format.write_array_header_1_0(out, {
              "descr": np.lib.format.dtype_to_descr(np.dtype(f.dtype)), "fortran_order": False,
              "shape": (self.rows[split], *f.shape)})
          shutil.copyfileobj(src, out, 1 << 24)
        raw.unlink()
    (self.tmp_dir / "raw").rmdir()
    (self.tmp_dir / "counts").mkdir()
    for table, c in self.counts.items():
      np.save(self.tmp_dir / "counts" / f"{table}.npy", c)
    if vocabs:
      (self.tmp_dir / "vocab").mkdir()
      for table, values in vocabs.items():
        with open(self.tmp_dir / "vocab" / f"{table}.tsv", "w") as fh:
          fh.writelines(f"{i}\t{v}\n" for i, v in enumerate(values))
    self.schema.save(self.tmp_dir / "schema.json")
    full = {
        "rows": self.rows,
        "positive_rate": {s: (self.positives[s] / self.rows[s] if self.rows[s] else None) for s in SPLITS},
        "oov": self.oov,
        "nan_replaced": self.nan_replaced,
        "numeric_nan_policy": self.nan_policy,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        **(stats or {}),
    }
    (self.tmp_dir / "stats.json").write_text(json.dumps(full, indent=1, default=str) + "\n")
    (self.tmp_dir / FINGERPRINT_FILE).write_text(content_digest(self.tmp_dir) + "\n")
    shutil.rmtree(self.out_dir, ignore_errors=True)
    self.tmp_dir.rename(self.out_dir)
    return self.out_dir


def is_complete(path: str | pathlib.Path) -> bool:
  """A prepared dataset directory is complete once its stats.json exists (written last)."""
  return (pathlib.Path(path) / "stats.json").is_file()
