"""./run.sh tune and the grid protocol 'tuned' (experiments/tune.py): a toy study killed mid-trial
and rerun writes every output, two workers share one study, selection on valid, pruning, a typo in
the space, and the side-by-side table of a toy 2-variant grid."""
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import optuna
import pytest

from configs import ablation_din, ablation_mian, base, common, din, mian, mian_factorial
from configs.common import Choice, Fixed, LogUniform, Uniform
from ctrjax.errors import ConfigError
from data_prep import synthetic
from experiments import tune

REPO = pathlib.Path(__file__).resolve().parents[1]

TUNE_CONFIG = '''
from configs import base
from configs.common import Choice, Fixed, Grid, LogUniform, grid_identity, parse_grid_arg
from ctrjax.models import default_config


def get_config(arg=None):
  c = base.get_config()
  c.num_epochs = {epochs}
  c.dataset.name, c.dataset.path = "path", "{dataset}"
  c.model.dnn.hidden, c.batch_size, c.eval_batch_size, c.progress_bar = (16,), 64, 256, False
  c.checkpoint_every_steps = 10
  return c


def get_search_space(arg=None):
  return {{"optimizer.learning_rate": LogUniform(1e-3, 3e-2), "model.dnn.hidden": Choice(((8,), (16,))),
          "regularizer.mode": Fixed("mba"), "regularizer.weight": LogUniform(1e-4, 1e-2)}}
'''

GRID = '''

def get_grid(arg=None):
  a = parse_grid_arg(arg, ("toy",))
  return Grid(**{{**grid_identity("toy_grid", a), "seeds": (0, 1)}}, reference="base",
              variants={{"base": {{}}, "lr": {{"model_name": "lr", "model": default_config("lr").to_dict()}}}},
              sections={{"Models": ("base", "lr"), "Reference": ("base",)}})
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("tune") / "ds", num_rows=2500, num_items=200, num_users=50,
                            max_len=6, seed=1)


@pytest.fixture(scope="module")
def tune_config(dataset):
  path = dataset.parent / "toy_tune.py"
  path.write_text(TUNE_CONFIG.format(dataset=dataset, epochs=2))
  return path


@pytest.fixture(scope="module")
def grid_config(dataset):
  path = dataset.parent / "toy_grid.py"
  path.write_text(TUNE_CONFIG.format(dataset=dataset, epochs=1) + GRID.format())
  return path


def _env():
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _cmd(command, config, workdir, *extra):
  return [sys.executable, "-m", "experiments.main", command, f"--config={config}", f"--workdir={workdir}", *extra]


def _run(command, config, workdir, *extra):
  proc = subprocess.run(_cmd(command, config, workdir, *extra), cwd=workdir.parent, env=_env(),
                        capture_output=True, text=True, timeout=600)
  return proc


def _study(workdir) -> optuna.Study:
  """The one study under ``workdir``, read through the journal as a worker reads it."""
  folder, = workdir.glob("study-*")
  path = str(folder / "journal.log")
  storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
      path, optuna.storages.journal.JournalFileOpenLock(path)))
  return optuna.load_study(study_name=folder.name, storage=storage)


def _started(output: str) -> list[int]:
  """The trials a worker started or resumed: its 'trial k: <params>' lines."""
  return [int(k) for k in re.findall(r"trial (\d+): optimizer", output)]


def test_a_killed_study_resumes_its_trial_and_writes_every_output(tune_config, tmp_path):
  work = tmp_path / "w"
  killed = _run("tune", tune_config, work, "--trials", "2", "--config.debug.kill_at_step=45")
  assert killed.returncode == -9, killed.stderr[-2000:]            # inside trial 0's 2nd epoch
  before = _study(work).trials
  assert [t.state for t in before] == [optuna.trial.TrialState.RUNNING] and 0 in before[0].intermediate_values

  proc = _run("tune", tune_config, work, "--trials", "2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "trial 0: its worker stopped; resuming it" in proc.stdout and "resumed from step 40" in proc.stdout
  trials = _study(work).trials
  assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2       # N trials, not N + 1
  assert trials[0].params == before[0].params and sorted(trials[0].intermediate_values) == [0, 1]

  results = work / "results" / "tune" / "toy_tune" / "ds"
  rows = list(csv.DictReader(open(results / "trials.csv")))
  assert [(r["number"], r["state"], r["epochs"]) for r in rows] == [("0", "complete", "2"), ("1", "complete", "2")]
  assert {"optimizer.learning_rate", "model.dnn.hidden", "regularizer.weight", "valid_auc"} <= set(rows[0])
  best = json.loads((results / "best.json").read_text())
  winner = max(trials, key=lambda t: t.value)
  assert best["best_trial"] == winner.number and best["valid_auc"] == winner.value
  assert best["seeds"] == list(common.FULL_SEEDS) and best["command"].startswith("./run.sh tune ")
  seed_runs = [json.loads((_study_folder(work) / "seeds" / f"trial{winner.number}" / f"seed{s}" / "result.json")
                          .read_text()) for s in common.FULL_SEEDS]
  aucs = [r["test"]["auc"] for r in seed_runs]
  assert best["test"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
  assert best["test"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
  assert f"{np.mean(aucs):.4f} ± {np.std(aucs, ddof=1):.4f}" in (results / "table.md").read_text()
  for png in ("optimization_history.png", "param_importance.png"):
    assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  (results / "best.json").unlink()
  again = _run("tune", tune_config, work, "--trials", "2")            # finished: reuses everything
  assert again.returncode == 0 and not _started(again.stdout) and "running in" not in again.stdout
  assert json.loads((results / "best.json").read_text())["test"] == best["test"]


def _study_folder(work):
  folder, = work.glob("study-*")
  return folder


def test_two_workers_share_one_study(tune_config, tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  workers = [subprocess.Popen(_cmd("tune", tune_config, work, "--trials", "2", "--config.num_epochs=1"),
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  started = [_started(o) for o in outputs]
  assert sorted(started[0] + started[1]) == [0, 1]                # each trial trained by one worker
  assert len(_study(work).trials) == 2
  trained = [re.findall(r"seed (\d): running in", o) for o in outputs]
  assert sorted(trained[0] + trained[1]) == [str(s) for s in common.FULL_SEEDS]


def test_tuned_grid_writes_paper_and_tuned_rows_side_by_side(grid_config, tmp_path):
  work = tmp_path / "w"
  proc = _run("run", f"{grid_config}:tuned", work, "--trials", "1", "--variants=base")   # the reference alone
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = work / "results" / "toy_grid_tuned" / "ds"
  markdown = (results / "table.md").read_text()
  assert "| base | tuned | 2 |" in markdown and "| lr |" not in markdown and not (work / "lr").exists()
  assert "## Models" in markdown                                     # nothing compared yet: every section
  proc = _run("run", f"{grid_config}:tuned", work, "--trials", "1")                   # then every variant
  assert proc.returncode == 0, proc.stderr[-3000:]
  markdown = (results / "table.md").read_text()
  for variant in ("base", "lr"):
    for setting in ("paper", "tuned"):
      assert f"| {variant} | {setting} | 2 |" in markdown
    assert (results / variant / "trials.csv").is_file() and (results / variant / "best.json").is_file()
  assert "## Models" in markdown and "## Reference" not in markdown   # the reference alone: a repeat
  assert "lr: not searched: `model.dnn.hidden` (its config has no such field)" in markdown
  assert (work / "results" / "toy_grid" / "ds" / "table.md").is_file()             # the paper grid's report
  assert (results / "paper_vs_tuned.png").stat().st_size > 0
  rows = {(r["variant"], r["setting"]): r for r in csv.DictReader(open(results / "table.csv"))}
  best = json.loads((results / "lr" / "best.json").read_text())
  assert "model.dnn.hidden" not in best["params"]
  tuned = [json.loads(p.read_text())["test"]["auc"]
           for p in sorted(work.glob(f"lr/study-*/seeds/trial{best['best_trial']}/seed*/result.json"))]
  paper = [json.loads((work / "lr" / f"seed{s}" / "result.json").read_text())["test"]["auc"] for s in (0, 1)]
  assert len(tuned) == 2 and float(rows["lr", "tuned"]["auc_mean"]) == pytest.approx(np.mean(tuned))
  assert float(rows["lr", "tuned"]["delta_vs_paper"]) == pytest.approx(np.mean(tuned) - np.mean(paper))


class _ScriptedTrainer:
  """Stands in for trainer.train_and_evaluate: trial k's epochs give the scripted valid AUCs (and a
  test AUC that disagrees with them), calling ``on_epoch`` as the trainer does."""

  def __init__(self, script):
    self.script, self.calls = list(script), 0

  def __call__(self, config, workdir, dataset_path, on_epoch=None):
    valid, test = self.script[self.calls]
    self.calls += 1
    stopped, epochs = "max epochs", 0
    for epochs, auc in enumerate(valid, 1):
      reason = on_epoch(epochs, {"auc": auc})
      if reason:
        stopped = reason
        break
    best = int(np.argmax(valid[:epochs]))
    return {"valid": {"auc": valid[best]}, "test": {"auc": test}, "best_epoch": best + 1, "epochs_run": epochs,
            "seconds_per_epoch": 1.0, "stopped": stopped}


def test_selection_is_on_valid_auc_and_a_pruned_trial_is_recorded(tmp_path, monkeypatch):
  scripted = _ScriptedTrainer([([0.70, 0.72], 0.90), ([0.75, 0.74], 0.60), ([0.71, 0.73], 0.95),
                               ([0.60, 0.60, 0.99], 0.99)])       # the last: below the median at epoch 2
  monkeypatch.setattr(tune.trainer, "train_and_evaluate", scripted)
  config = base.get_config()
  config.num_epochs = 3
  tuning = tune.Tuning.create("toy", config, {"optimizer.learning_rate": LogUniform(1e-4, 1e-2)}, tmp_path, tmp_path)
  tuning.run_trials(4)
  states = [t.state for t in tuning.trials()]
  assert states == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.PRUNED]
  assert tuning.best().number == 1                   # valid 0.75 wins; its test AUC is the lowest
  tuning.write_outputs(tmp_path / "results", "cmd")
  rows = list(csv.DictReader(open(tmp_path / "results" / "trials.csv")))
  assert [(r["state"], r["valid_auc"], r["epochs"]) for r in rows] == [
      ("complete", "0.72", "2"), ("complete", "0.75", "2"), ("complete", "0.73", "2"), ("pruned", "0.6", "2")]
  assert json.loads((tmp_path / "results" / "best.json").read_text())["valid_auc"] == 0.75


def test_a_study_is_its_config_and_space(tmp_path):
  config = base.get_config()
  space = {"optimizer.learning_rate": LogUniform(1e-4, 1e-2)}
  name = lambda c, s: tune.Tuning.create("x", c, s, tmp_path, tmp_path).folder.name
  other = base.get_config()
  other.optimizer.b1 = 0.8
  assert name(config, space) == name(base.get_config(), dict(space))
  assert name(other, space) != name(config, space)
  assert name(config, {"optimizer.learning_rate": LogUniform(1e-4, 3e-2)}) != name(config, space)


@pytest.mark.parametrize("space, message", [
    ({"model.dnn.dropuot": Uniform(0.0, 0.5)},
     r"^x.py: search space key 'model.dnn.dropuot': config.model.dnn has no field 'dropuot' \(did you mean dropout\?\)$"),
    ({"optimizer.learning_rte": LogUniform(1e-4, 1e-2)}, r"key 'optimizer.learning_rte'.*did you mean learning_rate"),
    ({"model.dnn.dropout": Uniform(0.0, 1.5)}, r"^x.py: search space model.dnn.dropout=1.5 does not fit.*\[0, 1\)$"),
    ({"num_epochs": Uniform(1.0, 3.0)}, r"^x.py: search space num_epochs=1.0 does not fit the config"),
])
def test_a_bad_search_space_is_one_line_naming_the_key(space, message):
  with pytest.raises(ConfigError, match=message) as e:
    tune.check_space(base.get_config(), space, "x.py")
  assert "\n" not in str(e.value)


def test_the_configs_spaces_fit_their_configs_and_grids_drop_what_a_variant_lacks():
  for module, arg in ((base, None), (din, None), (din, "dice"), (mian, None)):
    tune.check_space(module.get_config(arg), common.search_space(module, arg), module.__name__)
  assert "model.attention_hidden" in din.get_search_space() and "model.dropout" in mian.get_search_space()
  grid, config = ablation_din.get_grid("tuned,dataset=ml-100k"), ablation_din.get_config("tuned")
  assert (grid.name, grid.seeds, grid.tuned, config.num_epochs) == ("ablation_din_tuned", common.FULL_SEEDS, True, 20)
  space = common.search_space(ablation_din, "tuned")
  dropped = {v: tune.split_space(tune.grid_lib.with_overrides(config, o, 0), space, o)[1]
             for v, o in grid.variants.items()}
  assert list(dropped["lr"]) == ["model.dnn.dropout", "model.dnn.hidden"] and not any(
      keys for v, keys in dropped.items() if v != "lr")
  factorial = mian_factorial.get_grid(None).variants["mlp200_80-gim_off-full"]
  kept, dropped = tune.split_space(mian.get_config(), mian.get_search_space(), factorial)
  assert dropped == {"model.dnn.hidden": "the variant sets it"} and "model.dnn.dropout" in kept
  assert ablation_mian.get_grid("tuned").tuned and not ablation_mian.get_grid("quick").tuned
  assert common.untuned_arg("tuned,dataset=ml-100k") == "dataset=ml-100k" and common.untuned_arg("tuned") is None
  with pytest.raises(ValueError, match="pick one"):
    ablation_din.get_grid("quick,tuned")
  with pytest.raises(ValueError, match="lo < hi"):
    Uniform(0.5, 0.1)
  with pytest.raises(ValueError, match="distinct labels"):
    Choice(((8,), [8]))
  assert Fixed("mba").value == "mba"
