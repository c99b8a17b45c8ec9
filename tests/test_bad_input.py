"""Bad input gets a one-line SchemaError naming the file (and line or row), or a counted skip policy."""
import json

import numpy as np
import pytest

from conftest import shared_path
from test_data import SCHEMA, _rows, _write

from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import Schema, SchemaError
from ctrjax.data.writer import DatasetWriter
from data_prep import criteo, movielens

# --------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("value", [-1.0, 7.0, 0.5])
def test_writer_rejects_a_label_outside_0_1(tmp_path, value):
  rows = _rows(10, 0)
  rows["label"][6] = value
  with pytest.raises(SchemaError, match=rf"'label'.*'train'.*{value} at row 6.*0 or 1"):
    DatasetWriter(tmp_path / "ds", SCHEMA).append("train", rows)


def test_validate_rejects_a_label_outside_0_1(tmp_path):
  path = _write(tmp_path / "ds")
  label = np.load(path / "valid" / "label.npy")
  label[42] = -1.0
  np.save(path / "valid" / "label.npy", label)
  with pytest.raises(SchemaError, match=r"label\.npy.*'label'.*'valid'.*-1\.0 at row 42.*0 or 1"):
    Dataset(path)


# --------------------------------------------------------------------------- json metadata


def test_corrupt_stats_json_names_the_file_and_the_repair(tmp_path):
  path = _write(tmp_path / "ds")
  (path / "stats.json").write_text('{"rows": {"train": 10')
  with pytest.raises(SchemaError, match=r"stats\.json: invalid JSON at line 1.*delete .*ds.* rerun"):
    Dataset(path)


@pytest.mark.parametrize("content", [None, b"\xff\xfe{", b"[]", b'{"fields": [3]}'])
def test_corrupt_schema_json_names_the_file_and_the_repair(tmp_path, content):
  path = _write(tmp_path / "ds")
  text = (path / "schema.json").read_bytes()
  (path / "schema.json").write_bytes(text[:len(text) // 2] if content is None else content)
  with pytest.raises(SchemaError, match=r"schema\.json.*delete .*ds.* rerun"):
    Dataset(path)


def test_schema_json_field_errors_name_the_file(tmp_path):
  (tmp_path / "schema.json").write_text(json.dumps(
      {"fields": [{"name": "x", "group": "label", "kind": "numeric", "shape": ["a"]}]}))
  with pytest.raises(SchemaError, match=r"schema\.json: field #0 \('x'\)"):
    Schema.load(tmp_path / "schema.json")
  (tmp_path / "schema.json").write_text(json.dumps({"fields": [{"name": "x", "group": "item", "kind": "numeric"}]}))
  with pytest.raises(SchemaError, match=r"schema\.json: .*exactly one field must have group 'label'"):
    Schema.load(tmp_path / "schema.json")


def test_corrupt_counts_file_names_the_file(tmp_path):
  path = _write(tmp_path / "ds")
  (path / "counts" / "item_id.npy").write_bytes(b"\x93NUMPY garbage")
  with pytest.raises(SchemaError, match=r"counts/item_id\.npy: unreadable \.npy"):
    Dataset(path)


# ------------------------------------------------------------------------------- movielens


@pytest.fixture
def small_dir(tmp_path):
  """A two-movie ml-latest-small raw directory (ratings.csv is written by each test)."""
  d = tmp_path / "raw"
  d.mkdir()
  (d / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Comedy\n2,B (1996),Drama\n")
  return d


def _small_ratings(raw_dir, last_line: bytes):
  (raw_dir / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,100\n2,1,5.0,300\n"
                                        + last_line + b"\n")


@pytest.mark.parametrize("last_line, what", [
    (b"1,2,4.0,1e30", "timestamp"),
    (b"1,2,4.0,9007199254740993", "timestamp"),
    (b"1,1e19,4.0,200", "movie id"),
    (b"1,2,1e39,200", "rating"),
])
def test_movielens_out_of_range_number_is_an_error_not_a_wrap(small_dir, tmp_path, last_line, what):
  _small_ratings(small_dir, last_line)
  with pytest.raises(SchemaError, match=rf"ratings\.csv, line 4: {what} "):
    movielens.prepare("ml-latest-small", tmp_path / "out", raw_dir=small_dir)


def test_movielens_binary_garbage_names_file_and_line(small_dir, tmp_path):
  _small_ratings(small_dir, b"1,2,\xff\xfe\x00,400")
  with pytest.raises(SchemaError, match=r"ratings\.csv, line 4: not utf-8 \(invalid start byte at byte 4\)"):
    movielens.prepare("ml-latest-small", tmp_path / "out", raw_dir=small_dir)
  _small_ratings(small_dir, b"1,2,4.0,400")
  with open(small_dir / "movies.csv", "ab") as fh:
    fh.write(b"3,\xc3(,Drama\n")
  with pytest.raises(SchemaError, match=r"movies\.csv, line 4: not utf-8"):
    movielens.prepare("ml-latest-small", tmp_path / "out", raw_dir=small_dir)


# ---------------------------------------------------------------------------------- criteo


@pytest.mark.parametrize("numeric", ["value", "bucket"])
def test_criteo_number_too_negative_is_a_counted_malformed_line(tmp_path, numeric):
  lines = shared_path("data", "criteo-kaggle-first10k", "criteo_train_first10000.txt").read_text().splitlines()[:40]
  fields = lines[3].split("\t")
  fields[2] = "-1e300"                                     # I2 on line 4: below -2^63
  lines[3] = "\t".join(fields)
  (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
  ds = Dataset(criteo.prepare(tmp_path / "out", raw_dir=tmp_path, min_count=1, numeric=numeric))
  assert ds.stats["malformed"]["by_reason"]["number"] == 1 and ds.stats["malformed"]["first_lines"] == [4]
  assert sum(ds.stats["rows"].values()) == 39
  if numeric == "bucket":
    assert not any(v.startswith("-92233") for v in (ds.path / "vocab" / "I2.tsv").read_text().split())
