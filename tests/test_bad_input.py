"""Bad input gets a one-line SchemaError naming the file (and line or row), or a counted skip policy."""
import json

import numpy as np
import pytest

from test_data import SCHEMA, _rows, _write

from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import Schema, SchemaError
from ctrjax.data.writer import DatasetWriter

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
