"""The input side of scale (issue 18): device-resident training data (config.loader.placement), K
train steps per call (config.steps_per_call), compile seconds in result.json and grid tables, and
N workers per accelerator (CTRJAX_WORKERS_PER_DEVICE)."""
import functools
import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import ml_collections
import numpy as np
import pytest

from configs import base as base_config
from configs.common import Grid
from ctrjax.errors import ConfigError, UserError
from ctrjax.train import feed as feed_lib
from ctrjax.train import seeds as seeds_lib
from ctrjax.train import trainer
from data_prep import synthetic
from experiments import main as cli
from experiments import report

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.generate(tmp_path_factory.mktemp("syn") / "ds", num_rows=2500, num_items=200,
                            num_users=60, max_len=6, seed=0)


def _config(dataset, **overrides) -> ml_collections.ConfigDict:
  c = base_config.get_config("quick")
  c.dataset.name, c.dataset.path = "path", str(dataset)
  c.model.dnn.hidden, c.model.dnn.dropout = (16,), 0.1
  c.batch_size, c.eval_batch_size, c.progress_bar = 48, 480, False
  c.checkpoint_every_steps, c.log_every_steps = 10, 5
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _feed(setup, seeds=None):
  """The trainer's feed for ``setup``: one run's, or a stacked group's of ``seeds``."""
  if seeds is None:
    src = setup.source("train", train=True)
    return feed_lib.make_feed(setup, [src], stacked=False, host_batches=lambda: setup.batches(src)), src
  sources = [setup.source("train", train=True, seed=s) for s in seeds]
  host = lambda: iter(jax.device_put(seeds_lib._StackedSource(sources, setup.pack)[i])   # noqa: E731
                      for i in range(len(sources[0])))
  return feed_lib.make_feed(setup, sources, stacked=True, host_batches=host), sources[0]


@functools.cache
def _trajectory(dataset, num_devices: int, placement: str, k: int, steps: int = 10,
                embedding_sharding: str = "replicated"):
  """Losses and final params of ``steps`` train steps, K per call, then one per call to ``steps``."""
  setup = trainer.Setup(_config(dataset, num_devices=num_devices, steps_per_call=k, embedding_sharding=embedding_sharding,
                                **{"loader.placement": placement}), dataset)
  feed, src = _feed(setup)
  state, losses = setup.init_state(src[0]), []
  for n in [k] * (steps // k) + [1] * (steps % k):
    state, m = feed.steps(state, setup.rng, n)
    losses += np.atleast_1d(np.asarray(m["loss"])).tolist()
  return np.array(losses), jax.device_get(state.params)


@pytest.mark.parametrize("num_devices", [1, 3])
def test_device_feed_gathers_the_host_loaders_batches_in_its_order(dataset, num_devices):
  setup = trainer.Setup(_config(dataset, num_devices=num_devices, **{"loader.placement": "device"}), dataset)
  feed, src = _feed(setup)
  assert isinstance(feed, feed_lib.DeviceFeed)
  assert feed.data["ints"].shape[0] % num_devices == 0 and feed.data["ints"].sharding.spec[0] == "data"
  for index in (0, 7, src.batches_per_epoch + 3):              # two epochs: two permutations
    host, device = setup.to_device(src[index]), feed.batch(index)
    assert device["ints"].sharding.is_equivalent_to(host["ints"].sharding, 2)
    chex.assert_trees_all_equal(jax.device_get(device), jax.device_get(host))


@pytest.mark.parametrize("num_devices", [1, 4])
def test_host_and_device_placement_train_identically(dataset, num_devices):
  host_losses, host_params = _trajectory(dataset, num_devices, "host", 1)
  device_losses, device_params = _trajectory(dataset, num_devices, "device", 1)
  assert host_losses[-1] < host_losses[0]
  np.testing.assert_array_equal(device_losses, host_losses)
  chex.assert_trees_all_close(device_params, host_params, atol=1e-6, rtol=0)


@pytest.mark.parametrize("placement", ["host", "device"])
def test_k_steps_per_call_equal_one_step_per_call(dataset, placement):
  one_losses, one_params = _trajectory(dataset, 4, "host", 1)
  k_losses, k_params = _trajectory(dataset, 4, placement, 3)   # 3 + 3 + 3 + 1 steps
  chex.assert_trees_all_close(k_losses, one_losses, atol=1e-6, rtol=0)
  chex.assert_trees_all_close(k_params, one_params, atol=1e-6, rtol=0)


def test_row_sharded_tables_with_device_placement_and_k_steps_per_call_train_as_the_plain_layout(dataset):
  plain_losses, plain_params = _trajectory(dataset, 4, "host", 1)
  losses, params = _trajectory(dataset, 4, "device", 3, embedding_sharding="rows")
  chex.assert_trees_all_close(losses, plain_losses, atol=1e-5, rtol=0)
  tables = params["embedding"]                     # padded to a multiple of 4 rows: the extra rows cut
  params = {**params, "embedding": {t: v[:plain_params["embedding"][t].shape[0]] for t, v in tables.items()}}
  assert any(tables[t].shape != v.shape for t, v in plain_params["embedding"].items())
  chex.assert_trees_all_close(params, plain_params, atol=1e-5, rtol=0)


def test_a_seed_group_on_device_with_k_steps_per_call_equals_its_host_feed(dataset):
  trajectories = []
  for placement, k in (("host", 1), ("device", 3)):
    setup = trainer.Setup(_config(dataset, num_devices=1, steps_per_call=k, **{"loader.placement": placement}),
                          dataset)
    feed, src = _feed(setup, seeds=(0, 5))
    state = jax.tree.map(lambda *x: jax.numpy.stack(x), *[setup.init_state(src[0], seed=s) for s in (0, 5)])
    rngs = jax.numpy.stack([jax.random.PRNGKey(s) for s in (0, 5)])
    losses = []
    for n in (k, k, 1) if k > 1 else (1,) * 7:
      state, m = feed.steps(state, rngs, n)
      losses += np.asarray(m["loss"]).reshape(-1, 2).tolist()
    trajectories.append((np.array(losses), jax.device_get(state.params)))
  (host_losses, host_params), (device_losses, device_params) = trajectories
  assert host_losses.shape == (7, 2) and not np.allclose(host_losses[:, 0], host_losses[:, 1])
  chex.assert_trees_all_close(device_losses, host_losses, atol=1e-6, rtol=0)
  chex.assert_trees_all_close(device_params, host_params, atol=1e-6, rtol=0)


class _Killed(Exception):
  pass


def _without_clock_fields(workdir: pathlib.Path) -> tuple[list, dict]:
  metrics = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  result = json.loads((workdir / "result.json").read_text())
  for field in ("resumed_from_step", "seconds_per_epoch", "compile_seconds"):
    result.pop(field)
  return metrics, result


def test_a_killed_device_run_with_k_steps_per_call_resumes_exactly(dataset, tmp_path, monkeypatch, capsys):
  reference = tmp_path / "host"
  trainer.train_and_evaluate(_config(dataset), reference, dataset)
  device = _config(dataset, steps_per_call=4, **{"loader.placement": "device"})
  steps_per_epoch = 2000 // 48                                   # 41: 10 calls of 4, then 1 step
  device.debug.kill_at_step = steps_per_epoch + 15               # mid epoch 2, in the call 53..56
  def kill(pid, sig):
    raise _Killed()
  monkeypatch.setattr(trainer.os, "kill", kill)
  with pytest.raises(_Killed):
    trainer.train_and_evaluate(device, tmp_path / "device", dataset)
  assert not (tmp_path / "device" / "result.json").exists()
  device.debug.kill_at_step = -1
  result = trainer.train_and_evaluate(device, tmp_path / "device", dataset)
  out = capsys.readouterr().out
  assert "loader: placement device" in out and "4 steps per call" in out
  assert result["resumed_from_step"] == 53                       # the call that crossed step 50
  assert _without_clock_fields(tmp_path / "device") == _without_clock_fields(reference)
  assert 0 < result["compile_seconds"] < 600


def test_auto_placement_chooses_by_the_device_memory_share():
  mib = 2**20
  assert feed_lib.choose_placement("auto", 100 * mib, 4, None, 0.25)[0] == "host"
  placement, line = feed_lib.choose_placement("auto", 100 * mib, 4, 100 * mib, 0.25)   # 25 MiB per device
  assert placement == "device" and "auto -> device" in line and "25.0% of" in line
  assert feed_lib.choose_placement("auto", 101 * mib, 4, 100 * mib, 0.25)[0] == "host"
  assert feed_lib.choose_placement("device", 10**12, 1, None, 0.25)[0] == "device"


@pytest.mark.parametrize("field,value,message", [
    ("loader.placement", "gpu", "config.loader.placement='gpu': expected one of ('host', 'device', 'auto')"),
    ("loader.device_memory_share", 0.0, "config.loader.device_memory_share=0.0"),
    ("steps_per_call", 0, "config.steps_per_call=0: expected an integer >= 1"),
])
def test_bad_placement_or_steps_per_call_fail_naming_the_field(dataset, field, value, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    trainer.validate_config(_config(dataset, **{field: value}))


def test_compile_clock_counts_overlapping_spans_once():
  with trainer.CompileClock() as clock:
    jax.jit(lambda x: jax.numpy.sin(x) * 3.0 + 0.125)(np.arange(7.0)).block_until_ready()
  assert clock.seconds() > 0
  clock.spans = [(0.0, 2.0), (0.5, 1.0), (1.5, 3.0), (5.0, 6.0)]
  assert clock.seconds() == 4.0


def test_grid_tables_show_compile_seconds_and_a_dash_for_older_runs():
  def run(auc, compile_seconds=None):
    r = {"test": {"auc": auc, "gauc": auc, "logloss": 0.5}, "seconds_per_epoch": 2.0, "best_epoch": 1,
         "parameters_excluding_embeddings": 10}
    return r if compile_seconds is None else {**r, "compile_seconds": compile_seconds}
  grid = Grid(name="g", variants={"a": {}, "b": {}}, seeds=(0, 1), reference="a")
  rows = report.table_rows(grid, {"a": [run(0.7, 12.0), run(0.71, 14.0)], "b": [run(0.72), run(0.73)]})
  assert rows[0]["compile_seconds"] == 13.0 and np.isnan(rows[1]["compile_seconds"])
  lines = report._markdown(grid, rows, "t").splitlines()
  head = next(l for l in lines if l.startswith("| variant"))
  cells = {l.split(" | ")[0]: l.split(" | ") for l in lines if l.startswith("| a ") or l.startswith("| b ")}
  column = head.split(" | ").index("compile s")
  assert cells["| a"][column] == "13.0" and cells["| b"][column] == "—"


def test_workers_per_device_sets_the_xla_memory_variables():
  env = {"CTRJAX_WORKERS_PER_DEVICE": "4"}
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.225" in cli.share_device(env)
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
  kept = {"CTRJAX_WORKERS_PER_DEVICE": "2", "XLA_CLIENT_MEM_FRACTION": "0.3"}
  cli.share_device(kept)
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in kept and kept["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert cli.share_device({}) is None
  with pytest.raises(UserError, match="CTRJAX_WORKERS_PER_DEVICE='two'"):
    cli.share_device({"CTRJAX_WORKERS_PER_DEVICE": "two"})


def test_the_cli_applies_workers_per_device_first(tmp_path):
  env = {**os.environ, "CTRJAX_WORKERS_PER_DEVICE": "3", "JAX_PLATFORMS": "cpu"}
  for name in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE"):
    env.pop(name, None)
  proc = subprocess.run([sys.executable, "-m", "experiments.main", "eval", str(tmp_path / "none")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[0] == ("CTRJAX_WORKERS_PER_DEVICE=3: XLA_PYTHON_CLIENT_PREALLOCATE=false "
                                         "XLA_PYTHON_CLIENT_MEM_FRACTION=0.3")
