"""Streaming preparation of flat CTR logs (one impression a line: Criteo, Avazu), shared by
``data_prep/criteo.py`` and ``data_prep/avazu.py``; their docstrings give the per-dataset protocol.

Rules common to both (AutoInt §5.1 "Data Preparation", with the deviations each module lists):
  * Split: the file's data lines (header excluded, malformed lines included) are shuffled by
    ``numpy.random.default_rng(seed).permutation``; the first floor(L/10) go to test, the next
    floor(L/10) to valid, the rest (~80 %) to train. The split of a line depends only on (seed, L,
    its position), never on the chunk size; rows keep file order within a split.
  * Token fields (raw strings, at most 8 bytes): id 0 padding, 1 unknown (seen fewer than
    ``min_count`` times in the counting rows; also values never seen there), 2 missing (empty
    field), 3.. the kept values in byte order. Counting rows: ``vocab_rows="train"`` (default: the
    train split only, so valid/test never shape the vocabulary) or ``"all"`` (every well-formed
    line: what AutoInt's official scripts do).
  * Numeric fields, z -> floor(ln(z)^2) if z > 2, else z (the Criteo winners' transform, AutoInt's
    "log^2(z)"; AutoInt's scripts use the natural log and int() truncation). ``numeric="value"``: a
    float32 "numeric" field (the model embeds it as value x a learned vector, AutoInt §4.1), 0 when
    missing, as in AutoInt's scripts. ``numeric="bucket"``: a categorical field whose token is the
    integer floor(transformed z) (z <= 2 keeps floor(z), so e.g. z = 1 and z = 3, both 1, share an
    id, as in the winners' code), thresholded like a token field, missing -> id 2.
  * Malformed lines (wrong field count, a label other than 0/1, an unparseable or non-finite
    number or one below -2^63 (its bucket would wrap in int64), a token over 8 bytes, a bad derived
    field such as Avazu's hour) are skipped, counted by reason in stats.json["malformed"] with their
    first line numbers, and reported on stdout.
    The format is checked on line 1 (a header or, where the layout allows it, a headerless data
    line); a file in another library's encoded format is an error there.
  * Schema: every feature field is in group "context" (the feature-interaction models treat all
    fields alike; nothing is a behaviour, user or item field); "label" is the click; meta "line"
    is the 1-based line number in the raw file. No user id exists, so GAUC is undefined: use
    ``gauc_group=''``.

Streaming: pass 0 counts lines, pass 1 counts token values in chunks of ``chunk_bytes`` (exact
counts, merged so the total work stays O(N log N); memory ~16 bytes a distinct value), pass 2 maps
and writes through ``DatasetWriter``. The file is never held in memory. Lines are tokenised with
numpy on the raw bytes; fields are never quoted in these datasets (a quoted separator would be
read as a field boundary, making the line malformed).

Caching: ``<out_root>/<dataset>-<raw file stem>-min<k>[-<numeric>][-allrows]-seed<s>`` is reused
when complete with the same prep args and version (chunk_bytes is not an arg: it changes nothing).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from typing import Callable, Iterator

import numpy as np

from ctrjax.data.schema import FIRST_ID, OOV_ID, SPLITS, Field, Schema, SchemaError
from ctrjax.data.writer import DatasetWriter
from data_prep.common import resolve, reuse_cached, shared_root

PREP_VERSION = 1
MISSING_ID = FIRST_ID                 # token and bucket fields: the raw field was empty
FIRST_VALUE_ID = FIRST_ID + 1         # kept raw values from here, in sorted order
NUMERIC_MODES = ("value", "bucket")
VOCAB_ROWS = ("train", "all")
DEFAULT_SEED = 2018                   # AutoInt's Kfold_split/config.py RANDOM_SEED
DEFAULT_CHUNK_BYTES = 16 << 20
TOKEN_BYTES = 8                       # token fields are keyed exactly by their (<= 8) bytes
NUMBER_BYTES = 16
NUMBER_MIN = -2.0**63                 # below it a number kept as is (z <= 2) overflows int64 buckets
PREFIX_MASKS = np.array([((1 << 8 * k) - 1) << 8 * (8 - k) for k in range(TOKEN_BYTES + 1)], np.uint64)
FIRST_BAD_LINES = 10                  # malformed line numbers kept in stats.json
REASONS = ("field count", "label", "number", "token length")


@dataclasses.dataclass(frozen=True)
class Derived:
  """Fixed-vocabulary fields computed from one numeric raw column (e.g. Avazu's hour).

  fn: parsed column values (float64) -> ({field: value index 0..len(labels)-1}, malformed rows).
  """
  column: str
  fields: tuple[tuple[str, tuple[str, ...], str], ...]   # (name, value labels, description)
  fn: Callable[[np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Layout:
  """A raw file layout: column names in file order and the role of each."""
  dataset: str
  columns: tuple[str, ...]
  label: str
  min_count: int                       # the protocol's threshold
  default_raw: str                     # under the shared data root
  train_files: tuple[str, ...]         # looked up when ``raw`` is a directory
  numeric: tuple[str, ...] = ()
  dropped: tuple[str, ...] = ()
  derived: Derived | None = None
  headerless_sep: str | None = None    # separator of the header-less raw file, if allowed

  @property
  def derived_columns(self) -> tuple[str, ...]:
    return (self.derived.column,) if self.derived else ()

  @property
  def tokens(self) -> tuple[str, ...]:
    special = {self.label, *self.numeric, *self.dropped, *self.derived_columns}
    return tuple(c for c in self.columns if c not in special)


# ------------------------------------------------------------------------------------- reading


def _detect_format(path: pathlib.Path, layout: Layout) -> tuple[int, int, int]:
  """-> (separator byte, byte offset of the first data line, header lines); raises on line 1."""
  with open(path, "rb") as fh:
    first = fh.readline()
  text = first.rstrip(b"\r\n").decode("utf-8", "replace")
  for sep in (",", "\t"):
    if text.split(sep) == list(layout.columns):
      return ord(sep), len(first), 1
  sep = layout.headerless_sep
  if sep and text.count(sep) == len(layout.columns) - 1 and text.split(sep)[0] in ("0", "1"):
    return ord(sep), 0, 0
  if not text:
    raise SchemaError(f"{path}, line 1: empty (no {layout.dataset} data)")
  headerless = (f", or {len(layout.columns)} {sep!r}-separated raw values starting with the 0/1 "
                f"{layout.label}" if sep else "")
  raise SchemaError(
      f"{path}, line 1: expected the raw {layout.dataset} header {','.join(layout.columns)!r} "
      f"(comma- or tab-separated){headerless}; got {text[:100]!r}. Files already encoded by another "
      f"library (e.g. PaddleRec 'feat_idx:' tokens, torch-rechub 'label,feat_1,...' ids) are not "
      f"supported: pass the raw Kaggle file")


def _blocks(path: pathlib.Path, offset: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
  """Yields (0-based index of the block's first data line, whole lines each ending in b"\\n")."""
  with open(path, "rb") as fh:
    fh.seek(offset)
    index, rest = 0, b""
    while True:
      block = fh.read(chunk_bytes)
      if not block:
        if rest:
          yield index, rest + b"\n"
        return
      block = rest + block
      cut = block.rfind(b"\n") + 1
      rest = block[cut:]
      if cut:
        data = block[:cut]
        yield index, (data.replace(b"\r\n", b"\n") if b"\r" in data else data)
        index += data.count(b"\n")


def _windows(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(bytes as uint8, and at every offset the next 8 bytes as a big-endian uint64 and the next
  NUMBER_BYTES as a bytes string): one gather then reads a token, whatever its column."""
  padded = np.frombuffer(data + bytes(NUMBER_BYTES), np.uint8)
  words = np.ndarray((len(data),), ">u8", padded, strides=(1,))
  texts = np.ndarray((len(data),), f"S{NUMBER_BYTES}", padded, strides=(1,))
  return padded[:len(data)], words, texts


def _parse_numbers(tokens: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Bytes tokens -> (float64 values, 0 where missing or bad; malformed mask: unparseable, non-finite
  or below NUMBER_MIN)."""
  filled = np.where(length == 0, b"0", tokens)
  try:
    values = filled.astype(np.float64)
  except ValueError:
    values = np.array([_to_float(t) for t in filled], np.float64)
  bad = ~np.isfinite(values) | (values < NUMBER_MIN) | (length > NUMBER_BYTES)
  values[bad] = 0.0
  return values, bad


def _to_float(token: bytes) -> float:
  try:
    return float(token)
  except ValueError:
    return float("nan")


def log2_transform(z: np.ndarray) -> np.ndarray:
  """floor(ln(z)^2) where z > 2, z elsewhere (AutoInt §5.1, after the Criteo winners)."""
  return np.where(z > 2, np.floor(np.log(np.maximum(z, 2.0)) ** 2), z)


@dataclasses.dataclass
class _Chunk:
  """The parsed well-formed rows of one block, plus its malformed lines."""
  line: np.ndarray                     # int64, 1-based file line numbers
  label: np.ndarray                    # float32
  numbers: dict[str, np.ndarray]       # float64 raw values, 0 where missing
  keys: dict[str, np.ndarray]          # token fields: uint64 byte keys, 0 = missing
  missing: dict[str, np.ndarray]       # numeric and token fields: bool
  derived: dict[str, np.ndarray]       # derived fields: int32 ids
  bad: dict[str, np.ndarray]           # reason -> 1-based line numbers


def _parse(data: bytes, first_line: int, sep: int, layout: Layout) -> _Chunk:
  """Tokenises whole lines ``data`` (file lines ``first_line``, ... 1-based) with numpy."""
  nf = len(layout.columns)
  buf, words, texts = _windows(data)
  newline = np.flatnonzero(buf == 10)
  delim = np.flatnonzero((buf == sep) | (buf == 10))
  ntok = np.diff(np.searchsorted(delim, newline), prepend=-1)
  line = first_line + np.arange(len(newline), dtype=np.int64)
  ok = ntok == nf
  start = np.concatenate(([0], delim[:-1] + 1))[np.repeat(ok, ntok)].reshape(-1, nf)
  length = delim[np.repeat(ok, ntok)].reshape(-1, nf) - start
  col = {name: j for j, name in enumerate(layout.columns)}
  line = line[ok]
  reasons = [*REASONS[1:], *layout.derived_columns]
  problem = np.zeros(len(line), np.int8)       # 0 = fine, else 1 + index into reasons

  def flag(mask, reason):
    problem[(problem == 0) & mask] = reasons.index(reason) + 1

  j = col[layout.label]
  label_byte = buf[start[:, j]]
  flag((length[:, j] != 1) | ((label_byte != ord("0")) & (label_byte != ord("1"))), "label")
  label = (label_byte == ord("1")).astype(np.float32)
  numbers, missing, keys, derived = {}, {}, {}, {}
  for name in (*layout.numeric, *layout.derived_columns):
    j = col[name]
    tokens = texts[start[:, j]]
    tokens.view(np.uint8).reshape(-1, NUMBER_BYTES)[...] *= np.arange(NUMBER_BYTES) < length[:, j, None]
    numbers[name], bad = _parse_numbers(tokens, length[:, j])
    missing[name] = length[:, j] == 0
    flag(bad, "number" if name in layout.numeric else name)
  for name in layout.tokens:
    j = col[name]
    keys[name] = words[start[:, j]].astype(np.uint64) & PREFIX_MASKS[np.minimum(length[:, j], TOKEN_BYTES)]
    missing[name] = length[:, j] == 0
    flag(length[:, j] > TOKEN_BYTES, "token length")
  if layout.derived:
    d = layout.derived
    index, bad = d.fn(numbers.pop(d.column))
    flag(bad | missing.pop(d.column), d.column)
    derived = {name: (index[name] + FIRST_ID).astype(np.int32) for name, _, _ in d.fields}
  good = problem == 0
  bad_lines = {"field count": first_line + np.flatnonzero(~ok)}
  bad_lines.update({r: line[problem == i + 1] for i, r in enumerate(reasons)})
  numbers, keys, missing, derived = ({k: v[good] for k, v in cols.items()}
                                    for cols in (numbers, keys, missing, derived))
  return _Chunk(line[good], label[good], numbers, keys, missing, derived,
                {r: v for r, v in bad_lines.items() if len(v)})


# ------------------------------------------------------------------------------------ counting


class _KeyCounter:
  """Exact occurrence counts of integer keys arriving in chunks.

  Chunk counts wait in a list and are merged into the sorted totals once they outnumber them, so
  every key is re-sorted O(log N) times in all.
  """

  def __init__(self, dtype):
    self.keys = np.zeros(0, dtype)
    self.counts = np.zeros(0, np.int64)
    self._pending: list[tuple[np.ndarray, np.ndarray]] = []
    self._pending_size = 0

  def add(self, keys: np.ndarray) -> None:
    u, c = np.unique(keys, return_counts=True)
    self._pending.append((u, c))
    self._pending_size += len(u)
    if self._pending_size > max(len(self.keys), 1 << 16):
      self._merge()

  def _merge(self) -> None:
    keys = np.concatenate([self.keys, *(u for u, _ in self._pending)])
    counts = np.concatenate([self.counts, *(c for _, c in self._pending)])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    if len(keys):
      starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
      keys, counts = keys[starts], np.add.reduceat(counts, starts)
    self.keys, self.counts = keys, counts
    self._pending, self._pending_size = [], 0

  def totals(self) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, their counts)."""
    self._merge()
    return self.keys, self.counts


def split_assignment(num_lines: int, seed: int) -> np.ndarray:
  """int8 split index (0 train, 1 valid, 2 test) of each data line: exact 80/10/10, seeded."""
  n_eval = num_lines // 10
  perm = np.random.default_rng(seed).permutation(num_lines)
  split_of = np.zeros(num_lines, np.int8)
  split_of[perm[:n_eval]] = 2
  split_of[perm[n_eval:2 * n_eval]] = 1
  return split_of


def _lookup(vocab: np.ndarray, keys: np.ndarray, missing: np.ndarray) -> np.ndarray:
  """Keys -> ids: MISSING_ID where missing, FIRST_VALUE_ID + rank when kept, OOV_ID otherwise."""
  pos = np.minimum(np.searchsorted(vocab, keys), max(len(vocab) - 1, 0))
  found = vocab[pos] == keys if len(vocab) else np.zeros(len(keys), bool)
  ids = np.where(found, pos + FIRST_VALUE_ID, OOV_ID)
  return np.where(missing, MISSING_ID, ids).astype(np.int32)


def _token_labels(keys: np.ndarray) -> list[str]:
  return [b.decode("utf-8", "backslashreplace") for b in keys.astype(">u8").view("S8").tolist()]


# ------------------------------------------------------------------------------------ building


def _bucket_keys(chunk: _Chunk, name: str) -> np.ndarray:
  return np.floor(log2_transform(chunk.numbers[name])).astype(np.int64)


@dataclasses.dataclass
class _Tally:
  """What pass 1 learns: value counts of the counted fields, missing values, malformed lines."""
  counters: dict[str, _KeyCounter]
  missing: dict[str, int]
  malformed: dict[str, int]
  first_bad: list[int] = dataclasses.field(default_factory=list)


def _count(layout: Layout, chunks, counted: list[str], vocab_rows: str) -> _Tally:
  """Pass 1: counts the values of ``counted`` over the counting rows, missing values and bad lines."""
  tally = _Tally({name: _KeyCounter(np.int64 if name in layout.numeric else np.uint64) for name in counted},
                 {name: 0 for name in (*layout.numeric, *layout.tokens)},
                 {r: 0 for r in (*REASONS, *layout.derived_columns)})
  for chunk, split in chunks:
    use = split == 0 if vocab_rows == "train" else np.ones(len(split), bool)
    for name in counted:
      keys = _bucket_keys(chunk, name) if name in layout.numeric else chunk.keys[name]
      tally.counters[name].add(keys[use & ~chunk.missing[name]])
    for name in tally.missing:
      tally.missing[name] += int(chunk.missing[name].sum())
    for reason, lines in chunk.bad.items():
      tally.malformed[reason] += len(lines)
      tally.first_bad = sorted([*tally.first_bad, *lines.tolist()])[:FIRST_BAD_LINES]
  return tally


def _build(layout: Layout, path: pathlib.Path, out_dir: pathlib.Path, min_count: int, numeric: str,
           vocab_rows: str, seed: int, chunk_bytes: int, args: dict) -> pathlib.Path:
  sep, offset, header_lines = _detect_format(path, layout)
  num_lines = sum(data.count(b"\n") for _, data in _blocks(path, offset, chunk_bytes))   # pass 0
  if not num_lines:
    raise SchemaError(f"{path}: no data lines" + (" after the header" if header_lines else ""))
  split_of = split_assignment(num_lines, seed)

  def chunks():
    for index, data in _blocks(path, offset, chunk_bytes):
      chunk = _parse(data, header_lines + index + 1, sep, layout)
      yield chunk, split_of[chunk.line - header_lines - 1]

  bucket = numeric == "bucket"
  counted = [*(layout.numeric if bucket else ()), *layout.tokens]
  tally = _count(layout, chunks(), counted, vocab_rows)
  total_bad = sum(tally.malformed.values())
  if total_bad == num_lines:
    raise SchemaError(f"{path}: all {num_lines} data lines are malformed (first: lines {tally.first_bad}; "
                      f"by reason {tally.malformed})")
  vocab, vocab_stats = {}, {}
  for name in counted:
    keys, counts = tally.counters[name].totals()
    vocab[name] = keys[counts >= min_count]
    vocab_stats[name] = {"distinct": len(keys), "kept": len(vocab[name]),
                         "vocab_size": len(vocab[name]) + FIRST_VALUE_ID}

  writer = DatasetWriter(out_dir, _schema(layout, vocab, numeric, min_count, vocab_rows))
  for chunk, split in chunks():                                                       # pass 2
    cols = {"label": chunk.label, "line": chunk.line, **chunk.derived}
    for name in layout.numeric:
      cols[name] = (_lookup(vocab[name], _bucket_keys(chunk, name), chunk.missing[name]) if bucket
                    else log2_transform(chunk.numbers[name]).astype(np.float32))
    for name in layout.tokens:
      cols[name] = _lookup(vocab[name], chunk.keys[name], chunk.missing[name])
    for s, split_name in enumerate(SPLITS):
      writer.append(split_name, {k: v[split == s] for k, v in cols.items()})

  if total_bad:
    print(f"{layout.dataset}: skipped {total_bad} malformed line(s) of {path} (by reason "
          f"{ {r: n for r, n in tally.malformed.items() if n} }; first: lines {tally.first_bad})")
  prov_file = path.parent / "PROVENANCE.tsv"
  provenance = ([row for row in prov_file.read_text(encoding="utf-8").splitlines()
                 if row.split("\t")[0] == path.name] if prov_file.is_file() else []) or [str(path)]
  vocabs = {name: ["<pad>", "<oov>", "<missing>", *(map(str, vocab[name].tolist()) if name in layout.numeric
                                                    else _token_labels(vocab[name]))]
            for name in counted}
  if layout.derived:
    vocabs.update({name: ["<pad>", "<oov>", *labels] for name, labels, _ in layout.derived.fields})
  numeric_rule = "floor(ln(z)^2) if z > 2 else z; " + (
      "its floor as a thresholded categorical token, missing -> 2" if bucket
      else "a float32 value, 0 when missing")
  stats = {
      "prep": {"script": f"data_prep/{layout.dataset}.py", "version": PREP_VERSION, "args": args},
      "provenance": provenance,
      "data_lines": num_lines,
      "header_lines": header_lines,
      "malformed": {"lines": total_bad, "by_reason": tally.malformed, "first_lines": tally.first_bad},
      "split_rule": f"seeded permutation of the {num_lines} data lines (seed {seed}): "
                    f"{num_lines // 10} test, {num_lines // 10} valid, the rest train",
      "vocab_rule": (f"kept: values seen >= {min_count} times in the "
                     f"{'train split' if vocab_rows == 'train' else 'well-formed lines of all splits'}; "
                     f"id 1 = not kept, 2 = missing, 3.. = kept values in sorted order"),
      "numeric_rule": numeric_rule if layout.numeric else "no numeric fields",
      "vocab": vocab_stats,
      "missing": tally.missing,
  }
  return writer.finalize(stats, vocabs)


def _schema(layout: Layout, vocab: dict, numeric: str, min_count: int, vocab_rows: str) -> Schema:
  ids = f"1 = seen < {min_count} times in {vocab_rows} rows, 2 = missing"
  fields = []
  for name in layout.columns:
    if name in layout.numeric and numeric == "value":
      fields.append(Field(name, "context", "numeric", dtype="float32",
                          description="floor(ln(z)^2) if z > 2 else z; 0 when missing"))
    elif name in vocab:
      what = "floor(ln(z)^2) if z > 2 else floor(z)" if name in layout.numeric else "raw value"
      fields.append(Field(name, "context", "categorical", vocab_size=len(vocab[name]) + FIRST_VALUE_ID,
                          oov_id=OOV_ID, description=f"{what}; {ids}"))
    elif layout.derived and name == layout.derived.column:
      fields += [Field(d, "context", "categorical", vocab_size=len(labels) + FIRST_ID, description=desc)
                 for d, labels, desc in layout.derived.fields]
  fields += [Field("label", "label", "numeric", dtype="float32", description=f"raw {layout.label!r} (0/1)"),
             Field("line", "meta", "numeric", dtype="int64", description="1-based line of the raw file")]
  return Schema(tuple(fields))


# ----------------------------------------------------------------------------------------- API


def raw_file(layout: Layout, raw: str | os.PathLike | None) -> pathlib.Path:
  """The raw file: ``raw`` itself, the first of ``train_files`` in a directory, or (None, '') the shared
  default."""
  path = resolve(raw) if raw else shared_root() / layout.default_raw
  if path.is_dir():
    found = [path / f for f in layout.train_files if (path / f).is_file()]
    if not found:
      raise FileNotFoundError(f"{path}: holds none of {list(layout.train_files)} (the raw {layout.dataset} "
                              f"file, decompressed); pass the file itself")
    path = found[0]
  if not path.is_file():
    raise FileNotFoundError(f"{path}: raw {layout.dataset} file missing")
  return path


def prepare(layout: Layout, out_root: str | os.PathLike, raw: str | os.PathLike | None, min_count: int,
            vocab_rows: str, seed: int, chunk_bytes: int, force: bool,
            numeric: str = "value") -> pathlib.Path:
  """Prepares (or reuses) the dataset directory of ``layout``'s raw file; returns its path."""
  if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
    raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
  if numeric not in NUMERIC_MODES:
    raise ValueError(f"numeric={numeric!r} not in {NUMERIC_MODES}")
  if vocab_rows not in VOCAB_ROWS:
    raise ValueError(f"vocab_rows={vocab_rows!r} not in {VOCAB_ROWS}")
  if isinstance(seed, bool) or int(seed) != seed:
    raise ValueError(f"seed must be an integer, got {seed!r}")
  if int(chunk_bytes) != chunk_bytes or chunk_bytes < 1:
    raise ValueError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
  min_count, seed = int(min_count), int(seed)
  path = raw_file(layout, raw)
  name = (f"{layout.dataset}-{path.stem}-min{min_count}" + (f"-{numeric}" if layout.numeric else "")
          + ("-allrows" if vocab_rows == "all" else "") + f"-seed{seed}")
  out_dir = resolve(out_root) / name
  args = {"dataset": layout.dataset, "raw": str(path), "min_count": min_count, "vocab_rows": vocab_rows,
          "seed": seed, **({"numeric": numeric} if layout.numeric else {})}
  if not force and reuse_cached(out_dir, args, PREP_VERSION, layout.dataset):
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _build(layout, path, out_dir, min_count, numeric, vocab_rows, seed, int(chunk_bytes), args)
  stats = json.loads((out_dir / "stats.json").read_text())
  print(f"{layout.dataset}: wrote {out_dir}: rows {stats['rows']}, malformed lines "
        f"{stats['malformed']['lines']}, vocab sizes "
        f"{ {k: v['vocab_size'] for k, v in stats['vocab'].items()} }")
  return out_dir


def main(layout: Layout, description: str, argv=None) -> pathlib.Path:
  """Command line of ``data_prep.<dataset>``."""
  ap = argparse.ArgumentParser(description=description)
  ap.add_argument("--raw", default=None, help=f"raw file or a directory holding {layout.train_files[0]} "
                  f"(default: $CTRJAX_SHARED/{layout.default_raw})")
  ap.add_argument("--min_count", type=int, default=layout.min_count,
                  help="values seen fewer times -> the unknown id")
  if layout.numeric:
    ap.add_argument("--numeric", default="value", choices=NUMERIC_MODES)
  ap.add_argument("--vocab_rows", default="train", choices=VOCAB_ROWS, help="rows whose values are counted")
  ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split permutation seed")
  ap.add_argument("--chunk_mb", type=int, default=DEFAULT_CHUNK_BYTES >> 20,
                  help="read chunk in MiB (memory only; the output does not depend on it)")
  ap.add_argument("--out_root", default="data/prepared", help="relative paths are against the repo root")
  ap.add_argument("--force", action="store_true", help="rebuild even if a matching cached copy exists")
  a = ap.parse_args(argv)
  path = prepare(layout, a.out_root, a.raw, a.min_count, a.vocab_rows, a.seed, a.chunk_mb << 20, a.force,
                 **({"numeric": a.numeric} if layout.numeric else {}))
  print(path)
  return path
