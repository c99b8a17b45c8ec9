"""K seeds of one config trained as one compiled program: the train step ``jax.vmap``-ed over a
leading seed axis of the state, the batch and the dropout key.

Each seed keeps everything a separate run has: its initialisation, its data order, its dropout
keys and its own early stopping (and LR decay on plateau). Results therefore equal K runs of
``trainer.train_and_evaluate`` up to float tolerance (tests/test_seeds.py), while the per-step
dispatch, loader and Python costs are paid once for all K (benchmarks/seeds_in_parallel.py).

The epoch loop is trainer's ``EpochLoop`` with a stacked ``Program``, so each seed writes the
workdir a separate run would: config.json, metrics.jsonl, its checkpoints (every
``checkpoint_every_steps`` and at each epoch end) and result.json. The grid report,
``trainer.load_best`` and ``./run.sh eval`` read it the same way, and a killed group resumes, as
does each seed's workdir in either mode (a group seed alone with ``train_and_evaluate``, or a
separate run's workdir in a group). A seed that has stopped early keeps stepping with the others
(the program's shape is fixed) but its history and result are frozen at its stop.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

import grain
import jax
import ml_collections
import numpy as np

from ctrjax.data import loader
from ctrjax.errors import ConfigError
from ctrjax.train import feed as feed_lib
from ctrjax.train import step as step_lib
from ctrjax.train import trainer
from ctrjax.train import workdir_lock


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


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
                workdirs: Sequence[str | pathlib.Path], dataset_path: str | pathlib.Path) -> list[dict]:
  """Trains ``config`` once per seed, all seeds in one vmapped step on one device; seed ``seeds[k]``
  writes (or resumes) ``workdirs[k]``, holding its lock (WorkdirBusy if another process does). Returns
  the K result dicts (as ``train_and_evaluate`` returns one)."""
  if len(seeds) != len(workdirs) or not seeds:
    raise ValueError(f"train_seeds: {len(seeds)} seeds for {len(workdirs)} workdirs")
  if jax.process_count() > 1:
    raise ConfigError("config.seeds_in_parallel runs on one device of one process; "
                      "set it to False in a multi-process run")
  if trainer.lazy.embedding_optimizer(config.optimizer) != "dense":
    raise ConfigError(f"config.seeds_in_parallel=True needs config.optimizer.embeddings='dense' "
                      f"(got {config.optimizer.embeddings!r}): the lazy row updates are not vmapped")
  single = ml_collections.ConfigDict(config.to_dict())
  single.num_devices = 1
  with workdir_lock.training(workdirs):
    setup = trainer.Setup(single, dataset_path)
    sources = [setup.source("train", train=True, seed=s) for s in seeds]
    _, predict = step_lib.jit_seed_steps(setup.layout, setup.regularizer)
    host_batches = lambda: loader.make_iterator(    # noqa: E731
        _StackedSource(sources, setup.pack), config.loader.num_threads, config.loader.prefetch,
        transform=lambda packed: jax.device_put(packed, setup.mesh.devices.flat[0]))
    program = trainer.Program(
        feed=feed_lib.make_feed(setup, sources, stacked=True, host_batches=host_batches),
        predict=predict, init_state=lambda seed: setup.init_state(sources[0][0], seed=seed),
        steps_per_epoch=sources[0].batches_per_epoch, stacked=True)
    return trainer.EpochLoop(setup, program, [seed_config(config, s) for s in seeds], workdirs,
                             seeds_in_parallel=len(seeds)).run()
