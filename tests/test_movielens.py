"""data_prep/movielens.py: splits, labels, leakage-free behaviours, vocabularies, caching, parsing errors."""
import csv
import datetime
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

from conftest import shared_path

from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import SPLITS, SchemaError
from data_prep import movielens

SMALL_RAW = REPO / "data" / "movielens-latest-small"
MAX_LEN = 30


def _vocab(path, table):
  """id -> raw value string, read back from vocab/<table>.tsv."""
  out = []
  for i, line in enumerate((path / "vocab" / f"{table}.tsv").read_text().splitlines()):
    idx, value = line.split("\t")
    assert int(idx) == i
    out.append(value)
  return out


def _cols(ds, split):
  return {name: np.asarray(col) for name, col in ds.columns[split].items()}


# ------------------------------------------------------------------------------- ml-latest-small


@pytest.fixture(scope="module")
def small_raw():
  """user -> sorted [(timestamp, movie, rating)], read independently with the csv module."""
  by_user = {}
  with open(SMALL_RAW / "ratings.csv", newline="") as fh:
    for row in csv.DictReader(fh):
      by_user.setdefault(int(row["userId"]), []).append(
          (int(row["timestamp"]), int(row["movieId"]), float(row["rating"])))
  for v in by_user.values():
    v.sort()
  return by_user


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  path = movielens.prepare("ml-latest-small", tmp_path_factory.mktemp("prep"), max_len=MAX_LEN)
  return Dataset(path)  # validates dtypes, shapes, id ranges and counts


def test_bundled_copy_has_licence_and_provenance():
  for name in ("ratings.csv", "movies.csv", "links.csv", "tags.csv", "README.txt", "PROVENANCE.tsv"):
    assert (SMALL_RAW / name).is_file(), name
  assert "Usage License" in (SMALL_RAW / "README.txt").read_text()


def test_small_end_to_end(small, small_raw):
  ds = small
  assert ds.path.name == f"ml-latest-small-din-len{MAX_LEN}"
  n_ratings = sum(len(v) for v in small_raw.values())
  rows = {s: ds.num_rows(s) for s in SPLITS}
  assert sum(rows.values()) == n_ratings
  n_users3 = sum(len(v) >= 3 for v in small_raw.values())
  assert rows["valid"] == rows["test"] == n_users3
  positives = sum(r >= 4 for v in small_raw.values() for _, _, r in v)
  labels = np.concatenate([np.asarray(ds.columns[s]["label"]) for s in SPLITS])
  assert set(np.unique(labels)) <= {0.0, 1.0}
  assert int(labels.sum()) == positives
  assert labels.mean() == pytest.approx(positives / n_ratings)
  stats = ds.stats
  assert stats["rows"] == rows
  assert stats["prep"]["script"] == "data_prep/movielens.py"
  assert stats["prep"]["args"] == {"dataset": "ml-latest-small", "raw_dir": str(SMALL_RAW.resolve()),
                                   "protocol": "din", "max_len": MAX_LEN, "holdout": 1}
  assert stats["num_users"] == len(small_raw) and stats["protocol"] == "din"
  assert stats["num_items"] == len({m for v in small_raw.values() for _, m, _ in v})
  assert any("ratings.csv" in line for line in stats["provenance"])
  names = {g: [f.name for f in ds.schema.group(g)] for g in ("item", "behavior", "user", "context", "meta")}
  assert names == {"item": ["item_id", "item_genres", "item_year"],
                   "behavior": ["hist_item_id", "hist_genres"], "user": ["user_id"],
                   "context": ["hour", "weekday", "month"],
                   "meta": ["user", "timestamp", "hist_timestamp"]}
  assert ds.schema["item_genres"].shape == (10,) and ds.schema["hist_genres"].shape == (MAX_LEN, 10)
  assert ds.schema["hist_item_id"].table == ds.schema["item_id"].table == "item_id"
  assert ds.schema["hist_genres"].table == ds.schema["item_genres"].table == "genre"
  assert ds.schema.tables["hour"] == 26 and ds.schema.tables["weekday"] == 9 and ds.schema.tables["month"] == 14
  # Vocabulary from train only: every train item id is known; valid/test candidates may be OOV.
  assert stats["oov"]["train"]["item_id"] == 0 and stats["oov"]["train"]["hist_item_id"] == 0
  assert stats["oov"]["test"]["item_id"] > 0


def test_small_no_leakage_and_behaviours(small, small_raw):
  ds = small
  item_vocab = _vocab(ds.path, "item_id")
  genre_vocab = _vocab(ds.path, "genre")
  known = set(item_vocab[2:])
  movie_genres = {}
  with open(SMALL_RAW / "movies.csv", newline="", encoding="utf-8") as fh:
    for row in csv.DictReader(fh):
      movie_genres[row["movieId"]] = row["genres"].split("|")
  rng = np.random.default_rng(0)
  checked = 0
  for split in SPLITS:
    c = _cols(ds, split)
    hist, hts, ts = c["hist_item_id"], c["hist_timestamp"], c["timestamp"]
    real = hist != 0
    # No leakage: every behaviour is strictly earlier than the sample.
    assert (hts[real] < np.broadcast_to(ts[:, None], hts.shape)[real]).all()
    assert (hts[~real] == 0).all() and (c["hist_genres"][~real] == 0).all()
    assert (c["hist_genres"][real][:, 0] != 0).all()  # a real behaviour has >= 1 genre
    # Left padding: once a position is real, all later ones are.
    assert (np.diff(real.astype(np.int8), axis=1) >= 0).all()
    # Oldest -> newest.
    assert (np.diff(np.where(real, hts, 0), axis=1)[real[:, 1:] & real[:, :-1]] >= 0).all()
    sample = np.arange(len(ts)) if split != "train" else rng.choice(len(ts), 500, replace=False)
    for r in sample:
      events = small_raw[int(c["user"][r])]
      earlier = [(t, m) for t, m, _ in events if t < ts[r]][-MAX_LEN:]
      n = int(real[r].sum())
      assert n == min(MAX_LEN, len(earlier)), (split, r)
      assert hts[r, MAX_LEN - n:].tolist() == [t for t, _ in earlier]
      for hid, (_, m) in zip(hist[r, MAX_LEN - n:], earlier):
        if hid == 1:
          assert str(m) not in known
        else:
          assert item_vocab[hid] == str(m)  # hist ids decode through the item_id vocabulary
      # Behaviour genres are the movie's genres (first few rows only: string work).
      if checked < 50 and n:
        m = str(earlier[-1][1])
        got = [genre_vocab[g] for g in c["hist_genres"][r, -1] if g]
        assert got == movie_genres[m]
        checked += 1
      # The candidate itself decodes to one of this user's ratings at this timestamp.
      if c["item_id"][r] >= 2:
        assert (int(ts[r]), int(item_vocab[c["item_id"][r]])) in {(t, m) for t, m, _ in events}
  assert checked == 50


def test_small_per_user_time_split(small, small_raw):
  ds = small
  item_vocab = _vocab(ds.path, "item_id")
  c = {s: _cols(ds, s) for s in SPLITS}
  train_max = {}
  for u, t in zip(c["train"]["user"], c["train"]["timestamp"]):
    train_max[int(u)] = max(train_max.get(int(u), -1), int(t))
  valid = {int(u): int(t) for u, t in zip(c["valid"]["user"], c["valid"]["timestamp"])}
  test = {int(u): (int(t), int(i)) for u, t, i in zip(c["test"]["user"], c["test"]["timestamp"],
                                                      c["test"]["item_id"])}
  assert set(valid) == set(test) == {u for u, v in small_raw.items() if len(v) >= 3}
  assert len(valid) == ds.num_rows("valid")  # one valid row per user
  for u in test:
    assert test[u][0] >= valid[u] >= train_max[u]
    last_t, last_m, _ = max(small_raw[u])  # the user's last rating by (timestamp, movie id)
    assert test[u][0] == last_t
    if test[u][1] >= 2:
      assert item_vocab[test[u][1]] == str(last_m)


def test_small_context_and_year(small):
  c = _cols(small, "valid")
  for r in range(0, len(c["timestamp"]), 37):
    d = datetime.datetime.fromtimestamp(int(c["timestamp"][r]), datetime.timezone.utc)
    assert c["hour"][r] == d.hour + 2
    assert c["weekday"][r] == d.weekday() + 2
    assert c["month"][r] == d.month - 1 + 2
  year_vocab = _vocab(small.path, "year")
  assert year_vocab[:2] == ["<pad>", "<oov>"] and year_vocab[2:] == sorted(year_vocab[2:], key=int)
  assert small.stats["oov"]["train"]["item_year"] > 0  # titles without "(yyyy)" map to OOV


# ------------------------------------------------------------------------------------ ml-1m parser

T = 978_300_000  # 2000-12-31 22:00:00 UTC
ML1M_RATINGS = [
    # user 1 (F, age 1, occupation 10, zip 48067); out of order; movies 3 and 5 tie at T+300
    (1, 3, 4, T + 300), (1, 1, 5, T + 100), (1, 2, 3, T + 200), (1, 5, 2, T + 300),
    (1, 4, 4, T + 400), (1, 6, 5, T + 500),
    # user 2: only 2 ratings -> all train
    (2, 1, 4, T + 1000), (2, 2, 1, T + 2000),
    # user 3: movie 7 only in this user's valid rating, movie 8 only in its test rating
    (3, 1, 4, T + 100), (3, 7, 2, T + 200), (3, 8, 5, T + 300),
    # user 4 (M, 45, 7, zip 02460)
    (4, 4, 5, T + 10), (4, 6, 2, T + 20), (4, 9, 3, T + 30), (4, 1, 5, T + 40), (4, 2, 4, T + 50),
    # user 5: one rating a day, longer than max_len
    *[(5, m, 1 + k % 5, T + k * 86400) for k, m in enumerate([10, 11, 12, 13, 14, 15, 16, 17, 3, 5])],
    # user 6: three ratings at the same second -> no behaviours at all
    (6, 13, 2, T + 7 * 3600), (6, 11, 4, T + 7 * 3600), (6, 12, 4, T + 7 * 3600),
]
ML1M_MAX_LEN = 3


def _write_ratings(path, rows):
  path.write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows))


@pytest.fixture
def ml1m_dir(tmp_path):
  src = shared_path("data", "movielens-1m-partial")
  d = tmp_path / "ml1m"
  d.mkdir()
  shutil.copy(src / "users.dat", d / "users.dat")
  shutil.copy(src / "movies.dat", d / "movies.dat")
  _write_ratings(d / "ratings.dat", ML1M_RATINGS)
  return d


def _find(c, user, ts, item_id):
  hit = np.flatnonzero((c["user"] == user) & (c["timestamp"] == ts) & (c["item_id"] == item_id))
  assert len(hit) == 1, (user, ts, item_id, hit)
  return int(hit[0])


def test_ml1m_exact_rows(ml1m_dir, tmp_path):
  path = movielens.prepare("ml-1m", tmp_path / "out", raw_dir=ml1m_dir, max_len=ML1M_MAX_LEN)
  ds = Dataset(path)
  assert path.name == "ml-1m-din-len3"
  assert {s: ds.num_rows(s) for s in SPLITS} == {"train": 19, "valid": 5, "test": 5}
  item = _vocab(path, "item_id")
  assert item[2:] == [str(m) for m in (1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16, 17)]
  iid = {v: i for i, v in enumerate(item)}
  genre = _vocab(path, "genre")
  vocab = {t: _vocab(path, t) for t in ("gender", "age", "occupation", "zip_prefix", "user_id", "year")}
  assert vocab["age"][2:] == ["1", "25", "45", "50", "56"]  # numeric order
  assert vocab["zip_prefix"][2:] == ["024", "480", "551", "554", "700"]
  assert ds.schema["item_genres"].shape == (6,)  # max genres per movie in the real movies.dat
  c = {s: _cols(ds, s) for s in SPLITS}

  def dec(table, ids):
    return [vocab[table][i] if table in vocab else item[i] for i in np.atleast_1d(ids)]

  # user 1, test: movie 6 at T+500; behaviours = last 3 of 1,2,3,5,4 (3 and 5 sorted by movie id).
  r = _find(c["test"], 1, T + 500, iid["6"])
  t = c["test"]
  assert dec("item", t["hist_item_id"][r]) == ["3", "5", "4"]
  assert t["hist_timestamp"][r].tolist() == [T + 300, T + 300, T + 400]
  assert t["label"][r] == 1.0
  assert [dec(k, t[k][r])[0] for k in ("gender", "age", "occupation", "zip_prefix", "user_id")] == \
      ["F", "1", "10", "480", "1"]
  assert [genre[g] for g in t["hist_genres"][r, 2] if g] == ["Comedy", "Drama"]  # movie 4
  assert [genre[g] for g in t["item_genres"][r]] == ["Action", "Crime", "Thriller", "<pad>", "<pad>", "<pad>"]
  assert vocab["year"][t["item_year"][r]] == "1995"
  d = datetime.datetime.fromtimestamp(T + 500, datetime.timezone.utc)
  assert (t["hour"][r], t["weekday"][r], t["month"][r]) == (d.hour + 2, d.weekday() + 2, d.month + 1)
  # user 1, valid: movie 4; behaviours 2, 3, 5.
  r = _find(c["valid"], 1, T + 400, iid["4"])
  assert dec("item", c["valid"]["hist_item_id"][r]) == ["2", "3", "5"]
  # user 1, train: movies 3 and 5 tie at T+300 -> neither sees the other; left padding.
  tr = c["train"]
  for m in ("3", "5"):
    r = _find(tr, 1, T + 300, iid[m])
    assert tr["hist_item_id"][r].tolist() == [0, iid["1"], iid["2"]]
    assert tr["hist_timestamp"][r].tolist() == [0, T + 100, T + 200]
    assert (tr["hist_genres"][r, 0] == 0).all()
  assert tr["label"][_find(tr, 1, T + 300, iid["5"])] == 0.0  # rating 2
  r = _find(tr, 1, T + 100, iid["1"])
  assert (tr["hist_item_id"][r] == 0).all() and (tr["hist_timestamp"][r] == 0).all()
  # user 2 (2 ratings): both in train, none in valid/test.
  assert (tr["user"] == 2).sum() == 2 and not (c["valid"]["user"] == 2).any() and not (c["test"]["user"] == 2).any()
  # user 4: demographics, zip with leading zero.
  r = _find(c["test"], 4, T + 50, iid["2"])
  assert [dec(k, c["test"][k][r])[0] for k in ("gender", "age", "occupation", "zip_prefix")] == \
      ["M", "45", "7", "024"]
  assert dec("item", c["test"]["hist_item_id"][r]) == ["6", "9", "1"]
  # user 5: truncated to the 3 most recent.
  r = _find(c["test"], 5, T + 9 * 86400, iid["5"])
  assert dec("item", c["test"]["hist_item_id"][r]) == ["16", "17", "3"]
  # user 6: all three at the same second -> no behaviours; split by movie id order.
  assert c["valid"]["item_id"][c["valid"]["user"] == 6].tolist() == [iid["12"]]
  assert c["test"]["item_id"][c["test"]["user"] == 6].tolist() == [iid["13"]]
  for s in SPLITS:
    assert (c[s]["hist_item_id"][c[s]["user"] == 6] == 0).all()


def test_ml1m_unknown_item_is_oov_and_counted(ml1m_dir, tmp_path, capsys):
  path = movielens.prepare("ml-1m", tmp_path / "out", raw_dir=ml1m_dir, max_len=ML1M_MAX_LEN)
  out = capsys.readouterr().out
  ds = Dataset(path)
  item, genre = _vocab(path, "item_id"), _vocab(path, "genre")
  assert "7" not in item and "8" not in item  # only rated in user 3's valid / test
  v, t = _cols(ds, "valid"), _cols(ds, "test")
  r = int(np.flatnonzero(v["user"] == 3)[0])
  assert v["item_id"][r] == 1
  assert [genre[g] for g in v["item_genres"][r] if g] == ["Comedy", "Romance"]  # movie 7, still known
  r = int(np.flatnonzero(t["user"] == 3)[0])
  assert t["item_id"][r] == 1
  assert t["hist_item_id"][r].tolist() == [0, item.index("1"), 1]  # movie 7 as a behaviour: OOV
  assert [genre[g] for g in t["hist_genres"][r, 2] if g] == ["Comedy", "Romance"]
  oov = ds.stats["oov"]
  assert oov["valid"]["item_id"] == 1 and oov["test"]["item_id"] == 1
  assert oov["test"]["hist_item_id"] == 1 and oov["valid"]["hist_item_id"] == 0
  assert all(n == 0 for f, n in oov["train"].items() if f != "item_year")
  assert "'item_id': 1" in out and "hist_item_id" in out  # printed too


def test_cache_reuse_and_rebuild(ml1m_dir, tmp_path, capsys):
  out_root = tmp_path / "out"
  path = movielens.prepare("ml-1m", out_root, raw_dir=ml1m_dir, max_len=ML1M_MAX_LEN)
  stats = path / "stats.json"
  os.utime(stats, ns=(10**18, 10**18))  # a recognisable mtime
  capsys.readouterr()
  assert movielens.prepare("ml-1m", out_root, raw_dir=ml1m_dir, max_len=ML1M_MAX_LEN) == path
  assert stats.stat().st_mtime_ns == 10**18  # not rewritten
  assert "reusing" in capsys.readouterr().out
  # Different max_len: another directory.
  other = movielens.prepare("ml-1m", out_root, raw_dir=ml1m_dir, max_len=4)
  assert other != path and other.name == "ml-1m-din-len4" and Dataset(other).schema["hist_item_id"].shape == (4,)
  assert stats.stat().st_mtime_ns == 10**18
  # Different raw_dir, same output directory: rebuilt.
  moved = tmp_path / "moved"
  shutil.copytree(ml1m_dir, moved)
  assert movielens.prepare("ml-1m", out_root, raw_dir=moved, max_len=ML1M_MAX_LEN) == path
  assert stats.stat().st_mtime_ns != 10**18
  assert json.loads(stats.read_text())["prep"]["args"]["raw_dir"] == str(moved.resolve())
  # force and an incomplete directory (no stats.json) rebuild as well.
  os.utime(stats, ns=(10**18, 10**18))
  movielens.prepare("ml-1m", out_root, raw_dir=moved, max_len=ML1M_MAX_LEN, force=True)
  assert stats.stat().st_mtime_ns != 10**18
  stats.unlink()
  movielens.prepare("ml-1m", out_root, raw_dir=moved, max_len=ML1M_MAX_LEN)
  assert stats.is_file() and Dataset(path).num_rows("test") == 5


def test_cli_and_shared_default(ml1m_dir, tmp_path, monkeypatch, capsys):
  shared = tmp_path / "shared"
  (shared / "data").mkdir(parents=True)
  shutil.copytree(ml1m_dir, shared / "data" / "movielens-1m")
  monkeypatch.setenv("CTRJAX_SHARED", str(shared))
  path = movielens.main(["--dataset", "ml-1m", "--max_len", "3", "--out_root", str(tmp_path / "out")])
  out = capsys.readouterr().out
  assert str(path) in out.splitlines() and "train=19 valid=5 test=5" in out
  assert json.loads((path / "stats.json").read_text())["prep"]["args"]["raw_dir"] == \
      str((shared / "data" / "movielens-1m").resolve())
  # The partial shared ML-1M has no ratings.dat: the error says so.
  with pytest.raises(FileNotFoundError, match="ratings.dat"):
    movielens.prepare("ml-1m", tmp_path / "out2", raw_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("bad_line, line_no, what", [
    ("1::3::x::300", 3, "rating"),
    ("1::3::4", 3, "expected 4 fields"),
    ("1::3.5::4::300", 3, "movie id"),
    ("1::3::4::300::9", 3, "expected 4 fields"),
])
def test_malformed_ratings_line(ml1m_dir, tmp_path, bad_line, line_no, what):
  lines = ["1::1::5::100", "1::2::4::200", bad_line, "1::4::4::400"]
  (ml1m_dir / "ratings.dat").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=rf"ratings\.dat, line {line_no}: .*{what}") as e:
    movielens.prepare("ml-1m", tmp_path / "out", raw_dir=ml1m_dir)
  assert isinstance(e.value, SchemaError)
  assert not (tmp_path / "out" / "ml-1m-din-len30").exists()


def test_blank_lines_skipped_and_line_numbers_count_them(ml1m_dir, tmp_path):
  (ml1m_dir / "ratings.dat").write_text("1::1::5::100\n\n1::2::4::200\n1::2::four::300\n")
  with pytest.raises(SchemaError, match=r"ratings\.dat, line 4: rating 'four'"):
    movielens.prepare("ml-1m", tmp_path / "out", raw_dir=ml1m_dir)


def test_unknown_user_or_movie_is_an_error(ml1m_dir, tmp_path):
  _write_ratings(ml1m_dir / "ratings.dat", [(1, 1, 5, 100), (1, 999999, 4, 200), (1, 2, 4, 300)])
  with pytest.raises(SchemaError, match=r"movie id 999999 is not in .*movies\.dat"):
    movielens.prepare("ml-1m", tmp_path / "out", raw_dir=ml1m_dir)
  _write_ratings(ml1m_dir / "ratings.dat", [(1, 1, 5, 100), (88888, 2, 4, 200)])
  with pytest.raises(SchemaError, match=r"user id 88888 is not in .*users\.dat"):
    movielens.prepare("ml-1m", tmp_path / "out", raw_dir=ml1m_dir)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="dataset"):
    movielens.prepare("ml-20m", tmp_path)
  with pytest.raises(ValueError, match="protocol"):
    movielens.prepare("ml-100k", tmp_path, protocol="dien")
  with pytest.raises(ValueError, match="max_len"):
    movielens.prepare("ml-100k", tmp_path, max_len=0)


# -------------------------------------------------------------------------------- ml-100k autoint


def test_ml100k_autoint(tmp_path):
  raw = shared_path("data", "movielens-100k")
  rating_of = {}
  with open(raw / "u.data") as fh:
    for line in fh:
      u, m, r, t = map(int, line.split("\t"))
      rating_of[(u, m, t)] = r
  ratings = list(rating_of.values())
  assert len(ratings) == 100_000
  path = movielens.prepare("ml-100k", tmp_path, raw_dir=raw, protocol="autoint", max_len=MAX_LEN)
  ds = Dataset(path)
  assert path.name == f"ml-100k-autoint-len{MAX_LEN}"
  rows = sum(ds.num_rows(s) for s in SPLITS)
  assert rows == sum(r != 3 for r in ratings) != len(ratings)
  assert ds.stats["dropped_rating_3"] == sum(r == 3 for r in ratings)
  labels = np.concatenate([np.asarray(ds.columns[s]["label"]) for s in SPLITS])
  assert int(labels.sum()) == sum(r > 3 for r in ratings)
  assert [f.name for f in ds.schema.group("user")] == ["user_id", "gender", "age", "occupation", "zip_prefix"]
  item = _vocab(path, "item_id")
  vocab = {k: _vocab(path, k) for k in ("gender", "age", "occupation", "zip_prefix")}
  assert vocab["age"][2:] == ["1", "18", "25", "35", "45", "50", "56"]
  assert vocab["gender"][2:] == ["F", "M"]
  users = {}
  with open(raw / "u.user", encoding="latin-1") as fh:
    for line in fh:
      uid, age, gender, occ, zipc = line.rstrip("\n").split("|")
      users[int(uid)] = (gender, int(age), occ, zipc[:3])
  saw_rating3_behaviour = False
  for split in SPLITS:
    c = _cols(ds, split)
    for k in vocab:
      f = ds.schema[k]
      assert (c[k] >= 2).all() and (c[k] < f.vocab_size).all(), (split, k)  # never pad/OOV here
    for r in range(0, len(c["label"]), 7 if split == "train" else 1):
      u, t = int(c["user"][r]), int(c["timestamp"][r])
      if c["item_id"][r] >= 2:
        rating = rating_of[(u, int(item[c["item_id"][r]]), t)]
        assert rating != 3 and c["label"][r] == float(rating > 3)
      gender, age, occ, zp = users[u]
      assert vocab["gender"][c["gender"][r]] == gender and vocab["occupation"][c["occupation"][r]] == occ
      assert vocab["zip_prefix"][c["zip_prefix"][r]] == zp
      assert int(vocab["age"][c["age"][r]]) == max(a for a in (1, 18, 25, 35, 45, 50, 56) if a <= max(age, 1))
      for hid, ht in zip(c["hist_item_id"][r], c["hist_timestamp"][r]):
        if hid >= 2:
          assert ht < t
          saw_rating3_behaviour |= rating_of[(u, int(item[hid]), int(ht))] == 3
  assert saw_rating3_behaviour  # rating-3 ratings stay usable as behaviours
  assert ds.stats["oov"]["train"]["hist_item_id"] == 0


def test_holdout_k_puts_each_users_last_k_samples_in_test_and_enables_gauc(small_raw, tmp_path):
  from ctrjax import metrics
  ds = Dataset(movielens.prepare("ml-latest-small", tmp_path, max_len=MAX_LEN, holdout=3))
  assert ds.path.name == f"ml-latest-small-din-len{MAX_LEN}-holdout3"
  eligible = {u for u, v in small_raw.items() if len(v) >= 7}
  assert ds.num_rows("valid") == ds.num_rows("test") == 3 * len(eligible)
  c = {s: _cols(ds, s) for s in SPLITS}
  for u in list(eligible)[:50]:
    times = sorted(t for t, _, _ in small_raw[u])
    test_t = sorted(int(t) for t, uu in zip(c["test"]["timestamp"], c["test"]["user"]) if uu == u)
    valid_t = sorted(int(t) for t, uu in zip(c["valid"]["timestamp"], c["valid"]["user"]) if uu == u)
    assert test_t == times[-3:] and valid_t == times[-6:-3]
  # Several impressions per user: GAUC is defined for the users with both classes.
  value, coverage = metrics.gauc(c["test"]["label"], np.random.default_rng(0).random(ds.num_rows("test")),
                                 c["test"]["user"])
  assert np.isfinite(value) and coverage > 0.3


# ----------------------------------------------------------------------- ml-100k, AutoInt 7 fields


def test_ml100k_autoint7_fields_labels_split_and_scaling(tmp_path):
  raw = shared_path("data", "movielens-100k")
  ratings = [tuple(map(int, line.split("\t"))) for line in (raw / "u.data").read_text().splitlines()]
  kept = [r for r in ratings if r[2] != 3]
  users = {}
  for line in (raw / "u.user").read_text(encoding="latin-1").splitlines():
    uid, age, gender, occ, zipc = line.split("|")
    users[int(uid)] = (gender, occ, zipc)
  years = {}
  for line in (raw / "u.item").read_text(encoding="latin-1").splitlines():
    f = line.split("|")  # the title's "(1995)" first, else the release date's year
    in_title = [int(y) for y in re.findall(r"\((\d{4})\)", f[1])]
    years[int(f[0])] = in_title[-1] if in_title else int(f[2][-4:]) if f[2] else None
  path = movielens.prepare("ml-100k", tmp_path, raw_dir=raw, protocol="autoint7")
  assert path.name == "ml-100k-autoint7"
  ds = Dataset(path)
  inputs = [f.name for f in ds.schema.fields if f.group not in ("label", "meta")]
  assert inputs == ["gender", "age", "occupation", "zip", "item_genres", "item_year_bucket", "timestamp_scaled"]
  rows = {s: ds.num_rows(s) for s in SPLITS}
  assert sum(rows.values()) == len(kept) and ds.stats["dropped_rating_3"] == len(ratings) - len(kept)
  assert rows["train"] == int(0.8 * len(kept)) and rows["valid"] == int(0.1 * len(kept))
  c = {s: _cols(ds, s) for s in SPLITS}
  # Random, not temporal: every split spans the whole period and most users.
  for s in SPLITS:
    assert c[s]["timestamp"].min() < np.quantile(c["train"]["timestamp"], 0.05)
    assert len(np.unique(c[s]["user"])) > 0.5 * len(users)
  labels = np.concatenate([c[s]["label"] for s in SPLITS])
  assert int(labels.sum()) == sum(r[2] > 3 for r in kept)
  # MinMax over all samples: exactly 0 and 1 at the extremes, affine in the raw timestamp.
  scaled = np.concatenate([c[s]["timestamp_scaled"] for s in SPLITS])
  ts = np.concatenate([c[s]["timestamp"] for s in SPLITS])
  assert scaled.min() == 0.0 and scaled.max() == 1.0
  np.testing.assert_allclose(scaled, (ts - ts.min()) / (ts.max() - ts.min()), rtol=1e-6)
  zips, buckets, occs = _vocab(path, "zip"), _vocab(path, "year_bucket"), _vocab(path, "occupation")
  assert buckets[2:5] == ["<=1929", "1930s", "1940s"] and buckets[-1] == "1998"
  assert [movielens.year_bucket(y) for y in (1922, 1929, 1930, 1968, 1970, 1995)] == \
      ["<=1929", "<=1929", "1930s", "1960s", "1970", "1995"]
  rating_rows = {}
  for u, m, r, t in kept:
    rating_rows.setdefault((u, t), set()).add(m)
  t = c["test"]
  for r in range(0, len(t["label"]), 97):
    u = int(t["user"][r])
    gender, occ, zipc = users[u]
    assert zips[t["zip"][r]] == zipc and occs[t["occupation"][r]] == occ  # whole zip, not a prefix
    movies = rating_rows[(u, int(t["timestamp"][r]))]
    assert any(years[m] is None and t["item_year_bucket"][r] == 1
               or years[m] is not None and buckets[t["item_year_bucket"][r]] == movielens.year_bucket(years[m])
               for m in movies)


def test_autoint7_needs_demographics(tmp_path):
  with pytest.raises(ValueError, match="autoint7.*ml-latest-small has none"):
    movielens.prepare("ml-latest-small", tmp_path, protocol="autoint7")
