"""Row-sharded embedding tables (``config.embedding_sharding = "rows"``, ctrjax/train/mesh.py) on 8
simulated CPU devices: per-device table bytes, the same losses as replicated tables (dense and lazy
Adam, mba penalty on), no table-sized collective in the step, and a checkpoint saved on 8 devices
resumed on 4. The devices are set per process, so each side runs this file as a script in a
subprocess (``_worker``) and the tests check what it reports."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_prep import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, MORE_STEPS = 4, 3
ITEMS = 2001           # vocab 2003: 2008 rows padded for 8 devices, 2004 for 4 (a resume cuts them)
EMBEDDINGS = ("dense", "lazy_adam")


def _config(dataset, embeddings: str, sharding: str):
  from configs import base as base_config
  c = base_config.get_config("quick")
  c.dataset.name, c.dataset.path = "path", str(dataset)
  c.model.dnn.hidden, c.model.dnn.dropout = (16,), 0.1
  c.batch_size, c.eval_batch_size, c.progress_bar = 64, 256, False
  c.optimizer.embeddings, c.embedding_sharding = embeddings, sharding
  c.regularizer.mode, c.regularizer.weight = "mba", 0.05
  return c


def _steps(setup, state, first: int, n: int):
  src = setup.source("train", train=True)
  metrics = []
  for i in range(first, first + n):
    state, m = setup.train_step(state, setup.to_device(src[i]), setup.rng)
    metrics.append([float(m["loss"]), float(m["penalty"])])
  return state, metrics


def _tables(state) -> dict:
  """Host copies of the item table, its regulariser weights and its optimiser moments (optax's or
  the lazy optimiser's), by name."""
  import jax
  found = {"params": state.params["embedding"]["item_id"], "row_weights": state.row_weights["item_id"]}
  for path, leaf in jax.tree_util.tree_flatten_with_path((state.opt_state, state.embedding_opt_state))[0]:
    name = jax.tree_util.keystr(path)
    if "item_id" in name and leaf.ndim == 2:
      found["mu" if ".mu" in name else "nu"] = leaf
  return {k: np.asarray(jax.device_get(v)) for k, v in found.items()}


def _worker(role: str, dataset: str, out: str):
  """Runs on 8 (role "save") or 4 (role "resume") devices; writes its findings to ``out``/<role>.json."""
  import jax
  from ctrjax.train import trainer
  from ctrjax.train.checkpoint import Checkpointer
  jax.config.update("jax_compilation_cache_dir", str(REPO / ".jax_cache"))   # as conftest.py does
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  out = pathlib.Path(out)
  report = {"devices": jax.device_count()}
  for embeddings in EMBEDDINGS:
    ckpt = Checkpointer(out / f"ckpt_{embeddings}")
    if role == "save":
      runs = {}
      for sharding in ("replicated", "rows"):
        setup = trainer.Setup(_config(dataset, embeddings, sharding), dataset)
        state = setup.init_state(setup.source("train", train=True)[0])
        state, metrics = _steps(setup, state, 0, STEPS)
        runs[sharding] = {"metrics": metrics, "tables": _tables(state)}
      item = state.params["embedding"]["item_id"]
      compiled = setup.train_step.lower(state, setup.to_device(setup.source("train", train=True)[0]),
                                        setup.rng).compile().as_text()
      report[embeddings] = {
          "metrics": {k: r["metrics"] for k, r in runs.items()},
          "max_param_diff": float(np.abs(runs["rows"]["tables"]["params"][:setup.dataset.schema.vocab_sizes[
              "item_id"]] - runs["replicated"]["tables"]["params"]).max()),
          "padding_rows_zero": all(not np.any(t[setup.dataset.schema.vocab_sizes["item_id"]:])
                                   for k, t in runs["rows"]["tables"].items()),
          "item_rows": item.shape[0], "item_bytes": item.nbytes,
          "item_shard_bytes": [s.data.nbytes for s in item.addressable_shards],
          "per_row_state_shard_bytes": [s.data.nbytes for leaf in jax.tree.leaves(
              (state.opt_state, state.embedding_opt_state, state.row_weights))
              if leaf.shape[:1] == item.shape[:1] for s in leaf.addressable_shards],
          "table_sized_collectives": [line for line in compiled.splitlines() if f"[{item.shape[0]}," in line
                                      and any(f" {op}(" in line for op in ("all-gather", "all-reduce"))]}
      ckpt.save(STEPS, state, setup.rng, _progress(setup))
      ckpt.wait()
      np.savez(out / f"saved_{embeddings}.npz", **_tables(state))
      _, report[embeddings]["continued"] = _steps(setup, state, STEPS, MORE_STEPS)
    else:
      setup = trainer.Setup(_config(dataset, embeddings, "rows"), dataset)
      fresh = setup.init_state(setup.source("train", train=True)[0])
      state, _, _ = ckpt.restore(STEPS, fresh, setup.rng)
      restored, saved = _tables(state), np.load(out / f"saved_{embeddings}.npz")
      vocab = setup.dataset.schema.vocab_sizes["item_id"]
      item = state.params["embedding"]["item_id"]
      report[embeddings] = {
          "item_rows": item.shape[0], "saved_rows": saved["params"].shape[0],
          "sharding": str(item.sharding.spec), "shards": len(item.addressable_shards),
          "exact": all(np.array_equal(restored[k][:vocab], saved[k][:vocab]) for k in restored),
          "padding_rows_zero": all(not np.any(t[vocab:]) for t in restored.values())}
      _, report[embeddings]["continued"] = _steps(setup, state, STEPS, MORE_STEPS)
    ckpt.close()
  (out / f"{role}.json").write_text(json.dumps(report))


def _progress(setup):
  from ctrjax.train.progress import Progress
  return Progress(config=setup.config.to_dict(), step=STEPS)


def _run_worker(role: str, devices: int, dataset, out) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "tests.test_sharding", role, str(dataset), str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((pathlib.Path(out) / f"{role}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  dataset = synthetic.generate(tmp_path_factory.mktemp("syn") / "ds", num_rows=2000, num_items=ITEMS,
                               num_users=100, max_len=8, seed=0)
  out = tmp_path_factory.mktemp("sharding")
  saved = _run_worker("save", 8, dataset, out)
  return saved, _run_worker("resume", 4, dataset, out)


@pytest.mark.parametrize("embeddings", EMBEDDINGS)
def test_row_sharded_tables_give_the_losses_of_replicated_ones(runs, embeddings):
  saved, _ = runs
  r = saved[embeddings]
  assert saved["devices"] == 8
  rows, replicated = np.array(r["metrics"]["rows"]), np.array(r["metrics"]["replicated"])
  assert np.all(rows[:, 1] > 0), "the mba penalty is on"
  np.testing.assert_allclose(rows, replicated, atol=1e-5, rtol=0)
  assert r["max_param_diff"] < 1e-5
  assert r["padding_rows_zero"]


@pytest.mark.parametrize("embeddings", EMBEDDINGS)
def test_each_device_holds_an_eighth_of_every_table_and_its_state(runs, embeddings):
  r = runs[0][embeddings]
  assert r["item_rows"] == 2008 and r["item_bytes"] == 2008 * 16 * 4
  assert len(r["item_shard_bytes"]) == 8 and max(r["item_shard_bytes"]) * 8 <= r["item_bytes"]
  assert len(r["per_row_state_shard_bytes"]) == 3 * 8        # mu, nu, regulariser weights
  assert max(r["per_row_state_shard_bytes"]) * 8 <= r["item_bytes"]
  assert r["table_sized_collectives"] == []


@pytest.mark.parametrize("embeddings", EMBEDDINGS)
def test_a_checkpoint_saved_on_8_devices_resumes_on_4_exactly(runs, embeddings):
  saved, resumed = runs
  r = resumed[embeddings]
  assert resumed["devices"] == 4
  assert (r["saved_rows"], r["item_rows"], r["shards"]) == (2008, 2004, 4) and r["sharding"] == "P('data',)"
  assert r["exact"] and r["padding_rows_zero"]
  np.testing.assert_allclose(r["continued"], saved[embeddings]["continued"], atol=1e-5, rtol=0)


if __name__ == "__main__":
  _worker(*sys.argv[1:])
