"""``Progress``: one run's bookkeeping between train steps, saved as JSON in each of its checkpoints
(checkpoint.py) so that a resumed run continues exactly where it stopped.

It holds the step, the epoch records (the lines of metrics.jsonl, rewritten from it on resume), the
early-stopping state (best validation value, its epoch and step, non-improving epochs in a row;
``best_step`` also names the checkpoint that is kept and tested as the best), why the run stopped,
the run's resolved config (a resume must use the same one), the running train loss of the current
epoch and the run's restarts with other optimiser settings (trainer.Restart). ``end_epoch`` builds
the epoch record and applies early stopping: the one place either is written.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from ctrjax.errors import ConfigError


@dataclasses.dataclass
class Progress:
  config: dict                       # the run's resolved config (config.to_dict())
  step: int = 0                      # train steps taken
  history: list[dict] = dataclasses.field(default_factory=list)   # one record per finished epoch
  best: float | None = None          # best validation value of the early-stopping metric so far
  best_epoch: int | None = None
  best_step: int | None = None
  bad_epochs: int = 0                # epochs in a row without improving on ``best``
  stopped: str | None = None         # why the run stopped early (None: still training)
  epoch_loss_sum: float = 0.0        # the current epoch's train loss, summed over its steps so far
  epoch_loss_count: int = 0
  restarts: list[dict] = dataclasses.field(default_factory=list)   # trainer.Restart: step, changes

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, saved: dict) -> Progress:
    return cls(**saved)

  def add_step_loss(self, loss: float) -> None:
    self.epoch_loss_sum += loss
    self.epoch_loss_count += 1

  def end_epoch(self, epoch: int, valid: dict, learning_rate: float, seconds: float,
                early_stopping: ml_collections.ConfigDict) -> tuple[dict, bool]:
    """Closes epoch ``epoch`` (ending at ``self.step``): appends its record to the history, updates
    early stopping from ``valid[early_stopping.metric]`` and starts a new running loss. Returns the
    record and whether the metric improved on the best so far."""
    es = early_stopping
    record = {"epoch": epoch, "step": self.step,
              "train_loss": self.epoch_loss_sum / max(self.epoch_loss_count, 1),
              **{f"valid_{k}": v for k, v in valid.items()},
              "learning_rate": learning_rate, "seconds": seconds}
    value = valid[es.metric]
    if not np.isfinite(value):
      raise ConfigError(f"valid {es.metric} is {value} after epoch {epoch}, so early stopping cannot "
                        f"compare epochs (GAUC needs users with both classes: dataset.holdout >= 2); "
                        f"set config.early_stopping.metric to 'auc' or 'logloss'")
    improved = self.best is None or (value > self.best if es.mode == "max" else value < self.best)
    if improved:
      self.best, self.best_epoch, self.best_step, self.bad_epochs = value, epoch, self.step, 0
    else:
      self.bad_epochs += 1
      if self.bad_epochs >= es.patience:
        self.stopped = (f"early stopping after epoch {epoch}: valid {es.metric} did not improve "
                        f"for {es.patience} epochs")
    self.history.append(record)
    self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
    return record, improved
