"""data_prep/amazon.py on real Electronics review lines: formats, DIN pairs, split, leakage, categories."""
import gzip
import json
import shutil

import numpy as np
import pytest

from conftest import shared_path

from configs import base as base_config
from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import OOV_ID, SPLITS, SchemaError
import data_prep
from data_prep import amazon

SAMPLE = ("data", "amazon-samples", "paddlerec_reviews_Electronics_5.head290.json")
NUM_USERS = 29  # the regrouped sample: line i -> user TEST{i % 29}, 10 reviews each
MAX_LEN = 4     # < 10 reviews, so truncation is exercised
META = [  # made up: the sample has no meta file; Python-literal and JSON lines, one asin missing
    "{'asin': '0528881469', 'categories': [['Electronics', 'GPS & Navigation', 'Trucking GPS']]}",
    '{"asin": "0594451647", "categories": [["Electronics", "Cables"], ["Electronics", "Computers", "HDMI"]]}',
    "{'asin': '0972683275', 'title': 'Mount', 'categories': [['Electronics', 'TV Mounts']]}",
    "{'asin': '1400501466', 'categories': [['Electronics', 'eBook Readers']]}",
    "{'asin': '1400501520', 'categories': []}",
    "{'asin': 'B000UNUSED', 'categories': [['Electronics', 'Unused']]}",
]


def _lines():
  return shared_path(*SAMPLE).read_text(encoding="utf-8").splitlines()


def _regrouped(lines):
  """The real lines with reviewerID replaced by TEST{i % 29}: the sample is sorted by asin, so 288 of
  its 289 users have a single review; regrouped, every user has 10 reviews of 2-3 of the 6 items."""
  out = []
  for i, line in enumerate(lines):
    record = json.loads(line)
    record["reviewerID"] = f"TEST{i % NUM_USERS:02d}"
    out.append(json.dumps(record))
  return out


def _write(directory, lines, meta=None):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "reviews_Electronics_5.json").write_text("".join(line + "\n" for line in lines))
  if meta is not None:
    (directory / "meta_Electronics.json").write_text("".join(line + "\n" for line in meta))
  return directory


def _vocab(path, table):
  return [line.split("\t")[1] for line in (path / "vocab" / f"{table}.tsv").read_text().splitlines()]


def _cols(ds, split):
  return {name: np.asarray(col) for name, col in ds.columns[split].items()}


@pytest.fixture(scope="module")
def sequences():
  """TEST user index -> [(time, asin)] sorted by time, ties in file order, read independently."""
  by_user = {}
  for i, line in enumerate(_lines()):
    record = json.loads(line)
    by_user.setdefault(i % NUM_USERS, []).append((record["unixReviewTime"], i, record["asin"]))
  return {u: [(t, asin) for t, _, asin in sorted(v)] for u, v in by_user.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  raw = _write(tmp_path_factory.mktemp("raw"), _regrouped(_lines()), META)
  return Dataset(amazon.prepare(tmp_path_factory.mktemp("prep"), raw_dir=raw, max_len=MAX_LEN))


def test_verbatim_sample(tmp_path):
  raw = _write(tmp_path / "raw", _lines())
  with pytest.warns(UserWarning, match="no meta_Electronics"):
    ds = Dataset(amazon.prepare(tmp_path / "prep", raw_dir=raw))
  s = ds.stats
  assert (s["num_reviews"], s["num_users"], s["num_items"], s["num_pairs"]) == (290, 289, 6, 1)
  assert (s["users_without_pairs"], s["users_train_only"], s["users_with_valid_and_test"]) == (288, 1, 0)
  assert s["rows"] == {"train": 2, "valid": 0, "test": 0}
  assert s["corrupt_lines"] == {"reviews": 0, "meta": 0}
  assert s["line_formats"]["reviews"] == {"json": 290, "python": 0}


def test_json_and_python_literal_lines_parse_to_the_same_records(tmp_path):
  lines = _regrouped(_lines())
  reader = amazon._LineReader("error")
  for i, line in enumerate(lines):
    as_python = repr(json.loads(line))
    assert reader.parse("reviews", "x", i + 1, as_python) == reader.parse("reviews", "x", i + 1, line)
  mixed = [repr(json.loads(line)) if i % 2 else line for i, line in enumerate(lines)]
  a = Dataset(amazon.prepare(tmp_path / "a", raw_dir=_write(tmp_path / "j", lines, META), max_len=MAX_LEN))
  b = Dataset(amazon.prepare(tmp_path / "b", raw_dir=_write(tmp_path / "m", mixed, META), max_len=MAX_LEN))
  assert b.stats["line_formats"]["reviews"] == {"json": 145, "python": 145}
  assert a.stats["line_formats"]["meta"] == {"json": 1, "python": 4}
  for split in SPLITS:
    for name, col in _cols(a, split).items():
      np.testing.assert_array_equal(col, _cols(b, split)[name], err_msg=f"{split}/{name}")


def test_split_sizes_and_one_user_by_hand(prepared):
  ds = prepared
  assert ds.stats["rows"] == {"train": NUM_USERS * 7 * 2, "valid": NUM_USERS * 2, "test": NUM_USERS * 2}
  for split, pairs in (("train", 7), ("valid", 1), ("test", 1)):
    c = _cols(ds, split)
    assert (np.bincount(c["user"], minlength=NUM_USERS) == 2 * pairs).all()
    np.testing.assert_array_equal(c["label"], np.tile([1, 0], NUM_USERS * pairs))
  items = _vocab(ds.path, "item_id")
  # TEST00's reviews by time (line: asin): 174, 232, 58, 145, 29, 87: 0972683275; 0: 0528881469;
  # 116, 203: 0972683275; 261: 1400501466 (1397347200).
  test = {k: v[:2] for k, v in _cols(ds, "test").items()}
  assert [items[i] for i in test["item_id"]][0] == "1400501466"
  assert test["timestamp"].tolist() == [1397347200] * 2
  hist = [[items[i] for i in row] for row in test["hist_item_id"]]
  assert hist == [["0972683275", "0528881469", "0972683275", "0972683275"]] * 2
  assert test["hist_timestamp"][0].tolist() == [1360886400, 1370131200, 1386633600, 1388707200]
  valid = _cols(ds, "valid")
  assert items[valid["item_id"][0]] == "0972683275" and valid["timestamp"][0] == 1388707200
  train = _cols(ds, "train")
  mine = train["user"] == 0
  assert [items[i] for i in train["item_id"][mine][::2]] == ["0972683275"] * 5 + ["0528881469", "0972683275"]
  first = train["hist_item_id"][mine][0]
  assert first[:-1].tolist() == [0, 0, 0] and items[first[-1]] == "0972683275"
  negatives = set()
  for split in SPLITS:
    c = _cols(ds, split)
    negatives |= {items[i] for i in c["item_id"][c["user"] == 0][1::2]}
  assert negatives <= {"0594451647", "0594481813", "1400501520"}


def test_no_leakage_histories_are_prefixes_and_negatives_unreviewed(prepared, sequences):
  ds = prepared
  items = _vocab(ds.path, "item_id")
  for split in SPLITS:
    c = _cols(ds, split)
    assert (c["item_id"] != OOV_ID).all()
    for row in range(len(c["label"])):
      seq = sequences[int(c["user"][row])]
      hist = [items[i] for i in c["hist_item_id"][row] if i]
      times = [int(t) for t in c["hist_timestamp"][row] if t]
      assert all(t <= c["timestamp"][row] for t in times)
      k = next(k for k in range(1, len(seq)) if seq[k][0] == c["timestamp"][row]
               and [a for _, a in seq[max(0, k - MAX_LEN):k]] == hist)
      assert list(zip(times, hist)) == seq[max(0, k - MAX_LEN):k]  # the last MAX_LEN of a prefix
      reviewed = {asin for _, asin in seq}
      if c["label"][row] == 1:
        assert items[c["item_id"][row]] == seq[k][1]
      else:
        assert items[c["item_id"][row]] not in reviewed
        np.testing.assert_array_equal(c["hist_item_id"][row], c["hist_item_id"][row - 1])


def test_same_day_reviews_keep_file_order(prepared, sequences):
  """TEST13 reviewed 0972683275 (line 71) and 1400501466 (line 274) on the same day."""
  assert sequences[13][:2] == [(1354320000, "0972683275"), (1354320000, "1400501466")]
  c = _cols(prepared, "train")
  items = _vocab(prepared.path, "item_id")
  row = np.flatnonzero(c["user"] == 13)[0]
  assert items[c["item_id"][row]] == "1400501466"
  assert [items[i] for i in c["hist_item_id"][row] if i] == ["0972683275"]
  assert c["hist_timestamp"][row][-1] == c["timestamp"][row] == 1354320000


def test_categories_from_meta_last_path_last_element(prepared):
  cats = _vocab(prepared.path, "category")
  assert cats[:3] == ["<pad>", "<oov>", "<unknown>"]
  assert sorted(cats[3:]) == cats[3:] == ["HDMI", "TV Mounts", "Trucking GPS", "eBook Readers"]
  items = _vocab(prepared.path, "item_id")
  expected = {"0528881469": "Trucking GPS", "0594451647": "HDMI", "0972683275": "TV Mounts",
              "1400501466": "eBook Readers", "1400501520": "<unknown>", "0594481813": "<unknown>"}
  for split in SPLITS:
    c = _cols(prepared, split)
    assert {items[i]: cats[k] for i, k in zip(c["item_id"], c["item_category"])} == expected
    hist = c["hist_item_id"] > 0
    assert ({items[i]: cats[k] for i, k in zip(c["hist_item_id"][hist], c["hist_category"][hist])}.items()
            <= expected.items())
    assert (c["hist_category"][~hist] == 0).all()
  s = prepared.stats
  assert (s["num_categories"], s["items_without_category"], s["unused_meta_lines"]) == (4, 2, 1)


def test_without_meta_every_category_is_the_unknown_id_and_a_warning_says_so(tmp_path):
  raw = _write(tmp_path / "raw", _regrouped(_lines()))
  with pytest.warns(UserWarning, match="every item's category is '<unknown>'"):
    ds = Dataset(amazon.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN))
  assert _vocab(ds.path, "category") == ["<pad>", "<oov>", "<unknown>"]
  for split in SPLITS:
    c = _cols(ds, split)
    assert (c["item_category"] == amazon.UNKNOWN_CATEGORY_ID).all()
    assert (c["hist_category"] == np.where(c["hist_item_id"] > 0, amazon.UNKNOWN_CATEGORY_ID, 0)).all()


def test_corrupt_lines_are_counted_or_an_error_naming_file_and_line(tmp_path):
  lines = _regrouped(_lines())
  corrupt = [lines[0][:100], json.dumps({"reviewerID": "X", "unixReviewTime": 1}), "[1, 2]"]
  raw = _write(tmp_path / "raw", lines[:50] + corrupt + lines[50:], META + ["{'asin': 'broken"])
  with (raw / "reviews_Electronics_5.json").open("ab") as fh:
    fh.write(b'{"reviewerID": "\xff"}\n')
  ds = Dataset(amazon.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN))
  assert ds.stats["corrupt_lines"] == {"reviews": 4, "meta": 1}
  assert ds.stats["num_reviews"] == 290
  assert ds.stats["corrupt_examples"][0].endswith("_5.json, line 51: neither JSON nor a Python literal")
  assert "line 52: asin None" in ds.stats["corrupt_examples"][1]
  assert "line 294: not UTF-8" in ds.stats["corrupt_examples"][3]
  with pytest.raises(SchemaError, match=r"reviews_Electronics_5\.json, line 51: neither JSON"):
    amazon.prepare(tmp_path / "prep2", raw_dir=raw, max_len=MAX_LEN, on_corrupt="error")


def test_gzip_input_and_truncated_stream(tmp_path):
  lines = _regrouped(_lines())
  data = gzip.compress("".join(line + "\n" for line in lines).encode())
  full, cut = tmp_path / "full", tmp_path / "cut"
  for directory, payload in ((full, data), (cut, data[:len(data) // 2])):
    directory.mkdir()
    (directory / "reviews_Electronics_5.json.gz").write_bytes(payload)
    shutil.copy(_write(tmp_path / "meta", [], META) / "meta_Electronics.json", directory)
  assert Dataset(amazon.prepare(tmp_path / "a", raw_dir=full, max_len=MAX_LEN)).stats["num_reviews"] == 290
  stats = Dataset(amazon.prepare(tmp_path / "b", raw_dir=cut, max_len=MAX_LEN)).stats
  assert stats["corrupt_lines"]["reviews"] == 1 and 0 < stats["num_reviews"] < 290
  assert "truncated or corrupt gzip stream" in stats["corrupt_examples"][0]


def test_negatives_are_uniform_over_unreviewed_items():
  user = np.array([0, 0, 1])
  item = np.array([0, 2, 4])
  pair_user = np.repeat([0, 1], 30_000)
  neg = amazon._negatives(user, item, 5, pair_user, seed=0, user_names=np.array(["a", "b"]), path="x")
  for u, allowed in ((0, [1, 3, 4]), (1, [0, 1, 2, 3])):
    counts = np.bincount(neg[pair_user == u], minlength=5)
    assert set(np.flatnonzero(counts)) == set(allowed)
    np.testing.assert_allclose(counts[allowed] / 30_000, 1 / len(allowed), atol=0.015)
  with pytest.raises(SchemaError, match="user 'a' reviewed all 2 items"):
    amazon._negatives(np.array([0, 0]), np.array([0, 1]), 2, np.array([0]), 0, np.array(["a"]), "x")


def test_cache_reuse_seed_and_meta_change(tmp_path, capsys):
  raw = _write(tmp_path / "raw", _regrouped(_lines()), META)
  first = amazon.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN)
  capsys.readouterr()
  assert amazon.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN) == first
  assert "reusing" in capsys.readouterr().out
  other = amazon.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN, seed=7)
  assert other.name == f"amazon-Electronics-len{MAX_LEN}-seed7"
  a, b = _cols(Dataset(first), "train"), _cols(Dataset(other), "train")
  np.testing.assert_array_equal(a["item_id"][::2], b["item_id"][::2])
  assert (a["item_id"][1::2] != b["item_id"][1::2]).any()
  (raw / "meta_Electronics.json").unlink()
  with pytest.warns(UserWarning):
    amazon.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN)
  assert "rebuilding" in capsys.readouterr().out


def test_bad_arguments_and_missing_reviews(tmp_path):
  with pytest.raises(FileNotFoundError, match="reviews_Books_5.json"):
    amazon.prepare(tmp_path, raw_dir=tmp_path, category="Books")
  with pytest.raises(ValueError, match="on_corrupt"):
    amazon.prepare(tmp_path, raw_dir=tmp_path, on_corrupt="ignore")
  with pytest.raises(ValueError, match="max_len"):
    amazon.prepare(tmp_path, raw_dir=tmp_path, max_len=0)


def test_config_dataset_name_amazon(tmp_path):
  cfg = data_prep.switch_dataset(base_config.get_config().dataset, "amazon")
  cfg.max_len = MAX_LEN
  cfg.raw_dir = str(_write(tmp_path / "raw", _regrouped(_lines()), META))
  cfg.out_root = str(tmp_path / "prep")
  assert data_prep.prepare(cfg).name == f"amazon-Electronics-len{MAX_LEN}"
  cfg.seed = 7
  assert data_prep.prepare(cfg).name == f"amazon-Electronics-len{MAX_LEN}-seed7"
