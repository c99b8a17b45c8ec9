"""K seeds in one vmapped program (ctrjax/train/seeds.py) against K separate runs."""
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrjax.train import seeds as seeds_lib
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from tests.test_trainer import _config, _metrics, _result, dataset  # noqa: F401  (dataset: module-scoped)

SEEDS = (0, 1, 2)
# Batched (vmapped) kernels sum in another order: one step agrees to 1e-6, but over ~400 Adam steps
# at LR 0.01 on an overfitting model the differences grow (~1e-4 in AUC/logloss, 3e-3 in GAUC).
TOL = 1e-3


def _history(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def both(dataset, tmp_path_factory):  # noqa: F811
  """The same config (early stopping, LR decay on plateau, dropout) run per seed and as one group."""
  root = tmp_path_factory.mktemp("seeds")
  config = _config(dataset, num_epochs=6, num_devices=1, lr_decay_on_plateau=0.5, **{
      "optimizer.learning_rate": 0.01, "early_stopping.patience": 2})
  separate = [trainer.train_and_evaluate(seeds_lib.seed_config(config, s), root / f"separate{s}", dataset)
              for s in SEEDS]
  together = seeds_lib.train_seeds(config, SEEDS, [root / f"together{s}" for s in SEEDS], dataset)
  return root, separate, together


def test_k_seeds_in_one_program_equal_k_separate_runs(both):
  root, separate, together = both
  assert len({r["best_epoch"] for r in separate} | {r["epochs_run"] for r in separate}) > 1, \
      "the seeds should differ in best epoch or length, so per-seed early stopping is exercised"
  for s, one, group in zip(SEEDS, separate, together):
    for key in ("seed", "best_step", "best_epoch", "epochs_run", "stopped",
                "parameters", "parameters_excluding_embeddings"):
      assert one[key] == group[key], (s, key)
    for split in ("valid", "test"):
      for m in ("auc", "gauc", "logloss"):
        tol = TOL if m != "gauc" else 5 * TOL   # per-user AUCs over a handful of rows: steps of ~1e-3
        np.testing.assert_allclose(group[split][m], one[split][m], atol=tol, err_msg=f"seed {s} {split} {m}")
    h1, hk = _history(root / f"separate{s}"), _history(root / f"together{s}")
    assert [h["learning_rate"] for h in h1] == pytest.approx([h["learning_rate"] for h in hk])
    np.testing.assert_allclose([h["valid_auc"] for h in hk], [h["valid_auc"] for h in h1], atol=TOL)
    np.testing.assert_allclose([h["train_loss"] for h in hk], [h["train_loss"] for h in h1], atol=TOL)


def test_vmapped_steps_equal_separate_steps(dataset):  # noqa: F811
  """The step itself: 20 vmapped steps (dropout on) = 20 steps per seed, to float tolerance."""
  setup = trainer.Setup(_config(dataset, num_devices=1), dataset)
  sources = [setup.source("train", train=True, seed=s) for s in SEEDS]
  states = [setup.init_state(sources[0][0], seed=s) for s in SEEDS]
  rngs = [jax.random.PRNGKey(s) for s in SEEDS]
  train, _ = step_lib.jit_seed_steps(setup.layout, setup.regularizer)
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  for i in range(20):
    packed = [setup.pack(src[i]) for src in sources]
    stacked, _ = train(stacked, {k: jnp.stack([p[k] for p in packed]) for k in packed[0]}, jnp.stack(rngs))
    states = [setup.train_step(st, setup.to_device(src[i]), rng)[0]
              for st, src, rng in zip(states, sources, rngs)]
  for k, state in enumerate(states):
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[k], stacked.params), state.params, atol=1e-6)


def test_seeds_are_different_models(both):
  _, _, together = both
  assert len({round(r["test"]["auc"], 6) for r in together}) == len(SEEDS)


def test_each_seed_workdir_reloads_like_a_separate_run(both, dataset):  # noqa: F811
  root, _, together = both
  for s, group in zip(SEEDS, together):
    out = trainer.evaluate_workdir(root / f"together{s}", dataset)
    assert out["best_epoch"] == group["best_epoch"]
    np.testing.assert_allclose(out["test"]["auc"], group["test"]["auc"], atol=1e-6)
    np.testing.assert_allclose(out["test"]["logloss"], group["test"]["logloss"], atol=1e-6)


def test_lazy_embeddings_are_refused_by_name(dataset, tmp_path):  # noqa: F811
  config = _config(dataset, **{"optimizer.embeddings": "lazy_adam"})
  with pytest.raises(ValueError, match="optimizer.embeddings='dense'"):
    seeds_lib.train_seeds(config, (0, 1), [tmp_path / "a", tmp_path / "b"], dataset)


def test_a_diverging_seed_stops_the_group_naming_the_step_and_the_seed(dataset, tmp_path):  # noqa: F811
  config = _config(dataset, num_devices=1, **{"optimizer.learning_rate": 1e30})
  with pytest.raises(trainer.TrainingDiverged) as e:
    seeds_lib.train_seeds(config, (3, 4), [tmp_path / "a", tmp_path / "b"], dataset)
  assert re.match(r"seed [34]: loss became (nan|inf) at step (\d+) \(epoch 1\); last finite metrics: "
                  r"\{'step': \d+, .*'loss': 0\.\d+", str(e.value)), str(e.value)


class _Killed(Exception):
  pass


def test_a_killed_group_resumes_and_its_workdirs_resume_in_either_mode(dataset, tmp_path, monkeypatch):  # noqa: F811
  config = _config(dataset, num_devices=1)                  # 2 epochs of 62 steps, a save every 25
  seeds, kill_at = (0, 1), 62 + 30                          # mid epoch 2, after the saves at step 75
  full = seeds_lib.train_seeds(config, seeds, [tmp_path / f"full{s}" for s in seeds], dataset)

  def kill(pid, signal):
    raise _Killed
  monkeypatch.setattr(trainer.os, "kill", kill)
  killed = _config(dataset, num_devices=1, **{"debug.kill_at_step": kill_at})
  with pytest.raises(_Killed):
    seeds_lib.train_seeds(killed, seeds, [tmp_path / f"killed{s}" for s in seeds], dataset)
  monkeypatch.undo()
  assert not (tmp_path / "killed0" / "result.json").exists()

  alone = trainer.train_and_evaluate(seeds_lib.seed_config(config, 0), tmp_path / "killed0", dataset)
  assert alone["resumed_from_step"] == 75                   # a group's seed resumes as a separate run
  np.testing.assert_allclose(alone["test"]["auc"], full[0]["test"]["auc"], atol=TOL)
  # Seed 0 (finished, on its own) waits while seed 1 catches up from step 75: seed 1 ends exactly
  # as in the uninterrupted group, and seed 0's result is reloaded from its own run.
  regrouped = seeds_lib.train_seeds(config, seeds, [tmp_path / f"killed{s}" for s in seeds], dataset)
  assert [r["resumed_from_step"] for r in regrouped] == [124, 75]
  assert _metrics(tmp_path / "killed1") == _metrics(tmp_path / "full1")
  assert _result(tmp_path / "killed1") == _result(tmp_path / "full1")
  assert regrouped[0]["test"] == alone["test"]
