"""Taobao display-ad clicks (Tianchi dataset 56) -> ctrjax dataset with aligned, timed behaviour sequences.

Usage:
  python -m data_prep.taobao [--max_len 50] [--valid_start 2017-05-12] [--test_start 2017-05-13]
                             [--history_fields cate,brand,btag,hour,weekday] [--on_corrupt skip]
                             [--raw_dir D] [--out_root R] [--force]
or ``prepare(out_root, raw_dir=..., max_len=..., valid_start=..., test_start=..., history_fields=...,
on_corrupt=...)`` from Python.

Raw inputs (``raw_dir``, default ``$CTRJAX_SHARED/data/taobao-ad``; relative paths are resolved against
the repository root): the four Tianchi tables, each ``<table>.csv`` or ``<table>.csv.gz``, comma-separated
with the published header line (names compared with surrounding spaces stripped: user_profile.csv's
header ends in "new_user_class_level ").
  raw_sample (required): user,time_stamp,adgroup_id,pid,nonclk,clk -- the 26M ad impressions of
    2017-05-06 .. 2017-05-13 with their click labels.
  ad_feature (optional): adgroup_id,cate_id,campaign_id,customer,brand,price; brand may be "NULL".
  user_profile (optional): userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
    shopping_level,occupation,new_user_class_level; any field but userid may be empty.
  behavior_log (optional): user,time_stamp,btag,cate,brand -- 723M pv/cart/fav/buy behaviours on
    categories and brands over 22 days; brand may be "NULL".
A missing optional table is explicit: a warning, stats.json["missing_tables"], and every impression
lacks what it would give (ad fields / profile fields OOV id 1, empty histories), counted in
stats.json. ``$CTRJAX_SHARED/data/taobao-ad-samples`` holds none of these tables verbatim: its files are
other libraries' preprocessed variants (FuxiCTR's tiny_csv: raw_sample joined with ad_feature and
user_profile, 100 rows; the DMR format of PaddleRec/DeepCTR: 50-long behaviour histories without any
timestamp). tests/test_taobao.py rebuilds the three tables from the FuxiCTR rows.

Time: time stamps are unix seconds; days, hours and weekdays are China Standard Time (UTC+8, no DST),
in which raw_sample covers 2017-05-06 00:00 .. 2017-05-13 24:00 exactly.

Samples and labels: every raw_sample line is one sample, label = clk (nonclk must be 1 - clk).

Split (the Tianchi protocol trains on 05-06 .. 05-12 and tests on 05-13; we hold out a whole day):
time_stamp < ``valid_start`` -> train (05-06 .. 05-11), < ``test_start`` -> valid (05-12), else test
(05-13). Both bounds are "YYYY-MM-DD[ HH:MM:SS]" in UTC+8. Valid is a whole day rather than the end
of day 7 so that its hour-of-day mix matches the test day's. ``valid_start == test_start`` gives the
original 7-day train and an empty valid split. Within a split rows are in (time_stamp, line) order.

Behaviours of a sample (group "behavior"): the same user's behaviour_log rows with a STRICTLY earlier
time_stamp (behaviours in the impression's second are excluded), ordered by (time_stamp, line), the
most recent ``max_len``, oldest -> newest, left-padded with 0; ``history_fields`` picks the aligned
fields among hist_cate (table "cate", shared with cate_id), hist_brand (table "brand", shared with
brand), hist_btag (table "btag"), hist_hour and hist_weekday (tables "hour"/"weekday", shared with
the context fields). Every field has the same padding positions; meta.hist_timestamp holds the
behaviour times (0 at padding) so BST/FESeq can compute t_impression - t_behaviour. The log is not
deduplicated. hist_btag, hist_hour and hist_weekday have no item field on their table, so models that
build the candidate as a behaviour-shaped token from item fields (DIN, DIEN, BST:
layers.behavior_aligned_item) need ``history_fields=("cate", "brand")``.

Fields and ids (0 = padding, 1 = OOV, real values from 2, numeric values in numeric order):
  item: adgroup_id, cate_id ("cate"), brand ("brand"; NULL is the value "NULL"), campaign_id, customer,
    price = log1p(price) (numeric; 0 for an ad missing from ad_feature).
  user: user_id (the raw user id as a feature) and the 8 profile fields; an empty profile value is
    the value "<empty>"; a user missing from user_profile gets OOV id 1 in all 8 (counted).
  context: pid, hour (0-23) and weekday (Monday = 0) of the impression in UTC+8.
  label: clk. meta: user (raw id, GAUC grouping), timestamp, hist_timestamp.
Vocabularies come from the TRAIN split only: adgroup_id, campaign_id, customer, pid, user_id and the
profile fields from train impressions; cate and brand from train impressions' ads plus the behaviours
inside train rows' history windows. A value first seen in valid/test is OOV id 1; the writer counts
OOV ids per split and field in stats.json["oov"]. btag (pv, cart, fav, buy), hour and weekday have
fixed vocabularies.

Corrupt lines: a line that is not UTF-8, has the wrong number of fields, or holds a bad value (ids
not non-negative integers below 2^31, a time stamp not a non-negative integer below 2^32, nonclk/clk
not 0/1 with nonclk + clk = 1, btag outside pv/cart/fav/buy, a price not a finite number >= 0, an
empty pid), and a truncated gzip stream. on_corrupt="skip" (default) skips them, counts them per table
in stats.json["corrupt_lines"] and keeps the first 10 as "file, line N: reason"; on_corrupt="error"
raises ``SchemaError`` naming the file and 1-based line. Blank lines are skipped and not counted. A
repeated adgroup_id / userid keeps its first line (counted). A wrong header line raises.

Memory and scaling limits: everything is held in memory. Behaviours are parsed in chunks of 1M lines
(vectorised; a chunk with a bad line is re-parsed line by line) into 17 bytes each ((user, time)
packed in one int64, btag, cate, brand), then sorted by (user, time) one column at a time: about 35
bytes a behaviour at peak, i.e. roughly 25 GB for the full 723M-row log, plus about 100 bytes an
impression (under 3 GB for 26M). Each history is then a slice of the sorted log found by binary
search. A user-partitioned two-pass join would bound the memory but is not implemented; on smaller
machines pre-filter the log (e.g. to the days needed). Rows are written in chunks.

Caching: ``<out_root>/taobao-len<max_len>[-valid<start>-test<start>][-hist-<fields>]`` is reused when
complete and its stats.json["prep"] has the same args (raw files found included) and prep version;
otherwise (or with ``force``) it is rebuilt.
"""
from __future__ import annotations

import argparse
import array
import dataclasses
import datetime
import gzip
import itertools
import json
import math
import os
import pathlib
import re
import warnings
import zlib

import numpy as np

from ctrjax.data.schema import FIRST_ID, OOV_ID, SPLITS, Field, Schema, SchemaError
from ctrjax.data.writer import DatasetWriter
from data_prep.common import CORRUPT_POLICIES, CorruptLines, one_at_a_time, resolve, reuse_cached, shared_root

PREP_VERSION = 1
READ_CHUNK_LINES = 1 << 20
MAX_CHUNK_ROWS = 100_000
CHUNK_ELEMENTS = 1 << 22  # bound on rows * max_len per written chunk
PROFILE_FIELDS = ("cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                  "shopping_level", "occupation", "new_user_class_level")
HEADERS = {
    "raw_sample": ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),
    "ad_feature": ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
    "user_profile": ("userid", *PROFILE_FIELDS),
    "behavior_log": ("user", "time_stamp", "btag", "cate", "brand"),
}
OPTIONAL_TABLES = ("ad_feature", "user_profile", "behavior_log")
BTAGS = ("pv", "cart", "fav", "buy")
HISTORY_FIELDS = ("cate", "brand", "btag", "hour", "weekday")
DEFAULT_VALID_START = "2017-05-12"
DEFAULT_TEST_START = "2017-05-13"
UTC8 = datetime.timezone(datetime.timedelta(hours=8))
UTC8_OFFSET = 8 * 3600
MISSING = -1                 # raw value of a NULL brand / empty profile field
MAX_ID = 2**31
MAX_TIME = 2**32
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_BTAG_CODES = {f",{b},": f",{-10 - i}," for i, b in enumerate(BTAGS)}  # fast-path stand-ins
_SENTINEL_KEY = np.iinfo(np.int64).max
_NOT_NUMERIC = re.compile(r"[^0-9,\-\r\n]")


def default_raw_dir() -> pathlib.Path:
  return shared_root() / "data" / "taobao-ad"


def _find(raw_dir: pathlib.Path, table: str) -> pathlib.Path | None:
  """``<table>.csv`` or else ``<table>.csv.gz`` in raw_dir; None when neither exists."""
  for name in (f"{table}.csv", f"{table}.csv.gz"):
    if (raw_dir / name).is_file():
      return raw_dir / name
  return None


def _utc8_seconds(when: str, what: str) -> int:
  """'YYYY-MM-DD[ HH:MM:SS]' in UTC+8 -> unix seconds."""
  for fmt in ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S"):
    try:
      return int(datetime.datetime.strptime(when, fmt).replace(tzinfo=UTC8).timestamp())
    except (TypeError, ValueError):
      pass
  raise ValueError(f"{what} {when!r} is not 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM:SS' (UTC+8)")


# ----------------------------------------------------------------------------------------- reading


def _uint(text: str, bound: int) -> int | None:
  if not (text.isascii() and text.isdigit()):
    return None
  value = int(text)
  return value if value < bound else None


def _parse_value(kind: str, text: str):
  """One raw field -> its value, or None when invalid for ``kind``."""
  if kind == "id":
    return _uint(text, MAX_ID)
  if kind == "time":
    return _uint(text, MAX_TIME)
  if kind == "id|NULL":
    return MISSING if text == "NULL" else _uint(text, MAX_ID)
  if kind == "id|empty":
    return MISSING if text == "" else _uint(text, MAX_ID)
  if kind == "flag":
    return {"0": 0, "1": 1}.get(text)
  if kind == "btag":
    return BTAGS.index(text) if text in BTAGS else None
  if kind == "text":
    return text or None
  try:  # price
    value = float(text)
  except ValueError:
    return None
  return value if math.isfinite(value) and value >= 0 else None


FIELD_KINDS = {
    "raw_sample": ("id", "time", "id", "text", "flag", "flag"),
    "ad_feature": ("id", "id", "id", "id", "id|NULL", "price"),
    "user_profile": ("id", *["id|empty"] * len(PROFILE_FIELDS)),
    "behavior_log": ("id", "time", "btag", "id", "id|NULL"),
}
_KIND_TEXT = {"id": "an integer in [0, 2^31)", "time": "an integer in [0, 2^32)",
              "id|NULL": "NULL or an integer in [0, 2^31)", "id|empty": "empty or an integer in [0, 2^31)",
              "flag": "0 or 1", "btag": f"one of {'/'.join(BTAGS)}", "text": "a non-empty string",
              "price": "a finite number >= 0"}


class _Reader(CorruptLines):
  """Streams the CSV tables in chunks of lines, applying the corrupt-line policy."""

  def __init__(self, on_corrupt: str):
    super().__init__(on_corrupt, HEADERS)

  def chunks(self, table: str, path: pathlib.Path):
    """Checks the header, then yields (line number of the first line, decoded lines) per chunk."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
      try:
        first = fh.readline()
      except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise SchemaError(f"{path}: unreadable ({e})") from None
      names = tuple(n.strip() for n in first.decode("utf-8", "replace").rstrip("\r\n").split(","))
      if names != HEADERS[table]:
        raise SchemaError(f"{path}, line 1: expected the {table} header {','.join(HEADERS[table])}, "
                          f"got {first.decode('utf-8', 'replace').rstrip()!r}")
      lineno = 2
      while True:
        raw, error = [], None
        try:
          raw.extend(itertools.islice(fh, READ_CHUNK_LINES))
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
          error = e
        if error is not None and raw and not raw[-1].endswith(b"\n"):
          raw.pop()  # the cut-off last line belongs to the truncation
        if raw:
          yield lineno, self._decode(table, path, lineno, raw)
          lineno += len(raw)
        if error is not None:
          self.bad(table, path, lineno, f"truncated or corrupt gzip stream ({error})")
          return
        if len(raw) < READ_CHUNK_LINES:
          return

  def _decode(self, table, path, lineno: int, raw: list[bytes]) -> list[str]:
    """UTF-8 lines; an undecodable line is reported and becomes blank (so skipped)."""
    try:
      return [line.decode("utf-8") for line in raw]
    except UnicodeDecodeError:
      pass
    out = []
    for i, line in enumerate(raw):
      try:
        out.append(line.decode("utf-8"))
      except UnicodeDecodeError as e:
        self.bad(table, path, lineno + i, f"not UTF-8 ({e.reason} at byte {e.start})")
        out.append("")
    return out

  def rows(self, table: str, path, lineno: int, lines: list[str]):
    """Yields the parsed values of each valid non-blank line (slow path, one line at a time)."""
    kinds = FIELD_KINDS[table]
    names = HEADERS[table]
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      fields = line.rstrip("\r\n").split(",")
      if len(fields) != len(kinds):
        self.bad(table, path, lineno + i, f"expected {len(kinds)} comma-separated fields, got {len(fields)}")
        continue
      values = [_parse_value(k, f) for k, f in zip(kinds, fields)]
      bad = next((j for j, v in enumerate(values) if v is None), None)
      if bad is not None:
        self.bad(table, path, lineno + i, f"{names[bad]} {fields[bad]!r} is not {_KIND_TEXT[kinds[bad]]}")
      elif table == "raw_sample" and values[4] + values[5] != 1:
        self.bad(table, path, lineno + i, f"nonclk {fields[4]} + clk {fields[5]} != 1")
      else:
        yield values


@dataclasses.dataclass
class _Impressions:
  """raw_sample in file order; pid is an index into ``pid_names``."""
  user: np.ndarray      # int64
  time: np.ndarray      # int64
  adgroup: np.ndarray   # int64
  pid: np.ndarray       # int64
  clk: np.ndarray       # float32
  pid_names: list[str]


def _read_impressions(path: pathlib.Path, reader: _Reader) -> _Impressions:
  cols = [array.array("q") for _ in range(4)]
  clk = array.array("f")
  pids: dict[str, int] = {}
  for lineno, lines in reader.chunks("raw_sample", path):
    for user, when, adgroup, pid, _, clicked in reader.rows("raw_sample", path, lineno, lines):
      for col, v in zip(cols, (user, when, adgroup, pids.setdefault(pid, len(pids)))):
        col.append(v)
      clk.append(clicked)
  if not len(clk):
    raise SchemaError(f"{path}: no valid impressions")
  user, when, adgroup, pid = (np.frombuffer(c, np.int64).copy() for c in cols)
  return _Impressions(user, when, adgroup, pid, np.frombuffer(clk, np.float32).copy(), list(pids))


@dataclasses.dataclass
class _Table:
  """A keyed table (ad_feature or user_profile): sorted ids and the value columns aligned with them."""
  ids: np.ndarray
  values: np.ndarray     # (len(ids), columns) float64 (integer-valued except the price)
  duplicates: int        # lines repeating an id (the first is kept)

  def find(self, keys: np.ndarray) -> np.ndarray:
    """Row of each key, -1 where absent."""
    if not len(self.ids):
      return np.full(keys.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(self.ids, keys), len(self.ids) - 1)
    return np.where(self.ids[pos] == keys, pos, -1)


def _read_table(table: str, path: pathlib.Path | None, reader: _Reader) -> _Table:
  width = len(FIELD_KINDS[table]) - 1
  if path is None:
    return _Table(np.zeros(0, np.int64), np.zeros((0, width)), 0)
  ids, values = array.array("q"), array.array("d")
  for lineno, lines in reader.chunks(table, path):
    for row in reader.rows(table, path, lineno, lines):
      ids.append(row[0])
      values.extend(row[1:])
  ids = np.frombuffer(ids, np.int64)
  values = np.frombuffer(values, np.float64).reshape(len(ids), width)
  unique, first = np.unique(ids, return_index=True)  # sorted ids, first line of each
  return _Table(unique, values[first], len(ids) - len(unique))


@dataclasses.dataclass
class _Behaviors:
  """behavior_log sorted by (user, time, line), plus one sentinel row (key = int64 max) at the end."""
  key: np.ndarray     # int64 user << 32 | time
  btag: np.ndarray    # int8 index into BTAGS
  cate: np.ndarray    # int32
  brand: np.ndarray   # int32, MISSING = NULL
  time_range: list[int] | None  # [first, last] time stamp; None without behaviours


def _fast_behaviors(lines: list[str]):
  """Vectorised parse of a clean chunk -> (key, btag, cate, brand) arrays, or None to fall back."""
  text = "".join(lines)
  if "-" in text or any(line.count(",") != 4 for line in lines):
    return None
  for word, code in _BTAG_CODES.items():
    text = text.replace(word, code)
  text = text.replace(",NULL", f",{MISSING}")
  if _NOT_NUMERIC.search(text):
    return None
  text = text.replace(",", " ")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      vals = np.fromstring(text, sep=" ")
  except (ValueError, DeprecationWarning):
    return None
  if vals.size != 5 * len(lines):
    return None
  vals = vals.reshape(-1, 5)  # integers: only digits and the stand-ins' '-' got here
  btag = -10 - vals[:, 2]
  ok = ((vals[:, 0] >= 0) & (vals[:, 0] < MAX_ID) & (vals[:, 1] >= 0) & (vals[:, 1] < MAX_TIME)
        & (btag >= 0) & (btag < len(BTAGS)) & (vals[:, 3] >= 0) & (vals[:, 3] < MAX_ID)
        & (vals[:, 4] >= MISSING) & (vals[:, 4] < MAX_ID))
  if not ok.all():
    return None
  key = (vals[:, 0].astype(np.int64) << 32) | vals[:, 1].astype(np.int64)
  return key, btag.astype(np.int8), vals[:, 3].astype(np.int32), vals[:, 4].astype(np.int32)


def _read_behaviors(path: pathlib.Path | None, reader: _Reader) -> _Behaviors:
  columns = ([], [], [], [])  # chunks of key, btag, cate, brand
  time_ranges = []
  if path is not None:
    for lineno, lines in reader.chunks("behavior_log", path):
      part = _fast_behaviors(lines)
      if part is None:
        rows = np.array(list(reader.rows("behavior_log", path, lineno, lines)), np.int64).reshape(-1, 5)
        part = ((rows[:, 0] << 32) | rows[:, 1], rows[:, 2].astype(np.int8), rows[:, 3].astype(np.int32),
                rows[:, 4].astype(np.int32))
      if len(part[0]):
        times = part[0] & 0xFFFFFFFF
        time_ranges.append((int(times.min()), int(times.max())))
      for column, values in zip(columns, part):
        column.append(values)
  # One column at a time, each with the sentinel appended, to bound the peak memory.
  key = np.concatenate([*columns[0], np.array([_SENTINEL_KEY])])
  columns[0].clear()
  order = np.argsort(key, kind="stable")
  key = key[order]
  sorted_columns = []
  for chunks, dtype in zip(columns[1:], (np.int8, np.int32, np.int32)):
    sorted_columns.append(np.concatenate([*chunks, np.zeros(1, dtype)])[order])
    chunks.clear()
  time_range = [min(r[0] for r in time_ranges), max(r[1] for r in time_ranges)] if time_ranges else None
  return _Behaviors(key, *sorted_columns, time_range)


# ---------------------------------------------------------------------------------------- building


def _lookup(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Raw values -> ids (vocab[i] is id i + 2; values not in vocab -> OOV id 1)."""
  if len(vocab) == 0:
    return np.full(values.shape, OOV_ID, np.int32)
  pos = np.minimum(np.searchsorted(vocab, values), len(vocab) - 1)
  return np.where(vocab[pos] == values, pos + FIRST_ID, OOV_ID).astype(np.int32)


def _vocab_list(values: np.ndarray, missing: str | None = None) -> list[str]:
  """Vocabulary file values: '<pad>', '<oov>', then the raw values (MISSING written as ``missing``)."""
  return ["<pad>", "<oov>", *(missing if v == MISSING and missing else str(v) for v in values.tolist())]


def _hour_weekday(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """UTC+8 hour (0-23) and weekday (Monday = 0) ids (value + 2)."""
  local = ts + UTC8_OFFSET
  hour = (local // 3600) % 24 + FIRST_ID
  weekday = (local // 86400 + 3) % 7 + FIRST_ID  # 1970-01-01 was a Thursday
  return hour.astype(np.int32), weekday.astype(np.int32)


def _windows(end: np.ndarray, first: np.ndarray, max_len: int):
  """(behaviour index [n, max_len], valid mask) of the last max_len behaviours in [first, end)."""
  k = np.arange(max_len)
  length = np.minimum(end - first, max_len)
  valid = k[None, :] >= (max_len - length)[:, None]
  return np.where(valid, end[:, None] - max_len + k[None, :], 0), valid


def _build_schema(max_len: int, history_fields: tuple[str, ...], sizes: dict[str, int]) -> Schema:
  def cat(name, group, table=None, description="", oov_id=OOV_ID):
    return Field(name, group, "categorical", vocab_size=sizes[table or name], table=table or name,
                 oov_id=oov_id, description=description)

  history = {
      "cate": "categories of the earlier behaviours, oldest -> newest, left-padded",
      "brand": "brands of the same behaviours (NULL is a value)",
      "btag": "behaviour types (pv, cart, fav, buy)",
      "hour": "UTC+8 hours of the behaviours + 2",
      "weekday": "UTC+8 weekdays (Mon=0) of the behaviours + 2",
  }
  fields = [
      cat("adgroup_id", "item", description="candidate ad (train-split vocabulary)"),
      cat("cate_id", "item", "cate", "the ad item's category"),
      cat("brand", "item", "brand", "the ad item's brand (NULL is a value)"),
      cat("campaign_id", "item"),
      cat("customer", "item", description="advertiser"),
      Field("price", "item", "numeric", dtype="float32", description="log1p(price); 0 without ad_feature"),
      cat("user_id", "user", description="raw user id as a feature (train-split vocabulary)"),
      *(cat(name, "user", description="OOV when the user has no profile") for name in PROFILE_FIELDS),
      cat("pid", "context", description="ad slot"),
      cat("hour", "context", description="UTC+8 hour of the impression + 2", oov_id=None),
      cat("weekday", "context", description="UTC+8 weekday (Mon=0) of the impression + 2", oov_id=None),
      *(Field(f"hist_{name}", "behavior", "sequence", shape=(max_len,), max_len=max_len,
              vocab_size=sizes[name], table=name, oov_id=OOV_ID if name in ("cate", "brand") else None,
              description=history[name])
        for name in history_fields),
      Field("label", "label", "numeric", dtype="float32", description="clk"),
      Field("user", "meta", "categorical", dtype="int32", description="raw user id (GAUC grouping)"),
      Field("timestamp", "meta", "numeric", dtype="int64", description="impression time, unix seconds"),
      Field("hist_timestamp", "meta", "numeric", dtype="int64", shape=(max_len,),
            description="behaviour times, unix seconds, 0 at padded positions"),
  ]
  return Schema(tuple(fields))


def _history_ids(name: str, beh: _Behaviors, idx: np.ndarray, hist_ts: np.ndarray, vocab: dict) -> np.ndarray:
  """Ids of history field ``name`` at behaviour indices ``idx`` (times ``hist_ts``); padding not applied."""
  if name in ("cate", "brand"):
    return _lookup(vocab[name], getattr(beh, name)[idx])
  if name == "btag":
    return beh.btag[idx].astype(np.int32) + FIRST_ID
  hour, weekday = _hour_weekday(hist_ts)
  return hour if name == "hour" else weekday


def _build(paths: dict, max_len: int, valid_ts: int, test_ts: int, history_fields: tuple[str, ...],
           on_corrupt: str, out_dir: pathlib.Path, args: dict) -> pathlib.Path:
  reader = _Reader(on_corrupt)
  imp = _read_impressions(paths["raw_sample"], reader)
  ads = _read_table("ad_feature", paths["ad_feature"], reader)
  profiles = _read_table("user_profile", paths["user_profile"], reader)
  beh = _read_behaviors(paths["behavior_log"], reader)
  n = len(imp.user)

  order = np.argsort(imp.time, kind="stable")
  split_of = np.searchsorted(np.array([valid_ts, test_ts]), imp.time, side="right").astype(np.int8)
  ad_row = ads.find(imp.adgroup)
  profile_row = profiles.find(imp.user)
  hist_end = np.searchsorted(beh.key, (imp.user << 32) | imp.time, side="left")
  hist_first = np.searchsorted(beh.key, imp.user << 32, side="left")
  train = split_of == 0
  train_rows = order[train[order]]

  # Train-split vocabularies.
  def train_values(column: int, table: _Table, rows: np.ndarray) -> np.ndarray:
    r = rows[train & (rows >= 0)]
    return table.values[r, column].astype(np.int64)

  seen = {"cate": [train_values(0, ads, ad_row)], "brand": [train_values(3, ads, ad_row)]}
  in_history = {"cate": beh.cate, "brand": beh.brand}
  chunk_rows = int(max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // max_len)))
  for a in range(0, len(train_rows), chunk_rows):
    p = train_rows[a:a + chunk_rows]
    idx, valid = _windows(hist_end[p], hist_first[p], max_len)
    for table in seen.keys() & set(history_fields):
      seen[table].append(np.unique(in_history[table][idx[valid]]))
  vocab = {
      "adgroup_id": np.unique(imp.adgroup[train]),
      "cate": np.unique(np.concatenate(seen["cate"])),
      "brand": np.unique(np.concatenate(seen["brand"])),
      "campaign_id": np.unique(train_values(1, ads, ad_row)),
      "customer": np.unique(train_values(2, ads, ad_row)),
      "user_id": np.unique(imp.user[train]),
      **{name: np.unique(train_values(j, profiles, profile_row)) for j, name in enumerate(PROFILE_FIELDS)},
  }
  pid_names = np.array(imp.pid_names)
  pid_vocab = np.unique(pid_names[np.unique(imp.pid[train])])
  pid_ids = _lookup(pid_vocab, pid_names)  # per pid code
  sizes = {name: len(v) + FIRST_ID for name, v in vocab.items()}
  sizes.update(pid=len(pid_vocab) + FIRST_ID, btag=len(BTAGS) + FIRST_ID, hour=24 + FIRST_ID,
               weekday=7 + FIRST_ID)
  schema = _build_schema(max_len, history_fields, sizes)

  # Ids of every ad-feature / profile row, OOV for impressions without one.
  ad_ids = {name: _lookup(vocab[table], ads.values[:, j].astype(np.int64))
            for j, (name, table) in enumerate((("cate_id", "cate"), ("campaign_id", "campaign_id"),
                                               ("customer", "customer"), ("brand", "brand")))}
  ad_price = np.log1p(ads.values[:, 4]).astype(np.float32)
  profile_ids = {name: _lookup(vocab[name], profiles.values[:, j].astype(np.int64))
                 for j, name in enumerate(PROFILE_FIELDS)}

  def by_row(ids: np.ndarray, rows: np.ndarray, missing):
    return np.where(rows >= 0, ids[np.maximum(rows, 0)] if len(ids) else missing, missing)

  writer = DatasetWriter(out_dir, schema)
  empty_history = {}
  mean_history = {}
  for s, split in enumerate(SPLITS):
    rows = order[split_of[order] == s]
    lengths = np.minimum(hist_end[rows] - hist_first[rows], max_len)
    empty_history[split] = int((lengths == 0).sum())
    mean_history[split] = float(lengths.mean()) if len(rows) else None
    for a in range(0, len(rows), chunk_rows):
      p = rows[a:a + chunk_rows]
      idx, valid = _windows(hist_end[p], hist_first[p], max_len)
      hist_ts = np.where(valid, beh.key[idx] & 0xFFFFFFFF, 0)
      hour, weekday = _hour_weekday(imp.time[p])
      writer.append(split, {
          "adgroup_id": _lookup(vocab["adgroup_id"], imp.adgroup[p]),
          **{name: by_row(ids, ad_row[p], OOV_ID).astype(np.int32) for name, ids in ad_ids.items()},
          "price": by_row(ad_price, ad_row[p], 0.0).astype(np.float32),
          "user_id": _lookup(vocab["user_id"], imp.user[p]),
          **{name: by_row(ids, profile_row[p], OOV_ID).astype(np.int32) for name, ids in profile_ids.items()},
          "pid": pid_ids[imp.pid[p]],
          "hour": hour,
          "weekday": weekday,
          **{f"hist_{name}": np.where(valid, _history_ids(name, beh, idx, hist_ts, vocab), 0).astype(np.int32)
             for name in history_fields},
          "label": imp.clk[p],
          "user": imp.user[p].astype(np.int32),
          "timestamp": imp.time[p],
          "hist_timestamp": hist_ts.astype(np.int64),
      })

  missing = [t for t in OPTIONAL_TABLES if paths[t] is None]
  raw_dir = paths["raw_sample"].parent
  prov_file = raw_dir / "PROVENANCE.tsv"
  stats = {
      "prep": {"script": "data_prep/taobao.py", "version": PREP_VERSION, "args": args},
      "provenance": (prov_file.read_text(encoding="utf-8").splitlines() if prov_file.is_file()
                     else str(raw_dir)),
      "protocol": "tianchi time split, a held-out valid day",
      "label_rule": "clk of each raw_sample line",
      "split_rule": (f"time_stamp < {args['valid_start']} (UTC+8) -> train, < {args['test_start']} -> valid, "
                     "else test"),
      "behavior_rule": (f"the user's behaviours with time_stamp strictly before the impression, ordered by "
                        f"(time_stamp, line), last {max_len}, oldest -> newest, left-padded with 0"),
      "vocab_rule": ("train impressions; cate/brand also the behaviours in train history windows; "
                     "btag/hour/weekday fixed"),
      "price_rule": "log1p(price), 0 without ad_feature",
      "time_zone": "UTC+8",
      "missing_tables": missing,
      "num_impressions": n,
      "num_users": int(len(np.unique(imp.user))),
      "num_adgroups": int(len(np.unique(imp.adgroup))),
      "num_behaviors": len(beh.key) - 1,
      "behavior_time_range": beh.time_range,
      "impressions_without_ad_feature": int((ad_row < 0).sum()),
      "impressions_without_profile": int((profile_row < 0).sum()),
      "users_without_profile": int(len(np.unique(imp.user[profile_row < 0]))),
      "empty_history": empty_history,
      "mean_history_length": mean_history,
      "duplicate_ids": {"ad_feature": ads.duplicates, "user_profile": profiles.duplicates},
      "corrupt_lines": reader.corrupt,
      "corrupt_examples": reader.examples,
  }
  vocabs = {
      "adgroup_id": _vocab_list(vocab["adgroup_id"]),
      "cate": _vocab_list(vocab["cate"]),
      "brand": _vocab_list(vocab["brand"], "NULL"),
      "campaign_id": _vocab_list(vocab["campaign_id"]),
      "customer": _vocab_list(vocab["customer"]),
      "user_id": _vocab_list(vocab["user_id"]),
      **{name: _vocab_list(vocab[name], "<empty>") for name in PROFILE_FIELDS},
      "pid": _vocab_list(pid_vocab),
      "btag": _vocab_list(np.array(BTAGS)),
      "hour": _vocab_list(np.arange(24)),
      "weekday": _vocab_list(np.array(WEEKDAYS)),
  }
  return writer.finalize(stats, vocabs)


# ------------------------------------------------------------------------------------------- API


def _history_fields(history_fields) -> tuple[str, ...]:
  fields = (history_fields.split(",") if isinstance(history_fields, str) else list(history_fields))
  unknown = [f for f in fields if f not in HISTORY_FIELDS]
  if not fields or unknown or len(set(fields)) != len(fields):
    raise ValueError(f"history_fields {history_fields!r}: expected distinct names from {HISTORY_FIELDS}")
  return tuple(f for f in HISTORY_FIELDS if f in fields)


@one_at_a_time
def prepare(out_root: str | os.PathLike = "data/prepared", *, raw_dir: str | os.PathLike = "",
            max_len: int = 50, valid_start: str = DEFAULT_VALID_START, test_start: str = DEFAULT_TEST_START,
            history_fields=HISTORY_FIELDS, on_corrupt: str = "skip", force: bool = False) -> pathlib.Path:
  """Prepares (or reuses) ``<out_root>/taobao-len<max_len>[...]`` (see the module docstring); returns it."""
  if isinstance(max_len, bool) or int(max_len) != max_len or max_len < 1:
    raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
  max_len = int(max_len)
  valid_ts = _utc8_seconds(valid_start, "valid_start")
  test_ts = _utc8_seconds(test_start, "test_start")
  if valid_ts > test_ts:
    raise ValueError(f"valid_start {valid_start!r} is after test_start {test_start!r}")
  fields = _history_fields(history_fields)
  if on_corrupt not in CORRUPT_POLICIES:
    raise ValueError(f"on_corrupt {on_corrupt!r} not in {CORRUPT_POLICIES}")
  raw = resolve(raw_dir) if raw_dir else default_raw_dir()
  paths = {table: _find(raw, table) for table in HEADERS}
  if paths["raw_sample"] is None:
    raise FileNotFoundError(f"{raw}: raw_sample.csv(.gz) missing (Tianchi dataset 56; the shared "
                            f"taobao-ad-samples folder holds only other libraries' preprocessed samples; "
                            f"pass raw_dir)")
  for table in OPTIONAL_TABLES:
    if paths[table] is None:
      consequence = {"ad_feature": "every ad's cate_id, brand, campaign_id and customer are OOV, price 0",
                     "user_profile": "every profile field is OOV",
                     "behavior_log": "every behaviour history is empty"}[table]
      warnings.warn(f"{raw}: no {table}.csv(.gz); {consequence}", stacklevel=2)
  name = f"taobao-len{max_len}"
  if (valid_start, test_start) != (DEFAULT_VALID_START, DEFAULT_TEST_START):
    name += f"-valid{re.sub(r'[^0-9]', '', valid_start)}-test{re.sub(r'[^0-9]', '', test_start)}"
  if fields != HISTORY_FIELDS:
    name += "-hist-" + "-".join(fields)
  out_dir = resolve(out_root) / name
  args = {"tables": {t: (str(p) if p else None) for t, p in paths.items()}, "max_len": max_len,
          "valid_start": valid_start, "test_start": test_start, "history_fields": list(fields),
          "on_corrupt": on_corrupt}
  if not force and reuse_cached(out_dir, args, PREP_VERSION, "taobao"):
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _build(paths, max_len, valid_ts, test_ts, fields, on_corrupt, out_dir, args)
  stats = json.loads((out_dir / "stats.json").read_text())
  oov = {s: {f: c for f, c in stats["oov"][s].items() if c} for s in SPLITS}
  print(f"taobao: wrote {out_dir}: rows {stats['rows']}; corrupt lines skipped {stats['corrupt_lines']}; "
        f"OOV ids per split {oov}")
  return out_dir


def main(argv=None) -> pathlib.Path:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--max_len", type=int, default=50)
  ap.add_argument("--valid_start", default=DEFAULT_VALID_START, help="YYYY-MM-DD[ HH:MM:SS], UTC+8")
  ap.add_argument("--test_start", default=DEFAULT_TEST_START, help="YYYY-MM-DD[ HH:MM:SS], UTC+8")
  ap.add_argument("--history_fields", default=",".join(HISTORY_FIELDS),
                  help=f"comma-separated subset of {','.join(HISTORY_FIELDS)}")
  ap.add_argument("--on_corrupt", default="skip", choices=CORRUPT_POLICIES)
  ap.add_argument("--raw_dir", default=None,
                  help="raw tables directory (default: $CTRJAX_SHARED/data/taobao-ad)")
  ap.add_argument("--out_root", default="data/prepared", help="relative paths are against the repo root")
  ap.add_argument("--force", action="store_true", help="rebuild even if a matching cached copy exists")
  a = ap.parse_args(argv)
  path = prepare(a.out_root, raw_dir=a.raw_dir, max_len=a.max_len, valid_start=a.valid_start,
                 test_start=a.test_start, history_fields=a.history_fields, on_corrupt=a.on_corrupt,
                 force=a.force)
  stats = json.loads((path / "stats.json").read_text())
  print(path)
  print(" ".join(f"{s}={stats['rows'][s]}" for s in SPLITS))
  return path


if __name__ == "__main__":
  main()
