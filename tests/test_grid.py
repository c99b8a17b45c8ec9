"""Grid runner: table statistics, figures, and a killed grid resuming to the identical table."""
import csv
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from configs import common
from data_prep import synthetic
from ctrjax.data.dataset import fingerprint
from ctrjax.errors import ConfigError, UserError
from ctrjax.train import trainer
from experiments import grid as grid_lib
from experiments import report, runner, summarize

REPO = pathlib.Path(__file__).resolve().parents[1]

GRID_CONFIG = '''
from configs import base
from configs.common import Grid


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
  cmd = [sys.executable, "-m", "experiments.main", command, f"--config={config_path}", f"--workdir={workdir}", *extra]
  proc = subprocess.run(cmd, cwd=workdir.parent, env={**env, "PYTHONPATH": str(REPO)},
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
  return proc


def _start(config_path, workdir):
  """A grid worker in the background, its stdout and stderr merged."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
  cmd = [sys.executable, "-m", "experiments.main", "run", f"--config={config_path}", f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=workdir.parent, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _trained(output: str) -> list[str]:
  return re.findall(r"\] (\w+ seed \d): running in", output)


def _results(root):
  """A grid's report with an explicit --workdir: under it, labelled by the dataset directory (ds)."""
  return root / "results" / "toy_grid" / "ds"


def _table(results_dir):
  with open(results_dir / "table.csv") as fh:
    return [{k: v for k, v in row.items() if k not in ("seconds_per_epoch", "compile_seconds")}
            for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def finished_grid(grid_config, tmp_path_factory):
  root = tmp_path_factory.mktemp("full") / "runs"
  _run(grid_config, root)
  return root


def test_grid_writes_table_with_statistics_and_figures(finished_grid):
  results = _results(finished_grid)
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
  assert _table(_results(root)) == _table(
      _results(finished_grid))
  proc = _run(grid_config, root)                            # everything done: all skipped
  assert proc.stdout.count("done, skipped") == 4


def test_seeds_in_parallel_grid_matches_the_sequential_table(grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  proc = _run(grid_config, root, "--config.seeds_in_parallel=True")
  assert proc.stdout.count("in one program") == 2           # one program per variant, both seeds
  together = {r["variant"]: r for r in _table(_results(root))}
  separate = {r["variant"]: r for r in _table(_results(finished_grid))}
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
  assert _table(_results(root)) == _table(
      _results(finished_grid))


def test_a_run_held_by_a_dead_worker_is_taken_over_at_the_end(grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  held = runner._lock(root / "sum" / ".seed1.lock", wait=False)   # a worker that will die unfinished
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
  assert _table(_results(root)) == _table(
      _results(finished_grid))


def test_report_of_an_unfinished_grid_has_the_finished_variants_and_names_the_rest(
    grid_config, finished_grid, tmp_path):
  root = tmp_path / "runs"
  shutil.copytree(finished_grid, root)
  (root / "mean" / "seed1" / "result.json").unlink()         # "mean" still training
  proc = _run(grid_config, root, command="report")
  assert "wrote" in proc.stdout
  results = _results(root)
  rows = _table(results)
  assert [r["variant"] for r in rows] == ["sum"]
  assert rows == [r for r in _table(_results(finished_grid)) if r["variant"] == "sum"]
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
  assert (short.name, short.seeds) == ("ablation_feseq_short", common.PROTOCOLS["short"][0])
  assert ablation_feseq.get_config("short").num_epochs == common.PROTOCOLS["short"][1]
  assert common.PROTOCOLS["short"] == ((0, 1, 2), 3)          # the protocol README reports
  assert ablation_feseq.get_config(None).num_epochs == 20
  with pytest.raises(ValueError, match="pick one"):
    ablation_feseq.get_grid("quick,short")
  with pytest.raises(ValueError, match="bad argument 'shrot'"):
    ablation_feseq.get_config("shrot")


def test_grid_rejects_unknown_variants_and_override_keys():
  with pytest.raises(ValueError, match="unknown variants"):
    common.Grid(name="g", variants={"a": {}}, seeds=(0,), reference="a", curves=("b",))
  from configs import base
  with pytest.raises(KeyError, match="model.pooling_typo"):
    grid_lib.with_overrides(base.get_config(), {"model.pooling_typo": "x"}, seed=0)


def _toy(grid_config, **overrides):
  """The toy grid's config with dotted overrides (what --config.KEY=VALUE makes of it) and its grid."""
  spec = importlib.util.spec_from_file_location("toy_grid", grid_config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  return grid_lib.with_overrides(config, overrides, config.seed), module.get_grid()


def _run_in_process(grid_config, root, **overrides):
  config, grid = _toy(grid_config, **overrides)
  return runner.run_grid(config, grid, root, root.parent / "results", config.dataset.path)


@pytest.fixture(scope="module")
def grid_run(grid_config, tmp_path_factory):
  """The toy grid run in this process; its report lies in ``<root>/../results``."""
  root = tmp_path_factory.mktemp("in_process") / "runs"
  _run_in_process(grid_config, root)
  return root


def test_grid_dirs_are_named_by_config_file_overrides_and_dataset(grid_config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  default, grid = _toy(grid_config)
  arg = f"{grid_config}:quick"
  run_root, results, overrides = grid_lib.grid_dirs(grid, arg, default, default)
  label = pathlib.Path(default.dataset.path).name                 # name='path': the directory's name
  assert (run_root, results, overrides) == (
      pathlib.Path("workdirs/toy_grid_quick"), pathlib.Path(f"results/toy_grid/{label}"), {})
  assert not run_root.exists() and not results.exists()
  lr = grid_lib.with_overrides(default, {"optimizer.learning_rate": 0.05, "model.dnn.hidden": (8,),
                                         "progress_bar": True}, default.seed)   # progress_bar: resume-free
  run_root, results, overrides = grid_lib.grid_dirs(grid, arg, lr, default)
  assert overrides == {"model.dnn.hidden": [8], "optimizer.learning_rate": 0.05}
  suffix = re.fullmatch(r"toy_grid_quick(_ov-[0-9a-f]{8})", run_root.name).group(1)
  assert results == pathlib.Path(f"results/toy_grid/{label}{suffix}")
  for d in (run_root, results):
    assert json.loads((d / "overrides.json").read_text()) == overrides
  other, _, _ = grid_lib.grid_dirs(grid, arg, grid_lib.with_overrides(lr, {"model.dnn.hidden": (4,)}, 0), default)
  assert other != run_root
  run_root, results, _ = grid_lib.grid_dirs(grid, arg, lr, default, workdir=tmp_path / "mine")
  assert (run_root, results) == (tmp_path / "mine", tmp_path / "mine" / "results" / "toy_grid" / f"{label}{suffix}")


def test_a_finished_run_with_another_config_is_refused_before_any_training(grid_config, grid_run, tmp_path):
  root = tmp_path / "runs"
  shutil.copytree(grid_run, root)
  _run_in_process(grid_config, root, progress_bar=True)    # resume-free fields do not count
  with pytest.raises(UserError, match=r"runs/sum/seed0 .*model\.dnn\.hidden.*optimizer\.learning_rate"):
    _run_in_process(grid_config, root, **{"optimizer.learning_rate": 0.05, "model.dnn.hidden": (8,)})
  shutil.rmtree(root / "mean")                             # a grid killed after its first variant
  with pytest.raises(UserError, match=r"runs/sum/seed0 .*optimizer\.learning_rate"):
    _run_in_process(grid_config, root, **{"optimizer.learning_rate": 0.05})
  assert not (root / "mean").exists()                      # no variant trained at the other rate


def test_broken_result_files_are_named_and_repaired_by_a_rerun(grid_config, grid_run, tmp_path):
  root = tmp_path / "runs"
  shutil.copytree(grid_run, root)
  metrics = root / "sum" / "seed1" / "metrics.jsonl"
  metrics.write_text(metrics.read_text()[:20])             # a truncated line
  result = root / "mean" / "seed0" / "result.json"
  result.write_text(result.read_text()[:100])
  config, grid = _toy(grid_config)
  with pytest.raises(UserError, match=f"^{re.escape(str(metrics))}: ") as error:
    report.write_report(grid, root, tmp_path / "results", config.dataset.path)
  assert "\n" not in str(error.value)
  _run_in_process(grid_config, root)
  assert _table(tmp_path / "results") == _table(grid_run.parent / "results")
  metrics.write_text("")                                   # cut at a line boundary: an epoch missing
  with pytest.raises(UserError, match=f"^{re.escape(str(metrics))}: "):
    report.write_report(grid, root, tmp_path / "results", config.dataset.path)


def test_report_refuses_runs_whose_configs_differ_beyond_variant_and_seed(grid_config, grid_run, tmp_path):
  root = tmp_path / "runs"
  shutil.copytree(grid_run, root)
  stored = root / "mean" / "seed1" / "config.json"
  config = json.loads(stored.read_text())
  config["optimizer"]["learning_rate"] = 0.05             # as if trained by a rerun at another rate
  stored.write_text(json.dumps(config))
  toy, grid = _toy(grid_config)
  with pytest.raises(UserError, match=r"runs/sum/seed0 and .*/mean/seed1 .*\['optimizer\.learning_rate'\]"):
    report.write_report(grid, root, tmp_path / "results", toy.dataset.path)


def test_runs_on_other_data_are_refused_by_the_grid_the_trainer_and_the_report(grid_config, grid_run, tmp_path):
  root = tmp_path / "runs"
  shutil.copytree(grid_run, root)
  config, grid = _toy(grid_config)
  record = root / "mean" / "seed1" / "data.json"
  saved = json.loads(record.read_text())
  assert saved == {"dataset": config.dataset.path, "fingerprint": fingerprint(config.dataset.path)}
  record.write_text(json.dumps({**saved, "fingerprint": "0" * 16}))   # as if the data was prepared anew
  before = {p: p.stat().st_mtime_ns for p in root.rglob("result.json")}
  with pytest.raises(UserError, match=r"runs/mean/seed1 trained on other data: .*fingerprint 0{16}\) there"):
    _run_in_process(grid_config, root)
  with pytest.raises(ConfigError, match=r"runs/mean/seed1 trained on other data"):
    trainer.train_and_evaluate(grid_lib.with_overrides(config, grid.variants["mean"], 1), root / "mean" / "seed1",
                               config.dataset.path)
  assert {p: p.stat().st_mtime_ns for p in root.rglob("result.json")} == before    # nothing trained
  record.write_text(json.dumps(saved))
  result = root / "sum" / "seed1" / "result.json"
  result.write_text(json.dumps({**json.loads(result.read_text()), "data_fingerprint": "0" * 16}))
  with pytest.raises(UserError, match=r"trained on different data \(dataset fingerprints"):
    report.write_report(grid, root, tmp_path / "results", config.dataset.path)


def test_variants_restricts_the_training_and_the_report_covers_every_finished_variant(grid_config, grid_run,
                                                                                       tmp_path):
  _, grid = _toy(grid_config)
  assert grid.select(["mean"]) == ("sum", "mean") and grid.select([]) == ("sum",)       # the reference too
  assert grid.select(["Pooling"]) == ("sum", "mean")                                    # a section's name
  with pytest.raises(ValueError, match=r"no variant or section 'maen'; did you mean 'mean'\?"):
    grid.select(["maen"])
  narrow = grid.restricted(("sum",))
  assert list(narrow.variants) == ["sum"] and narrow.sections == {"Pooling": ("sum",)} and narrow.curves == ("sum",)
  root = tmp_path / "runs"
  shutil.copytree(grid_run, root)
  shutil.rmtree(root / "sum" / "seed1")
  shutil.rmtree(root / "mean" / "seed0")
  config, _ = _toy(grid_config)
  runner.run_grid(config, grid, root, tmp_path / "results", config.dataset.path, only=grid.select(["sum"]))
  assert (root / "sum" / "seed1" / "result.json").is_file() and not (root / "mean" / "seed0").exists()
  markdown = (tmp_path / "results" / "table.md").read_text()
  assert "Not finished yet, so not in the tables: mean." in markdown
  proc = subprocess.run([sys.executable, "-m", "experiments.main", "run", f"--config={grid_config}",
                         f"--workdir={root}", "--variants=sum,avg"], cwd=tmp_path, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}, timeout=300)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
  assert "--variants: grid 'toy_grid' has no variant or section 'avg'" in proc.stderr


def test_summarize_keeps_runs_of_different_configs_apart(grid_run):
  table = summarize.summarize([grid_run / v / f"seed{s}" for v in ("sum", "mean") for s in (0, 1)])
  rows = table.splitlines()[2:]
  assert len(rows) == 2 and all("| 2 |" in r for r in rows)
  assert "model.pooling=mean" in table and "model.pooling=sum" in table


def test_report_compares_variants_that_override_a_whole_subtree(tmp_path):
  """ablation_din's variants replace config.model whole (LR has no model.dnn): those fields are the
  variants' own, while a field outside them that differs is still refused."""
  from configs import base
  from ctrjax.models import default_config
  grid = common.Grid(name="g", variants={"base": {}, "lr": {"model_name": "lr", "model": default_config("lr").to_dict()}},
                     seeds=(0,), reference="base")
  config = base.get_config()
  runs = {v: [{"config": grid_lib.with_overrides(config, o, 0).to_dict()}] for v, o in grid.variants.items()}
  report._check_comparable(grid, tmp_path, runs)
  runs["lr"][0]["config"]["optimizer"]["learning_rate"] = 0.5
  with pytest.raises(UserError, match=r"differ in \['optimizer.learning_rate'\]"):
    report._check_comparable(grid, tmp_path, runs)
