"""Grid runner: every variant × seed of a config, then the report (experiments/report.py).

A config file becomes a grid by defining ``get_grid(arg) -> Grid`` (configs/common.py) next to
``get_config(arg)``; ``./run.sh configs/ablation_mian.py[:arg]`` then runs the whole grid. Each run
has its own workdir ``<root>/<variant>/seed<k>``: a finished run is skipped, an interrupted one
resumes from its checkpoint, so a killed grid rerun ends with the same table as an uninterrupted
one. A run counts as finished when its result.json, config.json and metrics.jsonl parse; one whose
files are cut is resumed, which rewrites them from its checkpoints. A finished run of another
config than the grid asks for (a rerun with other --config.* overrides into the same --workdir) is
refused before anything trains.

With ``config.seeds_in_parallel`` each variant's unfinished seeds train together as one vmapped program
(ctrjax/train/seeds.py); such a group restarts from scratch if it was killed.

Start the same command several times (in other terminals, or on hosts that share the filesystem) to
work through one grid with several workers: each run (a variant's seed group with
``seeds_in_parallel``) is claimed with a file lock, so no run is trained twice, and a run whose
worker died is taken over.
"""
from __future__ import annotations

import fcntl
import pathlib
import time
from collections.abc import Collection
from typing import Callable, NamedTuple

import ml_collections
import numpy as np

from configs.common import Grid
from ctrjax.errors import UserError
from experiments.grid import config_fields, differing_fields, load_run, runs, with_overrides, workdir_of
from experiments.report import write_report


def run_grid(config: ml_collections.ConfigDict, grid: Grid, root: pathlib.Path,
             results_dir: pathlib.Path, dataset_path: pathlib.Path,
             only: Collection[str] | None = None) -> list[dict]:
  """Trains every (variant, seed) not finished yet (of the variants ``only``, if given: ``--variants``),
  then writes the table and figures of every finished variant. With ``config.seeds_in_parallel`` a
  variant's unfinished seeds train together (ctrjax/train/seeds.py).

  Several workers may run the same grid at once (the same command started again, on this machine
  or on hosts sharing the filesystem): each run is claimed with a lock, so a worker takes the runs
  no other holds, then waits for the others' runs and takes over any whose worker died."""
  root, results_dir = pathlib.Path(root), pathlib.Path(results_dir)
  if config.seeds_in_parallel:
    return _run_grid_seeds_in_parallel(config, grid, root, results_dir, dataset_path,
                                       check_finished(config, grid, root, dataset_path), only)
  _work_through(grid_jobs(config, grid, root, dataset_path, only=only))
  return _report(grid, root, results_dir, dataset_path)


def grid_jobs(config: ml_collections.ConfigDict, grid: Grid, root: pathlib.Path, dataset_path: pathlib.Path,
              tag: str = "", only: Collection[str] | None = None) -> list[_Job]:
  """One job per (variant, seed) of ``grid`` under ``root`` (of the variants ``only``, if given),
  claimed by its lock file and done when
  its run finished with the config the grid wants (``check_finished``); ``tag`` prefixes the
  variant in the progress lines (experiments/tune.py names its study)."""
  from ctrjax.train import trainer
  finished = check_finished(config, grid, root, dataset_path)
  todo = [run for run in runs(grid, root) if only is None or run[0] in only]
  jobs = []
  for i, (variant, seed, workdir) in enumerate(todo, 1):
    def train(variant=variant, seed=seed, workdir=workdir):
      _note_cut_files([workdir])
      trainer.train_and_evaluate(with_overrides(config, grid.variants[variant], seed), workdir, dataset_path)
    jobs.append(_Job(f"[{i}/{len(todo)}] {tag}{variant} seed {seed}", root / variant / f".seed{seed}.lock",
                     lambda v=variant, s=seed: finished(v, s), lambda w=workdir: f"running in {w}", train))
  return jobs


def _run_grid_seeds_in_parallel(config, grid: Grid, root: pathlib.Path, results_dir: pathlib.Path,
                                dataset_path: pathlib.Path, finished: Callable[[str, int], bool],
                                only: Collection[str] | None):
  from ctrjax.train import seeds as seeds_lib
  jobs = []
  chosen = [v for v in grid.variants if only is None or v in only]
  for i, variant in enumerate(chosen, 1):
    workdirs = {s: workdir_of(root, variant, s) for s in grid.seeds}
    pending = lambda variant=variant: [s for s in grid.seeds if not finished(variant, s)]

    def train(variant=variant, workdirs=workdirs, pending=pending):
      todo = pending()
      _note_cut_files([workdirs[s] for s in todo])
      seeds_lib.train_seeds(with_overrides(config, grid.variants[variant], todo[0]), todo,
                            [workdirs[s] for s in todo], dataset_path)
    jobs.append(_Job(f"[{i}/{len(chosen)}] {variant}", root / f".{variant}.lock",
                     lambda pending=pending: not pending(),
                     lambda v=variant, pending=pending: f"seeds {pending()} in one program under {root / v}",
                     train))
  _work_through(jobs)
  return _report(grid, root, results_dir, dataset_path)


def check_finished(config: ml_collections.ConfigDict, grid: Grid, root: pathlib.Path,
                   dataset_path: pathlib.Path) -> Callable[[str, int], bool]:
  """Refuses a grid whose finished runs under ``root`` were trained with another config than
  ``config`` and the variants' overrides give them (a UserError naming the run and the fields;
  resume-free fields such as progress_bar aside), or on other data than ``dataset_path`` (its
  content fingerprint, trainer.check_same_data), before anything trains; returns
  ``finished(variant, seed)``, which checks again each time it is asked (another worker may
  finish a run meanwhile). A run whose files are cut or missing is unfinished."""
  from ctrjax.data.dataset import fingerprint
  from ctrjax.train import trainer
  root, data_fingerprint = pathlib.Path(root), fingerprint(dataset_path)
  wanted = {(v, s): config_fields(with_overrides(config, overrides, s))
            for v, overrides in grid.variants.items() for s in grid.seeds}

  def finished(variant: str, seed: int) -> bool:
    workdir = workdir_of(root, variant, seed)
    if not (workdir / "result.json").is_file():
      return False
    try:
      stored = config_fields(load_run(workdir)["config"])
    except UserError:
      return False
    want = wanted[variant, seed]
    differing = differing_fields(stored, want)
    if differing:
      fields = "; ".join(f"{k}: {stored.get(k)} there, {want.get(k)} wanted" for k in differing)
      raise UserError(f"{workdir} finished with another config ({fields}); rerun with its config, "
                      "or use another --workdir")
    trainer.check_same_data(workdir, dataset_path, data_fingerprint)
    return True

  for variant, seed, _ in runs(grid, root):
    finished(variant, seed)
  return finished


def _note_cut_files(workdirs: list[pathlib.Path]) -> None:
  """Says which finished runs about to be resumed have a cut or missing file (load_run names it)."""
  for workdir in workdirs:
    if (workdir / "result.json").is_file():
      try:
        load_run(workdir)
      except UserError as e:
        print(f"{e}: resuming the run rewrites it", flush=True)


class _Job(NamedTuple):
  """One unit of a grid's work: a run, or a variant's seed group."""
  tag: str
  lock_path: pathlib.Path
  is_done: Callable[[], bool]
  describe: Callable[[], str]
  run: Callable[[], None]


def _lock(path: pathlib.Path, wait: bool):
  """An exclusive ``flock`` on ``path``, or None if another process holds it and ``wait`` is False.
  The OS drops the lock when its process dies, so a killed worker leaves no stale claim."""
  path.parent.mkdir(parents=True, exist_ok=True)
  handle = open(path, "a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
  except BlockingIOError:
    handle.close()
    return None
  return handle


def _work_through(jobs: list[_Job]) -> None:
  """Runs each unfinished job under its lock: first every job no other worker holds, then, waiting
  on their locks, those other workers held (taken over if still unfinished when the lock frees)."""
  durations = []
  for wait in (False, True):
    for job in jobs:
      if job.is_done():
        if not wait:
          print(f"{job.tag}: done, skipped", flush=True)
        continue
      lock = _lock(job.lock_path, wait)
      if lock is None:
        print(f"{job.tag}: another worker holds it; back to it at the end", flush=True)
        continue
      with lock:
        if job.is_done():                   # finished by the worker that held it
          continue
        remaining = sum(1 for j in jobs if not j.is_done())
        eta = f", ETA {np.mean(durations) * remaining / 60:.1f} min" if durations else ""
        print(f"{job.tag}: {job.describe()}{eta}", flush=True)
        start = time.time()
        job.run()
        durations.append(time.time() - start)


def _report(grid: Grid, root: pathlib.Path, results_dir: pathlib.Path, dataset_path) -> list[dict]:
  with _lock(root / ".report.lock", wait=True):     # workers finishing together write it in turn
    return write_report(grid, root, results_dir, dataset_path)
