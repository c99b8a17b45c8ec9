"""A workdir you can trust (issue 16): one process per workdir, the best checkpoint the run's progress
names, a damaged newest checkpoint skipped, no non-finite state checkpointed, a diverged run
restarted with a lower learning rate, killed runs resumed in either seeds_in_parallel mode, and bad
config.model values refused before any work."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ctrjax.errors import ConfigError, WorkdirBusy, WorkdirFileError
from ctrjax.train import seeds as seeds_lib
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from ctrjax.train import workdir_lock
from ctrjax.train.checkpoint import Checkpointer
from tests.test_trainer import _config, _metrics, _result, _set, dataset  # noqa: F401  (dataset: module-scoped)

REPO = pathlib.Path(__file__).resolve().parents[1]
LR = 0.01                   # on this data epoch 1 is the best of 2, so best and newest checkpoint differ
KILL_AT = 62 + 30           # 62 steps per epoch, a save every 25: mid epoch 2, after the save at step 75
TOL = 1e-3                  # vmapped seeds vs a single run (tests/test_seeds.py)


class _Killed(Exception):
  """Stands for the SIGKILL that config.debug.kill_at_step sends once the saves are committed."""


def _train_until_killed(config, workdir, dataset, monkeypatch):  # noqa: F811
  def kill(pid, sig):
    raise _Killed
  with monkeypatch.context() as m:
    m.setattr(trainer.os, "kill", kill)
    with pytest.raises(_Killed):
      trainer.train_and_evaluate(_with(config, **{"debug.kill_at_step": KILL_AT}), workdir, dataset)


def _with(config, **overrides):
  return _set(config.copy_and_resolve_references(), **overrides)


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


_CHILD = """
import json, sys
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
from tests.test_trainer import _config
from ctrjax.train import trainer
dataset, workdir, overrides = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
trainer.train_and_evaluate(_config(dataset, **overrides), workdir, dataset)
"""


def _child(dataset, workdir, **overrides) -> subprocess.Popen:  # noqa: F811
  """A separate process training ``_config(dataset, **overrides)`` into ``workdir`` on 1 CPU device."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(REPO / ".jax_cache"), str(dataset), str(workdir), json.dumps(overrides)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):  # noqa: F811
  """An uninterrupted run of ``_config(dataset, LR)``."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  trainer.train_and_evaluate(_config(dataset, **{"optimizer.learning_rate": LR}), workdir, dataset)
  return workdir


def test_a_second_process_is_refused_the_workdir_until_the_first_dies(dataset, tmp_path):  # noqa: F811
  workdir, free = tmp_path / "run", tmp_path / "free"
  holder = _child(dataset, workdir, num_epochs=5)
  try:
    deadline = time.time() + 300
    while not (workdir / "config.json").is_file():          # written once it holds the lock
      assert holder.poll() is None and time.time() < deadline, holder.communicate()[1][-3000:]
      time.sleep(0.2)
    with pytest.raises(WorkdirBusy, match=rf"^{re.escape(str(workdir))} is in use by pid {holder.pid} on "):
      trainer.train_and_evaluate(_config(dataset, num_epochs=5), workdir, dataset)
    with pytest.raises(WorkdirBusy, match=rf"in use by pid {holder.pid} "):
      seeds_lib.train_seeds(_config(dataset, num_devices=1, num_epochs=5), (1, 0), [free, workdir], dataset)
    with pytest.raises(WorkdirBusy, match=rf"in use by pid {holder.pid} .*; evaluate after it ends"):
      trainer.evaluate_workdir(workdir, dataset)
  finally:
    holder.kill()
    holder.communicate()
  assert holder.returncode == -signal.SIGKILL
  with workdir_lock.training([workdir, free]):   # the OS dropped the dead holder's lock; train_seeds its own
    pass


def test_the_best_checkpoint_is_the_one_the_progress_names(dataset, reference, tmp_path, monkeypatch):  # noqa: F811
  workdir = tmp_path / "run"
  _train_until_killed(_config(dataset, **{"optimizer.learning_rate": LR}), workdir, dataset, monkeypatch)
  for metrics in (workdir / "checkpoints").glob("*/metrics"):   # orbax's per-step metrics, if any
    shutil.rmtree(metrics)
  result = trainer.train_and_evaluate(_config(dataset, **{"optimizer.learning_rate": LR}), workdir, dataset)
  assert (result["best_epoch"], result["best_step"]) == (1, 62)
  assert _result(workdir) == _result(reference)
  assert trainer.evaluate_workdir(workdir, dataset)["test"] == pytest.approx(result["test"], abs=1e-6)
  shutil.rmtree(workdir / "checkpoints" / "62")
  with pytest.raises(WorkdirFileError, match=rf"^{re.escape(str(workdir / 'checkpoints' / '62'))}: no such "
                                             rf"checkpoint \(kept: steps \[100, 124\]\)"):
    trainer.evaluate_workdir(workdir, dataset)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(dataset, reference, tmp_path, monkeypatch,  # noqa: F811
                                                                  capsys):
  workdir = tmp_path / "run"
  config = _config(dataset, **{"optimizer.learning_rate": LR})
  _train_until_killed(config, workdir, dataset, monkeypatch)
  assert _steps(workdir) == [62, 75]                      # the newest two (62 is also the best)
  for f in (workdir / "checkpoints" / "75" / "state").rglob("d/*"):   # the arrays' data files
    f.write_bytes(b"\0" * f.stat().st_size)               # a disk error
  capsys.readouterr()
  result = trainer.train_and_evaluate(config, workdir, dataset)
  err = capsys.readouterr().err
  assert re.search(rf"warning: skipping {re.escape(str(workdir / 'checkpoints' / '75'))}: unreadable "
                   r"checkpoint \(.+\); deleted, resuming from step 62", err), err
  assert result["resumed_from_step"] == 62
  assert _metrics(workdir) == _metrics(reference)
  assert _result(workdir) == _result(reference)


@pytest.mark.parametrize("poisoned_step, kept", [(50, [25]), (62, [25, 50])])   # a save, an epoch end
def test_a_non_finite_state_is_neither_checkpointed_nor_evaluated(dataset, tmp_path, monkeypatch,  # noqa: F811
                                                                   poisoned_step, kept):
  real_step = step_lib.train_step

  def poisoned(state, batch, rng, regularizer):       # the update of step N makes the params NaN;
    state, m = real_step(state, batch, rng, regularizer)   # its loss (before the update) stays finite
    params = jax.tree.map(lambda p: jnp.where(state.step == poisoned_step, jnp.nan, p), state.params)
    return state.replace(params=params), m

  monkeypatch.setattr(step_lib, "train_step", poisoned)
  with pytest.raises(trainer.TrainingDiverged, match=rf"became NaN/Inf by step {poisoned_step}, every "
                                                     rf"loss up to it finite .*\(step {kept[-1]}\)"):
    trainer.train_and_evaluate(_config(dataset), tmp_path / "run", dataset)
  assert _steps(tmp_path / "run") == kept


def test_a_diverged_process_stops_with_one_error_and_no_shutdown_noise(dataset, tmp_path):  # noqa: F811
  proc = _child(dataset, tmp_path / "run", **{"optimizer.learning_rate": 1e30, "checkpoint_every_steps": 1})
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  assert re.search(r"TrainingDiverged: loss became (nan|inf) at step 2 .*\(step 1\): restart from it", err), err
  assert "can't create new thread" not in err and "Exception ignored" not in err, err[-3000:]


def test_a_diverged_run_restarts_from_its_last_good_checkpoint_with_a_lower_lr(dataset, tmp_path, monkeypatch,  # noqa: F811
                                                                               capsys):
  workdir, high, low = tmp_path / "run", _config(dataset, **{"optimizer.learning_rate": LR}), 1e-3
  real_step = step_lib.train_step

  def nan_from_step_33(state, batch, rng, regularizer):
    state, m = real_step(state, batch, rng, regularizer)
    return state, {**m, "loss": jnp.where(state.step >= 33, jnp.nan, m["loss"])}

  with monkeypatch.context() as m:
    m.setattr(step_lib, "train_step", nan_from_step_33)
    with pytest.raises(trainer.TrainingDiverged, match=r"at step 33 .*\(step 25\)"):
      trainer.train_and_evaluate(high, workdir, dataset)
  lower = _with(high, **{"optimizer.learning_rate": low})
  with pytest.raises(ConfigError, match=r"differs in \['optimizer'\]\).*trainer.Restart"):
    trainer.train_and_evaluate(lower, workdir, dataset)
  with pytest.raises(ConfigError, match=r"also differs in \['early_stopping.patience'\]"):
    trainer.train_and_evaluate(_with(lower, **{"early_stopping.patience": 5}), workdir, dataset, trainer.Restart())

  capsys.readouterr()
  result = trainer.train_and_evaluate(lower, workdir, dataset, trainer.Restart(optimizer_state=False))
  assert ("restarting from step 25 with optimizer.learning_rate 0.01 -> 0.001, a fresh optimizer state"
          in capsys.readouterr().out)
  assert result["restarts"] == [{"step": 25, "changed": {"optimizer.learning_rate": [LR, low]},
                                 "optimizer_state": False}]
  assert result["resumed_from_step"] == 25 and result["epochs_run"] == 2
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == low
  assert [h["learning_rate"] for h in _metrics(workdir)] == pytest.approx([low, low])
  setup = trainer.Setup(lower, dataset)
  ckpt = Checkpointer(workdir / "checkpoints")
  state, _, _ = ckpt.restore(124, setup.init_state(setup.source("train", train=True)[0]), setup.rng)
  ckpt.close()
  counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")]
  assert counts and set(counts) == {124 - 25}                  # Adam restarted at step 25

  again = trainer.train_and_evaluate(lower, workdir, dataset, trainer.Restart(optimizer_state=False))
  assert "already has this config: resuming it" in capsys.readouterr().out
  assert again["restarts"] == result["restarts"] and again["test"] == result["test"]


def test_a_killed_single_run_resumes_in_a_seed_group(dataset, reference, tmp_path, monkeypatch):  # noqa: F811
  """The other direction (a group's seed resumed alone) is in tests/test_seeds.py."""
  config = _config(dataset, num_devices=1, **{"optimizer.learning_rate": LR})
  _train_until_killed(config, tmp_path / "seed0", dataset, monkeypatch)
  [result] = seeds_lib.train_seeds(config, (0,), [tmp_path / "seed0"], dataset)
  expected = json.loads((reference / "result.json").read_text())
  assert result["resumed_from_step"] == 75 and result["best_step"] == expected["best_step"]
  for m in ("auc", "logloss"):
    np.testing.assert_allclose(result["test"][m], expected["test"][m], atol=TOL)


@pytest.mark.parametrize("field, value, message", [
    ("model.id_dropout", 1.5, "config.model.id_dropout=1.5: expected a rate in [0, 1)"),
    ("model.embed_dim", 0, "config.model.embed_dim=0: expected a size >= 1"),
    ("optimizer.learning_rate", float("inf"), "config.optimizer.learning_rate=inf: expected a finite value > 0"),
])
def test_bad_model_and_optimizer_values_fail_before_any_work(dataset, field, value, message):  # noqa: F811
  with pytest.raises(ConfigError) as e:
    trainer.Setup(_config(dataset, **{field: value}), dataset)
  assert message in str(e.value)


@pytest.mark.parametrize("bad, good, message", [
    ({"dropout": 1.0}, {"dropout": 0.5}, "config.model.tower.dropout=1.0: expected a rate in [0, 1)"),
    ({"hidden": (8, 0)}, {"hidden": ()}, "config.model.tower.hidden=(8, 0): expected a size >= 1"),
    ({"num_heads": 0}, {"num_heads": 2}, "config.model.tower.num_heads=0: expected a size >= 1"),
    ({"cin_layers": (8, 0)}, {"cin_layers": (8, 8), "num_layers": 0},
     "config.model.tower.cin_layers=(8, 0): expected a count >= 0 (or a tuple of widths >= 1)"),
])
def test_model_rules_apply_at_any_depth(dataset, bad, good, message):  # noqa: F811
  config = _config(dataset)
  config.model.tower = bad
  with pytest.raises(ConfigError) as e:
    trainer.validate_config(config)
  assert message in str(e.value)
  config.model.tower = good
  trainer.validate_config(config)
