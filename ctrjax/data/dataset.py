"""Opening a prepared dataset directory: memory-mapped columns, validated against schema.json."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib

import numpy as np

from ctrjax.data.schema import SPLITS, Schema, SchemaError

_CHUNK = 1 << 20


class Dataset:
  """A prepared dataset: ``schema``, ``stats``, per-split memmapped columns and per-table id counts."""

  def __init__(self, path: str | pathlib.Path, validate: bool = True):
    self.path = pathlib.Path(path)
    if not (self.path / "stats.json").is_file():
      raise SchemaError(f"{self.path}: not a complete ctrjax dataset (no stats.json; "
                        f"was the prep interrupted? rerun it)")
    self.schema = Schema.load(self.path / "schema.json")
    self.stats = self._stats()
    self.columns = {s: {f.name: self._open(s, f) for f in self.schema.fields} for s in SPLITS}
    if validate:
      self.validate()

  def _stats(self) -> dict:
    p = self.path / "stats.json"
    try:
      stats = json.loads(p.read_text())
    except json.JSONDecodeError as e:
      problem = f"invalid JSON at line {e.lineno}: {e.msg}"
    except UnicodeDecodeError as e:
      problem = f"not UTF-8 ({e.reason} at byte {e.start})"
    else:
      if isinstance(stats, dict):
        return stats
      problem = f"a JSON {type(stats).__name__}, not an object"
    raise SchemaError(f"{p}: {problem} (a damaged prepared dataset: delete {self.path} and rerun its prep)")

  def _open(self, split, field):
    p = self.path / split / f"{field.name}.npy"
    if not p.is_file():
      raise SchemaError(f"{self.path}: field {field.name!r}, split {split!r}: column file {p.name} is missing")
    return _load_npy(p, f"field {field.name!r}, split {split!r}: ", mmap_mode="r")

  def num_rows(self, split: str) -> int:
    return len(self.columns[split][self.schema.label.name])

  @functools.cached_property
  def counts(self) -> dict[str, np.ndarray]:
    """Table -> occurrences of each id in the training split (for mini-batch-aware L2)."""
    out = {}
    for table, size in self.schema.tables.items():
      p = self.path / "counts" / f"{table}.npy"
      if not p.is_file():
        raise SchemaError(f"{self.path}: counts for table {table!r} missing ({p})")
      c = _load_npy(p)
      if c.shape != (size,):
        raise SchemaError(f"{p}: counts shape {c.shape} != (vocab_size={size},)")
      out[table] = c
    return out

  def validate(self) -> None:
    """Checks dtype, shape, row counts, id ranges and labels of every column; raises SchemaError naming
    the culprit. Labels are clicks, exactly 0 or 1: soft labels are not supported (AUC and GAUC
    threshold labels at 0.5, ctrjax/metrics.py, so a soft label would be scored as a hard one)."""
    for split in SPLITS:
      n = self.num_rows(split)
      for f in self.schema.fields:
        col = self.columns[split][f.name]
        where = f"{self.path}: field {f.name!r}, split {split!r}"
        if col.dtype != np.dtype(f.dtype):
          raise SchemaError(f"{where}: dtype {col.dtype} != schema dtype {f.dtype}")
        if col.shape[1:] != f.shape:
          raise SchemaError(f"{where}: per-row shape {col.shape[1:]} != schema shape {f.shape}")
        if len(col) != n:
          raise SchemaError(f"{where}: {len(col)} rows but the label column has {n}")
        for start in range(0, n, _CHUNK):
          chunk = np.asarray(col[start:start + _CHUNK])
          if f.has_ids and chunk.size:
            bad = (chunk < 0) | (chunk >= f.vocab_size)
            if bad.any():
              row = start + int(np.argwhere(bad)[0][0])
              raise SchemaError(f"{where}: id {int(chunk[tuple(np.argwhere(bad)[0])])} at row {row} "
                                f"outside [0, vocab_size={f.vocab_size})")
          if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
            row = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
            raise SchemaError(f"{where}: non-finite value at row {row}")
          if f.group == "label":
            bad = (chunk != 0) & (chunk != 1)
            if bad.any():
              row = start + int(np.argmax(bad))
              raise SchemaError(f"{self.path / split / f'{f.name}.npy'}: field {f.name!r}, split {split!r}: "
                                f"label {chunk[row - start]} at row {row} is not 0 or 1")
    self.counts  # noqa: B018 -- loads and checks the count files


def _load_npy(path: pathlib.Path, what: str = "", mmap_mode: str | None = None) -> np.ndarray:
  """``np.load`` whose failures (a truncated or garbled file) are a SchemaError naming the file."""
  try:
    return np.load(path, mmap_mode=mmap_mode)
  except (ValueError, EOFError, OSError) as e:
    raise SchemaError(f"{path}: {what}unreadable .npy ({e})") from None


FINGERPRINT_FILE = "fingerprint.txt"


def fingerprint(path: str | pathlib.Path) -> str:
  """A digest of a prepared dataset's content: every file's relative path and bytes except
  stats.json (its creation time and command differ between identical preps). A run records it
  (``<workdir>/data.json``), so a run is never resumed, reused or tabled on other data than it
  trained on, even when a dataset is prepared again in place (an edited spec, another raw_dir).

  The writer stores it in ``fingerprint.txt`` when it writes the directory; a directory prepared
  before that gets it computed here once and saved (atomically, so concurrent readers agree)."""
  path = pathlib.Path(path)
  stored = path / FINGERPRINT_FILE
  if stored.is_file():
    return stored.read_text().strip()
  value = content_digest(path)
  tmp = path / f".{FINGERPRINT_FILE}.{os.getpid()}"
  try:
    tmp.write_text(value + "\n")
    os.replace(tmp, stored)
  except OSError:   # a read-only dataset: recomputed on each use
    tmp.unlink(missing_ok=True)
  return value


def content_digest(path: str | pathlib.Path) -> str:
  """The ``fingerprint`` of ``path``, computed from its files (16 hex digits of SHA-256)."""
  path = pathlib.Path(path)
  h = hashlib.sha256()
  for f in sorted(p for p in path.rglob("*") if p.is_file()):
    rel = f.relative_to(path).as_posix()
    if rel in ("stats.json", FINGERPRINT_FILE) or f.name.startswith("."):
      continue
    h.update(rel.encode() + b"\0")
    with open(f, "rb") as fh:
      for block in iter(lambda: fh.read(_CHUNK * 8), b""):
        h.update(block)
  return h.hexdigest()[:16]
