"""data_prep/spec.py: a CSV and a ten-line spec become a dataset DIN trains on; hand-checked ids, splits
and histories; bad input (malformed rows, a spec that does not fit its file, a typo'd key); the cache."""
import json
import pathlib

import numpy as np
import pytest

import data_prep
from configs import din as din_config
from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import SPLITS
from ctrjax.train import trainer
from data_prep import spec as spec_lib
from tests.conftest import shared_path

# Two hand-checked users; more users (items j.., categories d.., users v..: all sorted after the
# hand-checked values, so those keep their ids) give DIN a few batches.
HAND_ROWS = """user,item,cate,price,ts,clicked
u1,i1,c1,10.5,100,1
u1,i2,c2,3,200,0
u1,i3,c1,7,300,1
u1,i1,c1,10.5,400,0
u2,i2,c2,3,100,1
u2,i4,c3,1,150,0
u2,i1,c1,10.5,150,1
u2,i3,c1,7,500,0
u2,i2,c2,3,600,1
"""
SPEC = """files = "clicks.csv"
label = "clicked"
user = "user"
time = "ts"
[columns]
item = {group = "item"}
cate = {group = "item"}
price = {kind = "numeric", group = "item", transform = "log1p"}
user_id = {source = "user", group = "user"}
[behavior]
max_len = 3
fields = ["item", "cate"]
[split]
leave_last = 1
"""


def _more_rows(num_users=30, events=12, seed=0) -> str:
  rng = np.random.default_rng(seed)
  lines = []
  for u in range(num_users):
    for t in np.sort(rng.choice(1000, events, replace=False)):
      item = rng.integers(20)
      lines.append(f"v{u:02d},j{item:02d},d{item % 4},{rng.integers(1, 50)},{1000 + t},{int(rng.random() < 0.3 + 0.02 * item)}")
  return "\n".join(lines) + "\n"


def _write(folder: pathlib.Path, csv: str = HAND_ROWS, spec: str = SPEC) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "clicks.csv").write_text(csv)
  (folder / "clicks.toml").write_text(spec)
  return folder / "clicks.toml"


def _prepare(spec_path, out_root, **kwargs):
  return data_prep.prepare(data_prep.dataset_config("spec", spec=str(spec_path), out_root=str(out_root), **kwargs))


def _columns(path, split):
  return {k: np.asarray(v).tolist() for k, v in Dataset(path).columns[split].items()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """(the spec file, the prepared-dataset root)"""
  root = tmp_path_factory.mktemp("spec")
  return _write(root / "raw", HAND_ROWS + _more_rows()), root / "prepared"


@pytest.fixture(scope="module")
def prepared(raw):
  return _prepare(*raw)


def test_hand_checked_rows_ids_splits_and_strictly_earlier_histories(prepared):
  vocab = (prepared / "vocab" / "item.tsv").read_text().splitlines()
  assert vocab[:5] == ["0\t<pad>", "1\t<oov>", "2\ti1", "3\ti2", "4\ti4"]   # i3 is never in train: OOV
  test = _columns(prepared, "test")
  u2 = test["user"].index(2)                       # users ranked by raw value: u1 -> 1, u2 -> 2
  # u2's last event (t=600, i2) is its test row; history: i4 and i1 (both t=150, file order), i3 (OOV).
  assert test["line"][u2] == 10 and test["item"][u2] == 3 and test["label"][u2] == 1
  assert test["hist_item"][u2] == [4, 2, 1] and test["hist_timestamp"][u2] == [150, 150, 500]
  assert test["hist_cate"][u2] == [4, 2, 2]        # c3, c1, c1: aligned with hist_item
  valid = _columns(prepared, "valid")
  u1 = valid["user"].index(1)
  assert valid["line"][u1] == 4 and valid["hist_item"][u1] == [0, 2, 3]   # left-padded, oldest first
  train = _columns(prepared, "train")
  rows = [i for i, u in enumerate(train["user"]) if u in (1, 2)]
  assert [train["line"][i] for i in rows] == [2, 3, 6, 7, 8]
  # The two t=150 events of u2 see only the t=100 event: ties in time are not "earlier".
  assert [train["hist_item"][i] for i in rows[2:]] == [[0, 0, 0], [0, 0, 3], [0, 0, 3]]
  np.testing.assert_allclose(train["price"][rows[0]], np.log1p(10.5), rtol=1e-6)
  stats = json.loads((prepared / "stats.json").read_text())
  assert stats["malformed"]["lines"] == 0 and stats["rows"]["test"] == 32


def test_din_trains_a_few_steps_on_the_spec_dataset(raw, tmp_path):
  spec_path, out_root = raw
  config = din_config.get_config("quick")             # as ./run.sh configs/din.py:quick --config.dataset...
  config.dataset = data_prep.dataset_config("spec", spec=str(spec_path), out_root=str(out_root))
  config.model.attention_hidden, config.model.dnn.hidden = (8,), (8,)
  config.batch_size, config.eval_batch_size, config.num_epochs, config.progress_bar = 32, 64, 1, False
  trainer.validate_config(config)
  result = trainer.train_and_evaluate(config, tmp_path / "din", data_prep.prepare(config.dataset))
  assert np.isfinite(result["test"]["logloss"]) and 0 <= result["test"]["auc"] <= 1


def test_the_config_names_the_spec_and_a_changed_spec_or_file_is_rebuilt(tmp_path):
  spec_path = _write(tmp_path / "raw")
  first = _prepare(spec_path, tmp_path / "prepared")
  assert _prepare(spec_path, tmp_path / "prepared") == first          # cached
  spec_path.write_text(SPEC.replace("max_len = 3", "max_len = 2"))
  second = _prepare(spec_path, tmp_path / "prepared")
  assert second != first and Dataset(second).schema["hist_item"].shape == (2,)
  (spec_path.parent / "clicks.csv").write_text(HAND_ROWS + "u3,i9,c9,1,1,1\n")
  third = _prepare(spec_path, tmp_path / "prepared")
  assert third != second and sum(json.loads((third / "stats.json").read_text())["rows"].values()) == 10


MALFORMED = HAND_ROWS + "u3,i1,c1,abc,100,1\nu3,i2,c2\nu3,i1,c1,1,120,2\n"


def test_malformed_rows_are_skipped_and_counted_with_their_line_numbers(tmp_path):
  spec_path = _write(tmp_path / "raw", MALFORMED + "u4,i1,c1,1,5,1\n")
  path = _prepare(spec_path, tmp_path / "prepared")
  stats = json.loads((path / "stats.json").read_text())
  assert stats["malformed"]["lines"] == 3
  assert [e.split(": ")[0].rsplit(", ", 1)[1] for e in stats["malformed"]["first_lines"]] == [
      "line 11", "line 12", "line 13"]
  assert stats["malformed"]["by_reason"] == {"unreadable": 1, "label": 1, "column price: not a finite number": 1}
  train = _columns(path, "train")
  assert 14 in train["line"] and 10 not in train["line"]      # the row after the bad ones keeps its line


def test_on_malformed_error_names_file_and_line(tmp_path):
  spec_path = _write(tmp_path / "raw", MALFORMED.replace("u3,i1,c1,abc", "u3,i1,c1,1"),
                     SPEC.replace('time = "ts"', 'time = "ts"\non_malformed = "error"'))
  with pytest.raises(spec_lib.SpecError, match=r"clicks\.csv, line 12: column clicked|clicks\.csv, line 12: .*Expected"):
    _prepare(spec_path, tmp_path / "prepared")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('cate = {group = "item"}', 'cate = {group = "item", source = "category"}'),
     r"columns\.cate\.source = 'category': no such column in .*clicks\.csv \(did you mean 'cate'\?\)"),
    (lambda s: s.replace('label = "clicked"', 'label = "clickd >= 1"'),
     r"label = 'clickd >= 1' does not fit the files: .*clickd"),
    (lambda s: s.replace('price = {kind = "numeric"', 'price = {source = "item", kind = "numeric"'),
     r"columns\.price: kind 'numeric', but the file's values are not numbers, e\.g\. 'i1' \(.*clicks\.csv, line 2\)"),
    (lambda s: s.replace("max_len = 3", "max_lenn = 3"), r"unknown key behavior\.max_lenn \(did you mean 'max_len'\?\)"),
    (lambda s: s.replace('item = {group = "item"}', 'item = {group = "item", kidn = "categorical"}'),
     r"unknown key columns\.item\.kidn \(did you mean 'kind'\?\)"),
    (lambda s: s.replace("leave_last = 1", "leave_lats = 1"), r"unknown key split\.leave_lats \(did you mean 'leave_last'\?\)"),
])
def test_a_spec_that_does_not_fit_its_file_is_one_line_naming_the_key(tmp_path, edit, message):
  spec_path = _write(tmp_path / "raw", spec=edit(SPEC))
  with pytest.raises(spec_lib.SpecError, match=message) as e:
    _prepare(spec_path, tmp_path / "prepared")
  assert "\n" not in str(e.value)


# ------------------------------------------------------------------ existing datasets as specs

SPECS = pathlib.Path(spec_lib.__file__).parent / "specs"
SCHEMA_KEYS = ("group", "kind", "dtype", "shape", "vocab_size", "table", "max_len")


def _assert_same_dataset(ours: pathlib.Path, theirs: pathlib.Path, extra=("line",), vocab_tables=()):
  """Same fields (schema: everything but descriptions and oov_id), same rows in the same order."""
  a, b = Dataset(ours), Dataset(theirs)
  assert {f.name for f in a.schema.fields} == {f.name for f in b.schema.fields} | set(extra)
  for f in b.schema.fields:
    assert [getattr(a.schema[f.name], k) for k in SCHEMA_KEYS] == [getattr(f, k) for k in SCHEMA_KEYS], f.name
  for split in b.columns:
    for name, column in b.columns[split].items():
      np.testing.assert_array_equal(np.asarray(a.columns[split][name]), np.asarray(column), err_msg=f"{split}/{name}")
  for table in vocab_tables:
    assert (ours / "vocab" / f"{table}.tsv").read_text() == (theirs / "vocab" / f"{table}.tsv").read_text(), table


def test_movielens_din_as_a_spec_equals_data_prep_movielens(tmp_path):
  from data_prep import movielens
  shared = shared_path("data", "movielens-latest-small")
  raw = tmp_path / "raw"                 # the first 12,000 ratings (users 1-73), for a quick test
  raw.mkdir()
  (raw / "movies.csv").write_bytes((shared / "movies.csv").read_bytes())
  (raw / "ratings.csv").write_text("".join((shared / "ratings.csv").open().readlines()[:12_001]))
  spec_text = (SPECS / "movielens_din.toml").read_text().replace("../../data/movielens-latest-small", str(raw))
  (tmp_path / "movielens_din.toml").write_text(spec_text)
  theirs = movielens.prepare("ml-latest-small", tmp_path / "movielens", raw_dir=raw, protocol="din", max_len=30)
  ours = spec_lib.prepare(tmp_path / "spec", spec=tmp_path / "movielens_din.toml")
  # The spec writes weekday and month values as numbers in vocab/, data_prep.movielens as names.
  _assert_same_dataset(ours, theirs, vocab_tables=("item_id", "user_id", "genre", "year", "hour"))


def test_criteo_as_a_spec_equals_data_prep_criteo(tmp_path):
  from data_prep import criteo
  raw = shared_path("data", "criteo-kaggle-first10k", "criteo_train_first10000.txt")
  theirs = criteo.prepare(tmp_path / "criteo", raw_dir=raw)
  ours = spec_lib.prepare(tmp_path / "spec", spec=SPECS / "criteo.toml")
  _assert_same_dataset(ours, theirs, extra=(), vocab_tables=[f"C{i}" for i in range(1, 27)])


def test_the_example_of_docs_your_data_prepares_a_dataset_din_can_take(tmp_path):
  """Runs the doc's CSV and spec blocks as written, then its config file (the ./run.sh runs are left
  to the reader: the test above trains DIN)."""
  import re
  import subprocess
  import types
  blocks = re.findall(r"```bash\n(.*?)```", (pathlib.Path(spec_lib.__file__).parents[1] / "docs" / "your_data.md").read_text(), re.S)
  data_blocks = [b for b in blocks if "./run.sh" not in b]
  assert len(data_blocks) == 2
  subprocess.run(["bash", "-euc", "\n".join(data_blocks)], cwd=tmp_path, check=True)
  config_source = re.search(r"cat > configs/my_din.py <<'EOF'\n(.*?)EOF", "\n".join(blocks), re.S).group(1)
  module = types.ModuleType("my_din")
  exec(config_source, module.__dict__)
  config = module.get_config("quick")
  assert config.dataset.spec == "my_data/clicks.toml"
  config.dataset.spec, config.dataset.out_root = str(tmp_path / config.dataset.spec), str(tmp_path / "prepared")
  trainer.validate_config(config)
  dataset = Dataset(data_prep.prepare(config.dataset))
  assert dataset.schema["hist_item_id"].table == "item_id" and dataset.schema["hist_category"].shape == (20,)
  assert dataset.num_rows("test") == dataset.num_rows("valid") == 1000     # 500 users, 2 each


def test_negative_sampling_follows_each_positive_with_an_item_the_user_never_had(tmp_path):
  reviews = "user,item,cate,ts\n" + "".join(f"u{u},i{(u * 37 + k * 11) % 200:03d},c{(u * 37 + k * 11) % 200 % 5},{k}\n"
                                            for u in range(12) for k in range(6))
  spec = SPEC.replace('label = "clicked"', 'label = "1"').replace(
      'price = {kind = "numeric", group = "item", transform = "log1p"}\n', "") + "[negatives]\nper_positive = 1\n"
  path = _prepare(_write(tmp_path / "raw", reviews, spec), tmp_path / "prepared")
  vocab = {t: [line.split("\t")[1] for line in (path / "vocab" / f"{t}.tsv").read_text().splitlines()]
           for t in ("item", "cate", "user_id")}
  had = {}
  for line in reviews.splitlines()[1:]:
    user, item = line.split(",")[:2]
    had.setdefault(user, set()).add(item)
  negatives = 0
  for split in ("train", "valid", "test"):
    c = _columns(path, split)
    for i in np.flatnonzero(np.asarray(c["label"]) == 0):
      assert c["label"][i - 1] == 1 and c["line"][i] == c["line"][i - 1]      # right after its positive
      assert c["hist_item"][i] == c["hist_item"][i - 1] and c["user"][i] == c["user"][i - 1]
      item, cate = vocab["item"][c["item"][i]], vocab["cate"][c["cate"][i]]
      assert item not in had[vocab["user_id"][c["user_id"][i]]] and int(cate[1:]) == int(item[1:]) % 5
      negatives += 1
  stats = json.loads((path / "stats.json").read_text())["negatives"]
  assert negatives == stats["made"] == 72 - stats["dropped"] and stats["dropped"] <= 1


def test_parquet_a_split_column_a_samples_filter_and_a_side_table(tmp_path):
  import duckdb
  raw = _write(tmp_path / "raw").parent
  duckdb.sql(f"COPY (SELECT * FROM read_csv('{raw / 'clicks.csv'}')) TO '{raw / 'clicks.parquet'}' (FORMAT parquet)")
  (raw / "items.csv").write_text("item,brand\ni1,b1\ni2,b2\ni3,b1\n")
  spec = SPEC.replace('files = "clicks.csv"', 'files = "clicks.parquet"\nsamples = "ts >= 150"').replace(
      "[split]\nleave_last = 1", "[split]\ncolumn = \"CASE WHEN ts < 400 THEN 'train' WHEN ts < 600 THEN 'valid' ELSE 'test' END\"")
  spec = spec.replace("[columns]", '[tables.items]\nfiles = "items.csv"\nkey = "item"\non = "item"\n[columns]\n'
                                    'brand = {expr = "items.brand", group = "item", vocab = "items"}')
  (raw / "clicks.toml").write_text(spec)
  path = _prepare(raw / "clicks.toml", tmp_path / "prepared")
  train, valid, test = (_columns(path, s) for s in SPLITS)
  assert train["timestamp"] == [200, 300, 150, 150] and valid["timestamp"] == [400, 500] and test["timestamp"] == [600]
  assert train["line"] == [2, 3, 6, 7]                        # Parquet: the row's 1-based number
  assert train["brand"] == [3, 2, 1, 2]                       # b1 -> 2, b2 -> 3; i4 has no brand: 1
  assert train["hist_item"][2] == [0, 0, 3]                   # the t=100 event is a behaviour, not a sample


def test_a_spec_datasets_results_are_named_by_the_spec_file():
  from experiments import grid
  assert grid.dataset_label(data_prep.dataset_config("spec", spec="my_data/clicks.toml")) == "spec-clicks"
