"""MovieLens (ml-latest-small, ml-100k, ml-1m) -> ctrjax dataset directory.

Usage:
  python -m data_prep.movielens --dataset ml-100k [--protocol autoint] [--max_len 30] [--holdout 1]
                                [--sequence_fields feseq] [--raw_dir D] [--out_root R] [--force]
or ``prepare(dataset, out_root, raw_dir=..., protocol=..., max_len=..., holdout=..., sequence_fields=...)``
from Python.

Raw inputs (``raw_dir``):
  ml-latest-small: ratings.csv (userId,movieId,rating,timestamp), movies.csv (movieId,title,genres).
    Default: the copy bundled in the repository, ``data/movielens-latest-small`` (its licence,
    README.txt, lies beside it).
  ml-100k: u.data (user item rating ts, tab-separated), u.item, u.user, u.genre (latin-1).
    Default: ``$CTRJAX_SHARED/data/movielens-100k`` (``CTRJAX_SHARED`` defaults to ``<repo>/../shared``).
  ml-1m: ratings.dat (UserID::MovieID::Rating::Timestamp), users.dat, movies.dat (latin-1).
    Default: ``$CTRJAX_SHARED/data/movielens-1m`` (the shared ``movielens-1m-partial`` copy has no
    ratings.dat; pass ``--raw_dir`` to a full copy).
Relative paths (``out_root``, ``raw_dir``) are resolved against the repository root.

Samples and labels: every rating is one candidate sample of its user.
  protocol "din":     label = 1 if rating >= 4 else 0; every rating is a sample.
  protocol "autoint": label = 1 if rating > 3, 0 if rating < 3; rating-3 ratings are dropped as samples
    (counted in stats.json["dropped_rating_3"]) but stay in the users' histories as behaviours.
  protocol "autoint7": AutoInt's own MovieLens form (AutoInt paper §5.1.1), a different dataset: the
    autoint labels, NO ids and no behaviours, 7 fields: gender, age, occupation, zip (the whole zip
    code, each distinct value an id), genres (multi-valued, mean-pooled by the models), release-year
    bucket (<=1929, 1930s, 1940s, 1950s, 1960s, then one bucket per year) and timestamp (numeric,
    MinMax-scaled over all samples, as the official preprocessing does); a random 80/10/10 split of
    the samples (numpy default_rng(2019).permutation over the (user, timestamp, movie)-sorted samples:
    the official seed, not its exact permutation). Needs user demographics: ml-100k or ml-1m.
    ``max_len``, ``holdout`` and ``sequence_fields`` do not apply; the directory is <dataset>-autoint7.

Ordering and split: each user's ratings are sorted by (timestamp, movie id) (stable). Per user, over
its samples in that order: the last ``holdout`` samples -> test, the ``holdout`` before them -> valid,
the rest -> train (holdout=1: last sample -> test, second-to-last -> valid). Users with fewer than
2*holdout+1 samples put all of them in train. With holdout=1 every user has a single valid/test
impression, so GAUC (which skips single-class users) is undefined; holdout >= 2 makes it
meaningful. Within a split rows are ordered by (user, timestamp, movie id).

Behaviours of a sample: the same user's ratings (any rating, samples or not) with a STRICTLY earlier
timestamp (ratings at the same second are excluded, whatever their movie-id order), the most recent
``max_len`` of them, stored oldest -> newest and left-padded with id 0 (``hist_timestamp`` 0 there).
Computed vectorised over the sorted ratings (start of each equal-(user, timestamp) run), O(n).

Behaviour fields (``sequence_fields``):
  "basic" (default): hist_item_id and hist_genres.
  "feseq": also aligned, timed fields for FESeq-style models (FESeq, SASRec, TiSASRec, DMR):
    hist_hour and hist_weekday (UTC hour / weekday of each behaviour's rating, on the tables "hour" and
    "weekday" of the context fields, so the candidate's own hour and weekday are its aligned values),
    and hist_time_gap, a numeric behaviour field (float32): candidate timestamp − behaviour timestamp
    in MINUTES (> 0, since behaviours are strictly earlier; fractional: seconds / 60), 0 at padding.
    Minutes because MovieLens users rate in bursts: from a rating back to the user's 10th previous
    rating the median gap is 3 minutes and the 90th percentile 50 minutes on ml-100k, so hour or day
    buckets would put almost every behaviour in bucket 0, while FESeq's 4,001 linear buckets of one
    minute resolve sessions and reach 2.8 days. The gap is a model input (group "behavior", on the
    device); meta.hist_timestamp is unchanged.

Vocabularies (ids 0 = padding, 1 = OOV, real values from 2 in sorted raw-value order, numeric values
sorted numerically): item_id (shared by hist_item_id), user_id and the user demographics (gender,
age, occupation, zip_prefix) come from the TRAIN split rows only (items: train candidates plus the
movies in train rows' behaviour lists, which under autoint include rating-3 movies): a value first
seen in valid/test is OOV id 1; the writer counts OOV ids per split and field in stats.json["oov"].
Genres and years come from the whole movies file; a movie without a parseable year is year OOV (1).
Genre lists keep the movies file's order, padded with 0 to G = the largest genre count of any movie
in the file. ml-latest-small's "(no genres listed)" is kept as a genre value (like ml-100k's
"unknown" genre), so no item has an all-padding genre list. ml-100k ages are bucketed into ML-1M's
age codes (1, 18, 25, 35, 45, 50, 56: the largest code <= age, 1 below 18); ml-1m ages and
occupations are the file's codes. zip_prefix is the first 3 characters of the zip code.

Context: hour (0-23), weekday (0 = Monday .. 6) and month (0 = January .. 11) of the rating's UTC
timestamp; id = value + 2.

Error policy (all raise ``SchemaError``, a ``ValueError``, naming the file and line or id):
  * a malformed ratings line (wrong number of fields, a non-numeric or non-integral field, a user
    id >= 2^31, a movie id or timestamp >= 2^53 (beyond what the float64 parse holds exactly; never
    wrapped), a rating that is no finite float32) -> error with the file and 1-based line number;
    blank lines are skipped;
  * bytes that are not the file's encoding (UTF-8 or latin-1, see above) -> error with the file and line;
  * a user or movie in the ratings that is missing from users.dat/u.user or movies.dat/u.item/
    movies.csv -> error naming that file and the (first) missing id, with the count.

Memory: the ratings are read in chunks of 1M lines into compact numpy arrays (about 20 bytes a
rating); rows are built and written in chunks of at most 100k rows (fewer when max_len * G is large).

Caching: the output directory ``<out_root>/<dataset>-<protocol>-len<max_len>[-holdout<h>][-feseq]`` is reused when it
is complete and its stats.json["prep"] has the same args and prep version; otherwise (or with
``force``) it is rebuilt.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import itertools
import json
import os
import pathlib
import re
import warnings

import numpy as np

from ctrjax.data.schema import FIRST_ID, OOV_ID, SPLITS, Field, Schema, SchemaError
from ctrjax.data.writer import DatasetWriter
from data_prep.common import REPO, one_at_a_time, resolve, reuse_cached, shared_root

DATASETS = ("ml-latest-small", "ml-100k", "ml-1m")
PROTOCOLS = ("din", "autoint", "autoint7")
SEQUENCE_FIELDS = ("basic", "feseq")
MINUTE = 60
LABEL_RULES = {
    "din": "label = 1 if rating >= 4 else 0 (all ratings are samples)",
    "autoint": "label = 1 if rating > 3, 0 if rating < 3; rating-3 samples dropped (kept as behaviours)",
    "autoint7": "label = 1 if rating > 3, 0 if rating < 3; rating-3 samples dropped",
}
AUTOINT_SPLIT_SEED = 2019
AUTOINT_SPLIT = (0.8, 0.1)  # train, valid fractions; test the rest
PREP_VERSION = 1
READ_CHUNK_LINES = 1 << 20
MAX_CHUNK_ROWS = 100_000
CHUNK_ELEMENTS = 1 << 22  # bound on rows * max_len * G per written chunk
AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)")


@dataclasses.dataclass(frozen=True)
class _Spec:
  ratings: str
  sep: str
  header: str | None
  encoding: str
  movies: str
  users: str | None
  default_dir: str  # "repo:<path>" or "shared:<path>"


SPECS = {
    "ml-latest-small": _Spec("ratings.csv", ",", "userId,movieId,rating,timestamp", "utf-8",
                             "movies.csv", None, "repo:data/movielens-latest-small"),
    "ml-100k": _Spec("u.data", "\t", None, "latin-1", "u.item", "u.user", "shared:data/movielens-100k"),
    "ml-1m": _Spec("ratings.dat", "::", None, "latin-1", "movies.dat", "users.dat",
                   "shared:data/movielens-1m"),
}


def default_raw_dir(dataset: str) -> pathlib.Path:
  where, rel = SPECS[dataset].default_dir.split(":", 1)
  return (REPO if where == "repo" else shared_root()) / rel


# ----------------------------------------------------------------------------------------- reading


def _read_ratings(path: pathlib.Path, spec: _Spec):
  """-> (user int64, movie int64, rating float32, timestamp int64) arrays in file order."""
  parts = []
  with _open_text(path, spec.encoding) as fh:
    lineno = 0  # number of lines consumed so far
    if spec.header is not None:
      first = fh.readline()
      lineno = 1
      if first.strip() != spec.header:
        raise SchemaError(f"{path}, line 1: expected header {spec.header!r}, got {first.strip()!r}")
    while True:
      lines = list(itertools.islice(fh, READ_CHUNK_LINES))
      if not lines:
        break
      parts.append(_parse_ratings_chunk(lines, spec.sep, path, lineno))
      lineno += len(lines)
  if not parts:
    raise SchemaError(f"{path}: no ratings")
  cols = [np.concatenate([p[i] for p in parts]) for i in range(4)]
  if not len(cols[0]):
    raise SchemaError(f"{path}: no ratings")
  return tuple(cols)


def _parse_ratings_chunk(lines: list[str], sep: str, path, lineno0: int):
  """Parses lines ``lineno0 + 1 ..`` (1-based) of ``path``: 4 numeric fields each."""
  nsep = np.fromiter((line.count(sep) for line in lines), np.int64, len(lines))
  keep = np.ones(len(lines), bool)
  for i in np.flatnonzero(nsep != 3):
    if lines[i].strip():
      raise SchemaError(f"{path}, line {lineno0 + i + 1}: expected 4 fields separated by {sep!r}, "
                        f"got {nsep[i] + 1}: {lines[i].rstrip()!r}")
    keep[i] = False  # blank line
  text = "".join(lines)
  if not sep.isspace():
    text = text.replace(sep, " ")
  vals = None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      vals = np.fromstring(text, sep=" ")
  except (ValueError, DeprecationWarning):
    pass
  kept = np.flatnonzero(keep)
  if vals is None or vals.size != 4 * len(kept):
    _locate_bad_field(lines, sep, path, lineno0)
    raise SchemaError(f"{path}, lines {lineno0 + 1}-{lineno0 + len(lines)}: unparseable ratings")
  vals = vals.reshape(-1, 4)
  for col, what in ((0, "user id"), (1, "movie id"), (3, "timestamp")):
    v = vals[:, col]
    bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < 0)
    if bad.any():
      i = kept[np.argmax(bad)]
      raise SchemaError(f"{path}, line {lineno0 + i + 1}: {what} must be a non-negative integer: "
                        f"{lines[i].rstrip()!r}")
  # User ids must fit int32; larger movie ids or timestamps than 2^53 lose digits in the float64 parse.
  for col, what, bits in ((0, "user id", 31), (1, "movie id", 53), (3, "timestamp", 53)):
    too_big = vals[:, col] >= 2.0**bits
    if too_big.any():
      i = kept[np.argmax(too_big)]
      raise SchemaError(f"{path}, line {lineno0 + i + 1}: {what} is not below 2^{bits}: {lines[i].rstrip()!r}")
  bad = ~(np.abs(vals[:, 2]) <= np.finfo(np.float32).max)
  if bad.any():
    i = kept[np.argmax(bad)]
    raise SchemaError(f"{path}, line {lineno0 + i + 1}: rating is not a finite float32 number: "
                      f"{lines[i].rstrip()!r}")
  return (vals[:, 0].astype(np.int64), vals[:, 1].astype(np.int64), vals[:, 2].astype(np.float32),
          vals[:, 3].astype(np.int64))


def _locate_bad_field(lines, sep, path, lineno0):
  """Slow path: raises naming the first line whose fields do not parse."""
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    fields = line.rstrip("\r\n").split(sep)
    for name, value, conv in zip(("user id", "movie id", "rating", "timestamp"), fields,
                                 (int, int, float, int)):
      try:
        conv(value)
      except ValueError:
        raise SchemaError(f"{path}, line {lineno0 + i + 1}: {name} {value!r} is not numeric: "
                          f"{line.rstrip()!r}") from None


@contextlib.contextmanager
def _open_text(path: pathlib.Path, encoding: str, **kwargs):
  """``open(path)`` for reading text, where bytes that are not ``encoding`` are a SchemaError naming
  the file and line instead of a bare UnicodeDecodeError."""
  try:
    with open(path, encoding=encoding, **kwargs) as fh:
      yield fh
  except UnicodeDecodeError:
    raise _undecodable(path, encoding) from None


def _undecodable(path: pathlib.Path, encoding: str) -> SchemaError:
  """The error for a file that is not ``encoding``, naming its first bad line (found by a rescan)."""
  with open(path, "rb") as fh:
    for lineno, raw in enumerate(fh, 1):
      try:
        raw.decode(encoding)
      except UnicodeDecodeError as e:
        return SchemaError(f"{path}, line {lineno}: not {encoding} ({e.reason} at byte {e.start})")
  return SchemaError(f"{path}: not {encoding}")


def _split_lines(path: pathlib.Path, sep: str, nfields: int, encoding: str):
  """Yields (line number, fields) of a separator-delimited file; blank lines skipped."""
  with _open_text(path, encoding) as fh:
    for lineno, line in enumerate(fh, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      fields = line.split(sep)
      if len(fields) != nfields:
        raise SchemaError(f"{path}, line {lineno}: expected {nfields} fields separated by {sep!r}, "
                          f"got {len(fields)}: {line!r}")
      yield lineno, fields


def _to_int(value: str, path, lineno: int, what: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise SchemaError(f"{path}, line {lineno}: {what} {value!r} is not an integer") from None


def _title_year(title: str) -> int | None:
  """The last "(1995)" (or "(2006-2007)": its first year) in a title; None when there is none."""
  found = _YEAR.findall(title)
  return int(found[-1]) if found else None


@dataclasses.dataclass
class _Movies:
  path: pathlib.Path
  ids: np.ndarray           # sorted raw movie ids
  genre_ids: np.ndarray     # (M, G) int32 genre-table ids, 0-padded
  year_ids: np.ndarray      # (M,) int32 year-table ids (1 = no year)
  genre_vocab: list[str]
  year_vocab: list[int]


def _read_movies(dataset: str, raw_dir: pathlib.Path) -> _Movies:
  spec = SPECS[dataset]
  path = raw_dir / spec.movies
  if not path.is_file():
    raise FileNotFoundError(f"{path}: movies file missing (dataset {dataset})")
  ids, genres, years = [], [], []
  all_genres: set[str] = set()
  if dataset == "ml-latest-small":
    with _open_text(path, spec.encoding, newline="") as fh:
      reader = csv.reader(fh)
      header = next(reader, None)
      if header != ["movieId", "title", "genres"]:
        raise SchemaError(f"{path}, line 1: expected header movieId,title,genres, got {header}")
      for row in reader:
        if not row:
          continue
        if len(row) != 3:
          raise SchemaError(f"{path}, line {reader.line_num}: expected 3 CSV fields, got {len(row)}: {row}")
        ids.append(_to_int(row[0], path, reader.line_num, "movieId"))
        genres.append(row[2].split("|") if row[2] else [])
        years.append(_title_year(row[1]))
  elif dataset == "ml-100k":
    genre_path = raw_dir / "u.genre"
    names = {}
    for lineno, (name, idx) in _split_lines(genre_path, "|", 2, spec.encoding):
      names[_to_int(idx, genre_path, lineno, "genre index")] = name
    if sorted(names) != list(range(len(names))):
      raise SchemaError(f"{genre_path}: genre indices {sorted(names)} are not 0..{len(names) - 1}")
    names = [names[i] for i in range(len(names))]
    all_genres.update(names)
    for lineno, f in _split_lines(path, "|", 5 + len(names), spec.encoding):
      ids.append(_to_int(f[0], path, lineno, "movie id"))
      flags = f[5:]
      if any(x not in ("0", "1") for x in flags):
        raise SchemaError(f"{path}, line {lineno}: genre flags must be 0/1, got {flags}")
      genres.append([n for n, x in zip(names, flags) if x == "1"])
      year = _title_year(f[1])
      if year is None and re.fullmatch(r".*\d{4}", f[2].strip()):
        year = int(f[2].strip()[-4:])  # release date "01-Jan-1995"
      years.append(year)
  else:
    for lineno, f in _split_lines(path, "::", 3, spec.encoding):
      ids.append(_to_int(f[0], path, lineno, "movie id"))
      genres.append(f[2].split("|") if f[2] else [])
      years.append(_title_year(f[1]))
  if not ids:
    raise SchemaError(f"{path}: no movies")
  for g in genres:
    all_genres.update(g)
  genre_vocab = sorted(all_genres)
  gid = {g: i + FIRST_ID for i, g in enumerate(genre_vocab)}
  year_vocab = sorted({y for y in years if y is not None})
  yid = {y: i + FIRST_ID for i, y in enumerate(year_vocab)}
  width = max(1, max(len(g) for g in genres))
  order = np.argsort(np.asarray(ids, np.int64), kind="stable")
  ids_sorted = np.asarray(ids, np.int64)[order]
  dup = ids_sorted[1:] == ids_sorted[:-1]
  if dup.any():
    raise SchemaError(f"{path}: movie id {ids_sorted[1:][dup][0]} appears more than once")
  genre_ids = np.zeros((len(ids), width), np.int32)
  year_ids = np.empty(len(ids), np.int32)
  for row, k in enumerate(order):
    genre_ids[row, :len(genres[k])] = [gid[g] for g in genres[k]]
    year_ids[row] = yid.get(years[k], OOV_ID)
  return _Movies(path, ids_sorted, genre_ids, year_ids, genre_vocab, year_vocab)


USER_FIELDS = ("gender", "age", "occupation", "zip_prefix")
AUTOINT_USER_FIELDS = ("gender", "age", "occupation", "zip")


@dataclasses.dataclass
class _Users:
  path: pathlib.Path
  ids: np.ndarray                 # sorted raw user ids
  attrs: dict[str, np.ndarray]    # USER_FIELDS and 'zip' -> values aligned with ids


def _read_users(dataset: str, raw_dir: pathlib.Path) -> _Users | None:
  spec = SPECS[dataset]
  if spec.users is None:
    return None
  path = raw_dir / spec.users
  if not path.is_file():
    raise FileNotFoundError(f"{path}: users file missing (dataset {dataset})")
  ids, gender, age, occ, zips = [], [], [], [], []
  if dataset == "ml-100k":  # id|age|gender|occupation|zip
    for lineno, f in _split_lines(path, "|", 5, spec.encoding):
      ids.append(_to_int(f[0], path, lineno, "user id"))
      raw_age = _to_int(f[1], path, lineno, "age")
      age.append(int(AGE_CODES[max(0, np.searchsorted(AGE_CODES, raw_age, side="right") - 1)]))
      gender.append(f[2])
      occ.append(f[3])
      zips.append(f[4])
  else:  # UserID::Gender::Age::Occupation::Zip
    for lineno, f in _split_lines(path, "::", 5, spec.encoding):
      ids.append(_to_int(f[0], path, lineno, "user id"))
      gender.append(f[1])
      age.append(_to_int(f[2], path, lineno, "age"))
      occ.append(_to_int(f[3], path, lineno, "occupation"))
      zips.append(f[4])
  if not ids:
    raise SchemaError(f"{path}: no users")
  order = np.argsort(np.asarray(ids, np.int64), kind="stable")
  ids_sorted = np.asarray(ids, np.int64)[order]
  dup = ids_sorted[1:] == ids_sorted[:-1]
  if dup.any():
    raise SchemaError(f"{path}: user id {ids_sorted[1:][dup][0]} appears more than once")
  attrs = {name: np.asarray(v)[order] for name, v in zip(("gender", "age", "occupation", "zip"), (gender, age, occ, zips))}
  attrs["zip_prefix"] = np.asarray([z[:3] for z in attrs["zip"]])
  return _Users(path, ids_sorted, attrs)


def _index_of(sorted_ids: np.ndarray, values: np.ndarray, table_path, ratings_path, what: str) -> np.ndarray:
  """Positions of ``values`` in ``sorted_ids``; raises naming the file when one is missing."""
  pos = np.searchsorted(sorted_ids, values)
  found = sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == values
  if not found.all():
    missing = np.unique(values[~found])
    raise SchemaError(f"{ratings_path}: {what} id {missing[0]} is not in {table_path} "
                      f"({len(missing)} {what} ids missing, {int((~found).sum())} ratings affected; "
                      f"policy: error)")
  return pos


def _lookup(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Raw values -> ids (vocab[i] is id i + 2; values not in vocab -> OOV id 1)."""
  if len(vocab) == 0:
    return np.full(values.shape, OOV_ID, np.int32)
  pos = np.searchsorted(vocab, values)
  found = vocab[np.minimum(pos, len(vocab) - 1)] == values
  return np.where(found, pos + FIRST_ID, OOV_ID).astype(np.int32)


def _vocab_list(values) -> list[str]:
  values = values.tolist() if isinstance(values, np.ndarray) else values
  return ["<pad>", "<oov>", *(str(v) for v in values)]


# ---------------------------------------------------------------------------------------- building


def _build_schema(max_len, item_vocab, user_vocab, movies: _Movies, user_vocabs,
                  sequence_fields: str = "basic") -> Schema:
  n_item = len(item_vocab) + FIRST_ID
  n_genre = len(movies.genre_vocab) + FIRST_ID
  g = movies.genre_ids.shape[1]
  fields = [
      Field("item_id", "item", "categorical", vocab_size=n_item, table="item_id", oov_id=OOV_ID,
            description="candidate movie (train-split vocabulary)"),
      Field("item_genres", "item", "categorical", shape=(g,), vocab_size=n_genre, table="genre",
            description="candidate movie's genres, 0-padded"),
      Field("item_year", "item", "categorical", vocab_size=len(movies.year_vocab) + FIRST_ID, table="year",
            oov_id=OOV_ID,
            description="release year from the title (1 = none)"),
      Field("hist_item_id", "behavior", "sequence", shape=(max_len,), max_len=max_len,
            vocab_size=n_item, table="item_id", oov_id=OOV_ID,
            description="movies rated strictly earlier, oldest -> newest, left-padded"),
      Field("hist_genres", "behavior", "sequence", shape=(max_len, g), max_len=max_len,
            vocab_size=n_genre, table="genre", description="genres of hist_item_id"),
  ]
  if sequence_fields == "feseq":
    fields += [
        Field("hist_hour", "behavior", "sequence", shape=(max_len,), max_len=max_len,
              vocab_size=24 + FIRST_ID, table="hour", description="UTC hour + 2 of each hist_item_id rating"),
        Field("hist_weekday", "behavior", "sequence", shape=(max_len,), max_len=max_len,
              vocab_size=7 + FIRST_ID, table="weekday",
              description="UTC weekday (Mon=0) + 2 of each hist_item_id rating"),
        Field("hist_time_gap", "behavior", "numeric", dtype="float32", shape=(max_len,),
              description="minutes from each hist_item_id rating to the candidate's, 0 at padding"),
    ]
  fields += [
      Field("user_id", "user", "categorical", vocab_size=len(user_vocab) + FIRST_ID, table="user_id",
            oov_id=OOV_ID,
            description="user (train-split vocabulary)"),
  ]
  for name, vocab in user_vocabs.items():
    fields.append(Field(name, "user", "categorical", vocab_size=len(vocab) + FIRST_ID, table=name,
                        oov_id=OOV_ID))
  fields += [
      Field("hour", "context", "categorical", vocab_size=24 + FIRST_ID, description="UTC hour + 2"),
      Field("weekday", "context", "categorical", vocab_size=7 + FIRST_ID,
            description="UTC weekday (Mon=0) + 2"),
      Field("month", "context", "categorical", vocab_size=12 + FIRST_ID, description="UTC month (Jan=0) + 2"),
      Field("label", "label", "numeric", dtype="float32"),
      Field("user", "meta", "categorical", dtype="int32", description="raw user id (GAUC grouping)"),
      Field("timestamp", "meta", "numeric", dtype="int64", description="rating time, unix seconds"),
      Field("hist_timestamp", "meta", "numeric", dtype="int64", shape=(max_len,),
            description="times of hist_item_id, 0 at padded positions"),
  ]
  return Schema(tuple(fields))


def _context(ts: np.ndarray) -> dict[str, np.ndarray]:
  days = ts // 86400
  months = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12
  return {"hour": ((ts // 3600) % 24 + FIRST_ID).astype(np.int32),
          "weekday": ((days + 3) % 7 + FIRST_ID).astype(np.int32),  # 1970-01-01 was a Thursday
          "month": (months + FIRST_ID).astype(np.int32)}


def _build(dataset: str, raw_dir: pathlib.Path, protocol: str, max_len: int, holdout: int,
           out_dir: pathlib.Path, args: dict, sequence_fields: str = "basic") -> pathlib.Path:
  spec = SPECS[dataset]
  ratings_path = raw_dir / spec.ratings
  if not ratings_path.is_file():
    hint = (" (the shared movielens-1m-partial copy has no ratings.dat; pass --raw_dir to a full ML-1M)"
            if dataset == "ml-1m" else "")
    raise FileNotFoundError(f"{ratings_path}: ratings file missing{hint}")
  user, movie, rating, ts = _read_ratings(ratings_path, spec)
  movies = _read_movies(dataset, raw_dir)
  users = _read_users(dataset, raw_dir)
  num_ratings = len(user)

  # Sort by (user, timestamp, movie id); lexsort is stable.
  order = np.lexsort((movie, ts, user))
  user, movie, rating, ts = user[order], movie[order], rating[order], ts[order]
  del order
  midx = _index_of(movies.ids, movie, movies.path, ratings_path, "movie")
  uidx = _index_of(users.ids, user, users.path, ratings_path, "user") if users else None

  n = num_ratings
  ar = np.arange(n)
  new_user = np.ones(n, bool)
  new_user[1:] = user[1:] != user[:-1]
  user_start = np.maximum.accumulate(np.where(new_user, ar, 0))
  new_run = new_user.copy()
  new_run[1:] |= ts[1:] != ts[:-1]
  run_start = np.maximum.accumulate(np.where(new_run, ar, 0))  # first rating at the same (user, ts)
  del ar, new_run

  if protocol == "din":
    is_sample = np.ones(n, bool)
    label_all = (rating >= 4).astype(np.float32)
  else:
    is_sample = rating != 3
    label_all = (rating > 3).astype(np.float32)
  pos = np.flatnonzero(is_sample)
  ns = len(pos)
  su = user[pos]
  s_new = np.ones(ns, bool)
  s_new[1:] = su[1:] != su[:-1]
  starts = np.flatnonzero(s_new)
  counts = np.diff(np.append(starts, ns))
  s_cnt = np.repeat(counts, counts)
  s_rank = np.arange(ns) - np.repeat(starts, counts)
  split_of = np.zeros(ns, np.int8)
  enough = s_cnt >= 2 * holdout + 1
  split_of[enough & (s_rank >= s_cnt - 2 * holdout)] = 1
  split_of[enough & (s_rank >= s_cnt - holdout)] = 2
  del su, s_new, s_cnt, s_rank, enough

  train_pos = pos[split_of == 0]
  # Item values of the train split: its candidates and every rating inside a train row's behaviour
  # window (under autoint these include rating-3 movies; under din they are train candidates anyway).
  lo = np.maximum(user_start[train_pos], run_start[train_pos] - max_len)
  cover = np.zeros(n + 1, np.int64)
  np.add.at(cover, lo, 1)
  np.add.at(cover, run_start[train_pos], -1)
  in_train_hist = np.cumsum(cover[:n]) > 0
  item_vocab = np.unique(np.concatenate([movie[train_pos], movie[in_train_hist]]))
  del lo, cover, in_train_hist
  user_vocab = np.unique(user[train_pos])
  item_ids = _lookup(item_vocab, movie)
  user_ids = _lookup(user_vocab, user)
  user_vocabs, user_attr_ids = {}, {}
  if users is not None:
    train_users = np.unique(uidx[train_pos])
    for name in USER_FIELDS:
      values = users.attrs[name]
      user_vocabs[name] = np.unique(values[train_users])
      user_attr_ids[name] = _lookup(user_vocabs[name], values)  # per row of the users table
  schema = _build_schema(max_len, item_vocab, user_vocab, movies, user_vocabs, sequence_fields)

  g = movies.genre_ids.shape[1]
  chunk_rows = int(max(1, min(MAX_CHUNK_ROWS, CHUNK_ELEMENTS // (max_len * g))))
  k = np.arange(max_len)
  writer = DatasetWriter(out_dir, schema)
  for s, split in enumerate(SPLITS):
    rows = pos[split_of == s]
    for a in range(0, len(rows), chunk_rows):
      p = rows[a:a + chunk_rows]
      end = run_start[p]
      length = np.minimum(end - user_start[p], max_len)
      valid = k[None, :] >= (max_len - length)[:, None]
      idx = np.where(valid, end[:, None] - max_len + k[None, :], 0)
      cols = {
          "item_id": item_ids[p],
          "item_genres": movies.genre_ids[midx[p]],
          "item_year": movies.year_ids[midx[p]],
          "hist_item_id": np.where(valid, item_ids[idx], 0).astype(np.int32),
          "hist_genres": np.where(valid[..., None], movies.genre_ids[midx[idx]], 0).astype(np.int32),
          "user_id": user_ids[p],
          **{name: user_attr_ids[name][uidx[p]] for name in user_vocabs},
          **_context(ts[p]),
          "label": label_all[p],
          "user": user[p].astype(np.int32),
          "timestamp": ts[p],
          "hist_timestamp": np.where(valid, ts[idx], 0).astype(np.int64),
      }
      if sequence_fields == "feseq":
        hist_context = _context(ts[idx])
        cols["hist_hour"] = np.where(valid, hist_context["hour"], 0).astype(np.int32)
        cols["hist_weekday"] = np.where(valid, hist_context["weekday"], 0).astype(np.int32)
        cols["hist_time_gap"] = np.where(valid, (ts[p][:, None] - ts[idx]) / MINUTE, 0).astype(np.float32)
      writer.append(split, cols)

  prov_file = raw_dir / "PROVENANCE.tsv"
  provenance = (prov_file.read_text(encoding="utf-8").splitlines() if prov_file.is_file() else str(raw_dir))
  stats = {
      "prep": {"script": "data_prep/movielens.py", "version": PREP_VERSION, "args": args},
      "provenance": provenance,
      "protocol": protocol,
      "label_rule": LABEL_RULES[protocol],
      "split_rule": (f"per user by (timestamp, movie id): last {holdout} sample(s) -> test, the {holdout} "
                     f"before -> valid, rest -> train; users with < {2 * holdout + 1} samples: all train"),
      "behavior_rule": (f"same user's ratings with strictly earlier timestamp, any rating, last {max_len}, "
                        "oldest -> newest, left-padded with 0"
                        + ("; feseq fields: hist_hour, hist_weekday (tables hour, weekday), hist_time_gap "
                           "(candidate minus behaviour time, minutes, 0 at padding)"
                           if sequence_fields == "feseq" else "")),
      "vocab_rule": ("item_id: train candidates + train behaviours; user_id/demographics: train users; "
                     "genres/years: the movies file"),
      "num_ratings": num_ratings,
      "num_samples": int(ns),
      "num_users": int(len(np.unique(user))),
      "num_items": int(len(np.unique(movie))),
      "users_with_valid_and_test": int((counts >= 2 * holdout + 1).sum()),
  }
  if protocol == "autoint":
    stats["dropped_rating_3"] = int(n - ns)
  vocabs = {
      "item_id": _vocab_list(item_vocab),
      "user_id": _vocab_list(user_vocab),
      "genre": _vocab_list(movies.genre_vocab),
      "year": _vocab_list(movies.year_vocab),
      **{name: _vocab_list(v) for name, v in user_vocabs.items()},
      "hour": _vocab_list(range(24)),
      "weekday": _vocab_list(WEEKDAYS),
      "month": _vocab_list(MONTHS),
  }
  return writer.finalize(stats, vocabs)


def year_bucket(year: int) -> str:
  """AutoInt's release-year buckets: <=1929, the decades 1930s-1960s, then one bucket per year."""
  if year < 1930:
    return "<=1929"
  if year < 1970:
    return f"{year // 10 * 10}s"
  return str(year)


def _build_autoint7(dataset: str, raw_dir: pathlib.Path, out_dir: pathlib.Path, args: dict) -> pathlib.Path:
  """AutoInt's 7-field MovieLens (module docstring, protocol "autoint7")."""
  spec = SPECS[dataset]
  if spec.users is None:
    raise ValueError(f"protocol 'autoint7' needs user demographics; {dataset} has none (use ml-100k or ml-1m)")
  ratings_path = raw_dir / spec.ratings
  if not ratings_path.is_file():
    raise FileNotFoundError(f"{ratings_path}: ratings file missing")
  user, movie, rating, ts = _read_ratings(ratings_path, spec)
  movies = _read_movies(dataset, raw_dir)
  users = _read_users(dataset, raw_dir)
  num_ratings = len(user)
  order = np.lexsort((movie, ts, user))
  keep = order[rating[order] != 3]
  user, movie, rating, ts = user[keep], movie[keep], rating[keep], ts[keep]
  midx = _index_of(movies.ids, movie, movies.path, ratings_path, "movie")
  uidx = _index_of(users.ids, user, users.path, ratings_path, "user")
  n = len(user)
  perm = np.random.default_rng(AUTOINT_SPLIT_SEED).permutation(n)
  n_train, n_valid = int(n * AUTOINT_SPLIT[0]), int(n * AUTOINT_SPLIT[1])
  split_rows = [np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_valid]), np.sort(perm[n_train + n_valid:])]

  train_users = np.unique(uidx[split_rows[0]])
  user_vocabs = {name: np.unique(users.attrs[name][train_users]) for name in AUTOINT_USER_FIELDS}
  user_attr_ids = {name: _lookup(user_vocabs[name], users.attrs[name]) for name in AUTOINT_USER_FIELDS}
  bucket_vocab = sorted({year_bucket(int(y)) for y in movies.year_vocab},
                        key=lambda b: 0 if b.startswith("<=") else int(b[:4]))
  bucket_of_year_id = np.full(len(movies.year_vocab) + FIRST_ID, OOV_ID, np.int32)
  for i, y in enumerate(movies.year_vocab):
    bucket_of_year_id[i + FIRST_ID] = bucket_vocab.index(year_bucket(int(y))) + FIRST_ID
  t_min, t_max = int(ts.min()), int(ts.max())
  scaled = ((ts - t_min) / max(t_max - t_min, 1)).astype(np.float32)

  g = movies.genre_ids.shape[1]
  fields = [Field(name, "user", "categorical", vocab_size=len(user_vocabs[name]) + FIRST_ID, table=name,
                  oov_id=OOV_ID, description="train-split vocabulary") for name in AUTOINT_USER_FIELDS]
  fields += [
      Field("item_genres", "item", "categorical", shape=(g,), vocab_size=len(movies.genre_vocab) + FIRST_ID,
            table="genre", description="the movie's genres, 0-padded"),
      Field("item_year_bucket", "item", "categorical", vocab_size=len(bucket_vocab) + FIRST_ID,
            table="year_bucket", oov_id=OOV_ID, description="release-year bucket (1 = no year)"),
      Field("timestamp_scaled", "context", "numeric", dtype="float32",
            description=f"rating time MinMax-scaled over all samples ({t_min}..{t_max} -> 0..1)"),
      Field("label", "label", "numeric", dtype="float32"),
      Field("user", "meta", "categorical", dtype="int32", description="raw user id (GAUC grouping)"),
      Field("timestamp", "meta", "numeric", dtype="int64", description="rating time, unix seconds"),
  ]
  writer = DatasetWriter(out_dir, Schema(tuple(fields)))
  for split, rows in zip(SPLITS, split_rows):
    for a in range(0, len(rows), MAX_CHUNK_ROWS):
      p = rows[a:a + MAX_CHUNK_ROWS]
      writer.append(split, {
          **{name: user_attr_ids[name][uidx[p]] for name in AUTOINT_USER_FIELDS},
          "item_genres": movies.genre_ids[midx[p]],
          "item_year_bucket": bucket_of_year_id[movies.year_ids[midx[p]]],
          "timestamp_scaled": scaled[p],
          "label": (rating[p] > 3).astype(np.float32),
          "user": user[p].astype(np.int32),
          "timestamp": ts[p],
      })
  prov_file = raw_dir / "PROVENANCE.tsv"
  stats = {
      "prep": {"script": "data_prep/movielens.py", "version": PREP_VERSION, "args": args},
      "provenance": (prov_file.read_text(encoding="utf-8").splitlines() if prov_file.is_file() else str(raw_dir)),
      "protocol": "autoint7",
      "label_rule": LABEL_RULES["autoint7"],
      "split_rule": (f"random: numpy default_rng({AUTOINT_SPLIT_SEED}).permutation of the samples sorted by "
                     f"(user, timestamp, movie); {AUTOINT_SPLIT[0]:.0%} train, {AUTOINT_SPLIT[1]:.0%} valid, "
                     "rest test"),
      "vocab_rule": "gender/age/occupation/zip: train-split users; genres and year buckets: the movies file",
      "num_ratings": num_ratings,
      "num_samples": int(n),
      "dropped_rating_3": int(num_ratings - n),
  }
  vocabs = {"genre": _vocab_list(movies.genre_vocab), "year_bucket": _vocab_list(bucket_vocab),
            **{name: _vocab_list(v) for name, v in user_vocabs.items()}}
  return writer.finalize(stats, vocabs)


# ------------------------------------------------------------------------------------------- API


@one_at_a_time
def prepare(dataset: str, out_root: str | os.PathLike = "data/prepared", *,
            raw_dir: str | os.PathLike = "", protocol: str = "din", max_len: int = 30,
            holdout: int = 1, sequence_fields: str = "basic", force: bool = False) -> pathlib.Path:
  """Prepares (or reuses) ``<out_root>/<dataset>-<protocol>-len<max_len>[-holdout<h>][-feseq]``; returns its
  path. ``sequence_fields="basic"`` keeps the directory name and prep args of datasets built before the
  option existed, so their caches stay valid."""
  if dataset not in SPECS:
    raise ValueError(f"dataset {dataset!r} not in {DATASETS}")
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol {protocol!r} not in {PROTOCOLS}")
  if isinstance(max_len, bool) or int(max_len) != max_len or max_len < 1:
    raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
  max_len = int(max_len)
  if isinstance(holdout, bool) or int(holdout) != holdout or holdout < 1:
    raise ValueError(f"holdout must be a positive integer, got {holdout!r}")
  holdout = int(holdout)
  if sequence_fields not in SEQUENCE_FIELDS:
    raise ValueError(f"sequence_fields {sequence_fields!r} not in {SEQUENCE_FIELDS}")
  raw = resolve(raw_dir or default_raw_dir(dataset))
  if protocol == "autoint7":
    return _prepare_autoint7(dataset, raw, resolve(out_root), force)
  out_dir = resolve(out_root) / (f"{dataset}-{protocol}-len{max_len}" + (f"-holdout{holdout}" if holdout > 1 else "")
                                  + ("-feseq" if sequence_fields == "feseq" else ""))
  args = {"dataset": dataset, "raw_dir": str(raw), "protocol": protocol, "max_len": max_len, "holdout": holdout}
  if sequence_fields != "basic":
    args["sequence_fields"] = sequence_fields
  if not force and reuse_cached(out_dir, args, PREP_VERSION, "movielens"):
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _build(dataset, raw, protocol, max_len, holdout, out_dir, args, sequence_fields)
  stats = json.loads((out_dir / "stats.json").read_text())
  oov = {s: {f: c for f, c in stats["oov"][s].items() if c} for s in SPLITS}
  print(f"movielens: wrote {out_dir}: rows {stats['rows']}; OOV ids per split {oov}")
  return out_dir


def _prepare_autoint7(dataset: str, raw: pathlib.Path, out_root: pathlib.Path, force: bool) -> pathlib.Path:
  out_dir = out_root / f"{dataset}-autoint7"
  args = {"dataset": dataset, "raw_dir": str(raw), "protocol": "autoint7"}
  if not force and reuse_cached(out_dir, args, PREP_VERSION, "movielens"):
    return out_dir
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _build_autoint7(dataset, raw, out_dir, args)
  stats = json.loads((out_dir / "stats.json").read_text())
  print(f"movielens: wrote {out_dir}: rows {stats['rows']} (AutoInt 7-field form)")
  return out_dir


def main(argv=None) -> pathlib.Path:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", required=True, choices=DATASETS)
  ap.add_argument("--protocol", default="din", choices=PROTOCOLS)
  ap.add_argument("--max_len", type=int, default=30)
  ap.add_argument("--holdout", type=int, default=1, help="samples per user held out for valid and for test")
  ap.add_argument("--sequence_fields", default="basic", choices=SEQUENCE_FIELDS,
                  help="feseq: also hist_hour, hist_weekday and hist_time_gap (minutes)")
  ap.add_argument("--raw_dir", default=None, help="raw files directory (default: see module docstring)")
  ap.add_argument("--out_root", default="data/prepared", help="relative paths are against the repo root")
  ap.add_argument("--force", action="store_true", help="rebuild even if a matching cached copy exists")
  a = ap.parse_args(argv)
  path = prepare(a.dataset, a.out_root, raw_dir=a.raw_dir, protocol=a.protocol, max_len=a.max_len,
                 holdout=a.holdout, sequence_fields=a.sequence_fields, force=a.force)
  stats = json.loads((path / "stats.json").read_text())
  print(path)
  print(" ".join(f"{s}={stats['rows'][s]}" for s in SPLITS))
  return path


if __name__ == "__main__":
  main()
