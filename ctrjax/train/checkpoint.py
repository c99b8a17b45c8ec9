"""Orbax checkpoints: train state + RNG, the run's ``Progress`` as JSON (step, history, early-stopping
state, resolved config) and the grain iterator position, in one atomic step directory.

Kept: the latest checkpoint (for resume) and the best by the validation metric (for test).
"""
from __future__ import annotations

import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from ctrjax.train.progress import Progress

_pp = ocp.checkpoint_managers


class Checkpointer:

  def __init__(self, directory: pathlib.Path, metric: str, mode: str):
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_pp.AnyPreservationPolicy([
            _pp.LatestN(n=1),
            _pp.BestN(get_metric_fn=lambda m: m[metric], reverse=(mode == "min"), n=1,
                      keep_checkpoints_without_metrics=False)]),
        best_fn=lambda m: m[metric], best_mode=mode, enable_async_checkpointing=True,
        create=True)
    self.manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state, rng, progress: Progress, data_iter=None, metrics: dict | None = None):
    """Asynchronous save; ``metrics`` (validation) only at epoch ends, making it a best candidate.
    Without ``data_iter`` (the training batches' position) the checkpoint can be tested, not resumed."""
    items = {"state": ocp.args.StandardSave({"train": state, "rng": rng}),
             "progress": ocp.args.JsonSave(progress.to_dict())}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, step: int, state, rng, data_iter=None):
    """Restores into the shardings/structure of ``state`` and ``rng``; returns (state, rng, progress)."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"train": state, "rng": rng})
    items = {"state": ocp.args.StandardRestore(target), "progress": ocp.args.JsonRestore()}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out["state"]["train"], out["state"]["rng"], Progress.from_dict(out["progress"])

  def read_progress(self, step: int) -> Progress:
    """The progress of checkpoint ``step`` alone (no arrays read)."""
    out = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return Progress.from_dict(out["progress"])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
