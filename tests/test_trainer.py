"""Trainer: single-trace step, 1 vs 4 devices, kill -9 and resume, eval from checkpoint, NaN stop,
two real processes (jax.distributed over loopback) vs one."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import chex
import jax
import ml_collections
import numpy as np
import pytest

import data_prep
from configs import base as base_config
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from ctrjax.train.checkpoint import Checkpointer
from ctrjax.train.progress import Progress
from data_prep import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn") / "ds", num_rows=5000, num_items=300,
                            num_users=100, max_len=8, seed=0)


def _config(dataset, **overrides) -> ml_collections.ConfigDict:
  c = base_config.get_config("quick")
  c.dataset.name, c.dataset.path = "path", str(dataset)
  c.model.dnn.hidden, c.model.dnn.dropout = (32, 16), 0.1
  c.batch_size, c.eval_batch_size, c.progress_bar = 64, 256, False
  c.checkpoint_every_steps, c.log_every_steps = 25, 10
  return _set(c, **overrides)


def _set(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """``config`` with each dotted-key override assigned in place."""
  for k, v in overrides.items():
    node = config
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return config


def test_train_step_compiles_once(dataset):
  setup = trainer.Setup(_config(dataset), dataset)
  src = setup.source("train", train=True)
  state = setup.init_state(src[0])
  traced = chex.assert_max_traces(
      lambda s, b, r: step_lib.train_step(s, setup.layout.unpack(b), r, setup.regularizer), n=1)
  step = jax.jit(traced, donate_argnums=0)
  losses = []
  for i in range(4):
    state, m = step(state, setup.to_device(src[i]), setup.rng)
    losses.append(float(m["loss"]))
  assert int(state.step) == 4 and np.all(np.isfinite(losses))


def _trajectory(dataset, num_devices, steps=12):
  setup = trainer.Setup(_config(dataset, num_devices=num_devices), dataset)
  assert setup.mesh.size == num_devices
  src = setup.source("train", train=True)
  state = setup.init_state(src[0])
  losses = []
  for i in range(steps):
    state, m = setup.train_step(state, setup.to_device(src[i]), setup.rng)
    losses.append(float(m["loss"]))
  return np.array(losses), jax.device_get(state.params)


def test_one_and_four_devices_give_the_same_trajectory(dataset):
  assert jax.device_count() == 4, "conftest sets 4 simulated CPU devices"
  losses1, params1 = _trajectory(dataset, 1)
  losses4, params4 = _trajectory(dataset, 4)
  assert losses1[-1] < losses1[0]                          # it learns
  np.testing.assert_allclose(losses1, losses4, atol=1e-5, rtol=0)
  chex.assert_trees_all_close(params1, params4, atol=1e-5)


def _run(dataset, workdir, *extra, env_extra=None, check=True):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
         **(env_extra or {})}
  cmd = [sys.executable, "-m", "experiments.main", "run", f"--config={REPO}/configs/base.py:quick",
         "--config.dataset.name=path", f"--config.dataset.path={dataset}", "--config.progress_bar=False",
         "--config.batch_size=64", "--config.eval_batch_size=256", "--config.model.dnn.hidden=(32,16)",
         "--config.model.dnn.dropout=0.1", "--config.checkpoint_every_steps=25", f"--workdir={workdir}", *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def _metrics(workdir):
  """metrics.jsonl without wall-clock fields."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in lines]


def _result(workdir):
  """result.json without the fields that differ between an interrupted and a straight run."""
  r = json.loads((pathlib.Path(workdir) / "result.json").read_text())
  r.pop("resumed_from_step")
  r.pop("seconds_per_epoch")
  r.pop("compile_seconds")
  return r


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
  wd = tmp_path_factory.mktemp("run") / "full"
  _run(dataset, wd)
  return wd


def test_kill_minus_9_mid_epoch_and_resume_is_exact(dataset, uninterrupted, tmp_path):
  steps_per_epoch = 4000 // 64
  kill_at = steps_per_epoch + 30                               # mid epoch 2, after a save at step 75
  wd = tmp_path / "killed"
  proc = _run(dataset, wd, f"--config.debug.kill_at_step={kill_at}", check=False)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert not (wd / "result.json").exists()
  proc = _run(dataset, wd)
  assert "resumed from step 75" in proc.stdout
  assert json.loads((wd / "result.json").read_text())["resumed_from_step"] == 75
  assert _metrics(wd) == _metrics(uninterrupted)
  assert _result(wd) == _result(uninterrupted)


def test_resume_refuses_a_different_config(dataset, uninterrupted, tmp_path):
  proc = _run(dataset, uninterrupted, "--config.optimizer.learning_rate=0.5", check=False)
  assert proc.returncode != 0 and "different config (differs in ['optimizer'])" in proc.stderr


def test_eval_from_checkpoint_reproduces_logged_test_metrics(uninterrupted, dataset):
  logged = json.loads((uninterrupted / "result.json").read_text())
  out = trainer.evaluate_workdir(uninterrupted, dataset)
  assert out["best_step"] == logged["best_step"]
  for split in ("valid", "test"):
    for k in ("auc", "gauc", "logloss"):
      assert out[split][k] == pytest.approx(logged[split][k], abs=1e-6), (split, k)


def test_result_and_logs_are_written(uninterrupted):
  r = json.loads((uninterrupted / "result.json").read_text())
  assert r["test"]["rows"] == 500 and 0.5 < r["test"]["auc"] <= 1.0
  assert len(_metrics(uninterrupted)) == r["epochs_run"] == 2
  assert json.loads((uninterrupted / "config.json").read_text())["batch_size"] == 64
  assert any(p.name.startswith("events.out.tfevents") for p in (uninterrupted / "tb").iterdir())


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
  real_step = step_lib.train_step

  def poisoned(state, batch, rng, regularizer):
    state, m = real_step(state, batch, rng, regularizer)
    return state, {**m, "loss": jax.numpy.where(state.step >= 33, jax.numpy.nan, m["loss"])}

  monkeypatch.setattr(step_lib, "train_step", poisoned)
  with pytest.raises(trainer.TrainingDiverged) as e:
    trainer.train_and_evaluate(_config(dataset), tmp_path / "nan", dataset)
  msg = str(e.value)
  assert "at step 33" in msg and "'step': 32" in msg and "(step 25)" in msg
  assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit()) == ["25"]


def test_progress_round_trips_through_a_checkpoint(tmp_path):
  progress = Progress(config={"seed": 3, "model": {"hidden": [8, 4]}}, step=7,
                      history=[{"epoch": 1, "step": 5, "valid_auc": 0.61}], best=0.61, best_epoch=1,
                      best_step=5, bad_epochs=1, stopped="early stopping after epoch 2",
                      epoch_loss_sum=1.25, epoch_loss_count=2)
  ckpt = Checkpointer(tmp_path / "checkpoints")
  state = {"w": jax.numpy.arange(3.0)}
  ckpt.save(7, state, jax.random.PRNGKey(0), progress)
  ckpt.wait()
  restored_state, _, restored = ckpt.restore(7, state, jax.random.PRNGKey(1))
  assert restored == progress and ckpt.read_progress(7) == progress
  chex.assert_trees_all_equal(restored_state, state)
  ckpt.close()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_TWO_PROCESS_COMMON = ("--config.num_epochs=1", "--config.checkpoint_every_steps=1000")


@pytest.fixture(scope="module")
def single_process_on_4_devices(dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_process") / "single"
  single = _run(dataset, workdir, *_TWO_PROCESS_COMMON,
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert "devices 4" in single.stdout and "processes 1" in single.stdout
  return workdir


@pytest.mark.parametrize("layout", [
    (),
    # each process uploads its devices' rows of the train split, tables row-sharded across processes
    ("--config.loader.placement=device", "--config.embedding_sharding=rows", "--config.steps_per_call=3"),
], ids=["host_feed", "device_feed_rows_k3"])
def test_two_processes_train_the_same_model_as_one(dataset, single_process_on_4_devices, tmp_path, layout):
  common = (*_TWO_PROCESS_COMMON, *layout)
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
         "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.main", "run", f"--config={REPO}/configs/base.py:quick",
       "--config.dataset.name=path", f"--config.dataset.path={dataset}", "--config.progress_bar=False",
       "--config.batch_size=64", "--config.eval_batch_size=256", "--config.model.dnn.hidden=(32,16)",
       "--config.model.dnn.dropout=0.1", *common, f"--workdir={tmp_path / 'multi'}",
       "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "devices 4" in outs[0][0] and "processes 2" in outs[0][0]
  if layout:
    assert "loader: placement device" in outs[0][0] and "3 steps per call" in outs[0][0]
  a, b = _metrics(single_process_on_4_devices), _metrics(tmp_path / "multi")
  assert len(a) == len(b) == 1
  for k in ("train_loss", "valid_auc", "valid_logloss", "valid_gauc"):
    assert a[0][k] == pytest.approx(b[0][k], abs=1e-5), k
  ra, rb = _result(single_process_on_4_devices), _result(tmp_path / "multi")
  for k in ("auc", "logloss"):
    assert ra["test"][k] == pytest.approx(rb["test"][k], abs=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("early_stopping.metric", "acu", "config.early_stopping.metric='acu': expected 'auc', 'gauc' or 'logloss'"),
    ("early_stopping.mode", "maximum", "config.early_stopping.mode='maximum'"),
    ("batch_size", 66, "config.batch_size=66: expected a multiple of the 4 devices"),
    ("lr_decay_on_plateau", 0.0, "config.lr_decay_on_plateau=0.0"),
    ("model_name", "basemodel", "config.model_name='basemodel' is not a model"),
    ("dataset.name", "ml-20m", "config.dataset.name='ml-20m'"),
    ("gauc_group", "usr", "config.gauc_group='usr' is not a meta field"),
])
def test_bad_config_values_fail_fast_naming_the_field(dataset, field, value, message):
  config = _config(dataset, **{field: value})
  with pytest.raises(ValueError) as e:
    if field == "dataset.name":
      config.dataset.path = ""
      data_prep.prepare(config.dataset)
    trainer.Setup(config, dataset)
  assert message in str(e.value)


def test_learning_rate_lives_in_the_optimizer_state_and_clipping_applies(dataset):
  setup = trainer.Setup(_config(dataset), dataset)
  src = setup.source("train", train=True)
  batch = setup.to_device(src[0])
  state = step_lib.with_learning_rate(setup.init_state(src[0]), 0.0)
  before = jax.device_get(state.params)
  state, _ = setup.train_step(state, batch, setup.rng)
  chex.assert_trees_all_equal(jax.device_get(state.params), before)      # lr 0: nothing moves
  assert step_lib.learning_rate(state) == 0.0



def test_gradient_clipping_rescales_to_the_clip_norm():
  cfg = base_config.get_config().optimizer
  params = {"w": np.zeros(50, np.float32)}
  g = {"w": np.linspace(-40.0, 40.0, 50).astype(np.float32)}
  clip = 1e-6                                   # tiny: Adam's eps makes the gradient scale visible
  def first_update(grads, clip_norm):
    with cfg.unlocked():
      cfg.grad_clip_norm = clip_norm
    tx = step_lib.make_optimizer(cfg)
    return tx.update(grads, tx.init(params), params)[0]["w"]
  scaled = {"w": g["w"] * clip / np.linalg.norm(g["w"])}
  np.testing.assert_allclose(first_update(g, clip), first_update(scaled, 0.0), rtol=1e-5)
  assert not np.allclose(first_update(g, clip), first_update(g, 0.0), rtol=1e-2)


def test_lr_decays_after_each_non_improving_epoch_and_early_stopping_ends_the_run(dataset, tmp_path):
  config = _config(dataset, num_epochs=6, lr_decay_on_plateau=0.5, **{
      "optimizer.learning_rate": 0.01, "early_stopping.patience": 2})
  result = trainer.train_and_evaluate(config, tmp_path / "plateau", dataset)
  history = _metrics(tmp_path / "plateau")
  aucs = [h["valid_auc"] for h in history]
  improved = [i == 0 or aucs[i] > max(aucs[:i]) for i in range(len(aucs))]
  assert not all(improved), "this setup overfits; a non-improving epoch is expected"
  lr = 0.01
  for h, imp in zip(history, improved):
    assert h["learning_rate"] == pytest.approx(lr)
    lr = lr if imp else lr * 0.5
  bad_tail = len(improved) - 1 - max(i for i, imp in enumerate(improved) if imp)
  if len(history) < 6:
    assert bad_tail == 2 and result["stopped"].startswith("early stopping after epoch")
  assert result["best_epoch"] == 1 + int(np.argmax(aucs))


def test_model_fields_that_do_not_fit_the_model_are_named(dataset):
  config = _config(dataset, model_name="lr")                    # base_model's fields, LR's class
  with pytest.raises(ValueError, match=r"config.model does not fit model 'lr'.*unexpected keyword argument"):
    trainer.Setup(config, dataset)


@pytest.mark.parametrize("mode,untouched_rows_move", [("touched", False), ("mba", False), ("full_table", True)])
def test_regularizer_in_the_step_touches_only_batch_rows(dataset, mode, untouched_rows_move):
  setup = trainer.Setup(_config(dataset, **{"regularizer.mode": mode, "regularizer.weight": 0.1}), dataset)
  src = setup.source("train", train=True)
  state = setup.init_state(src[0])
  table0 = np.asarray(jax.device_get(state.params["embedding"]["item_id"]))
  seen = set()
  for i in range(3):
    b = src[i]
    seen |= set(np.unique(b["item"]["item_id"])) | set(np.unique(b["behavior"]["hist_item_id"]))
    state, m = setup.train_step(state, setup.to_device(b), setup.rng)
    assert float(m["penalty"]) > 0
  table = np.asarray(jax.device_get(state.params["embedding"]["item_id"]))
  untouched = np.array(sorted(set(range(2, table.shape[0])) - seen))
  assert len(untouched) > 0
  moved = np.any(table[untouched] != table0[untouched])
  assert moved == untouched_rows_move


def test_undefined_early_stopping_metric_is_a_clear_error(dataset, tmp_path, monkeypatch):
  real_evaluate = trainer.Setup.evaluate
  monkeypatch.setattr(trainer.Setup, "evaluate", lambda self, state, split, *predict: {
      **real_evaluate(self, state, split, *predict), "gauc": float("nan")})
  config = _config(dataset, **{"early_stopping.metric": "gauc"})
  with pytest.raises(ValueError, match=r"valid gauc is nan after epoch 1.*dataset.holdout >= 2"):
    trainer.train_and_evaluate(config, tmp_path / "nan_gauc", dataset)


def test_on_epoch_hook_stops_a_run_and_a_rerun_keeps_it_stopped(dataset, tmp_path):
  config = _config(dataset, num_epochs=4, **{"early_stopping.patience": 4})
  calls = []

  def on_epoch(epoch, valid):
    calls.append((epoch, valid["auc"]))
    return "pruned after epoch 2" if epoch == 2 else None
  result = trainer.train_and_evaluate(config, tmp_path / "hooked", dataset, on_epoch=on_epoch)
  assert [e for e, _ in calls] == [1, 2]
  assert [auc for _, auc in calls] == [h["valid_auc"] for h in _metrics(tmp_path / "hooked")]
  assert result["stopped"] == "pruned after epoch 2" and result["epochs_run"] == 2
  again = trainer.train_and_evaluate(config, tmp_path / "hooked", dataset, on_epoch=on_epoch)
  assert len(calls) == 2 and again["epochs_run"] == 2 and again["test"] == result["test"]
