"""Grid runner: table statistics, figures, and a killed grid resuming to the identical table."""
import csv
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import grid as grid_lib
from data_prep import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]

GRID_CONFIG = '''
from configs import base
from experiments.grid import Grid


def get_config(arg=None):
  c = base.get_config("quick")
  c.num_epochs = 1
  c.dataset.name, c.dataset.path = "path", "{dataset}"
  c.model.dnn.hidden, c.batch_size, c.eval_batch_size, c.progress_bar = (16,), 64, 256, False
  c.checkpoint_every_steps = 10
  return c


def get_grid(arg=None):
  return Grid(name="toy_grid", variants={{"sum": {{}}, "mean": {{"model.pooling": "mean"}}}},
              seeds=(0, 1), reference="sum", sections={{"Pooling": ("sum", "mean")}}, curves=("sum", "mean"))
'''


@pytest.fixture(scope="module")
def grid_config(tmp_path_factory):
  d = tmp_path_factory.mktemp("grid")
  ds = synthetic.generate(d / "ds", num_rows=2500, num_items=200, num_users=50, max_len=6, seed=1)
  path = d / "toy_grid.py"
  path.write_text(GRID_CONFIG.format(dataset=ds))
  return path


def _run(config_path, workdir, *extra, check=True, command="run"):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "ctrjax.main", command, f"--config={config_path}", f"--workdir={workdir}", *extra]
  proc = subprocess.run(cmd, cwd=workdir.parent, env={**env, "PYTHONPATH": str(REPO)},
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
  return proc


def _start(config_path, workdir):
  """A grid worker in the background, its stdout and stderr merged."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
  cmd = [sys.executable, "-m", "ctrjax.main", "run", f"--config={config_path}", f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=workdir.parent, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _trained(output: str) -> list[str]:
  return re.findall(r"\] (\w+ seed \d): running in", output)


def _table(results_dir):
  with open(results_dir / "table.csv") as fh:
    return [{k: v for k, v in row.items() if k != "seconds_per_epoch"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def finished_grid(grid_config, tmp_path_factory):
  root = tmp_path_factory.mktemp("full") / "runs"
  _run(grid_config, root)
  return root


def test_grid_writes_table_with_statistics_and_figures(finished_grid):
  results = finished_grid.parent / "results" / "toy_grid" / "path"
  rows = {r["variant"]: r for r in _table(results)}
  assert set(rows) == {"sum", "mean"} and rows["sum"]["seeds"] == "2"
  aucs = {v: [float(__import__("json").loads((finished_grid / v / f"seed{s}" / "result.json").read_text())["test"]["auc"])
              for s in (0, 1)] for v in ("sum", "mean")}
  assert float(rows["mean"]["auc_mean"]) == pytest.approx(np.mean(aucs["mean"]))
  assert float(rows["mean"]["auc_std"]) == pytest.approx(np.std(aucs["mean"], ddof=1))
  assert float(rows["mean"]["p_value"]) == pytest.approx(
      stats.ttest_ind(aucs["mean"], aucs["sum"], equal_var=False).pvalue)
  assert float(rows["mean"]["rela_impr_pct"]) == pytest.approx(
      ((np.mean(aucs["mean"]) - 0.5) / (np.mean(aucs["sum"]) - 0.5) - 1) * 100)
  assert float(rows["sum"]["delta_auc"]) == 0.0 and rows["sum"]["p_value"] == "nan"
  markdown = (results / "table.md").read_text()
  assert "## Pooling" in markdown and "| mean | 2 |" in markdown
  for png in ("ablation.png", "curves.png"):
    assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_grid_resumes_to_the_identical_table(grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  proc = _run(grid_config, root, "--config.debug.kill_at_step=25", check=False)
  assert proc.returncode == -9                              # killed inside the first run
  assert not (root / "sum" / "seed0" / "result.json").exists()
  proc = _run(grid_config, root)
  assert "resumed from step 20" in proc.stdout
  assert _table(tmp_path / "results" / "toy_grid" / "path") == _table(
      finished_grid.parent / "results" / "toy_grid" / "path")
  proc = _run(grid_config, root)                            # everything done: all skipped
  assert proc.stdout.count("done, skipped") == 4


def test_seeds_in_parallel_grid_matches_the_sequential_table(grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  proc = _run(grid_config, root, "--config.seeds_in_parallel=True")
  assert proc.stdout.count("in one program") == 2           # one program per variant, both seeds
  together = {r["variant"]: r for r in _table(tmp_path / "results" / "toy_grid" / "path")}
  separate = {r["variant"]: r for r in _table(finished_grid.parent / "results" / "toy_grid" / "path")}
  for variant, row in separate.items():
    for key in ("seeds", "params_excl_embeddings", "best_epoch_mean"):
      assert together[variant][key] == row[key]
    for key in ("auc_mean", "auc_std", "logloss_mean"):
      assert float(together[variant][key]) == pytest.approx(float(row[key]), abs=1e-4), (variant, key)
  (root / "mean" / "seed1" / "result.json").unlink()         # one unfinished seed: only it reruns
  proc = _run(grid_config, root, "--config.seeds_in_parallel=True")
  assert "[1/2] sum: done, skipped" in proc.stdout
  assert "[2/2] mean: seeds [1] in one program" in proc.stdout


def test_two_workers_share_a_grid_and_train_each_run_once(grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  root.mkdir()
  workers = [_start(grid_config, root) for _ in range(2)]
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs
  assert sorted(_trained(outputs[0]) + _trained(outputs[1])) == [
      "mean seed 0", "mean seed 1", "sum seed 0", "sum seed 1"]
  assert _table(tmp_path / "results" / "toy_grid" / "path") == _table(
      finished_grid.parent / "results" / "toy_grid" / "path")


def test_a_run_held_by_a_dead_worker_is_taken_over_at_the_end(grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  held = grid_lib._lock(root / "sum" / ".seed1.lock", wait=False)   # a worker that will die unfinished
  worker = _start(grid_config, root)
  seen = []
  for line in worker.stdout:                 # let the worker go past the held run to the last one
    seen.append(line)
    if "mean seed 1: running in" in line:
      break
  held.close()
  output = "".join(seen) + worker.communicate(timeout=300)[0]
  assert worker.returncode == 0, output
  assert "[2/4] sum seed 1: another worker holds it" in output
  assert _trained(output) == ["sum seed 0", "mean seed 0", "mean seed 1", "sum seed 1"]
  assert _table(tmp_path / "results" / "toy_grid" / "path") == _table(
      finished_grid.parent / "results" / "toy_grid" / "path")


def test_report_of_an_unfinished_grid_has_the_finished_variants_and_names_the_rest(
    grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  shutil.copytree(finished_grid, root)
  (root / "mean" / "seed1" / "result.json").unlink()         # "mean" still training
  proc = _run(grid_config, root, command="report")
  assert "wrote" in proc.stdout
  results = tmp_path / "results" / "toy_grid" / "path"
  rows = _table(results)
  assert [r["variant"] for r in rows] == ["sum"]
  assert rows == [r for r in _table(finished_grid.parent / "results" / "toy_grid" / "path") if r["variant"] == "sum"]
  markdown = (results / "table.md").read_text()
  assert "Not finished yet, so not in the tables: mean." in markdown and "| mean |" not in markdown
  assert "## Pooling" not in markdown                       # only the reference there: no section
  assert (results / "curves.png").is_file() and (results / "ablation.png").is_file()
  (root / "sum" / "seed0" / "result.json").unlink()          # the reference unfinished: nothing to say
  proc = _run(grid_config, root, command="report", check=False)
  assert proc.returncode == 2 and "reference variant 'sum' has not finished" in proc.stderr


def test_grid_arguments_quick_and_short_set_seeds_epochs_and_names():
  from configs import ablation_feseq
  full, quick, short = (ablation_feseq.get_grid(a) for a in (None, "quick", "short,dataset=ml-100k"))
  assert (full.name, full.seeds) == ("ablation_feseq", (0, 1, 2, 3, 4))
  assert (quick.name, quick.seeds) == ("ablation_feseq_quick", (0, 1))
  assert (short.name, short.seeds) == ("ablation_feseq_short", grid_lib.PROTOCOLS["short"][0])
  assert ablation_feseq.get_config("short").num_epochs == grid_lib.PROTOCOLS["short"][1]
  assert grid_lib.PROTOCOLS["short"] == ((0, 1, 2), 3)          # the protocol README reports
  assert ablation_feseq.get_config(None).num_epochs == 20
  with pytest.raises(ValueError, match="pick one"):
    ablation_feseq.get_grid("quick,short")
  with pytest.raises(ValueError, match="bad argument 'shrot'"):
    ablation_feseq.get_config("shrot")


def test_grid_rejects_unknown_variants_and_override_keys():
  with pytest.raises(ValueError, match="unknown variants"):
    grid_lib.Grid(name="g", variants={"a": {}}, seeds=(0,), reference="a", curves=("b",))
  from configs import base
  with pytest.raises(KeyError, match="model.pooling_typo"):
    grid_lib.with_overrides(base.get_config(), {"model.pooling_typo": "x"}, seed=0)
