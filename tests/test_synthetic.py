"""Synthetic CTR generator: on-disk format, determinism, planted signal, prepare() caching."""
import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import SPLITS
from data_prep import synthetic

N = 20_000
SMALL = dict(num_rows=N, num_items=10_000, num_users=2_000, seed=0)


def _arrays(path):
  d = Dataset(path, validate=False)
  return {(s, f.name): np.asarray(d.columns[s][f.name]) for s in SPLITS for f in d.schema.fields}


def _assert_same(p, q):
  a, b = _arrays(p), _arrays(q)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn") / "d", **SMALL)


@pytest.fixture(scope="module")
def ds(ds_path):
  return Dataset(ds_path)  # validates dtypes, shapes, id ranges, counts


def test_layout_and_ranges(ds):
  sch = ds.schema
  assert [f.name for f in sch.fields] == ["item_id", "item_cluster", "hist_item_id", "user_id",
                                          "user_segment", "hour", "label", "user"]
  assert {f.name: f.group for f in sch.fields} == {
      "item_id": "item", "item_cluster": "item", "hist_item_id": "behavior", "user_id": "user",
      "user_segment": "user", "hour": "context", "label": "label", "user": "meta"}
  assert sch["hist_item_id"].table == "item_id" and sch["hist_item_id"].shape == (30,)
  assert sch.tables == {"item_id": 10_002, "item_cluster": 22, "user_id": 2_002, "user_segment": 12,
                        "hour": 26}
  assert {s: ds.num_rows(s) for s in SPLITS} == {"train": 16_000, "valid": 2_000, "test": 2_000}
  tr = ds.columns["train"]
  # train never holds OOV (1); real ids start at 2
  for name, hi in [("item_id", 10_002), ("item_cluster", 22), ("user_id", 2_002),
                   ("user_segment", 12), ("hour", 26)]:
    col = np.asarray(tr[name])
    assert col.min() >= 2 and col.max() < hi, name
  assert len(np.unique(tr["hour"])) == 24 and len(np.unique(tr["user_segment"])) == 10
  hist = np.asarray(tr["hist_item_id"])
  assert hist.min() == 0 and not (hist == 1).any() and hist.max() < 10_002
  label = np.asarray(tr["label"])
  assert set(np.unique(label)) == {0.0, 1.0}
  assert ds.stats["positive_rate"]["train"] == pytest.approx(label.mean())
  user = np.asarray(tr["user"])
  assert user.min() >= 0 and user.max() < 2_000
  np.testing.assert_array_equal(user + 2, tr["user_id"])  # meta user = raw id of user_id
  # each item has one cluster, each user one segment
  pairs = np.unique(np.stack([tr["item_id"], tr["item_cluster"]], 1), axis=0)
  assert len(pairs) == len(np.unique(pairs[:, 0]))
  pairs = np.unique(np.stack([tr["user_id"], tr["user_segment"]], 1), axis=0)
  assert len(pairs) == len(np.unique(pairs[:, 0]))


def test_behaviour_left_padding(ds):
  for s in SPLITS:
    hist = np.asarray(ds.columns[s]["hist_item_id"])
    nz = hist != 0
    assert (np.diff(nz.astype(np.int8), axis=1) >= 0).all(), f"{s}: a 0 after a real behaviour"
  hist = np.asarray(ds.columns["train"]["hist_item_id"])
  length = (hist != 0).sum(1)
  assert (length == 0).sum() > 100  # empty histories: ~1/31 of the rows
  assert (length == 30).sum() > 100
  assert abs(length.mean() - 15) < 0.5  # uniform in [0, 30]


def test_popularity_is_skewed(ds):
  c = ds.counts["item_id"][2:]
  top = np.sort(c)[::-1]
  assert top[:100].sum() > 5 * c.sum() * 100 / len(c)  # top 1% of items: > 5x their uniform share
  assert c[:100].sum() > c[-100:].sum() * 5  # low ids are the popular ones


def test_oov_only_for_ids_unseen_in_train(ds):
  counts = ds.counts
  total_oov = 0
  for s in ("valid", "test"):
    for f in ds.schema.fields:
      if not f.has_ids:
        continue
      col = np.asarray(ds.columns[s][f.name]).ravel()
      real = col[col >= 2]
      assert (counts[f.table][real] > 0).all(), (s, f.name)
      assert ds.stats["oov"][s][f.name] == int((col == 1).sum())
      total_oov += int((col == 1).sum())
  assert total_oov > 0  # 20k rows over 10k items: some valid/test items never occur in train


def test_chunks_have_requested_size():
  a = synthetic._norm_args(dict(num_rows=20_000, num_items=1_000, num_users=100))
  w = synthetic._World(a)
  sizes = [len(c["label"]) for _, c in synthetic._chunks(w, 20_000, 7_000)]
  assert sizes == [7_000, 7_000, 6_000]
  starts = [s for s, _ in synthetic._chunks(w, 20_000, 9_000)]
  assert starts == [0, 9_000, 18_000]


def test_deterministic_and_chunk_independent(ds_path, tmp_path):
  _assert_same(ds_path, synthetic.generate(tmp_path / "same", **SMALL))
  for cr in (777, 5_000):
    p = synthetic.generate(tmp_path / f"c{cr}", chunk_rows=cr, **SMALL)
    _assert_same(ds_path, p)
    s1 = json.loads((ds_path / "stats.json").read_text())
    s2 = json.loads((p / "stats.json").read_text())
    for k in ("signal", "oracle_test_auc", "bayes_test_logloss", "oov", "rows", "positive_rate"):
      assert s1[k] == s2[k], k
  other = _arrays(synthetic.generate(tmp_path / "seed1", **{**SMALL, "seed": 1}))
  mine = _arrays(ds_path)
  for name in ("item_id", "hist_item_id", "user_id", "hour", "label"):
    assert not np.array_equal(mine["train", name], other["train", name]), name


def test_planted_signal_reported(ds):
  st = ds.stats
  assert st["prep"]["script"] == "data_prep/synthetic.py"
  assert st["prep"]["args"]["num_rows"] == N
  assert st["oracle_test_auc"] > 0.7
  for g in ("user", "context", "behavior"):
    assert 0.8 < st["signal"][g]["std_of_logit_component"] < 1.2, g
    assert st["signal"][g]["auc_of_component_alone"] > 0.6, g
  assert st["bayes_test_logloss"] < st["constant_test_logloss"] - 0.05
  assert st["noisy_logit_test_logloss"] < st["bayes_test_logloss"]


def test_no_signal_means_chance(tmp_path):
  p = synthetic.generate(tmp_path / "null", num_rows=40_000, num_items=5_000, signal_user=0.0,
                         signal_context=0.0, signal_behavior=0.0, seed=3)
  st = json.loads((p / "stats.json").read_text())
  for g in ("user", "context", "behavior"):
    assert abs(st["signal"][g]["auc_of_component_alone"] - 0.5) < 0.05, g
    assert st["signal"][g]["std_of_logit_component"] == 0
  assert st["oracle_test_auc"] == 0.5
  assert abs(st["bayes_test_logloss"] - st["constant_test_logloss"]) < 0.01
  # and a negative signal flips its component's AUC
  p = synthetic.generate(tmp_path / "neg", num_rows=20_000, num_items=5_000, signal_context=-1.0)
  assert json.loads((p / "stats.json").read_text())["signal"]["context"]["auc_of_component_alone"] < 0.4


def _lr_auc(x_train, y_train, x_test, y_test):
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  m = LogisticRegression(C=1.0, max_iter=500).fit(x_train, y_train)
  return roc_auc_score(y_test, m.predict_proba(x_test)[:, 1])


def _onehot(idx, n):
  out = np.zeros((len(idx), n), np.float32)
  out[np.arange(len(idx)), idx] = 1
  return out


def test_models_using_a_group_beat_models_that_dont(ds):
  """Logistic regressions on the stored columns: adding each group's interaction with the item
  cluster beats the item cluster alone (the planted signal is recoverable from the data)."""
  tr, te = ds.columns["train"], ds.columns["test"]
  y_tr, y_te = np.asarray(tr["label"]), np.asarray(te["label"])
  K, S, H = 22, 12, 26
  base = _lr_auc(_onehot(tr["item_cluster"], K), y_tr, _onehot(te["item_cluster"], K), y_te)
  user = _lr_auc(_onehot(tr["item_cluster"] * S + tr["user_segment"], K * S), y_tr,
                 _onehot(te["item_cluster"] * S + te["user_segment"], K * S), y_te)
  ctx = _lr_auc(_onehot(tr["item_cluster"] * H + tr["hour"], K * H), y_tr,
                _onehot(te["item_cluster"] * H + te["hour"], K * H), y_te)
  # behaviour: share of history items (cluster learnt from train candidates) in the candidate's cluster
  cluster_of = np.zeros(ds.schema.tables["item_id"], np.int64)
  cluster_of[tr["item_id"]] = tr["item_cluster"]

  def beh(cols):
    h = np.asarray(cols["hist_item_id"])
    hc = cluster_of[h]
    known = (h != 0) & (hc != 0)
    same = ((hc == np.asarray(cols["item_cluster"])[:, None]) & known).sum(1)
    frac = same / np.maximum(known.sum(1), 1)
    return np.concatenate([_onehot(cols["item_cluster"], K), frac[:, None] * 4], 1)

  behavior = _lr_auc(beh(tr), y_tr, beh(te), y_te)
  assert user > base + 0.03, (base, user)
  assert ctx > base + 0.03, (base, ctx)
  assert behavior > base + 0.03, (base, behavior)


def test_prepare_reuses_and_rebuilds(tmp_path, monkeypatch):
  kw = dict(num_rows=3_000, num_items=500, num_users=100)
  p = synthetic.prepare(out_root=tmp_path, **kw)
  assert p.parent == tmp_path and p.name.startswith("synthetic-")
  Dataset(p)
  t0 = (p / "stats.json").stat().st_mtime_ns
  # same data-defining arguments (defaults spelt out, ints as floats, other chunking) -> reused
  assert synthetic.prepare(out_root=tmp_path, **kw) == p
  assert synthetic.prepare(out_root=tmp_path, seed=0, signal_user=1, chunk_rows=100, **kw) == p
  assert (p / "stats.json").stat().st_mtime_ns == t0
  # different arguments -> another directory
  q = synthetic.prepare(out_root=tmp_path, **{**kw, "seed": 1})
  assert q != p and (q / "stats.json").is_file()
  assert (p / "stats.json").stat().st_mtime_ns == t0
  # a cached directory whose recorded arguments differ (or force) is rebuilt
  st = json.loads((p / "stats.json").read_text())
  st["prep"]["args"]["noise"] = 7.0
  (p / "stats.json").write_text(json.dumps(st))
  t1 = (p / "stats.json").stat().st_mtime_ns
  assert synthetic.prepare(out_root=tmp_path, **kw) == p
  assert json.loads((p / "stats.json").read_text())["prep"]["args"]["noise"] == 1.0
  t2 = (p / "stats.json").stat().st_mtime_ns
  assert t2 != t1
  synthetic.prepare(out_root=tmp_path, force=True, **kw)
  assert (p / "stats.json").stat().st_mtime_ns != t2
  # relative out_root is resolved against the repository root
  monkeypatch.setattr(synthetic, "REPO", tmp_path / "repo")
  r = synthetic.prepare(out_root="data/prepared", **kw)
  assert r.parent == tmp_path / "repo" / "data" / "prepared" and r.name == p.name


def test_generate_refuses_other_args_in_existing_dir(tmp_path):
  kw = dict(num_rows=2_000, num_items=300, num_users=50)
  p = synthetic.generate(tmp_path / "d", **kw)
  t0 = (p / "stats.json").stat().st_mtime_ns
  assert synthetic.generate(tmp_path / "d", **kw) == p
  assert (p / "stats.json").stat().st_mtime_ns == t0
  with pytest.raises(FileExistsError):
    synthetic.generate(tmp_path / "d", **{**kw, "seed": 5})
  synthetic.generate(tmp_path / "d", force=True, **{**kw, "seed": 5})
  assert json.loads((p / "stats.json").read_text())["prep"]["args"]["seed"] == 5
  with pytest.raises(TypeError):
    synthetic.generate(tmp_path / "e", num_rowz=10)
  with pytest.raises(ValueError):
    synthetic.generate(tmp_path / "e", split=(0.5, 0.1, 0.1))


def test_cli(tmp_path, capsys):
  synthetic.main(["--out", str(tmp_path / "cli"), "--num_rows", "2000", "--num_items", "300",
                  "--signal_user", "2", "--split", "0.5", "0.25", "0.25"])
  out = capsys.readouterr().out
  assert f"path: {tmp_path / 'cli'}" in out
  assert "rows: train=1000, valid=500, test=500" in out
  assert "positive rate:" in out and "signal user" in out and "oracle_test_auc" in out
  st = json.loads((tmp_path / "cli" / "stats.json").read_text())
  assert st["prep"]["args"]["signal_user"] == 2.0 and st["prep"]["args"]["num_items"] == 300
