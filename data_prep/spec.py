"""A dataset from a spec file: CSV/TSV/Parquet logs -> a ctrjax dataset directory, without Python.

Usage: in a config, ``c.dataset = data_prep.dataset_config("spec", spec="path/to/my_data.toml")``
(then ``--config.dataset.spec=other.toml`` switches specs on the command line), or
  python -m data_prep.spec path/to/my_data.toml [--out_root R] [--force]
or ``prepare(out_root, spec=...)`` from Python. docs/your_data.md walks through an example; every
key is described in ``KEYS`` below (a typo'd key is an error naming it).

The spec (TOML) names the raw files, the label, the user and time columns, one entry per feature
column (kind, group, shared table, min_count, missing policy), the split and the behaviour
sequences. The engine is DuckDB (pinned in pyproject.toml; chosen over Polars by measurement,
benchmarks/README.md "Spec importer"): SQL over the files, out of core (``[engine] memory_limit``
bounds its memory, the rest spills to a temporary directory beside the output), no per-row Python.
Rows reach ``DatasetWriter`` in chunks, so the output's size never sits in memory either.

Protocol, row by row of the main files (each row is an event):
  * samples: the rows where ``samples`` (an SQL condition; default: every row) holds; label =
    ``label`` (a column or an SQL expression; 0/1 or a boolean).
  * split: ``leave_last = k`` (per user over its samples in (time, order, line) order: the last k ->
    test, the k before -> valid, the rest -> train; users with fewer than 2k+1 samples: all train),
    ``random = [train, valid, test]`` fractions with ``seed`` (numpy default_rng(seed).permutation
    of the files' data lines, malformed lines included; the first floor(D*test) -> test, the next
    floor(D*valid) -> valid: data_prep/tabular.py's rule), or ``column`` (a column or expression
    holding train/valid/test).
  * negatives (``[negatives]``): after each positive sample, ``per_positive`` copies with label 0 and
    the item-group columns of a train item the user never had (``_samples_with_negatives``).
  * behaviours (``[behavior]``): the rows where ``behavior.where`` holds (default: every row). A
    sample's history is its user's behaviours with a STRICTLY earlier time, ordered by (time,
    order, line), the last ``max_len``, oldest -> newest, left-padded with 0; every history field is
    aligned with the others and with meta ``hist_timestamp``. Each history field shares the table of
    the candidate column it copies.
  * vocabularies (per table): values of its columns over the train samples and over the behaviours a
    train sample can see (time before its user's last train sample), kept when seen >= min_count
    times, in sorted order (numbers numerically, strings by bytes): id 0 padding, 1 OOV (rare or
    unseen, and valid/test values never seen in train), then with ``missing = "own"`` id 2 for a
    missing value, then the kept values. ``vocab = "all"`` counts every row; ``vocab = "<side
    table>"`` takes every row of that side table; ``levels = n`` fixes the vocabulary to the
    integers 0..n-1 (id = value + 2).
  * output rows: leave_last splits in (user, time, order, line) order, the others in file order.
    Meta fields: ``line`` (1-based line of the raw file; Parquet: row number), ``user`` (the raw id when it is an integer,
    else its rank among the users, for GAUC), ``timestamp`` and ``hist_timestamp``.
Malformed rows (wrong field count, a value that does not parse as its column's type, a label other
than 0/1, a non-finite number, a missing user or time, a split value not train/valid/test) are
skipped and counted in stats.json["malformed"] with the first line numbers (``on_malformed =
"error"``: an error naming file and line). A spec that does not fit its files (a missing column, an
expression that does not bind, a numeric column holding text) is a one-line error naming the key.
Line numbers of accepted rows assume the file has no blank lines (DuckDB skips them).

Caching: ``<out_root>/spec-<spec stem>-<digest>``, the digest of the resolved spec (engine settings
aside) and of the raw files' paths, sizes and modification times: a changed spec or file is rebuilt.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import hashlib
import json
import os
import pathlib
import re
import shutil
import tomllib

import numpy as np
import tqdm

from ctrjax.data.schema import FIRST_ID, OOV_ID, SPLITS, Field, Schema
from ctrjax.data.writer import DatasetWriter
from ctrjax.errors import UserError
from data_prep.common import MAX_CORRUPT_EXAMPLES, one_at_a_time, resolve, reuse_cached

PREP_VERSION = 1
KINDS = ("categorical", "numeric", "multi", "sequence")
GROUPS = ("item", "user", "context", "behavior", "meta")
TRANSFORMS = ("none", "log1p", "log2sq")
MISSING = ("oov", "own")
META_FIELDS = ("label", "line", "user", "timestamp", "hist_timestamp")
CHUNK_ELEMENTS = 1 << 22            # bound on rows x ids per written chunk
MAX_CHUNK_ROWS = 100_000
REDRAWS = 3                         # negative sampling: draws per negative before it is dropped

SOURCE_KEYS = {
    "files": "a path or glob, or a list of them (relative: to the spec file); .csv/.tsv/.txt/.parquet, .gz",
    "sep": "field separator (default: tab for .tsv files, else ',')",
    "header": "whether line 1 names the columns (default: true, false when names is given)",
    "names": "column names of a header-less file",
    "types": "column -> DuckDB type (e.g. {C1 = 'VARCHAR'}), overriding the sniffed type",
}
KEYS = {
    **SOURCE_KEYS,
    "on_malformed": "skip (count, with line numbers) | error (name file and line)",
    "label": "the 0/1 label: a column or an SQL expression such as 'rating >= 4'",
    "samples": "SQL condition: which rows are samples (default: all; the rest are behaviours only)",
    "user": "user column (meta 'user' for GAUC; leave_last split; behaviours)",
    "time": "event time column or expression (an integer, e.g. unix seconds, or a timestamp)",
    "order": "tie-break columns after time (default: file order)",
    "tables": "side tables joined on a key: [tables.NAME] files, key, on (+ sep/header/names/types)",
    "columns": "output fields: [columns.NAME] kind, group, source or expr, table, min_count, ...",
    "behavior": "[behavior] max_len, fields, where: histories of strictly earlier events",
    "split": "[split] leave_last = k | random = [train, valid, test] (+ seed) | column = 'col'",
    "negatives": "[negatives] per_positive, seed: sampled negative items after each positive",
    "engine": "[engine] memory_limit, threads, temp_directory (not part of the dataset's identity)",
}
TABLE_KEYS = {**SOURCE_KEYS, "key": "the side table's key column", "on": "main column or expression it joins on"}
COLUMN_KEYS = {
    "kind": f"one of {KINDS} (default categorical)",
    "group": f"one of {GROUPS} (default context)",
    "source": "the raw column (default: the field's name)",
    "expr": "an SQL expression over the raw columns (and side tables' NAME.column) instead of source",
    "table": "embedding table (default: the field's name); fields naming one table share ids",
    "min_count": "values seen fewer times -> OOV id 1 (default 1)",
    "missing": "categorical: oov (missing -> id 1, default) | own (id 2; kept values from 3)",
    "vocab": "train (default) | all | a side table's name",
    "levels": "the values are the integers 0..levels-1: fixed vocabulary, id = value + 2",
    "transform": f"numeric: one of {TRANSFORMS} (log2sq: floor(ln(z)^2) if z > 2 else z)",
    "sep": "multi / sequence: the separator inside the value",
    "max_len": "multi: at most this many values (default: the longest); sequence: the last max_len",
}
BEHAVIOR_KEYS = {
    "max_len": "behaviours kept per sample (the most recent)",
    "fields": "candidate columns to copy, ['item_id', ...] (-> hist_item_id) or {hist_name = 'column'}",
    "where": "SQL condition: which rows are behaviours (default: all)",
}
SPLIT_KEYS = {
    "leave_last": "k: per user, last k samples -> test, k before -> valid",
    "random": "[train, valid, test] fractions of the data lines",
    "seed": "seed of the random split (default 2018)",
    "column": "a column or expression holding train / valid / test",
}
NEGATIVE_KEYS = {"per_positive": "negatives drawn after each positive sample",
                 "seed": "seed of the draws (default 1234)"}
ENGINE_KEYS = {"memory_limit": "DuckDB memory limit (default 2GB)", "threads": "0 = all cores",
               "temp_directory": "spill directory (default: beside the output)"}
ENGINE_DEFAULTS = {"memory_limit": "2GB", "threads": 0, "temp_directory": ""}


class SpecError(UserError, ValueError):
  """A spec that cannot work with its files; the message names the spec key, column, file or line."""


# ----------------------------------------------------------------------------------- the spec


def _check_keys(where: str, obj, known: dict, path: pathlib.Path) -> None:
  if not isinstance(obj, dict):
    raise SpecError(f"{path}: {where or 'the spec'} must be a table, got {type(obj).__name__}")
  for key in obj:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {sorted(known)}"
      raise SpecError(f"{path}: unknown key {where + '.' if where else ''}{key}{hint}")


def _files(value, base: pathlib.Path, path: pathlib.Path, where: str) -> list[str]:
  patterns = [value] if isinstance(value, str) else value
  if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
    raise SpecError(f"{path}: {where} must be a path or a non-empty list of paths")
  found = []
  for pattern in patterns:
    full = pathlib.Path(pattern).expanduser()
    full = full if full.is_absolute() else base / full
    matches = sorted(glob.glob(str(full)))
    if not matches:
      raise SpecError(f"{path}: {where}: no file matches {str(full)!r}")
    found += [str(pathlib.Path(m).resolve()) for m in matches]
  return found


def _source(obj: dict, base: pathlib.Path, path: pathlib.Path, where: str) -> dict:
  files = _files(obj.get("files"), base, path, f"{where}files")
  formats = {"parquet" if ".parquet" in pathlib.Path(f).suffixes else "csv" for f in files}
  if len(formats) > 1:
    raise SpecError(f"{path}: {where}files mixes Parquet and CSV files")
  names = obj.get("names")
  if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
    raise SpecError(f"{path}: {where}names must be a list of column names")
  types = obj.get("types", {})
  if not isinstance(types, dict):
    raise SpecError(f"{path}: {where}types must be a table column -> type")
  return {"files": files, "format": formats.pop(), "sep": obj.get("sep"), "header": obj.get("header"),
          "names": names, "types": types}


def load(spec_path: str | os.PathLike) -> dict:
  """The resolved spec: defaults filled in, files found (absolute, sorted); SpecError on a bad key."""
  path = resolve(spec_path)
  try:
    raw = tomllib.loads(path.read_text())
  except FileNotFoundError:
    raise SpecError(f"{path}: spec file missing") from None
  except tomllib.TOMLDecodeError as e:
    raise SpecError(f"{path}: not valid TOML: {e}") from None
  _check_keys("", raw, KEYS, path)
  base = path.parent
  spec = {"source": _source(raw, base, path, ""), "on_malformed": raw.get("on_malformed", "skip")}
  if spec["on_malformed"] not in ("skip", "error"):
    raise SpecError(f"{path}: on_malformed={spec['on_malformed']!r}: skip | error")
  for key in ("label", "samples", "user", "time"):
    spec[key] = raw.get(key)
    if spec[key] is not None and not isinstance(spec[key], str):
      raise SpecError(f"{path}: {key} must be a string (a column or an SQL expression)")
  if spec["label"] is None:
    raise SpecError(f"{path}: label is required (a 0/1 column or an expression such as 'rating >= 4')")
  spec["order"] = raw.get("order", [])
  if isinstance(spec["order"], str):
    spec["order"] = [spec["order"]]
  spec["tables"] = {}
  for name, table in raw.get("tables", {}).items():
    where = f"tables.{name}"
    _check_keys(where, table, TABLE_KEYS, path)
    for key in ("key", "on"):
      if not isinstance(table.get(key), str):
        raise SpecError(f"{path}: {where}.{key} is required (a column name)")
    spec["tables"][name] = {**_source(table, base, path, where + "."), "key": table["key"], "on": table["on"]}
  spec["columns"] = {}
  columns = raw.get("columns", {})
  _check_keys("columns", columns, {k: "" for k in columns}, path)
  if not columns:
    raise SpecError(f"{path}: [columns] is empty: name at least one feature column")
  for name, col in columns.items():
    spec["columns"][name] = _column(name, col, spec, path)
  spec["behavior"] = _behavior(raw.get("behavior"), spec, path)
  spec["split"] = _split(raw.get("split"), spec, path)
  spec["negatives"] = _negatives(raw.get("negatives"), spec, path)
  engine = raw.get("engine", {})
  _check_keys("engine", engine, ENGINE_KEYS, path)
  spec["engine"] = {**ENGINE_DEFAULTS, **engine}
  return spec


def _column(name: str, col: dict, spec: dict, path: pathlib.Path) -> dict:
  where = f"columns.{name}"
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in META_FIELDS:
    raise SpecError(f"{path}: {where}: a field name must be an identifier other than {META_FIELDS}")
  _check_keys(where, col, COLUMN_KEYS, path)
  out = {"kind": col.get("kind", "categorical"), "group": col.get("group", "context"),
         "table": col.get("table", name), "min_count": col.get("min_count", 1),
         "missing": col.get("missing", "oov"), "vocab": col.get("vocab", "train"),
         "levels": col.get("levels"), "transform": col.get("transform", "none"), "sep": col.get("sep"),
         "max_len": col.get("max_len")}
  if "expr" in col and "source" in col:
    raise SpecError(f"{path}: {where}: give source or expr, not both")
  out["source"] = col.get("source", None if "expr" in col else name)
  out["expr"] = col.get("expr", _quote(out["source"]) if out["source"] else None)
  for key, choices in (("kind", KINDS), ("group", GROUPS), ("missing", MISSING), ("transform", TRANSFORMS)):
    if out[key] not in choices:
      raise SpecError(f"{path}: {where}.{key}={out[key]!r}: one of {choices}")
  if out["vocab"] not in ("train", "all", *spec["tables"]):
    raise SpecError(f"{path}: {where}.vocab={out['vocab']!r}: train | all | a side table {sorted(spec['tables'])}")
  for key in ("min_count", "levels", "max_len"):
    value = out[key]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise SpecError(f"{path}: {where}.{key} must be a positive integer, got {value!r}")
  if out["kind"] in ("multi", "sequence") and not out["sep"]:
    raise SpecError(f"{path}: {where}: kind {out['kind']!r} needs sep (the separator inside the value)")
  if out["kind"] == "sequence" and (out["group"] != "behavior" or not out["max_len"]):
    raise SpecError(f"{path}: {where}: kind 'sequence' needs group = 'behavior' and max_len")
  if out["group"] == "behavior" and out["kind"] != "sequence":
    raise SpecError(f"{path}: {where}: group 'behavior' is for kind 'sequence' (histories derived "
                    f"from events are declared in [behavior])")
  if out["group"] == "meta" and out["kind"] != "numeric":
    raise SpecError(f"{path}: {where}: group 'meta' holds numeric values (kind = 'numeric')")
  return out


def _behavior(raw, spec: dict, path: pathlib.Path) -> dict | None:
  if raw is None:
    return None
  _check_keys("behavior", raw, BEHAVIOR_KEYS, path)
  if not spec["user"] or not spec["time"]:
    raise SpecError(f"{path}: [behavior] needs user and time (whose events, in which order)")
  max_len = raw.get("max_len")
  if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
    raise SpecError(f"{path}: behavior.max_len must be a positive integer, got {max_len!r}")
  fields = raw.get("fields")
  if isinstance(fields, list):
    fields = {f"hist_{f}": f for f in fields}
  if not isinstance(fields, dict) or not fields:
    raise SpecError(f"{path}: behavior.fields: a list of columns or a table hist_name -> column")
  for hist, column in fields.items():
    if column not in spec["columns"]:
      close = difflib.get_close_matches(str(column), spec["columns"], n=1)
      raise SpecError(f"{path}: behavior.fields.{hist} = {column!r} is no column of [columns]"
                      + (f" (did you mean {close[0]!r}?)" if close else ""))
    if spec["columns"][column]["kind"] not in ("categorical", "multi"):
      raise SpecError(f"{path}: behavior.fields.{hist}: column {column!r} is {spec['columns'][column]['kind']}; "
                      "histories copy categorical or multi columns")
    if hist in spec["columns"] or hist in META_FIELDS:
      raise SpecError(f"{path}: behavior.fields.{hist}: the name is taken by a column or meta field")
  return {"max_len": max_len, "fields": fields, "where": raw.get("where")}


def _negatives(raw, spec: dict, path: pathlib.Path) -> dict | None:
  if raw is None:
    return None
  _check_keys("negatives", raw, NEGATIVE_KEYS, path)
  k, seed = raw.get("per_positive", 1), raw.get("seed", 1234)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise SpecError(f"{path}: negatives.per_positive must be a positive integer, got {k!r}")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise SpecError(f"{path}: negatives.seed must be an integer, got {seed!r}")
  if not spec["user"]:
    raise SpecError(f"{path}: [negatives] needs user (a negative is an item the user has not had)")
  if not any(c["group"] == "item" and c["kind"] != "numeric" for c in spec["columns"].values()):
    raise SpecError(f"{path}: [negatives] needs a categorical column in group 'item' (the item to draw)")
  return {"per_positive": k, "seed": seed}


def _split(raw, spec: dict, path: pathlib.Path) -> dict:
  if raw is None:
    raise SpecError(f"{path}: [split] is required: leave_last = k, random = [0.8, 0.1, 0.1] or column = 'col'")
  _check_keys("split", raw, SPLIT_KEYS, path)
  kinds = [k for k in ("leave_last", "random", "column") if k in raw]
  if len(kinds) != 1:
    raise SpecError(f"{path}: [split] needs exactly one of leave_last, random, column; got {kinds}")
  kind = kinds[0]
  if kind == "leave_last":
    k = raw["leave_last"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
      raise SpecError(f"{path}: split.leave_last must be a positive integer, got {k!r}")
    if not spec["user"] or not spec["time"]:
      raise SpecError(f"{path}: split.leave_last needs user and time")
    return {"kind": kind, "k": k}
  if kind == "random":
    fractions = raw["random"]
    if (not isinstance(fractions, list) or len(fractions) != 3 or any(not isinstance(f, (int, float)) or f < 0
                                                                       for f in fractions)
        or abs(sum(fractions) - 1) > 1e-9):
      raise SpecError(f"{path}: split.random must be [train, valid, test] fractions summing to 1, got {fractions!r}")
    seed = raw.get("seed", 2018)
    if isinstance(seed, bool) or not isinstance(seed, int):
      raise SpecError(f"{path}: split.seed must be an integer, got {seed!r}")
    return {"kind": kind, "fractions": [float(f) for f in fractions], "seed": seed}
  if "seed" in raw:
    raise SpecError(f"{path}: split.seed applies to split.random only")
  return {"kind": kind, "column": raw["column"]}


def _quote(name: str) -> str:
  return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
  return "'" + str(value).replace("'", "''") + "'"


def digest(spec: dict) -> str:
  """Hex digest of the resolved spec (engine settings aside) and of every raw file's path, size and
  modification time: the prepared directory's identity."""
  files = [*spec["source"]["files"], *(f for t in spec["tables"].values() for f in t["files"])]
  stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  content = {k: v for k, v in spec.items() if k != "engine"}
  text = json.dumps({"spec": content, "files": stamp, "version": PREP_VERSION}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------- the engine


class _Build:
  """One DuckDB session turning the resolved spec into a dataset directory."""

  def __init__(self, spec: dict, spec_path: pathlib.Path, out_dir: pathlib.Path):
    import duckdb
    self.duckdb = duckdb
    self.spec, self.spec_path, self.out_dir = spec, spec_path, out_dir
    engine = spec["engine"]
    self.work = out_dir.with_name(out_dir.name + ".duckdb")
    shutil.rmtree(self.work, ignore_errors=True)
    self.work.mkdir(parents=True)
    temp = pathlib.Path(engine["temp_directory"]) if engine["temp_directory"] else self.work / "spill"
    self.con = duckdb.connect()      # in memory; beyond memory_limit its tables spill to temp_directory
    self.sql(f"SET memory_limit = {_literal(engine['memory_limit'])}")
    self.sql(f"SET temp_directory = {_literal(str(temp))}")
    if engine["threads"]:
      self.sql(f"SET threads = {int(engine['threads'])}")
    self.sql("SET preserve_insertion_order = true")
    self.sql("SET TimeZone = 'UTC'")
    self.sql("SET enable_progress_bar = true")
    self.malformed: dict[str, int] = {}
    self.examples: list[tuple[str, int, str]] = []
    self.data_lines: dict[str, int] = {}
    self.headers: dict[str, int] = {}     # table -> header lines of its files

  def sql(self, query: str, params=None):
    return self.con.execute(query, params) if params is not None else self.con.execute(query)

  def close(self) -> None:
    self.con.close()
    shutil.rmtree(self.work, ignore_errors=True)

  # --------------------------------------------------------------------------- reading

  def _bad(self, file: str, line: int, reason: str, count: int = 1) -> None:
    self.malformed[reason] = self.malformed.get(reason, 0) + count
    self.examples.append((file, int(line), reason))
    if self.spec["on_malformed"] == "error":
      raise SpecError(f"{file}, line {line}: {reason} (on_malformed = 'error'; 'skip' counts and skips "
                      f"malformed rows)")

  def read(self, table: str, source: dict, where: str) -> list[str]:
    """Loads ``source`` into ``table`` with columns __file and __line; returns the raw column names."""
    files = "[" + ", ".join(_literal(f) for f in source["files"]) + "]"
    if source["format"] == "parquet":
      self.headers[table] = 0
      self.sql(f"CREATE TABLE {table} AS SELECT *, file_row_number + 1 AS __line FROM "
               f"read_parquet({files}, filename = '__file', file_row_number = true)")
      return [c for c in self._columns(table) if c not in ("__file", "__line", "file_row_number")]
    options = self._csv_options(source)
    rejects = f"{table}_rejects"
    self.sql(f"CREATE TABLE {table}_raw AS SELECT * FROM read_csv({files}, {options}, ignore_errors = true, "
             f"store_rejects = true, rejects_table = '{rejects}', rejects_scan = '{table}_scans', "
             f"filename = '__file')")
    header = self.headers[table] = int(self._header)
    if self._has_table(rejects):
      self.sql(f"CREATE TABLE {table}_bad AS SELECT DISTINCT s.file_path, r.line, r.column_name, r.error_message "
               f"FROM {rejects} r JOIN {table}_scans s USING (scan_id, file_id)")
    else:
      self.sql(f"CREATE TABLE {table}_bad (file_path VARCHAR, line BIGINT, column_name VARCHAR, error_message VARCHAR)")
    rejected = self.sql(f"SELECT * FROM {table}_bad ORDER BY file_path, line").fetchall()
    first = {}
    for file, line, column, message in rejected:
      if (file, line) in first:
        continue
      first[(file, line)] = True
      reason = f"column {column}: {message.splitlines()[0]}" if column else message.splitlines()[0]
      self.malformed["unreadable"] = self.malformed.get("unreadable", 0) + 1
      self.examples.append((file, int(line), reason))
      if self.spec["on_malformed"] == "error":
        raise SpecError(f"{file}, line {line}: {reason} (on_malformed = 'error'; 'skip' counts and skips "
                        f"malformed rows)")
    accepted = dict(self.sql(f"SELECT __file, count(*) FROM {table}_raw GROUP BY __file").fetchall())
    bad_lines: dict[str, int] = {}
    for file, _ in first:
      bad_lines[file] = bad_lines.get(file, 0) + 1
    for file in source["files"]:
      self.data_lines[file] = accepted.get(file, 0) + bad_lines.get(file, 0)
      if self.data_lines[file] and not accepted.get(file):
        column, message = next((c, m) for f, _, c, m in rejected if f == file)
        raise SpecError(f"{file}: every line is malformed, e.g. column {column}: {message.splitlines()[0]} "
                        f"(check {where}sep, header, names and types against the file)")
    # Line of an accepted row: its index among the file's accepted rows, plus the header, plus the
    # rejected lines before it: with rejected data lines q_1 < q_2 < ..., row i sits after every
    # q_j with q_j - j < i.
    self.sql(f"CREATE TABLE {table}_gaps (__file VARCHAR, s BIGINT, c BIGINT)")
    if first:
      self.sql(f"""INSERT INTO {table}_gaps SELECT __file, s, max(c) FROM (
                     SELECT file_path AS __file, line - {header} - row_number() OVER w AS s, row_number() OVER w AS c
                     FROM (SELECT DISTINCT file_path, line FROM {table}_bad)
                     WINDOW w AS (PARTITION BY file_path ORDER BY line)) GROUP BY ALL""")
    self.sql(f"""CREATE TABLE {table} AS
      SELECT r.* EXCLUDE (__i, __start), r.__i + {header} + coalesce(g.c, 0) AS __line FROM (
        SELECT t.*, t.rowid - min(t.rowid) OVER (PARTITION BY t.__file) + 1 AS __i, 0 AS __start FROM {table}_raw t) r
      ASOF LEFT JOIN {table}_gaps g ON r.__file = g.__file AND r.__i > g.s
      ORDER BY r.__file, r.__i""")
    self.sql(f"DROP TABLE {table}_raw")
    return [c for c in self._columns(table) if c not in ("__file", "__line")]

  def _csv_options(self, source: dict) -> str:
    tab = any(pathlib.Path(f).suffixes[:1] == [".tsv"] for f in source["files"])
    sep = source["sep"] if source["sep"] is not None else ("\t" if tab else ",")
    self._header = source["header"] if source["header"] is not None else source["names"] is None
    options = [f"delim = {_literal(sep)}", f"header = {str(self._header).lower()}"]
    if source["names"]:
      options.append("names = [" + ", ".join(_literal(n) for n in source["names"]) + "]")
    if source["types"]:
      options.append("types = {" + ", ".join(f"{_literal(k)}: {_literal(v)}"
                                             for k, v in source["types"].items()) + "}")
    return ", ".join(options)

  def _columns(self, table: str) -> list[str]:
    return [r[0] for r in self.sql(f"DESCRIBE {table}").fetchall()]

  def _has_table(self, name: str) -> bool:
    return bool(self.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])

  # --------------------------------------------------------------------------- checking

  def check_expression(self, key: str, expr: str, from_clause: str) -> str:
    """The DuckDB type of ``expr``; a SpecError naming ``key`` when it does not bind."""
    try:
      return self.sql(f"DESCRIBE SELECT ({expr}) AS x FROM {from_clause}").fetchone()[1]
    except self.duckdb.Error as e:
      message = str(e).splitlines()
      detail = next((m for m in message[1:] if m.strip() and not m.startswith("LINE")), "")
      raise SpecError(f"{self.spec_path}: {key} = {expr!r} does not fit the files: {message[0]}"
                      + (f" {detail.strip()}" if detail and "Candidate" in detail else "")) from None

  def check_column(self, key: str, name: str, columns: list[str], files: list[str]) -> None:
    if name not in columns:
      close = difflib.get_close_matches(name, columns, n=1)
      raise SpecError(f"{self.spec_path}: {key} = {name!r}: no such column in {files[0]}"
                      + (f" (did you mean {close[0]!r}?)" if close else f"; its columns: {columns}"))


def _numeric_sql(expr: str, transform: str) -> str:
  value = f"TRY_CAST(({expr}) AS DOUBLE)"
  if transform == "log1p":
    return f"ln(1 + {value})"
  if transform == "log2sq":
    return f"(CASE WHEN {value} > 2 THEN floor(ln({value}) ^ 2) ELSE {value} END)"
  return value


def _build(spec: dict, spec_path: pathlib.Path, out_dir: pathlib.Path, args: dict) -> pathlib.Path:
  b = _Build(spec, spec_path, out_dir)
  try:
    return _run(b, spec, args)
  finally:
    b.close()


@dataclasses.dataclass(frozen=True)
class _Bound:
  """The spec's expressions as SQL over the joined sources (checked to bind)."""
  from_clause: str
  label: str
  samples: str
  is_behavior: str
  user: str | None
  time: str | None                 # as a number: epoch seconds for a timestamp
  order: list[str]
  split: str | None                # split.column's expression
  tiebreak: str                    # after time: the order columns, then file and line
  side_duplicates: dict[str, int]  # side table -> rows dropped for a repeated key


def _run(b: _Build, spec: dict, args: dict) -> pathlib.Path:
  """The stages, each a few DuckDB tables: bind the spec, the well-formed events (ev), their splits,
  the vocabularies (voc_*), the events' ids (evid), the histories (windows), the output rows in
  order (out), then the dataset directory."""
  stage = lambda what: print(f"spec: {what}", flush=True)   # DuckDB's own bar shows a long query's progress
  stage("reading the files")
  q = _bind(b, spec)
  _events(b, spec, q)
  stage("splits and vocabularies")
  split_rule = _assign_splits(b, spec, q)
  vocabs, vocab_stats = _vocabularies(b, spec)
  widths, lists = _encode(b, spec)
  if spec["behavior"]:
    stage("behaviour histories")
  hist = _histories(b, spec, q)
  stage("ordering the rows")
  user_rule, negative_stats = _output_rows(b, spec, q, hist)
  schema = _schema(spec, vocab_stats, widths)
  writer = _write(b, spec, schema, hist, lists)
  examples = sorted(set(b.examples))[:MAX_CORRUPT_EXAMPLES]
  stats = {
      "prep": {"script": "data_prep/spec.py", "version": PREP_VERSION, "args": args},
      "spec": {k: v for k, v in spec.items() if k != "engine"},
      "engine": {"duckdb": b.duckdb.__version__, **spec["engine"]},
      "data_lines": b.data_lines,
      "malformed": {"lines": sum(b.malformed.values()), "by_reason": b.malformed,
                    "first_lines": [f"{f}, line {l}: {r}" for f, l, r in examples]},
      "duplicate_side_keys": q.side_duplicates,
      "split_rule": split_rule,
      **({"negatives": negative_stats} if negative_stats else {}),
      "vocab": vocab_stats,
      **({"user_rule": user_rule} if user_rule else {}),
  }
  if stats["malformed"]["lines"]:
    print(f"spec: skipped {stats['malformed']['lines']} malformed row(s) (by reason {b.malformed}; first: "
          f"{stats['malformed']['first_lines'][:3]})")
  return writer.finalize(stats, vocabs)



def _bind(b: _Build, spec: dict) -> _Bound:
  """Reads the sources (side tables deduplicated on their key) and binds every expression."""
  columns = b.read("src", spec["source"], "")
  files = spec["source"]["files"]
  joins, from_clause = [], "src"
  side_duplicates = {}
  for name, table in spec["tables"].items():
    side_columns = b.read(f"side_{name}", table, f"tables.{name}.")
    b.check_column(f"tables.{name}.key", table["key"], side_columns, table["files"])
    dup = b.sql(f"SELECT count(*) - count(DISTINCT {_quote(table['key'])}) FROM side_{name}").fetchone()[0]
    side_duplicates[name] = dup
    b.sql(f"""CREATE TABLE uniq_{name} AS SELECT * EXCLUDE (__file, __line) FROM side_{name}
              QUALIFY row_number() OVER (PARTITION BY {_quote(table['key'])} ORDER BY __file, __line) = 1""")
    on = _quote(table["on"]) if table["on"] in columns else table["on"]
    b.check_expression(f"tables.{name}.on", on, "src")
    key = _quote(table["key"])         # renamed in the join, so that a main column of the same name stays unambiguous
    joins.append(f"LEFT JOIN (SELECT * EXCLUDE ({key}), {key} AS __key FROM uniq_{name}) AS {_quote(name)} "
                 f"ON ({on}) = {_quote(name)}.__key")
  from_clause = "src " + " ".join(joins)

  def expression(key: str, value: str) -> str:
    sql = _quote(value) if value in columns else value
    b.check_expression(key, sql, from_clause)
    return sql

  for name, col in spec["columns"].items():
    if col["source"] is not None:
      b.check_column(f"columns.{name}.source", col["source"], columns, files)
  label = expression("label", spec["label"])
  samples = expression("samples", spec["samples"]) if spec["samples"] else "true"
  user = expression("user", spec["user"]) if spec["user"] else None
  time = expression("time", spec["time"]) if spec["time"] else None
  order = [expression(f"order[{i}]", o) for i, o in enumerate(spec["order"])]
  behavior = spec["behavior"]
  is_behavior = expression("behavior.where", behavior["where"]) if behavior and behavior["where"] else "true"
  split = spec["split"]
  split_expr = expression("split.column", split["column"]) if split["kind"] == "column" else None
  for name, col in spec["columns"].items():
    b.check_expression(f"columns.{name}.expr", col["expr"], from_clause)
  time_type = b.check_expression("time", time, from_clause) if time else None
  time_sql = (f"epoch({time})" if time_type and time_type.startswith("TIMESTAMP") else
              f"CAST({time} AS DOUBLE)" if time_type in ("FLOAT", "DOUBLE") or (time_type or "").startswith("DECIMAL")
              else time)

  tiebreak = ", ".join([*(f"__o{i}" for i in range(len(order))), "__file", "__line"])
  return _Bound(from_clause, label, samples, is_behavior, user, time_sql if time else None, order, split_expr,
                tiebreak, side_duplicates)


def _events(b: _Build, spec: dict, q: _Bound) -> None:
  """Table ev: the well-formed rows with every column's raw value; the others are counted (or, with
  on_malformed = 'error', raised)."""
  # ev: one row per well-formed event, the raw values of every column evaluated.
  select = ["src.__file AS __file", "src.__line AS __line", f"({q.label}) AS __label_raw",
            f"coalesce(({q.samples}), false) AS __sample", f"coalesce(({q.is_behavior}), false) AS __beh"]
  if q.user:
    select.append(f"({q.user}) AS __user")
  if q.time:
    select.append(f"({q.time}) AS __time")
  select += [f"({o}) AS __o{i}" for i, o in enumerate(q.order)]
  if q.split:
    select.append(f"CAST(({q.split}) AS VARCHAR) AS __split_raw")
  for name, col in spec["columns"].items():
    expr = col["expr"]
    if col["kind"] == "numeric":
      expr = _numeric_sql(expr, col["transform"])
      select.append(f"({col['expr']}) AS {_quote('raw:' + name)}")
    elif col["kind"] in ("multi", "sequence"):
      expr = f"CAST(({expr}) AS VARCHAR)"
    select.append(f"{expr} AS {_quote('v:' + name)}")
  b.sql(f"CREATE TABLE ev0 AS SELECT {', '.join(select)} FROM {q.from_clause}")

  # Row checks: the reasons a row is skipped, in order; the first that applies is counted.
  checks = [("label", "TRY_CAST(__label_raw AS DOUBLE) IS NULL OR TRY_CAST(__label_raw AS DOUBLE) NOT IN (0, 1)")]
  if q.user:
    checks.append(("user missing", "__user IS NULL"))
  if q.time:
    checks.append(("time", "__time IS NULL OR NOT isfinite(CAST(__time AS DOUBLE))"))
  if q.split:
    checks.append(("split", "__split_raw IS NULL OR __split_raw NOT IN ('train', 'valid', 'test', '0', '1', '2')"))
  for name, col in spec["columns"].items():
    if col["kind"] == "numeric":
      v, raw = _quote("v:" + name), _quote("raw:" + name)
      total, bad = b.sql(f"SELECT count({raw}), count({raw}) - count({v}) FROM ev0").fetchone()
      if total and bad == total:
        example = b.sql(f"SELECT {raw}, __file, __line FROM ev0 WHERE {raw} IS NOT NULL LIMIT 1").fetchone()
        raise SpecError(f"{b.spec_path}: columns.{name}: kind 'numeric', but the file's values are not numbers, "
                        f"e.g. {example[0]!r} ({example[1]}, line {example[2]})")
      checks.append((f"column {name}: not a finite number",
                     f"({raw} IS NOT NULL AND {v} IS NULL) OR NOT isfinite(coalesce({v}, 0))"))
  reason = "CASE " + " ".join(f"WHEN {cond} THEN {_literal(r)}" for r, cond in checks) + " END"
  b.sql(f"CREATE TABLE ev1 AS SELECT *, {reason} AS __reason FROM ev0")
  b.sql("DROP TABLE ev0")
  for r, count in b.sql("SELECT __reason, count(*) FROM ev1 WHERE __reason IS NOT NULL GROUP BY __reason "
                        "ORDER BY __reason").fetchall():
    first = b.sql("SELECT __file, __line FROM ev1 WHERE __reason = ? ORDER BY __file, __line LIMIT ?",
                  [r, MAX_CORRUPT_EXAMPLES]).fetchall()
    b._bad(*first[0], r, count)
    b.examples += [(f, int(l), r) for f, l in first[1:]]
  raw_drop = [_quote("raw:" + n) for n, c in spec["columns"].items() if c["kind"] == "numeric"]
  keep = ", ".join(["__reason", *raw_drop])
  b.sql(f"""CREATE TABLE ev AS SELECT * EXCLUDE ({keep}, __label_raw),
              CAST(TRY_CAST(__label_raw AS DOUBLE) AS FLOAT) AS __label, rowid AS __eid
            FROM ev1 WHERE __reason IS NULL""")
  b.sql("DROP TABLE ev1")
  if not b.sql("SELECT count(*) FROM ev WHERE __sample").fetchone()[0]:
    raise SpecError(f"{b.spec_path}: no well-formed sample rows in {spec['source']['files'][0]}"
                    + (f" (samples = {spec['samples']!r})" if spec["samples"] else ""))

def _assign_splits(b: _Build, spec: dict, q: _Bound) -> str:
  """Adds __split to ev (0 train, 1 valid, 2 test; NULL for rows that are no sample); returns the rule."""
  # Split of every sample: 0 train, 1 valid, 2 test.
  split = spec["split"]
  files = spec["source"]["files"]
  if split["kind"] == "leave_last":
    k = split["k"]
    b.sql(f"""CREATE TABLE sp AS SELECT __eid, CASE WHEN n >= {2 * k + 1} AND r > n - {k} THEN 2
                                                  WHEN n >= {2 * k + 1} AND r > n - {2 * k} THEN 1 ELSE 0 END AS __split
              FROM (SELECT __eid, count(*) OVER (PARTITION BY __user) AS n,
                           row_number() OVER (PARTITION BY __user ORDER BY __time, {q.tiebreak}) AS r
                    FROM ev WHERE __sample)""")
    split_rule = (f"per user by (time, order, line): last {k} sample(s) -> test, the {k} before -> valid, "
                  f"rest -> train; users with < {2 * k + 1} samples: all train")
  elif split["kind"] == "random":
    lines = [b.data_lines[f] for f in files]
    total = int(sum(lines))
    frac = split["fractions"]
    n_test, n_valid = int(np.floor(total * frac[2])), int(np.floor(total * frac[1]))
    perm = np.random.default_rng(split["seed"]).permutation(total)
    split_of = np.zeros(total, np.int8)
    split_of[perm[:n_test]] = 2
    split_of[perm[n_test:n_test + n_valid]] = 1
    del perm
    split_file = b.work / "split.txt"
    split_of.tofile(split_file, sep="\n")
    del split_of
    b.sql(f"CREATE TABLE rsplit AS SELECT s FROM read_csv({_literal(str(split_file))}, header = false, "
          f"columns = {{'s': 'TINYINT'}})")
    header = b.headers["src"]
    offsets = np.concatenate([[0], np.cumsum(lines)[:-1]]).tolist()
    b.sql("CREATE TABLE file_offsets (__file VARCHAR, o BIGINT)")
    b.sql("INSERT INTO file_offsets VALUES " + ", ".join(f"({_literal(f)}, {o})" for f, o in zip(files, offsets)))
    b.sql(f"""CREATE TABLE sp AS SELECT ev.__eid, rsplit.s AS __split FROM ev
              JOIN file_offsets USING (__file) JOIN rsplit ON rsplit.rowid = file_offsets.o + ev.__line - {header} - 1
              WHERE ev.__sample""")
    split_rule = (f"seeded permutation (seed {split['seed']}) of the {total} data lines: {n_test} test, "
                  f"{n_valid} valid, the rest train")
  else:
    b.sql("""CREATE TABLE sp AS SELECT __eid, CASE WHEN __split_raw IN ('train', '0') THEN 0
                                                   WHEN __split_raw IN ('valid', '1') THEN 1 ELSE 2 END AS __split
             FROM ev WHERE __sample""")
    split_rule = f"the column {split['column']!r}"

  b.sql("CREATE TABLE evs AS SELECT ev.*, sp.__split FROM ev LEFT JOIN sp USING (__eid)")
  b.sql("DROP TABLE ev")
  b.sql("ALTER TABLE evs RENAME TO ev")
  if spec["behavior"]:
    b.sql("""CREATE TABLE visible AS SELECT __user, max(__time) AS t FROM ev
             WHERE __sample AND __split = 0 GROUP BY __user""")
  return split_rule


def _vocabularies(b: _Build, spec: dict) -> tuple[dict, dict]:
  """Tables voc_<table> (value -> id); returns each table's vocabulary list and stats."""
  behavior = spec["behavior"]
  hist_sources = set(behavior["fields"].values()) if behavior else set()
  tables: dict[str, list[str]] = {}
  for name, col in spec["columns"].items():
    if col["kind"] != "numeric" and col["group"] != "meta":
      tables.setdefault(col["table"], []).append(name)
  vocabs, vocab_stats, first_value = {}, {}, {}
  for table, fields in tables.items():
    rule = {k: spec["columns"][fields[0]][k] for k in ("min_count", "missing", "vocab", "levels")}
    for f in fields[1:]:
      other = {k: spec["columns"][f][k] for k in rule}
      if other != rule:
        raise SpecError(f"{b.spec_path}: columns.{f} shares table {table!r} with columns.{fields[0]} but not "
                        f"its vocabulary rule ({other} vs {rule})")
    first_value[table] = FIRST_ID + (rule["missing"] == "own")
    specials = ["<pad>", "<oov>"] + (["<missing>"] if rule["missing"] == "own" else [])
    if rule["levels"]:
      b.sql(f"CREATE TABLE voc_{table} AS SELECT CAST(i AS BIGINT) AS v, CAST(i + {first_value[table]} AS INTEGER) "
            f"AS id FROM range({rule['levels']}) t(i)")
      vocabs[table] = specials + [str(i) for i in range(rule["levels"])]
      vocab_stats[table] = {"levels": rule["levels"], "vocab_size": rule["levels"] + first_value[table]}
      continue
    parts = []
    for f in fields:
      col = spec["columns"][f]
      if rule["vocab"] in spec["tables"]:
        base = f"(SELECT {col['expr']} AS v FROM uniq_{rule['vocab']} AS {_quote(rule['vocab'])})"
        if col["kind"] in ("multi", "sequence"):
          base = f"(SELECT CAST(v AS VARCHAR) AS v FROM {base})"
        column, rows = "v", base
      else:
        column = _quote("v:" + f)
        if rule["vocab"] == "all":
          where = "true"
        else:
          where = "(__sample AND __split = 0)"
          if f in hist_sources:
            where += " OR (__beh AND __time < visible.t)"
        rows = (f"(SELECT ev.{column} FROM ev LEFT JOIN visible USING (__user) WHERE {where})"
                if f in hist_sources and rule["vocab"] == "train" else f"(SELECT {column} FROM ev WHERE {where})")
      if col["kind"] in ("multi", "sequence"):
        rows = f"(SELECT unnest(list_filter(string_split({column}, {_literal(col['sep'])}), lambda e: e <> '')) AS {column} FROM {rows})"
      parts.append(f"SELECT {column} AS v FROM {rows}")
    b.sql(f"""CREATE TABLE cnt_{table} AS SELECT v, count(*) AS c FROM ({' UNION ALL '.join(parts)})
              WHERE v IS NOT NULL GROUP BY v""")
    b.sql(f"""CREATE TABLE voc_{table} AS SELECT v, CAST(row_number() OVER (ORDER BY v) + {first_value[table] - 1}
              AS INTEGER) AS id FROM cnt_{table} WHERE c >= {rule['min_count']} ORDER BY v""")
    distinct, kept = b.sql(f"SELECT count(*), count(*) FILTER (c >= {rule['min_count']}) FROM cnt_{table}").fetchone()
    values = b.sql(f"SELECT CAST(v AS VARCHAR) FROM voc_{table} ORDER BY id").fetchnumpy()
    vocabs[table] = specials + [str(v) for v in next(iter(values.values())).tolist()]
    vocab_stats[table] = {"distinct": distinct, "kept": kept, "vocab_size": kept + first_value[table]}
  return vocabs, vocab_stats


def _encode(b: _Build, spec: dict) -> tuple[dict, dict]:
  """Table evid: ev with ids for the categorical columns and list numbers for the multi-valued ones;
  returns their widths and the list-number -> padded ids arrays."""
  widths, lists = {}, {}
  select, joins = ["ev.* EXCLUDE (" + ", ".join(_quote("v:" + n) for n in spec["columns"]) + ")"], []
  for name, col in spec["columns"].items():
    v, out = f"ev.{_quote('v:' + name)}", _quote(name)
    if col["kind"] == "numeric":
      select.append(f"coalesce({v}, 0) AS {out}")
      continue
    table, miss = col["table"], (FIRST_ID if col["missing"] == "own" else OOV_ID)
    if col["kind"] == "categorical":
      key = f"TRY_CAST({v} AS BIGINT)" if col["levels"] else v
      joins.append(f"LEFT JOIN voc_{table} AS {_quote('j:' + name)} ON {key} = {_quote('j:' + name)}.v")
      select.append(f"CAST(CASE WHEN {v} IS NULL THEN {miss} ELSE coalesce({_quote('j:' + name)}.id, {OOV_ID}) END "
                    f"AS INTEGER) AS {out}")
      continue
    sep = _literal(col["sep"])
    elements = f"list_filter(string_split(d, {sep}), lambda e: e <> '')"
    b.sql(f"CREATE TABLE lists_{name} AS SELECT DISTINCT {v.replace('ev.', '')} AS d FROM ev")
    if col["kind"] == "multi":
      width = col["max_len"] or max(1, b.sql(f"SELECT coalesce(max(len({elements})), 1) FROM lists_{name}").fetchone()[0])
      if col["vocab"] in spec["tables"]:
        side = f"SELECT CAST(({col['expr']}) AS VARCHAR) AS d FROM uniq_{col['vocab']} AS {_quote(col['vocab'])}"
        width = col["max_len"] or max(width, b.sql(f"SELECT coalesce(max(len({elements})), 1) FROM ({side})").fetchone()[0])
    else:
      width = col["max_len"]
    widths[name] = width
    # Each distinct raw value is a list number (0: missing or empty); the rows of lists[name] are
    # their padded ids, looked up in numpy when rows are written: no nested lists in SQL.
    b.sql(f"""CREATE TABLE ids_{name} AS SELECT d, CAST(row_number() OVER (ORDER BY d) AS INTEGER) AS lid,
                list(coalesce(voc.id, {OOV_ID}) ORDER BY p) AS ids FROM (
                SELECT d, unnest({elements}) AS e, generate_subscripts({elements}, 1) AS p FROM lists_{name})
              LEFT JOIN voc_{table} AS voc ON voc.v = e GROUP BY d""")
    if col["kind"] == "multi":       # the first ``width`` values, 0-padded on the right
      padded = f"list_resize(ids[1:{width}], {width}, 0)"
    else:                            # the last ``width`` values, 0-padded on the left
      padded = (f"list_concat(list_resize([]::INTEGER[], greatest({width} - len(ids), 0), 0), "
                f"ids[greatest(len(ids) - {width} + 1, 1):])")
    flat = b.sql(f"SELECT flatten(list(CAST({padded} AS INTEGER[]) ORDER BY lid)) FROM ids_{name}").fetchnumpy()
    lists[name] = np.concatenate([np.zeros(width, np.int32), np.asarray(next(iter(flat.values()))[0] if len(
        next(iter(flat.values()))) else [], np.int32)]).reshape(-1, width)
    joins.append(f"LEFT JOIN ids_{name} AS {_quote('j:' + name)} ON {v} = {_quote('j:' + name)}.d")
    select.append(f"coalesce({_quote('j:' + name)}.lid, 0) AS {out}")
  b.sql(f"CREATE TABLE evid AS SELECT {', '.join(select)} FROM ev {' '.join(joins)}")
  b.sql("DROP TABLE ev")
  return widths, lists


def _histories(b: _Build, spec: dict, q: _Bound) -> dict[str, str]:
  """Tables ends and windows; returns the SQL of each history field (unpadded lists)."""
  # Behaviour histories: for each sample, the window of max_len behaviours ending at its user's last
  # behaviour strictly before the sample's time (found by an ASOF join on the last behaviour of each
  # (user, time)); windows are computed only for the behaviours some sample ends at.
  behavior, hist = spec["behavior"], {}
  if behavior:
    max_len, tiebreak = behavior["max_len"], q.tiebreak
    b.sql(f"""CREATE TABLE beh AS SELECT __eid, __user, __time, {tiebreak},
                lead(__time) OVER (PARTITION BY __user ORDER BY __time, {tiebreak}) IS DISTINCT FROM __time AS __last
              FROM evid WHERE __beh""")
    b.sql("""CREATE TABLE ends AS SELECT s.__eid, h.__eid AS __end FROM (SELECT __eid, __user, __time FROM evid
             WHERE __sample) s ASOF LEFT JOIN (SELECT __eid, __user, __time FROM beh WHERE __last) h
             ON s.__user = h.__user AND s.__time > h.__time""")
    window_lists = []
    frame = (f"ROWS BETWEEN (CASE WHEN __needed THEN {max_len - 1} ELSE 0 END) PRECEDING AND "
             f"(CASE WHEN __needed THEN 0 ELSE 1 END) PRECEDING")
    for hname, column in behavior["fields"].items():
      window_lists.append(f"list({_quote(column)}) OVER w AS {_quote(hname)}")
    window_lists.append("list(CAST(__time AS BIGINT)) OVER w AS hist_timestamp")
    b.sql(f"""CREATE TABLE windows AS SELECT __eid AS __end, {', '.join(window_lists)} FROM (
                SELECT e.*, e.__eid IN (SELECT __end FROM ends) AS __needed FROM evid e WHERE __beh)
              WINDOW w AS (PARTITION BY __user ORDER BY __time, {tiebreak} {frame})
              QUALIFY __needed""")
    for hname, column in behavior["fields"].items():
      hist[hname] = f"coalesce(w.{_quote(hname)}, []::INTEGER[])"     # unpadded: _left_pad pads
    hist["hist_timestamp"] = "coalesce(w.hist_timestamp, []::BIGINT[])"
  return hist


def _output_rows(b: _Build, spec: dict, q: _Bound, hist: dict) -> tuple[str | None, dict | None]:
  """Table out: every output row, numbered (__rid) in split then row order, so that chunks are cheap
  range scans; returns the rule of meta 'user' and the negative-sampling stats."""
  # The output rows, numbered in split then row order, so that chunks are cheap range scans.
  user, behavior = q.user, spec["behavior"]
  row_order = f"__user, __time, {q.tiebreak}" if spec["split"]["kind"] == "leave_last" else "__file, __line"
  user_rule = None
  user_type = b.sql("SELECT typeof(__user) FROM evid LIMIT 1").fetchone()[0] if user else None
  integral = user_type in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
  if user and integral and b.sql("SELECT max(abs(__user)) < 2147483648 FROM evid").fetchone()[0]:
    user_meta = "CAST(s.__user AS INTEGER)"
    user_rule = "the raw user id"
  elif user:
    b.sql("CREATE TABLE users AS SELECT __user, CAST(row_number() OVER (ORDER BY __user) AS INTEGER) AS n "
          "FROM (SELECT DISTINCT __user FROM evid)")
    user_meta = "users.n"
    user_rule = "the rank of the user's raw value among all users (1-based)"
  fields_sql = [f"s.{_quote(n)}" for n in spec["columns"]]
  fields_sql += ["s.__label AS label", "CAST(s.__line AS BIGINT) AS line"]
  if user:
    fields_sql.append(f"{user_meta} AS \"user\"")
  if q.time:
    fields_sql.append("CAST(s.__time AS BIGINT) AS \"timestamp\"")
  fields_sql += [f"{sql} AS {_quote(n)}" for n, sql in hist.items()]
  hist_join = ("LEFT JOIN ends USING (__eid) LEFT JOIN windows w ON w.__end = ends.__end" if behavior else "")
  if user and not user_meta.startswith("CAST"):
    hist_join += " LEFT JOIN users ON users.__user = s.__user"
  samples, negative_stats = _samples_with_negatives(b, spec)
  b.sql(f"""CREATE TABLE out AS SELECT row_number() OVER (ORDER BY s.__split, {', '.join('s.' + c.strip() for c in row_order.split(','))}, s.__neg) - 1 AS __rid,
              s.__split, {', '.join(fields_sql)}
            FROM ({samples}) s {hist_join} ORDER BY __rid""")
  return user_rule, negative_stats


def _write(b: _Build, spec: dict, schema: Schema, hist: dict, lists: dict) -> DatasetWriter:
  """Streams out into a DatasetWriter, chunk by chunk (histories padded, list numbers looked up here)."""
  behavior = spec["behavior"]
  rows = dict(b.sql("SELECT __split, count(*) FROM out GROUP BY __split").fetchall())
  writer = DatasetWriter(b.out_dir, schema)
  elements = max(1, sum(int(np.prod(f.shape)) for f in schema.fields))
  chunk_rows = int(max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // elements)))
  start = 0
  progress = tqdm.tqdm(total=sum(rows.values()), desc="spec: writing", unit="row", disable=None)
  for s, split_name in enumerate(SPLITS):
    end = start + rows.get(s, 0)
    for a in range(start, end, chunk_rows):
      z = min(a + chunk_rows, end)
      aggregates = []
      for f in schema.fields:
        agg = f"list({_quote(f.name)} ORDER BY __rid)"
        if f.name in hist:
          agg = f"flatten({agg})"
        aggregates.append(f"{agg} AS {_quote(f.name)}")
        if f.name in hist:
          aggregates.append(f"list(len({_quote(f.name)}) ORDER BY __rid) AS {_quote('len:' + f.name)}")
      got = b.sql(f"SELECT {', '.join(aggregates)} FROM out WHERE __rid >= {a} AND __rid < {z}").fetchnumpy()
      chunk = {}
      for f in schema.fields:
        values = np.asarray(got[f.name][0])
        source = behavior["fields"].get(f.name) if behavior else None
        if f.name in hist:
          values = _left_pad(values, np.asarray(got["len:" + f.name][0]), f.shape[:1], f.dtype)
        chunk[f.name] = (lists[source or f.name][values] if (source or f.name) in lists else values).astype(f.dtype)
      writer.append(split_name, chunk)
      progress.update(z - a)
    start = end
  progress.close()
  return writer


def _samples_with_negatives(b: _Build, spec: dict) -> tuple[str, dict | None]:
  """SQL of the sample rows (column __neg: 0) and, with [negatives], ``per_positive`` negatives after
  each positive (__neg: 1, 2, ...): the positive's row (user, context, history, split, line) with label
  0 and the item-group columns of an entry drawn uniformly from the catalogue (the distinct item-group
  tuples of the train samples), redrawn up to ``REDRAWS`` times while the user has that item (the
  first categorical item column) among its events; a negative with no free draw is dropped (counted)."""
  positives = "SELECT *, 0 AS __neg FROM evid WHERE __sample"
  negatives = spec["negatives"]
  if not negatives:
    return positives, None
  items = [n for n, c in spec["columns"].items() if c["group"] == "item"]
  key = _quote(next(n for n in items if spec["columns"][n]["kind"] != "numeric"))
  k, seed = negatives["per_positive"], negatives["seed"]
  columns = ", ".join(_quote(n) for n in items)
  b.sql(f"""CREATE TABLE catalogue AS SELECT *, row_number() OVER (ORDER BY {columns}) - 1 AS __ci FROM (
              SELECT DISTINCT {columns} FROM evid WHERE __sample AND __split = 0)""")
  size = b.sql("SELECT count(*) FROM catalogue").fetchone()[0]
  if not size:
    raise SpecError(f"{b.spec_path}: [negatives]: the train split has no items to draw from")
  b.sql(f"CREATE TABLE user_items AS SELECT DISTINCT __user, {key} AS __key FROM evid")
  b.sql(f"""CREATE TABLE negatives AS SELECT __eid, __neg, arg_min(__ci, __try) AS __ci FROM (
              SELECT p.__eid, p.__user, j AS __neg, r AS __try, CAST(hash({seed}, p.__eid, j, r) % {size} AS BIGINT) AS __ci
              FROM evid p, range(1, {k + 1}) t(j), range({REDRAWS}) u(r) WHERE p.__sample AND p.__label = 1) d
            JOIN catalogue c USING (__ci)
            WHERE NOT EXISTS (SELECT 1 FROM user_items x WHERE x.__user = d.__user AND x.__key = c.{key})
            GROUP BY __eid, __neg""")
  wanted = b.sql(f"SELECT count(*) * {k} FROM evid WHERE __sample AND __label = 1").fetchone()[0]
  made = b.sql("SELECT count(*) FROM negatives").fetchone()[0]
  replaced = ", ".join(f"c.{_quote(n)} AS {_quote(n)}" for n in items)
  return (f"{positives} UNION ALL SELECT e.* REPLACE ({replaced}, CAST(0 AS FLOAT) AS __label), n.__neg "
          f"FROM negatives n JOIN evid e USING (__eid) JOIN catalogue c USING (__ci)"), {
              "per_positive": k, "seed": seed, "catalogue": size, "made": made, "dropped": wanted - made,
              "rule": f"item columns {items} from a uniform draw of the train samples' distinct item tuples, "
                      f"redrawn up to {REDRAWS} times while the user has the item"}


def _left_pad(flat: np.ndarray, lengths: np.ndarray, shape: tuple[int], dtype: str) -> np.ndarray:
  """Rows of ``lengths[i]`` values each (concatenated in ``flat``) -> (rows, max_len), each row's
  values at its end, 0 before them."""
  out = np.zeros((len(lengths), *shape), dtype)
  rows = np.repeat(np.arange(len(lengths)), lengths)
  starts = np.cumsum(lengths) - lengths
  out[rows, np.arange(len(rows)) - starts[rows] + shape[0] - lengths[rows]] = flat
  return out


def _schema(spec: dict, vocab_stats: dict, widths: dict) -> Schema:
  fields = []
  behavior = spec["behavior"]
  for name, col in spec["columns"].items():
    if col["kind"] == "numeric":
      fields.append(Field(name, col["group"], "numeric", dtype="float32",
                          description=f"{col['expr']}, transform {col['transform']}; 0 when missing"))
      continue
    size = vocab_stats[col["table"]]["vocab_size"]
    common = dict(vocab_size=size, table=col["table"], oov_id=OOV_ID, description=col["expr"])
    if col["kind"] == "categorical":
      fields.append(Field(name, col["group"], "categorical", **common))
    elif col["kind"] == "multi":
      fields.append(Field(name, col["group"], "categorical", shape=(widths[name],), **common))
    else:
      fields.append(Field(name, "behavior", "sequence", shape=(col["max_len"],), max_len=col["max_len"], **common))
  if behavior:
    max_len = behavior["max_len"]
    for hname, column in behavior["fields"].items():
      col = spec["columns"][column]
      shape = (max_len,) if col["kind"] == "categorical" else (max_len, widths[column])
      fields.append(Field(hname, "behavior", "sequence", shape=shape, max_len=max_len,
                          vocab_size=vocab_stats[col["table"]]["vocab_size"], table=col["table"], oov_id=OOV_ID,
                          description=f"{column} of the user's strictly earlier behaviours, oldest -> newest"))
  fields += [Field("label", "label", "numeric", dtype="float32", description=spec["label"]),
             Field("line", "meta", "numeric", dtype="int64", description="1-based line of the raw file")]
  if spec["user"]:
    fields.append(Field("user", "meta", "categorical", dtype="int32", description="user (GAUC grouping)"))
  if spec["time"]:
    fields.append(Field("timestamp", "meta", "numeric", dtype="int64", description=spec["time"]))
  if behavior:
    fields.append(Field("hist_timestamp", "meta", "numeric", dtype="int64", shape=(behavior["max_len"],),
                        description="times of the behaviours, 0 at padding"))
  return Schema(tuple(fields))


# ---------------------------------------------------------------------------------------- API


@one_at_a_time
def prepare(out_root: str | os.PathLike = "data/prepared", *, spec: str | os.PathLike = "",
            force: bool = False) -> pathlib.Path:
  """Prepares (or reuses) ``<out_root>/spec-<spec stem>-<digest>`` from the spec file ``spec``."""
  if not spec:
    raise SpecError("config.dataset.spec is empty: name a dataset spec file (docs/your_data.md)")
  spec_path = resolve(spec)
  resolved = load(spec_path)
  key = digest(resolved)
  out_dir = resolve(out_root) / f"spec-{spec_path.stem}-{key}"
  args = {"spec": str(spec_path), "digest": key}
  if not force and reuse_cached(out_dir, args, PREP_VERSION, "spec"):
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _build(resolved, spec_path, out_dir, args)
  stats = json.loads((out_dir / "stats.json").read_text())
  print(f"spec: wrote {out_dir}: rows {stats['rows']}, malformed rows {stats['malformed']['lines']}, vocab sizes "
        f"{ {k: v['vocab_size'] for k, v in stats['vocab'].items()} }")
  return out_dir


def main(argv=None) -> pathlib.Path:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("spec", help="the dataset spec file (TOML)")
  ap.add_argument("--out_root", default="data/prepared", help="relative paths are against the repo root")
  ap.add_argument("--force", action="store_true", help="rebuild even if a matching cached copy exists")
  a = ap.parse_args(argv)
  path = prepare(a.out_root, spec=a.spec, force=a.force)
  print(path)
  return path


if __name__ == "__main__":
  main()
