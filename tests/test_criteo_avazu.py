"""data_prep/criteo.py and avazu.py (via tabular.py): the AutoInt protocol on the real Criteo 10k file
and the shared samples."""
import collections
import datetime
import math

import ml_collections
import numpy as np
import pytest

from conftest import shared_path

from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import SPLITS, SchemaError
import data_prep
from data_prep import avazu, criteo, tabular

CRITEO_10K = ("data", "criteo-kaggle-first10k", "criteo_train_first10000.txt")
NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]


def _raw_lines(path):
  """1-based line number -> the line's tab-separated fields, read with plain str.split."""
  with open(path) as fh:
    return {i: line.rstrip("\n").split("\t") for i, line in enumerate(fh, 1)}


def _vocab(path, table):
  return [line.split("\t", 1)[1] for line in (path / "vocab" / f"{table}.tsv").read_text().splitlines()]


def _rows(ds):
  """Raw line number -> (split, {field: value}) over the whole dataset."""
  out = {}
  for split in SPLITS:
    cols = {name: np.asarray(col) for name, col in ds.columns[split].items()}
    for i, line in enumerate(cols["line"].tolist()):
      out[line] = (split, {name: col[i] for name, col in cols.items()})
  return out


def _log2(z: float) -> float:
  return float(math.floor(math.log(z) ** 2)) if z > 2 else z


@pytest.fixture(scope="module")
def raw10k():
  return _raw_lines(shared_path(*CRITEO_10K))


@pytest.fixture(scope="module")
def c10k(tmp_path_factory):
  """The real 10k file, default protocol: min_count 10, numeric values, counts over the train split."""
  path = criteo.prepare(tmp_path_factory.mktemp("criteo"), raw_dir=shared_path(*CRITEO_10K))
  return Dataset(path)  # validates dtypes, shapes, id ranges and counts


@pytest.fixture(scope="module")
def c10k_rows(c10k):
  return _rows(c10k)


def _train_counts(raw, rows, lines=None):
  """Per field, the occurrences of each raw value over ``lines`` (default: the train split's lines)."""
  lines = [ln for ln, (split, _) in rows.items() if split == "train"] if lines is None else lines
  return {j: collections.Counter(raw[ln][j] for ln in lines) for j in range(1, 40)}


# ------------------------------------------------------------------------------------- criteo 10k


def test_criteo_rows_split_and_positive_rate(c10k, c10k_rows, raw10k):
  stats = c10k.stats
  assert stats["data_lines"] == 10_000 and stats["header_lines"] == 0
  assert stats["malformed"]["lines"] == 0
  assert stats["rows"] == {"train": 8000, "valid": 1000, "test": 1000}   # exact 80/10/10
  assert sorted(c10k_rows) == list(range(1, 10_001))                      # every line exactly once
  for split in SPLITS:
    lines = [ln for ln, (s, _) in c10k_rows.items() if s == split]
    assert lines == sorted(lines)                                          # file order within a split
    expect = sum(raw10k[ln][0] == "1" for ln in lines) / len(lines)
    assert stats["positive_rate"][split] == pytest.approx(expect)
  assert sum(raw10k[ln][0] == "1" for ln in raw10k) == 2182               # 21.82 % positives overall
  assert [f.name for f in c10k.schema.group("context")] == NUMERIC + CATEGORICAL
  assert not c10k.schema.group("behavior") and not c10k.schema.group("user")
  assert not c10k.schema.group("item")


def test_criteo_rows_checked_by_hand(c10k, c10k_rows):
  """Lines 1, 3, 4 of the file; train counts of their values taken with grep over the train lines."""
  path = c10k.path
  # line 1 (test): I5 = 1382 -> ln 7.2313, squared 52.29 -> 52; I3 = 5 -> 2.59 -> 2; I9 = 181 -> 27;
  # z <= 2 stays z; I12 empty -> 0. C1 68fd1e64 (1387 train occurrences) is kept; C3 fb936136 (0)
  # and C10 a8cd5504 (4) are unknown (1); C22 empty -> missing (2).
  split, row = c10k_rows[1]
  assert split == "test"
  assert [float(row[f]) for f in NUMERIC] == [1, 1, 2, 0, 52, 1, 7, 2, 27, 1, 2, 0, 2]
  assert _vocab(path, "C1")[row["C1"]] == "68fd1e64" and row["C1"] >= 3
  assert row["C3"] == 1 and row["C10"] == 1 and row["C22"] == 2
  # line 3 (train): I4 = 14 -> 6.96 -> 6; I6 = 89 -> 20.15 -> 20; I11 = 3 -> 1.21 -> 1; I13 = 45 -> 14.
  # C1 287e684f: 9 train occurrences (13 in the file) -> unknown; C15 6dc710ed: 9 -> unknown;
  # C18 3412118d: 14 -> kept; C19 empty -> missing.
  split, row = c10k_rows[3]
  assert split == "train"
  assert [float(row[f]) for f in NUMERIC] == [2, 0, 1, 6, 44, 20, 1, 2, 30, 1, 1, 1, 14]
  assert row["C1"] == 1 and row["C15"] == 1 and row["C19"] == 2
  assert _vocab(path, "C18")[row["C18"]] == "3412118d"
  # line 4 (valid): I2 = 893 -> 46.17 -> 46; I5 = 4392 -> 70.35 -> 70; 7 empty I fields -> 0.
  # C4 2e17d6f6: 3 train occurrences -> unknown; C7 2e8a689b: 13 -> kept.
  split, row = c10k_rows[4]
  assert split == "valid"
  assert [float(row[f]) for f in NUMERIC] == [0, 46, 0, 0, 70, 0, 0, 0, 0, 0, 0, 0, 0]
  assert row["C4"] == 1 and _vocab(path, "C7")[row["C7"]] == "2e8a689b"
  assert row["line"] == 4 and row["label"] == 0.0


def test_criteo_every_value_matches_a_reference(c10k, c10k_rows, raw10k):
  """All 10k rows x 39 fields against plain-Python counting, thresholding and log^2."""
  counts = _train_counts(raw10k, c10k_rows)
  vocab = {f: _vocab(c10k.path, f) for f in CATEGORICAL}
  for j, f in enumerate(CATEGORICAL, 14):
    kept = sorted(v for v, n in counts[j].items() if n >= criteo.MIN_COUNT and v != "")
    assert vocab[f] == ["<pad>", "<oov>", "<missing>", *kept], f      # threshold over the train split
    assert c10k.stats["vocab"][f] == {"distinct": len(counts[j]) - ("" in counts[j]), "kept": len(kept),
                                      "vocab_size": len(kept) + 3}
  for j, f in enumerate(NUMERIC, 1):
    assert c10k.stats["missing"][f] == sum(raw10k[ln][j] == "" for ln in raw10k)
  ids = {f: {v: i for i, v in enumerate(vocab[f])} for f in CATEGORICAL}
  for ln, (_, row) in c10k_rows.items():
    fields = raw10k[ln]
    assert row["label"] == float(fields[0])
    for j, f in enumerate(NUMERIC, 1):
      assert row[f] == (_log2(float(fields[j])) if fields[j] else 0.0), (ln, f)
    for j, f in enumerate(CATEGORICAL, 14):
      v = fields[j]
      expect = 2 if v == "" else (ids[f][v] if counts[j][v] >= criteo.MIN_COUNT else 1)
      assert row[f] == expect, (ln, f, v)


def test_criteo_counts_over_all_rows_and_buckets(tmp_path, c10k_rows, raw10k):
  """vocab_rows='all' counts every line (AutoInt's scripts); numeric='bucket' makes I fields categorical."""
  path = criteo.prepare(tmp_path, raw_dir=shared_path(*CRITEO_10K), vocab_rows="all", numeric="bucket")
  ds = Dataset(path)
  assert path.name == "criteo-criteo_train_first10000-min10-bucket-allrows-seed2018"
  rows = _rows(ds)
  assert {ln: s for ln, (s, _) in rows.items()} == {ln: s for ln, (s, _) in c10k_rows.items()}
  counts = _train_counts(raw10k, rows, lines=list(raw10k))
  assert _vocab(path, "C1")[rows[3][1]["C1"]] == "287e684f"   # 13 in the file: kept under 'all'
  buckets = {j: collections.Counter(math.floor(_log2(float(fields[j])))
                                    for fields in raw10k.values() if fields[j])
             for j in range(1, 14)}
  for j, f in enumerate(NUMERIC, 1):
    assert ds.schema[f].kind == "categorical"
    kept = sorted(b for b, n in buckets[j].items() if n >= 10)
    assert _vocab(path, f) == ["<pad>", "<oov>", "<missing>", *map(str, kept)]
  assert _vocab(path, "I5")[rows[1][1]["I5"]] == "52" and rows[1][1]["I12"] == 2   # missing -> 2
  ids = {f: {v: i for i, v in enumerate(_vocab(path, f))} for f in CATEGORICAL}
  for ln, (_, row) in rows.items():
    for j, f in enumerate(CATEGORICAL, 14):
      v = raw10k[ln][j]
      assert row[f] == (2 if v == "" else ids[f][v] if counts[j][v] >= 10 else 1), (ln, f, v)


def test_criteo_chunk_size_does_not_change_the_output(tmp_path, c10k):
  path = criteo.prepare(tmp_path, raw_dir=shared_path(*CRITEO_10K), chunk_bytes=40_000)  # ~160 lines a chunk
  other = Dataset(path)
  for split in SPLITS:
    for f in c10k.schema.fields:
      np.testing.assert_array_equal(other.columns[split][f.name], c10k.columns[split][f.name],
                                    err_msg=f"{split}/{f.name}")
  for f in CATEGORICAL:
    assert _vocab(path, f) == _vocab(c10k.path, f)


def test_criteo_malformed_lines_are_counted_not_silently_dropped(tmp_path, raw10k, capsys):
  lines = ["\t".join(raw10k[ln]) for ln in range(1, 121)]
  lines[4] = "\t".join(raw10k[5][:-1])                 # line 5: 39 fields
  lines[16] = "\t".join(raw10k[17] + ["x"])            # line 17: 41 fields
  lines[29] = "\t".join(["2", *raw10k[30][1:]])        # line 30: label 2
  lines[43] = "\t".join([*raw10k[44][:5], "1e", *raw10k[44][6:]])    # line 44: I5 not a number
  lines[59] = "\t".join([*raw10k[60][:14], "123456789", *raw10k[60][15:]])  # line 60: 9-byte C1
  lines[99] = ""                                       # line 100: blank
  raw = tmp_path / "train.txt"
  raw.write_text("\n".join(lines) + "\n")
  results = {}
  for chunk_bytes in (100, tabular.DEFAULT_CHUNK_BYTES):    # 100 bytes: shorter than one line
    path = criteo.prepare(tmp_path / str(chunk_bytes), raw_dir=tmp_path, min_count=2, chunk_bytes=chunk_bytes)
    results[chunk_bytes] = ds = Dataset(path)
    bad = ds.stats["malformed"]
    assert bad["lines"] == 6 and bad["first_lines"] == [5, 17, 30, 44, 60, 100]
    assert bad["by_reason"] == {"field count": 3, "label": 1, "number": 1, "token length": 1}
    assert sum(ds.stats["rows"].values()) == 120 - 6
    assert set(_rows(ds)) == set(range(1, 121)) - {5, 17, 30, 44, 60, 100}
    assert "skipped 6 malformed line(s)" in capsys.readouterr().out
  for split in SPLITS:
    for f in results[100].schema.fields:
      np.testing.assert_array_equal(results[100].columns[split][f.name],
                                    results[tabular.DEFAULT_CHUNK_BYTES].columns[split][f.name])


def test_criteo_all_lines_malformed_is_an_error(tmp_path, raw10k):
  raw = tmp_path / "bad.txt"
  header = ",".join(["label", *NUMERIC, *CATEGORICAL])
  raw.write_text(header + "\n" + "\t".join(raw10k[1]) + "\n" + ",".join(raw10k[2][:-1]) + "\n")
  with pytest.raises(SchemaError, match=r"bad.txt: all 2 data lines are malformed \(first: lines \[2, 3\]"):
    criteo.prepare(tmp_path, raw_dir=raw, min_count=1)


def test_criteo_cache_reuse_and_args(tmp_path, capsys):
  first = criteo.prepare(tmp_path, raw_dir=shared_path(*CRITEO_10K), min_count=20)
  capsys.readouterr()
  assert criteo.prepare(tmp_path, raw_dir=shared_path(*CRITEO_10K), min_count=20) == first
  assert "reusing cached" in capsys.readouterr().out
  other = criteo.prepare(tmp_path, raw_dir=shared_path(*CRITEO_10K), min_count=20, seed=7)
  assert other != first and Dataset(other).stats["rows"] == Dataset(first).stats["rows"]
  assert not np.array_equal(Dataset(other).columns["test"]["line"], Dataset(first).columns["test"]["line"])
  for bad in ({"min_count": 0}, {"numeric": "log"}, {"vocab_rows": "test"}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      criteo.prepare(tmp_path, raw_dir=shared_path(*CRITEO_10K), **bad)


def test_config_dispatch(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name="criteo", out_root=str(tmp_path),
                                       raw_dir=str(shared_path(*CRITEO_10K))))
  path = data_prep.prepare(cfg)
  assert path.name == "criteo-criteo_train_first10000-min10-value-seed2018"
  cfg = data_prep.dataset_config("avazu", out_root=str(tmp_path), min_count=2, vocab_rows="all", seed=3)
  assert data_prep.prepare(cfg).name == "avazu-deepctr_avazu_sample-min2-allrows-seed3"


# ---------------------------------------------------------------------------- other sample files


def test_criteo_headered_csv_samples(tmp_path):
  """DeepCTR's and torch-rechub's samples: the raw columns with a comma-separated header, floats."""
  for name, lines in (("deepctr_criteo_sample.txt", 200), ("torchrechub_criteo_sample.csv", 115)):
    raw = shared_path("data", "criteo-samples", name)
    ds = Dataset(criteo.prepare(tmp_path, raw_dir=raw, min_count=2))
    assert ds.stats["header_lines"] == 1 and ds.stats["malformed"]["lines"] == 0
    n_eval = lines // 10
    assert ds.stats["rows"] == {"train": lines - 2 * n_eval, "valid": n_eval, "test": n_eval}
    first = raw.read_text().splitlines()[1].split(",")         # file line 2
    split, row = _rows(ds)[2]
    assert [float(row[f]) for f in NUMERIC] == [_log2(float(v)) if v else 0.0 for v in first[1:14]]


@pytest.mark.parametrize("module,folder,name", [
    (criteo, "criteo-samples", "paddlerec_criteo_sample_train.txt"),
    (avazu, "avazu-samples", "torchrechub_avazu_train_sample.csv"),
    (criteo, "avazu-samples", "deepctr_avazu_sample.txt"),
])
def test_already_encoded_files_are_refused_on_line_1(tmp_path, module, folder, name):
  raw = shared_path("data", folder, name)
  with pytest.raises(SchemaError, match=rf"{name}, line 1: expected the raw .* header.*not supported"):
    module.prepare(tmp_path, raw_dir=raw)


# ------------------------------------------------------------------------------------------ avazu


def test_avazu_sample_prepares(tmp_path):
  raw = shared_path("data", "avazu-samples", "deepctr_avazu_sample.txt")
  ds = Dataset(avazu.prepare(tmp_path, raw_dir=raw))
  assert ds.stats["rows"] == {"train": 80, "valid": 10, "test": 10}
  names = [f.name for f in ds.schema.group("context")]
  assert len(names) == 23 and names[:2] == ["hour", "weekday"] and "id" not in names
  header, *lines = [line.split(",") for line in raw.read_text().splitlines()]
  rows = _rows(ds)
  train = [ln for ln, (s, _) in rows.items() if s == "train"]
  for col in avazu.CATEGORICAL:
    j = header.index(col)
    counts = collections.Counter(lines[ln - 2][j] for ln in train)
    vocab = _vocab(ds.path, col)
    assert vocab[3:] == sorted(v for v, n in counts.items() if n >= avazu.MIN_COUNT)
    for ln, (_, row) in rows.items():
      v = lines[ln - 2][j]
      assert row[col] == (vocab.index(v) if counts[v] >= avazu.MIN_COUNT else 1), (ln, col)
  # every sample row is at 14102100: 2014-10-21 00:00 UTC, a Tuesday
  assert {(int(r["hour"]), int(r["weekday"])) for _, r in rows.values()} == {(0 + 2, 1 + 2)}
  assert [r["label"] for _, (_, r) in sorted(rows.items())] == [float(x[1]) for x in lines]


def test_avazu_hour_fields():
  hours = np.array([14102100, 14102923, 14110115, 14023100, 14102124, 14130101, 1410210.5], np.float64)
  got, bad = avazu.hour_fields(hours)
  assert bad.tolist() == [False, False, False, True, True, True, True]   # Feb 31, hour 24, month 13, x.5
  for i in range(3):
    h = int(hours[i])
    when = datetime.datetime(2000 + h // 1_000_000, h // 10_000 % 100, h // 100 % 100, h % 100)
    assert (got["hour"][i], got["weekday"][i]) == (when.hour, when.weekday())
