"""benchmarks/compare_torch without torch: data layout, metrics, rates, schedule, table, configs,
and ctrjax's runner with a primed compilation cache."""
import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.compare_torch import jax_runner, run, spec
from ctrjax import metrics
from ctrjax.data.dataset import Dataset
from ctrjax.models import build_model
from data_prep import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_right_pad_keeps_order_and_lengths():
  hist = np.array([[0, 0, 5, 6], [0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 0, 9]], np.int32)
  out, length = spec.right_pad(hist)
  np.testing.assert_array_equal(out, [[5, 6, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4], [9, 0, 0, 0]])
  np.testing.assert_array_equal(length, [2, 0, 4, 1])
  assert out.dtype == hist.dtype


def test_negatives_follow_the_mask_and_come_from_the_pool():
  hist = np.array([[0, 3, 4], [0, 0, 0], [5, 6, 7]], np.int32)
  pool = np.array([10, 11, 12], np.int32)
  neg = spec.sample_negatives(hist, pool, seed=0)
  np.testing.assert_array_equal(neg == 0, hist == 0)
  assert set(neg[hist != 0]) <= set(pool)
  np.testing.assert_array_equal(neg, spec.sample_negatives(hist, pool, seed=0))


def test_metrics_equal_ctrjax():
  rng = np.random.default_rng(0)
  y = (rng.random(500) < 0.3).astype(np.float32)
  p = np.round(rng.random(500), 2)  # ties
  assert spec.auc(y, p) == pytest.approx(metrics.auc(y, p), abs=1e-12)
  assert spec.logloss(y, p) == pytest.approx(metrics.logloss(y, p), abs=1e-12)
  assert np.isnan(spec.auc(np.ones(3), p[:3]))


def test_rates_exclude_warmup_and_reject_bad_warmup():
  r = spec.rates(steps=10, warmup=2, batch=100, t_start=0.0, t_warm=4.0, t_end=8.0)
  assert r == {"end_to_end": 1000 / 8, "steady": 800 / 4}
  with pytest.raises(ValueError, match="warm-up 10 steps"):
    spec.rates(steps=10, warmup=10, batch=100, t_start=0.0, t_warm=1.0, t_end=2.0)


def test_parse_models():
  assert spec.parse_models("din, bst") == ["din", "bst"]
  with pytest.raises(ValueError, match="unknown \\['nope'\\]"):
    spec.parse_models("din,nope")


def test_schedule_skips_missing_models_and_rotates_libraries():
  runs = run.schedule(["din", "bst", "xdeepfm"], list(spec.LIBRARIES), repeats=2)
  assert [(m, lib) for r, m, lib in runs if r == 0] == [
      ("din", "ctrjax"), ("din", "deepctr"), ("din", "rechub"),
      ("bst", "rechub"), ("bst", "ctrjax"),
      ("xdeepfm", "ctrjax"), ("xdeepfm", "deepctr")]
  din_first = [lib for i, (r, m, lib) in enumerate(runs) if m == "din" and (i == 0 or runs[i - 1][1] != m)]
  assert din_first == ["ctrjax", "deepctr"]


def _result(model, lib, steady, auc=0.7):
  return {"model": model, "library": lib, "samples_per_s": {"steady": steady, "end_to_end": steady / 2},
          "test_auc": auc, "test_logloss": 0.5, "peak_rss_mib": 100.0, "parameters": 10}


def test_summary_ratio_is_against_the_faster_torch_library():
  results = [_result("din", "ctrjax", 3000), _result("din", "ctrjax", 5000),
             _result("din", "deepctr", 1000), _result("din", "rechub", 2000),
             _result("xdeepfm", "ctrjax", 900),
             {"model": "xdeepfm", "library": "deepctr", "error": "exit 1: boom"}]
  rows = run.summarise(results, ["din", "xdeepfm"], list(spec.LIBRARIES))
  din, xdeepfm = rows
  assert din["libraries"]["ctrjax"]["steady"] == 4000
  assert din["libraries"]["deepctr"]["ctrjax_speedup"] == 4.0
  assert (din["fastest_torch"], din["speedup"], din["auc_delta"]) == ("rechub", 2.0, 0.0)
  assert xdeepfm["libraries"]["deepctr"] == {"status": "failed", "errors": ["exit 1: boom"]}
  assert xdeepfm["libraries"]["rechub"] == {"status": "n/a"}
  assert xdeepfm["fastest_torch"] is None
  text = run.table(rows)
  assert "torch-rechub 0.9.0 (the faster): 2.00x steady (goal >= 3x), AUC +0.0000" in text
  assert "failed" in text and "n/a" in text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn") / "d", num_rows=3000, num_items=500,
                            num_users=100, max_len=8)


def test_export_holds_the_dataset_arrays(tiny, tmp_path):
  npz = np.load(run.export(tiny, seed=0, cache=tmp_path))
  ds = Dataset(tiny)
  for split in ("train", "test"):
    for name in (*spec.SPARSE, spec.HISTORY, "label"):
      np.testing.assert_array_equal(npz[f"{split}_{name}"], ds.columns[split][name])
    hist, neg = npz[f"{split}_{spec.HISTORY}"], npz[f"{split}_{spec.NEG_HISTORY}"]
    np.testing.assert_array_equal(neg == 0, hist == 0)
  assert int(npz["vocab_item_id"]) == ds.schema.tables["item_id"]


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("model", spec.MODELS)
def test_ctrjax_configs_build_the_models(tiny, model, batch_norm):
  schema = Dataset(tiny, validate=False).schema
  build_model(model, schema, spec.ctrjax_model_config(model, batch_norm))
  c = jax_runner.config(model, str(tiny), 1, 0, batch_norm, dnn_kernel_init="torch_linear")
  build_model(model, schema, c.model)
  assert c.model.dnn.kernel_init == ("xavier_normal" if model == "bst" else "torch_linear")  # BST: DNN fixed


def test_deviations_name_the_batch_norm_gap():
  off = spec.deviations(["dcn"], list(spec.LIBRARIES), batch_norm=False)
  assert off == ["torch-rechub: every MLP has BatchNorm (not configurable)"]
  on = spec.deviations(["bst"], ["ctrjax", "rechub"], batch_norm=True)
  assert "ctrjax bst: no BatchNorm in its MLP (not configurable)" in on and len(on) == 3


def test_primed_compile_cache_holds_every_program_of_a_timed_run(tiny, tmp_path):
  """--prime compiles what the timed run compiles: the timed run adds nothing to the cache."""
  cache = tmp_path / "jax_cache"
  cmd = [sys.executable, "-m", "benchmarks.compare_torch.jax_runner", "--model", "dcn", "--dataset",
         str(tiny), "--epochs", "2", "--warmup", "1", "--compile_cache", str(cache)]
  primed = subprocess.run(cmd + ["--prime"], cwd=REPO, capture_output=True, text=True, check=True)
  assert "primed the compilation cache for dcn" in primed.stdout
  entries = sorted(p.name for p in cache.iterdir())
  assert entries, "priming wrote no cache entries"
  timed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
  result = json.loads(next(line for line in timed.stdout.splitlines()
                           if line.startswith("RESULT "))[len("RESULT "):])
  assert result["model"] == "dcn" and 0.0 <= result["test_auc"] <= 1.0
  assert sorted(p.name for p in cache.iterdir()) == entries


def test_runner_commands_carry_the_compile_cache_and_the_two_switches(tmp_path):
  args = argparse.Namespace(torch_python="torch-python", torch_threads=2, torch_device="cpu",
                            epochs=1, warmup=20, seed=0, batch_norm=True, compile_cache=True,
                            rechub_deepfm_first_order="per_feature",
                            ctrjax_dnn_kernel_init="torch_linear")
  cmd = lambda lib, model: run._command(args, lib, model, 1, tmp_path / "d", tmp_path / "d.npz")
  jax_cmd = cmd("ctrjax", "deepfm")
  assert jax_cmd[jax_cmd.index("--compile_cache") + 1] == str(run.COMPILE_CACHE)
  assert "--deepfm_first_order" not in jax_cmd and jax_cmd[-1] == "--batch_norm"
  assert jax_cmd[jax_cmd.index("--dnn_kernel_init") + 1] == "torch_linear"
  rechub = cmd("rechub", "deepfm")
  assert rechub[0] == "torch-python" and "--compile_cache" not in rechub
  assert "--dnn_kernel_init" not in rechub
  assert rechub[rechub.index("--deepfm_first_order") + 1] == "per_feature"
  assert rechub[rechub.index("--seed") + 1] == "1"                     # seed + repeat
  assert "--deepfm_first_order" not in cmd("rechub", "dcn") + cmd("deepctr", "deepfm")
