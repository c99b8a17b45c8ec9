"""K seeds of one config trained as one compiled program: the train step ``jax.vmap``-ed over a
leading seed axis of the state, the batch and the dropout key.

Each seed keeps everything a separate run has: its initialisation, its data order, its dropout
keys and its own early stopping (and LR decay on plateau). Results therefore equal K runs of
``trainer.train_and_evaluate`` up to float tolerance (tests/test_seeds.py), while the per-step
dispatch, loader and Python costs are paid once for all K (benchmarks/seeds_in_parallel.py).

Each seed writes the workdir a separate run would: config.json, metrics.jsonl, result.json and its
best checkpoint, so the grid report, ``trainer.load_best`` and ``./run.sh eval`` read it the same
way. A seed that has stopped early keeps stepping with the others (the program's shape is fixed)
but its history and result are frozen at its stop. There is no mid-run resume: a group that is
killed before it finishes restarts from scratch on the next run (the grid skips finished seeds).
"""
from __future__ import annotations

import json
import pathlib
import shutil
import time
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ctrjax.data import loader
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from ctrjax.train.checkpoint import Checkpointer


class _StackedSource(grain.sources.RandomAccessDataSource):
  """Item i = the K seeds' packed batch i stacked on a leading seed axis (host arrays)."""

  def __init__(self, sources: Sequence[loader.EpochBatchSource], pack):
    self.sources, self.pack = list(sources), pack

  def __len__(self) -> int:
    return len(self.sources[0])

  def __getitem__(self, index: int) -> dict:
    packed = [self.pack(src[index]) for src in self.sources]
    return {k: np.stack([p[k] for p in packed]) for k in packed[0]}


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``seed``: what seed ``seed`` of a group would run on its own."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.seed = seed
  return out


def _slice(tree, k: int):
  return jax.tree.map(lambda x: x[k], tree)


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
                workdirs: Sequence[str | pathlib.Path], dataset_path: str | pathlib.Path) -> list[dict]:
  """Trains ``config`` once per seed, all seeds in one vmapped step on one device; seed ``seeds[k]``
  writes ``workdirs[k]``. Returns the K result dicts (as ``train_and_evaluate`` returns one)."""
  if len(seeds) != len(workdirs) or not seeds:
    raise ValueError(f"train_seeds: {len(seeds)} seeds for {len(workdirs)} workdirs")
  if jax.process_count() > 1:
    raise ValueError("config.seeds_in_parallel runs on one device of one process; "
                     "set it to False in a multi-process run")
  if trainer.lazy.embedding_optimizer(config.optimizer) != "dense":
    raise ValueError(f"config.seeds_in_parallel=True needs config.optimizer.embeddings='dense' "
                     f"(got {config.optimizer.embeddings!r}): the lazy row updates are not vmapped")
  workdirs = [pathlib.Path(w) for w in workdirs]
  single = ml_collections.ConfigDict(config.to_dict())
  single.num_devices = 1
  setup = trainer.Setup(single, dataset_path)
  es, num_seeds = config.early_stopping, len(seeds)
  configs = [seed_config(config, s).to_dict() for s in seeds]
  for workdir, cfg in zip(workdirs, configs):
    if (workdir / "checkpoints").exists():        # an interrupted group: start this seed over
      shutil.rmtree(workdir / "checkpoints")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (workdir / "metrics.jsonl").write_text("")
    (workdir / "result.json").unlink(missing_ok=True)

  sources = [setup.source("train", train=True, seed=s) for s in seeds]
  steps_per_epoch = sources[0].batches_per_epoch
  train_iter = loader.make_iterator(
      _StackedSource(sources, setup.pack), **config.loader,
      transform=lambda packed: jax.device_put(packed, setup.mesh.devices.flat[0]))
  state = jax.tree.map(lambda *x: jnp.stack(x),
                       *[setup.init_state(sources[0][0], seed=s) for s in seeds])
  rngs = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  train, predict = step_lib.jit_seed_steps(setup.layout, setup.regularizer)

  progress = [{"step": 0, "history": [], "best": None, "best_epoch": None, "bad_epochs": 0,
               "stopped": None, "config": cfg} for cfg in configs]
  best_states: list = [None] * num_seeds
  active = list(range(num_seeds))
  bar = tqdm.tqdm(total=steps_per_epoch * config.num_epochs, unit="step", dynamic_ncols=True,
                  disable=not config.progress_bar, desc=f"{config.model_name} x{num_seeds} seeds")
  step = 0
  try:
    for epoch in range(1, config.num_epochs + 1):
      t_epoch, losses = time.time(), []
      for _ in range(steps_per_epoch):
        state, metrics = train(state, next(train_iter), rngs)
        losses.append(metrics["loss"])
        step += 1
        if step % config.log_every_steps == 0:
          bar.update(step - bar.n)
      train_loss = np.mean(jax.device_get(losses), axis=0)
      valid = setup.evaluate(state, "valid", predict)
      seconds = time.time() - t_epoch
      lr = np.array(jax.device_get(state.opt_state.hyperparams["learning_rate"]))
      for k in list(active):
        if not np.isfinite(train_loss[k]):
          raise trainer.TrainingDiverged(f"seed {seeds[k]}: mean train loss of epoch {epoch} is "
                                         f"{train_loss[k]} ({workdirs[k]})")
        p = progress[k]
        record = {"epoch": epoch, "step": step, "train_loss": float(train_loss[k]),
                  **{f"valid_{m}": v for m, v in valid[k].items()},
                  "learning_rate": float(lr[k]), "seconds": seconds}
        if trainer.early_stopping_update(p, valid[k][es.metric], es, epoch):
          best_states[k] = _slice(state, k)
          p["best_step"] = step
        elif config.lr_decay_on_plateau < 1.0:
          lr[k] *= config.lr_decay_on_plateau
        p["history"].append(record)
        p["step"] = step
        with open(workdirs[k] / "metrics.jsonl", "a") as fh:
          fh.write(json.dumps(record) + "\n")
        if p["stopped"]:
          active.remove(k)
      if config.lr_decay_on_plateau < 1.0:
        state = step_lib.with_learning_rate(state, lr)
      bar.update(step - bar.n)
      tqdm.tqdm.write(f"epoch {epoch} ({seconds:.1f} s, {num_seeds} seeds): valid_{es.metric} " + " ".join(
          f"{v[es.metric]:.4f}{'*' if progress[k]['best_epoch'] == epoch else ''}"
          for k, v in enumerate(valid)) + f"; {len(active)} still training")
      if not active:
        break
  finally:
    bar.close()

  results = []
  for k, seed in enumerate(seeds):
    p, best = progress[k], best_states[k]
    p["stopped"] = p["stopped"] or "max epochs"
    ckpt = Checkpointer(workdirs[k] / "checkpoints", es.metric, es.mode)
    ckpt.save(p["best_step"], best, jax.random.PRNGKey(seed), {**p, "history": p["history"][:p["best_epoch"]]},
              metrics={es.metric: p["best"]})
    ckpt.wait()
    ckpt.close()
    result = trainer.run_result(setup, seed, best, p["best_step"], p["best_epoch"], p,
                                resumed_from_step=None, seeds_in_parallel=num_seeds)
    (workdirs[k] / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    t = result["test"]
    print(f"seed {seed}: test auc {t['auc']:.4f}  gauc {t.get('gauc', float('nan')):.4f}  logloss "
          f"{t['logloss']:.4f}  (best epoch {p['best_epoch']}, {workdirs[k]})", flush=True)
    results.append(result)
  return results
