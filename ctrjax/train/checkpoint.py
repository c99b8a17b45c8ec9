"""Orbax checkpoints: train state + RNG, the run's ``Progress`` as JSON (step, history, early-stopping
state, resolved config) and the grain iterator position, in one atomic step directory.

Kept: the newest two checkpoints, so that a damaged newest one (a disk error, a partial copy) falls
back to the one before it (``restore_latest``), and the best: the step that the newest save's
``Progress.best_step`` names. The best is chosen from that saved progress alone, never by ranking
per-step metrics files, where one missing file silently picked another checkpoint.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Callable, Sequence

import grain
import jax
import orbax.checkpoint as ocp

from ctrjax.errors import WorkdirFileError
from ctrjax.train.progress import Progress

_pp = ocp.checkpoint_managers


@dataclasses.dataclass
class _KeepStep:
  """Orbax preservation policy: keeps the checkpoint of ``step`` (set before each save)."""
  step: int | None = None

  def should_preserve(self, checkpoints: Sequence, *, context) -> list[bool]:
    return [c.step == self.step for c in checkpoints]


class Checkpointer:

  def __init__(self, directory: pathlib.Path):
    self.directory = pathlib.Path(directory).absolute()
    self._best = _KeepStep()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_pp.AnyPreservationPolicy([_pp.LatestN(n=2), self._best]),
        enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, rng, progress: Progress, data_iter=None):
    """Asynchronous save, keeping ``progress.best_step``'s checkpoint as the best. Without
    ``data_iter`` (the training batches' position) the checkpoint can be tested, not resumed."""
    items = {"state": ocp.args.StandardSave({"train": state, "rng": rng}),
             "progress": ocp.args.JsonSave(progress.to_dict())}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    self._best.step = progress.best_step
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, state, rng, data_iter=None):
    """Restores into the shardings/structure of ``state`` and ``rng``; returns (state, rng, progress).
    A row-sharded array (an embedding table: mesh.StateSharding) saved with other padding rows,
    i.e. on another device count, is cut or zero-padded to the rows of ``state``'s; any other
    difference in shape is an error. A missing or unreadable checkpoint is a WorkdirFileError
    naming its directory."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"train": state, "rng": rng})
    strict = not self._only_padding_differs(step, target)
    items = {"state": ocp.args.StandardRestore(target, strict=strict), "progress": ocp.args.JsonRestore()}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self._read(step, items)
    return out["state"]["train"], out["state"]["rng"], Progress.from_dict(out["progress"])

  def _only_padding_differs(self, step: int, target) -> bool:
    """Whether some arrays of checkpoint ``step`` differ in shape from ``target``'s, all of them
    row-sharded ones in their rows alone."""
    if step not in self.manager.all_steps():
      return False                                  # _read names the missing checkpoint
    try:
      saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
    except Exception:                               # unreadable: _read reports it
      return False
    saved = {m.name: m.shape for m in jax.tree.leaves(saved)}
    differing = [(shape, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]
                 if (shape := saved.get(_dotted(path))) is not None and tuple(shape) != leaf.shape]
    return bool(differing) and all(
        len(shape) == len(leaf.shape) and shape[1:] == leaf.shape[1:] and _row_sharded(leaf)
        for shape, leaf in differing)

  def read_progress(self, step: int) -> Progress:
    """The progress of checkpoint ``step`` alone (no arrays read)."""
    return Progress.from_dict(self._read(step, {"progress": ocp.args.JsonRestore()})["progress"])

  def restore_data_iter(self, step: int, data_iter) -> None:
    """Moves ``data_iter`` to the training position saved in checkpoint ``step``."""
    self._read(step, {"data_iter": grain.checkpoint.CheckpointRestore(data_iter)})

  def _read(self, step: int, items: dict) -> dict:
    path = self.directory / str(step)
    if step not in self.manager.all_steps():
      raise WorkdirFileError(f"{path}: no such checkpoint (kept: steps {self.manager.all_steps()})")
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:      # orbax, TensorStore, grain and json each raise their own types
      first_line = (str(e).strip().splitlines() or [""])[0][:300]
      raise WorkdirFileError(f"{path}: unreadable checkpoint ({type(e).__name__}: {first_line})") from e

  def newest_progress(self) -> Progress | None:
    """The progress of the newest checkpoint whose progress is readable (None: no checkpoint)."""
    errors = []
    for step in reversed(self.manager.all_steps()):
      try:
        return self.read_progress(step)
      except WorkdirFileError as e:
        errors.append(str(e))
    if errors:
      raise WorkdirFileError(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")
    return None

  def delete_after(self, step: int) -> list[int]:
    """Deletes the checkpoints after ``step``; returns their steps."""
    later = [s for s in self.manager.all_steps() if s > step]
    for s in later:
      self.manager.delete(s)
    return later

  def restore_latest(self, state, rng, check: Callable[[Progress], None]):
    """The newest intact checkpoint as (step, state, rng, progress), or None if there is none.
    ``check`` sees each candidate's progress before its arrays are read (and may raise, e.g. for
    a different config). A damaged newer checkpoint is reported on stderr and deleted (the resumed
    run saves its steps again); if none is intact, WorkdirFileError names them all."""
    damaged = []                  # (step, error), newest first
    for step in reversed(self.manager.all_steps()):
      try:
        check(self.read_progress(step))
        restored = self.restore(step, state, rng)
      except WorkdirFileError as e:
        damaged.append((step, e))
        continue
      for bad_step, error in damaged:
        if jax.process_index() == 0:
          print(f"warning: skipping {error}; deleted, resuming from step {step}", file=sys.stderr,
                flush=True)
        self.manager.delete(bad_step)
      return (step, *restored)
    if damaged:
      raise WorkdirFileError(f"{self.directory}: no intact checkpoint "
                             f"({'; '.join(str(e) for _, e in damaged)}); delete it to start over")
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _dotted(path) -> str:
  """A key path as orbax names its array: "train.opt_state.0.mu.embedding.item_id"."""
  return ".".join(str(k.key if isinstance(k, jax.tree_util.DictKey) else
                      k.name if isinstance(k, jax.tree_util.GetAttrKey) else k.idx) for k in path)


def _row_sharded(leaf: jax.ShapeDtypeStruct) -> bool:
  spec = getattr(leaf.sharding, "spec", ())
  return len(spec) > 0 and spec[0] is not None
