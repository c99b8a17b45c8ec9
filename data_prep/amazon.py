"""Amazon reviews (McAuley's 5-core files, e.g. Electronics) -> ctrjax dataset directory, DIN protocol.

Usage:
  python -m data_prep.amazon [--category Electronics] [--max_len 30] [--seed 1234] [--on_corrupt skip]
                             [--raw_dir D] [--out_root R] [--force]
or ``prepare(out_root, category=..., raw_dir=..., max_len=..., seed=..., on_corrupt=...)`` from Python.

Raw inputs (``raw_dir``, default ``$CTRJAX_SHARED/data/amazon``; relative paths are resolved against
the repository root):
  reviews_<category>_5.json or .json.gz (required): one review a line; reviewerID, asin and
    unixReviewTime (unix seconds, day-granular) are read, other keys ignored.
  meta_<category>.json or .json.gz (optional): one item a line; item category = categories[-1][-1],
    the last element of the last category path (DIN official, utils/2_remap_id.py). Without this
    file every item's category is the explicit "<unknown>" and a warning says so; an item missing
    from it or without a category path is "<unknown>" too (stats.json["items_without_category"]).
  Each line may be strict JSON or a Python literal (the published meta files are the latter), detected
  per line: json.loads first, then ast.literal_eval; stats.json["line_formats"] counts both.
  Meta lines of items absent from the reviews are skipped (DIN step 1), unparsed when the line opens
  with {'asin': '<id>' (either quote).

Corrupt lines: a line that is not UTF-8, parses as neither format, is not an object, or lacks a
required field (reviews: non-empty string reviewerID and asin, non-negative integer unixReviewTime;
meta: string asin, categories a list of lists of strings when present), and a truncated gzip stream.
on_corrupt="skip" (default) skips them, counts them per file in stats.json["corrupt_lines"] and keeps
the first 10 as "file, line N: reason" in stats.json["corrupt_examples"]; on_corrupt="error" raises
``SchemaError`` naming the file and 1-based line. Blank lines are skipped and not counted.

Samples (DIN paper §6.1): each user's reviews are sorted by unixReviewTime with a stable sort,
so same-day reviews keep their file order (the published files are grouped by asin). With the user's
n reviews in that order, review k+1 (k = 1 .. n-1) is a positive candidate (label 1) whose behaviours
are reviews 1..k, paired with one negative row (label 0) with the same behaviours, timestamp and user.
The negative item is uniform over all items of the reviews file that the user never reviewed: with
r ~ U{0 .. num_items - |user's items| - 1} from np.random.default_rng(seed), one draw per pair in
output order, it is the r-th such item in asin order. DIN draws the same distribution by rejection
with Python's random.seed(1234); the draws themselves differ.

Split (DIN paper §6.1, plus a real validation split): candidate n (history 1..n-1, DIN's test pair)
-> test; candidate n-1 (DIN's last training pair) -> valid; candidates 2..n-2 -> train. So test is
DIN's test set and train + valid is DIN's training set. Users with n < 4 (absent from 5-core data) put
all their pairs in train; a user with one review gives none. Within a split, rows are ordered by
(user, candidate position), the positive before its negative.

Behaviours: the most recent ``max_len`` reviews before the candidate in the sorted order, oldest ->
newest, left-padded with 0 (hist_timestamp 0 there). As in DIN (hist = pos_list[:k]) and unlike
movielens.py, earlier same-day reviews are behaviours: every behaviour time is <= the candidate's
and the history is a prefix of the user's sequence.

Ids (0 = padding, 1 = OOV, real values from 2): item_id (shared by hist_item_id) from the TRAIN rows
only, in asin order: their positive and negative candidates and the reviews in their behaviour
windows; an item first seen in valid/test is OOV 1, counted per split in stats.json["oov"]. category
(item_category, hist_category), an item attribute like movielens.py's genres, comes from every
reviewed item: 2 = "<unknown>", then the categories in sorted order. user (meta, GAUC grouping) is
the 0-based rank of reviewerID among all sorted reviewerIDs; there is no user or context group (DIN's
user id is not a feature; review times are day-granular).

Memory: reviews are streamed; per review only (user index, item index, time) is kept, in compact
arrays, with one dict entry per distinct reviewerID and asin. Rows are written in chunks.

Caching: ``<out_root>/amazon-<category>-len<max_len>[-seed<seed>]`` is reused when complete and its
stats.json["prep"] has the same args (raw files found included) and prep version; otherwise (or with
``force``) it is rebuilt.
"""
from __future__ import annotations

import argparse
import array
import ast
import dataclasses
import gzip
import json
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
DEFAULT_SEED = 1234  # DIN's build_dataset.py random.seed
UNKNOWN_CATEGORY = "<unknown>"
UNKNOWN_CATEGORY_ID = FIRST_ID
CHUNK_ELEMENTS = 1 << 22  # bound on rows * max_len per written chunk
MAX_CHUNK_PAIRS = 50_000
_META_ASIN = re.compile(r"""\s*\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]*)\2""")


def default_raw_dir() -> pathlib.Path:
  return shared_root() / "data" / "amazon"


def _find(raw_dir: pathlib.Path, stem: str) -> pathlib.Path | None:
  """``<stem>.json`` or else ``<stem>.json.gz`` in raw_dir; None when neither exists."""
  for name in (f"{stem}.json", f"{stem}.json.gz"):
    if (raw_dir / name).is_file():
      return raw_dir / name
  return None


# ----------------------------------------------------------------------------------------- reading


class _LineReader(CorruptLines):
  """Streams the lines of a JSON / Python-literal lines file, applying the corrupt-line policy."""

  def __init__(self, on_corrupt: str):
    super().__init__(on_corrupt, ("reviews", "meta"))
    self.formats = {"reviews": {"json": 0, "python": 0}, "meta": {"json": 0, "python": 0}}

  def lines(self, kind: str, path: pathlib.Path):
    """Yields (1-based line number, text) of the non-blank UTF-8 lines; plain or gzip."""
    lineno = 0
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
      try:
        for lineno, raw in enumerate(fh, 1):
          try:
            text = raw.decode("utf-8")
          except UnicodeDecodeError as e:
            self.bad(kind, path, lineno, f"not UTF-8 ({e.reason} at byte {e.start})")
            continue
          if text.strip():
            yield lineno, text
      except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        self.bad(kind, path, lineno + 1, f"truncated or corrupt gzip stream ({e})")

  def parse(self, kind: str, path, lineno: int, text: str) -> dict | None:
    """The line's object (strict JSON or a Python literal), or None when corrupt (and skipped)."""
    try:
      obj, fmt = json.loads(text), "json"
    except (ValueError, RecursionError):
      try:
        obj, fmt = ast.literal_eval(text.strip()), "python"
      except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        self.bad(kind, path, lineno, "neither JSON nor a Python literal")
        return None
    if not isinstance(obj, dict):
      self.bad(kind, path, lineno, f"a {type(obj).__name__}, not an object")
      return None
    self.formats[kind][fmt] += 1
    return obj


def _review_fields(obj: dict) -> tuple[str, str, int] | str:
  """(reviewerID, asin, unixReviewTime), or the reason the record is corrupt."""
  user, asin, when = obj.get("reviewerID"), obj.get("asin"), obj.get("unixReviewTime")
  if not isinstance(user, str) or not user:
    return f"reviewerID {user!r} is not a non-empty string"
  if not isinstance(asin, str) or not asin:
    return f"asin {asin!r} is not a non-empty string"
  if isinstance(when, bool) or not isinstance(when, int) or not 0 <= when < 2**63:
    return f"unixReviewTime {when!r} is not a non-negative integer"
  return user, asin, when


@dataclasses.dataclass
class _Reviews:
  """Reviews in file order; users and items are indices into the sorted raw names."""
  user_names: np.ndarray   # sorted reviewerIDs
  item_names: np.ndarray   # sorted asins
  user: np.ndarray         # int64
  item: np.ndarray         # int64
  time: np.ndarray         # int64


def _ranks(first_seen: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
  """(sorted names, rank of each name by first-seen index)."""
  names = np.array(list(first_seen))
  order = np.argsort(names, kind="stable")
  rank = np.empty(len(names), np.int64)
  rank[order] = np.arange(len(names))
  return names[order], rank


def _read_reviews(path: pathlib.Path, reader: _LineReader) -> _Reviews:
  users: dict[str, int] = {}
  items: dict[str, int] = {}
  user, item, when = array.array("q"), array.array("q"), array.array("q")
  for lineno, text in reader.lines("reviews", path):
    obj = reader.parse("reviews", path, lineno, text)
    if obj is None:
      continue
    fields = _review_fields(obj)
    if isinstance(fields, str):
      reader.bad("reviews", path, lineno, fields)
      continue
    user.append(users.setdefault(fields[0], len(users)))
    item.append(items.setdefault(fields[1], len(items)))
    when.append(fields[2])
  if not users:
    raise SchemaError(f"{path}: no valid reviews")
  user_names, user_rank = _ranks(users)
  item_names, item_rank = _ranks(items)
  return _Reviews(user_names, item_names, user_rank[np.frombuffer(user, np.int64)],
                  item_rank[np.frombuffer(item, np.int64)], np.frombuffer(when, np.int64).copy())


def _meta_category(obj: dict) -> tuple[str, str | None] | str:
  """(asin, categories[-1][-1] or None when absent/empty), or the reason the record is corrupt."""
  asin, cats = obj.get("asin"), obj.get("categories")
  if not isinstance(asin, str) or not asin:
    return f"asin {asin!r} is not a non-empty string"
  if cats is None or cats == []:
    return asin, None
  if not (isinstance(cats, list) and all(isinstance(p, list) and all(isinstance(c, str) for c in p)
                                         for p in cats)):
    return f"categories {cats!r:.80} is not a list of lists of strings"
  return asin, (cats[-1][-1] if cats[-1] and cats[-1][-1] else None)


@dataclasses.dataclass
class _Categories:
  vocab: list[str]             # category table values from id 2 ("<unknown>" first)
  of_item: np.ndarray          # (num_items,) int32 category id of each item index
  duplicate_meta_asins: int    # meta lines repeating an asin (the first is kept)
  unused_meta_lines: int       # meta lines of items that have no review


def _read_categories(path: pathlib.Path | None, item_names: np.ndarray, reader: _LineReader) -> _Categories:
  """Category of each reviewed item from the meta file (all "<unknown>" without one)."""
  index = {name: i for i, name in enumerate(item_names.tolist())}
  name_of = [None] * len(item_names)
  seen = np.zeros(len(item_names), bool)
  duplicates = unused = 0
  if path is not None:
    for lineno, text in reader.lines("meta", path):
      m = _META_ASIN.match(text)
      if m and m.group(3) not in index:
        unused += 1
        continue
      obj = reader.parse("meta", path, lineno, text)
      if obj is None:
        continue
      fields = _meta_category(obj)
      if isinstance(fields, str):
        reader.bad("meta", path, lineno, fields)
        continue
      i = index.get(fields[0])
      if i is None:
        unused += 1
      elif seen[i]:
        duplicates += 1
      else:
        seen[i] = True
        name_of[i] = fields[1]
  vocab = [UNKNOWN_CATEGORY, *sorted({n for n in name_of if n not in (None, UNKNOWN_CATEGORY)})]
  cid = {n: i + FIRST_ID for i, n in enumerate(vocab)}
  of_item = np.array([cid[n or UNKNOWN_CATEGORY] for n in name_of], np.int32)
  return _Categories(vocab, of_item, duplicates, unused)


# ---------------------------------------------------------------------------------------- building


def _negatives(user, item, num_items: int, pair_user: np.ndarray, seed: int, user_names, path) -> np.ndarray:
  """One item per pair, uniform over the items its user never reviewed (the r-th unreviewed item)."""
  width = num_items + 1
  pairs = np.unique(user * num_items + item)  # distinct (user, item), sorted by user then item
  p_user, p_item = pairs // num_items, pairs % num_items
  first = np.searchsorted(p_user, np.arange(len(user_names)))
  reviewed = np.diff(np.append(first, len(pairs)))
  full = np.flatnonzero(reviewed == num_items)
  if len(full):
    raise SchemaError(f"{path}: user {str(user_names[full[0]])!r} reviewed all {num_items} items, so no "
                      f"negative item can be drawn ({len(full)} such users)")
  # p_item minus the user's reviewed items below it = its unreviewed items below it: non-decreasing
  # within a user; offsetting users by `width` lets one sorted array answer every pair.
  key = p_user * width + p_item - (np.arange(len(pairs)) - first[p_user])
  r = np.random.default_rng(seed).integers(0, num_items - reviewed[pair_user])
  below = np.searchsorted(key, pair_user * width + r, side="right") - first[pair_user]
  return r + below


def _build_schema(max_len: int, num_item_ids: int, num_category_ids: int) -> Schema:
  return Schema((
      Field("item_id", "item", "categorical", vocab_size=num_item_ids, table="item_id", oov_id=OOV_ID,
            description="candidate item, asin (train-split vocabulary)"),
      Field("item_category", "item", "categorical", vocab_size=num_category_ids, table="category",
            description="candidate's categories[-1][-1] (2 = unknown)"),
      Field("hist_item_id", "behavior", "sequence", shape=(max_len,), max_len=max_len,
            vocab_size=num_item_ids, table="item_id", oov_id=OOV_ID,
            description="the user's earlier reviews, oldest -> newest, left-padded"),
      Field("hist_category", "behavior", "sequence", shape=(max_len,), max_len=max_len,
            vocab_size=num_category_ids, table="category", description="categories of hist_item_id"),
      Field("label", "label", "numeric", dtype="float32"),
      Field("user", "meta", "categorical", dtype="int32",
            description="rank of reviewerID among the sorted reviewerIDs (GAUC grouping)"),
      Field("timestamp", "meta", "numeric", dtype="int64",
            description="unixReviewTime of the positive candidate"),
      Field("hist_timestamp", "meta", "numeric", dtype="int64", shape=(max_len,),
            description="times of hist_item_id, 0 at padded positions"),
  ))


def _build(reviews_path: pathlib.Path, meta_path: pathlib.Path | None, max_len: int, seed: int,
           on_corrupt: str, out_dir: pathlib.Path, args: dict) -> pathlib.Path:
  reader = _LineReader(on_corrupt)
  reviews = _read_reviews(reviews_path, reader)
  cats = _read_categories(meta_path, reviews.item_names, reader)
  num_items = len(reviews.item_names)

  order = np.lexsort((reviews.time, reviews.user))  # stable: same-day reviews keep file order
  user, item, when = reviews.user[order], reviews.item[order], reviews.time[order]
  del order
  n = len(user)
  ar = np.arange(n)
  new_user = np.ones(n, bool)
  new_user[1:] = user[1:] != user[:-1]
  user_start = np.maximum.accumulate(np.where(new_user, ar, 0))
  counts = np.diff(np.append(np.flatnonzero(new_user), n))
  reviews_of_user = np.repeat(counts, counts)

  pos = np.flatnonzero(ar > user_start)  # candidates: every review but each user's first
  num_pairs = reviews_of_user[pos] - 1
  rank = pos - user_start[pos] - 1       # 0-based among the user's pairs
  split_of = np.zeros(len(pos), np.int8)
  enough = num_pairs >= 3
  split_of[enough & (rank == num_pairs - 2)] = 1
  split_of[enough & (rank == num_pairs - 1)] = 2
  del ar, num_pairs, rank, enough
  neg = _negatives(user, item, num_items, user[pos], seed, reviews.user_names, reviews_path)

  # Item vocabulary: train candidates (both labels) and the reviews in train behaviour windows.
  train = split_of == 0
  end = pos[train]
  cover = np.zeros(n + 1, np.int64)
  np.add.at(cover, np.maximum(user_start[end], end - max_len), 1)
  np.add.at(cover, end, -1)
  item_vocab = np.unique(np.concatenate([item[end], neg[train], item[np.cumsum(cover[:n]) > 0]]))
  del cover, end, train
  item_ids = np.full(num_items, OOV_ID, np.int32)
  item_ids[item_vocab] = np.arange(FIRST_ID, FIRST_ID + len(item_vocab))
  schema = _build_schema(max_len, len(item_vocab) + FIRST_ID, len(cats.vocab) + FIRST_ID)

  chunk_pairs = int(max(1, min(MAX_CHUNK_PAIRS, CHUNK_ELEMENTS // (2 * max_len))))
  k = np.arange(max_len)
  writer = DatasetWriter(out_dir, schema)
  for s, split in enumerate(SPLITS):
    sel = np.flatnonzero(split_of == s)
    for a in range(0, len(sel), chunk_pairs):
      j = sel[a:a + chunk_pairs]
      p = np.repeat(pos[j], 2)  # the positive's review, for both rows of its pair
      cand = np.stack([item[pos[j]], neg[j]], axis=1).ravel()
      length = np.minimum(p - user_start[p], max_len)
      valid = k[None, :] >= (max_len - length)[:, None]
      idx = np.where(valid, p[:, None] - max_len + k[None, :], 0)
      writer.append(split, {
          "item_id": item_ids[cand],
          "item_category": cats.of_item[cand],
          "hist_item_id": np.where(valid, item_ids[item[idx]], 0).astype(np.int32),
          "hist_category": np.where(valid, cats.of_item[item[idx]], 0).astype(np.int32),
          "label": np.tile(np.array([1, 0], np.float32), len(j)),
          "user": user[p].astype(np.int32),
          "timestamp": when[p],
          "hist_timestamp": np.where(valid, when[idx], 0).astype(np.int64),
      })

  prov_file = reviews_path.parent / "PROVENANCE.tsv"
  stats = {
      "prep": {"script": "data_prep/amazon.py", "version": PREP_VERSION, "args": args},
      "provenance": (prov_file.read_text(encoding="utf-8").splitlines() if prov_file.is_file()
                     else str(reviews_path.parent)),
      "protocol": "din",
      "label_rule": "each review after a user's first: positive (1) + one uniform unreviewed item (0)",
      "split_rule": ("per user (n reviews by time, ties in file order): candidate n -> test, n-1 -> valid, "
                     "2..n-2 -> train; users with n < 4: all train"),
      "behavior_rule": f"the reviews before the candidate in that order, last {max_len}, oldest -> newest, "
                       "left-padded with 0",
      "negative_rule": f"uniform over the items the user never reviewed, numpy default_rng({seed})",
      "vocab_rule": ("item_id: train candidates (both labels) + train behaviours; "
                     "category: all reviewed items"),
      "category_source": str(meta_path) if meta_path else f"none: every category is {UNKNOWN_CATEGORY!r}",
      "num_reviews": int(n),
      "num_users": int(len(reviews.user_names)),
      "num_items": int(num_items),
      "num_categories": len(cats.vocab) - 1,
      "num_pairs": int(len(pos)),
      "users_with_valid_and_test": int((counts >= 4).sum()),
      "users_train_only": int(((counts >= 2) & (counts < 4)).sum()),
      "users_without_pairs": int((counts == 1).sum()),
      "items_without_category": int((cats.of_item == UNKNOWN_CATEGORY_ID).sum()),
      "duplicate_meta_asins": cats.duplicate_meta_asins,
      "unused_meta_lines": cats.unused_meta_lines,
      "line_formats": reader.formats,
      "corrupt_lines": reader.corrupt,
      "corrupt_examples": reader.examples,
  }
  vocabs = {
      "item_id": ["<pad>", "<oov>", *reviews.item_names[item_vocab].tolist()],
      "category": ["<pad>", "<oov>", *cats.vocab],
  }
  return writer.finalize(stats, vocabs)


# ------------------------------------------------------------------------------------------- API


@one_at_a_time
def prepare(out_root: str | os.PathLike = "data/prepared", *, category: str = "Electronics",
            raw_dir: str | os.PathLike = "", max_len: int = 30, seed: int = DEFAULT_SEED,
            on_corrupt: str = "skip", force: bool = False) -> pathlib.Path:
  """Prepares (or reuses) ``<out_root>/amazon-<category>-len<max_len>[-seed<seed>]``; returns its path."""
  if not re.fullmatch(r"[A-Za-z0-9_]+", category):
    raise ValueError(f"category {category!r} must be a file-name part like 'Electronics' or "
                     f"'Clothing_Shoes_and_Jewelry'")
  if isinstance(max_len, bool) or int(max_len) != max_len or max_len < 1:
    raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
  max_len = int(max_len)
  if isinstance(seed, bool) or int(seed) != seed or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  seed = int(seed)
  if on_corrupt not in CORRUPT_POLICIES:
    raise ValueError(f"on_corrupt {on_corrupt!r} not in {CORRUPT_POLICIES}")
  raw = resolve(raw_dir) if raw_dir else default_raw_dir()
  reviews_path = _find(raw, f"reviews_{category}_5")
  if reviews_path is None:
    raise FileNotFoundError(f"{raw}: reviews_{category}_5.json(.gz) missing (McAuley's 5-core reviews; "
                            f"pass raw_dir)")
  meta_path = _find(raw, f"meta_{category}")
  if meta_path is None:
    warnings.warn(f"{raw}: no meta_{category}.json(.gz); every item's category is {UNKNOWN_CATEGORY!r}",
                  stacklevel=2)
  name = f"amazon-{category}-len{max_len}" + (f"-seed{seed}" if seed != DEFAULT_SEED else "")
  out_dir = resolve(out_root) / name
  args = {"category": category, "reviews": str(reviews_path), "meta": str(meta_path) if meta_path else None,
          "max_len": max_len, "seed": seed, "on_corrupt": on_corrupt}
  if not force and reuse_cached(out_dir, args, PREP_VERSION, "amazon"):
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _build(reviews_path, meta_path, max_len, seed, on_corrupt, out_dir, args)
  stats = json.loads((out_dir / "stats.json").read_text())
  oov = {s: {f: c for f, c in stats["oov"][s].items() if c} for s in SPLITS}
  print(f"amazon: wrote {out_dir}: rows {stats['rows']}; corrupt lines skipped {stats['corrupt_lines']}; "
        f"OOV ids per split {oov}")
  return out_dir


def main(argv=None) -> pathlib.Path:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--category", default="Electronics", help="the <category> of reviews_<category>_5.json")
  ap.add_argument("--max_len", type=int, default=30)
  ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="negative sampling seed")
  ap.add_argument("--on_corrupt", default="skip", choices=CORRUPT_POLICIES)
  ap.add_argument("--raw_dir", default=None, help="raw files directory (default: $CTRJAX_SHARED/data/amazon)")
  ap.add_argument("--out_root", default="data/prepared", help="relative paths are against the repo root")
  ap.add_argument("--force", action="store_true", help="rebuild even if a matching cached copy exists")
  a = ap.parse_args(argv)
  path = prepare(a.out_root, category=a.category, raw_dir=a.raw_dir, max_len=a.max_len, seed=a.seed,
                 on_corrupt=a.on_corrupt, force=a.force)
  stats = json.loads((path / "stats.json").read_text())
  print(path)
  print(" ".join(f"{s}={stats['rows'][s]}" for s in SPLITS))
  return path


if __name__ == "__main__":
  main()
