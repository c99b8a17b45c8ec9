"""Dataset format, schema validation, the writer's bad-input policies, and the batch loader."""
import json

import numpy as np
import pytest

from ctrjax.data import loader
from ctrjax.data.dataset import FINGERPRINT_FILE, Dataset, content_digest, fingerprint
from ctrjax.data.schema import Field, Schema, SchemaError
from ctrjax.data.writer import DatasetWriter

T = 4
SEEDS = {"train": 0, "valid": 1, "test": 2}
SCHEMA = Schema((
    Field("item_id", "item", "categorical", vocab_size=50),
    Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=50, table="item_id"),
    Field("user_id", "user", "categorical", vocab_size=20),
    Field("price", "context", "numeric", dtype="float32"),
    Field("label", "label", "numeric", dtype="float32"),
    Field("user", "meta", "categorical"),
))


def _rows(n, seed):
  rng = np.random.default_rng(seed)
  hist = rng.integers(2, 50, (n, T)).astype(np.int32)
  lengths = rng.integers(0, T + 1, n)
  hist[np.arange(T)[None, :] < (T - lengths)[:, None]] = 0          # left padding
  users = rng.integers(2, 20, n).astype(np.int32)
  return {"item_id": rng.integers(2, 50, n).astype(np.int32), "hist_item_id": hist, "user_id": users,
          "price": rng.random(n).astype(np.float32), "label": rng.integers(0, 2, n).astype(np.float32),
          "user": users}


def _write(path, sizes=(1000, 130, 77), chunk=300, **kw):
  w = DatasetWriter(path, SCHEMA, **kw)
  for split, n in zip(("train", "valid", "test"), sizes):
    rows = _rows(n, seed=SEEDS[split])
    for s in range(0, n, chunk):
      w.append(split, {k: v[s:s + chunk] for k, v in rows.items()})
  return w.finalize(stats={"provenance": "test"})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _write(tmp_path_factory.mktemp("ds") / "toy")


def test_written_dataset_roundtrips(data_dir):
  ds = Dataset(data_dir)
  assert [ds.num_rows(s) for s in ("train", "valid", "test")] == [1000, 130, 77]
  assert ds.schema == SCHEMA
  stats = json.loads((data_dir / "stats.json").read_text())
  assert stats["rows"] == {"train": 1000, "valid": 130, "test": 77}
  assert stats["provenance"] == "test"
  train = ds.columns["train"]
  assert stats["positive_rate"]["train"] == pytest.approx(float(np.mean(train["label"])))
  # Counts over the training split, shared table: candidate and behaviour ids together.
  expected = np.bincount(np.concatenate([train["item_id"], np.ravel(train["hist_item_id"])]), minlength=50)
  np.testing.assert_array_equal(ds.counts["item_id"], expected)
  np.testing.assert_array_equal(train["item_id"], _rows(1000, SEEDS["train"])["item_id"])


def _corrupt(tmp_path, mutate):
  path = _write(tmp_path / "bad")
  mutate(path)
  with pytest.raises(SchemaError) as e:
    Dataset(path)
  return str(e.value)


def test_missing_column_names_field_and_split(tmp_path):
  msg = _corrupt(tmp_path, lambda p: (p / "valid" / "user_id.npy").unlink())
  assert "'user_id'" in msg and "'valid'" in msg and "missing" in msg


def test_wrong_dtype_names_field_and_split(tmp_path):
  msg = _corrupt(tmp_path, lambda p: np.save(p / "test" / "item_id.npy", np.zeros(77, np.int64)))
  assert "'item_id'" in msg and "'test'" in msg and "dtype" in msg


def test_id_out_of_vocabulary_names_field_split_and_row(tmp_path):
  def mutate(p):
    col = np.load(p / "train" / "hist_item_id.npy")
    col[123, 2] = 50
    np.save(p / "train" / "hist_item_id.npy", col)
  msg = _corrupt(tmp_path, mutate)
  assert "'hist_item_id'" in msg and "'train'" in msg and "row 123" in msg and "vocab_size=50" in msg


def test_length_mismatch_names_field_and_split(tmp_path):
  msg = _corrupt(tmp_path, lambda p: np.save(p / "valid" / "price.npy", np.zeros(129, np.float32)))
  assert "'price'" in msg and "'valid'" in msg and "129 rows" in msg


def test_interrupted_prep_is_not_a_dataset(tmp_path):
  msg = _corrupt(tmp_path, lambda p: (p / "stats.json").unlink())
  assert "not a complete ctrjax dataset" in msg


def test_schema_typo_is_a_clear_error(tmp_path):
  (tmp_path / "schema.json").write_text(json.dumps(
      {"fields": [{"name": "x", "group": "itme", "kind": "categorical", "vocab_size": 3}]}))
  with pytest.raises(SchemaError, match="group 'itme'"):
    Schema.load(tmp_path / "schema.json")
  (tmp_path / "schema.json").write_text(json.dumps({"fields": [{"name": "x", "grup": "item"}]}))
  with pytest.raises(SchemaError, match=r"unknown keys \['grup'\]"):
    Schema.load(tmp_path / "schema.json")


def test_writer_nan_policy_error_and_counted_zero(tmp_path):
  rows = _rows(10, 0)
  rows["price"][3] = np.nan
  w = DatasetWriter(tmp_path / "a", SCHEMA)
  with pytest.raises(SchemaError, match=r"'price'.*'train'.*row 3"):
    w.append("train", rows)
  w = DatasetWriter(tmp_path / "b", SCHEMA, numeric_nan_policy="zero")
  w.append("train", rows)
  path = w.finalize()
  assert json.loads((path / "stats.json").read_text())["nan_replaced"] == {"price": 1}
  assert Dataset(path).columns["train"]["price"][3] == 0.0


def test_writer_rejects_out_of_range_id(tmp_path):
  rows = _rows(10, 0)
  rows["user_id"][7] = 20
  with pytest.raises(SchemaError, match=r"'user_id'.*row 7"):
    DatasetWriter(tmp_path / "c", SCHEMA).append("train", rows)


def test_fingerprint_follows_the_content_not_the_prep_time_or_chunking(tmp_path):
  a = _write(tmp_path / "a")
  b = _write(tmp_path / "b", chunk=77)
  stats = json.loads((b / "stats.json").read_text())
  (b / "stats.json").write_text(json.dumps({**stats, "created": "another time", "command": "another"}))
  fp = fingerprint(a)
  assert (a / FINGERPRINT_FILE).read_text().strip() == fp == content_digest(a) == fingerprint(b)
  (b / FINGERPRINT_FILE).unlink()                       # prepared before fingerprints: computed, stored
  assert fingerprint(b) == fp and (b / FINGERPRINT_FILE).read_text().strip() == fp
  label = np.load(b / "train" / "label.npy")
  label[0] = 1 - label[0]                               # one label of 1,000 flipped, sizes unchanged
  np.save(b / "train" / "label.npy", label)
  assert content_digest(b) != fp
  _write(a, sizes=(999, 130, 77))                       # prepared again in place with other rows
  assert fingerprint(a) != fp


def test_batches_grouped_with_mask(data_dir):
  src = loader.EpochBatchSource(data_dir, "train", 64, seed=1)
  b = src[0]
  assert set(b) == {"item", "behavior", "user", "context", "label", "meta"}
  assert b["behavior"]["hist_item_id"].shape == (64, T)
  np.testing.assert_array_equal(b["behavior"]["mask"], b["behavior"]["hist_item_id"] != 0)
  assert b["label"].dtype == np.float32 and b["meta"]["weight"].sum() == 64


def test_shuffle_is_deterministic_per_seed_and_epoch(data_dir):
  a = loader.EpochBatchSource(data_dir, "train", 64, seed=3, num_epochs=2)
  b = loader.EpochBatchSource(data_dir, "train", 64, seed=3, num_epochs=2)
  c = loader.EpochBatchSource(data_dir, "train", 64, seed=4, num_epochs=2)
  bpe = a.batches_per_epoch
  assert bpe == 1000 // 64
  np.testing.assert_array_equal(a[5]["item"]["item_id"], b[5]["item"]["item_id"])
  assert not np.array_equal(a[5]["item"]["item_id"], c[5]["item"]["item_id"])
  assert not np.array_equal(a[0]["item"]["item_id"], a[bpe]["item"]["item_id"])   # reshuffled per epoch


def test_process_shards_partition_the_global_batch(data_dir):
  full = loader.EpochBatchSource(data_dir, "train", 64, seed=3)
  shards = [loader.EpochBatchSource(data_dir, "train", 64, seed=3, process_index=p, process_count=2)
            for p in range(2)]
  for i in (0, 7):
    np.testing.assert_array_equal(
        np.concatenate([s[i]["behavior"]["hist_item_id"] for s in shards]), full[i]["behavior"]["hist_item_id"])


def test_iterator_state_resumes_exactly_across_an_epoch_boundary(data_dir):
  src = loader.EpochBatchSource(data_dir, "train", 64, seed=3, num_epochs=3)
  it = loader.make_iterator(src)
  for _ in range(src.batches_per_epoch - 2):
    next(it)
  state = it.get_state()
  expected = [next(it)["item"]["item_id"] for _ in range(5)]
  resumed = loader.make_iterator(loader.EpochBatchSource(data_dir, "train", 64, seed=3, num_epochs=3))
  resumed.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(resumed)["item"]["item_id"], e)


def test_eval_sees_every_row_exactly_once(data_dir):
  ds = Dataset(data_dir)
  src = loader.EpochBatchSource(data_dir, "valid", 64, shuffle=False, drop_remainder=False)
  batches = list(loader.make_iterator(src))
  assert len(batches) == 3                                        # 130 rows -> 64 + 64 + 2 (+62 padding)
  weight = np.concatenate([b["meta"]["weight"] for b in batches])
  items = np.concatenate([b["item"]["item_id"] for b in batches])
  assert weight.sum() == 130 and np.all(weight[:130] == 1) and np.all(weight[130:] == 0)
  np.testing.assert_array_equal(items[:130], ds.columns["valid"]["item_id"])


def test_train_drops_the_partial_batch(data_dir):
  src = loader.EpochBatchSource(data_dir, "train", 64, seed=0)
  seen = np.concatenate([src[i]["meta"]["weight"] for i in range(len(src))])
  assert len(src) == 15 and seen.sum() == 15 * 64


def test_packed_batch_unpacks_to_the_loader_batch(data_dir):
  import jax
  from ctrjax.data.packing import BatchLayout
  b = loader.EpochBatchSource(data_dir, "valid", 64, shuffle=False, drop_remainder=False)[2]
  layout = BatchLayout.from_schema(SCHEMA)
  packed = layout.pack(b)
  assert set(packed) == {"ints", "floats"}
  assert packed["ints"].shape == (64, 1 + T + 1) and packed["floats"].shape == (64, 3)
  out = jax.jit(layout.unpack)(packed)
  for group in ("item", "behavior", "user", "context"):
    for name, value in b[group].items():
      np.testing.assert_array_equal(out[group][name], value, err_msg=f"{group}/{name}")
  np.testing.assert_array_equal(out["label"], b["label"])
  np.testing.assert_array_equal(out["weight"], b["meta"]["weight"])
  assert out["weight"].sum() == 2                        # 130 rows: the third batch has 2 real rows
