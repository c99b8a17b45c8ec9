"""``train_and_evaluate(config, workdir, dataset_path)``: the epoch loop around the pure train step.

Read top to bottom: set up -> data -> model & optimizer -> resume -> train loop (evaluate on
validation every epoch, early stopping, optional LR decay on plateau) -> reload the best
checkpoint -> test evaluation -> result.json.

Fault tolerance: a checkpoint every ``checkpoint_every_steps`` and at each epoch end; a workdir
that holds one resumes exactly (params, optimizer, step, RNG, data position, early-stopping
state and the metric history, from which metrics.jsonl is rewritten).
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from ctrjax import metrics as metrics_lib
from ctrjax.data import loader
from ctrjax.data.dataset import Dataset
from ctrjax.data.filter import IdFrequencyFilter
from ctrjax.data.packing import BatchLayout
from ctrjax.models import build_model
from ctrjax.train import lazy
from ctrjax.train import mesh as mesh_lib
from ctrjax.train import step as step_lib
from ctrjax.train.checkpoint import Checkpointer
from ctrjax.train.regularizers import EmbeddingRegularizer

# Config fields that may differ between a run and its resumption.
_RESUME_FREE = ("workdir", "debug", "log_every_steps", "loader", "progress_bar", "seeds_in_parallel")


class TrainingDiverged(RuntimeError):
  """The loss became NaN/Inf; the message names the step and the last finite metrics."""


def _is_main() -> bool:
  return jax.process_index() == 0


def _comparable(cfg: dict) -> dict:
  """The resume-relevant part of a config, as JSON sees it (tuples and lists compare equal)."""
  return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in _RESUME_FREE}))


def _check_same_config(saved: dict, current: dict, workdir: pathlib.Path):
  saved, current = _comparable(saved), _comparable(current)
  if saved != current:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    raise ValueError(f"{workdir} holds a run with a different config (differs in {keys}); "
                     f"use another --workdir or delete it to start over")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before any work, naming the config field (unknown keys are already
  rejected by the locked ConfigDict)."""
  def need(ok, field, value, expected):
    if not ok:
      raise ValueError(f"config.{field}={value!r}: expected {expected}")
  es = config.early_stopping
  need(es.metric in ("auc", "gauc", "logloss"), "early_stopping.metric", es.metric, "'auc', 'gauc' or 'logloss'")
  need(es.mode in ("max", "min"), "early_stopping.mode", es.mode, "'max' or 'min'")
  need(es.patience >= 1, "early_stopping.patience", es.patience, ">= 1")
  for field in ("batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps", "log_every_steps"):
    need(config[field] >= 1, field, config[field], ">= 1")
  need(0.0 < config.lr_decay_on_plateau <= 1.0, "lr_decay_on_plateau", config.lr_decay_on_plateau, "in (0, 1]")
  need(config.optimizer.learning_rate > 0, "optimizer.learning_rate", config.optimizer.learning_rate, "> 0")
  embeddings = lazy.embedding_optimizer(config.optimizer)
  need(embeddings in lazy.EMBEDDING_OPTIMIZERS, "optimizer.embeddings", embeddings,
       f"one of {lazy.EMBEDDING_OPTIMIZERS}")
  if embeddings != "dense" and config.regularizer.mode == "full_table":
    raise ValueError(f"config.regularizer.mode='full_table' penalises every row, but "
                     f"config.optimizer.embeddings={embeddings!r} updates only a batch's rows; "
                     f"use mode 'mba' or 'touched', or embeddings 'dense'")
  need(config.num_devices >= 0, "num_devices", config.num_devices, ">= 0 (0 = all)")
  devices = config.num_devices or jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    need(config[field] % devices == 0, field, config[field], f"a multiple of the {devices} devices")


class Setup:
  """Everything a run and a later re-evaluation share: dataset, mesh, model, steps. The dataset is
  a prepared directory (the CLI prepares it from ``config.dataset``; the library never does)."""

  def __init__(self, config: ml_collections.ConfigDict, dataset_path: str | os.PathLike):
    validate_config(config)
    self.config = config
    self.dataset_path = pathlib.Path(dataset_path)
    self.dataset = Dataset(self.dataset_path, validate=config.dataset.validate)
    meta = [f.name for f in self.dataset.schema.group("meta")]
    if config.gauc_group and config.gauc_group not in meta:
      raise ValueError(f"config.gauc_group={config.gauc_group!r} is not a meta field of "
                       f"{self.dataset_path} (meta fields: {meta}); use '' to skip GAUC")
    self.mesh = mesh_lib.make_mesh(config.num_devices)
    self.model = build_model(config.model_name, self.dataset.schema, config.model)
    self.tx = step_lib.make_optimizer(config.optimizer)
    self.layout = BatchLayout.from_schema(self.dataset.schema)
    reg = config.regularizer
    self.id_filter = (IdFrequencyFilter(self.dataset.schema, self.dataset.counts, reg.filter_table,
                                        reg.filter_top_k) if reg.filter_top_k else None)
    if self.id_filter and _is_main():
      print(self.id_filter.summary, flush=True)
    self.regularizer = EmbeddingRegularizer.build(
        self.dataset.schema, self.dataset.counts, config.regularizer.mode, config.regularizer.weight)
    self.embeddings = lazy.LazyEmbeddings.build(config.optimizer, self.model)
    self.train_step, self.predict = step_lib.jit_steps(self.mesh, self.layout, self.regularizer,
                                                       self.embeddings)
    self.rng = jax.device_put(jax.random.PRNGKey(config.seed), mesh_lib.replicated(self.mesh))

  def source(self, split: str, train: bool, seed: int | None = None) -> loader.EpochBatchSource:
    """Batches of ``split``; the training order is a function of ``seed`` (default config.seed)."""
    c = self.config
    return loader.EpochBatchSource(
        self.dataset_path, split, c.batch_size if train else c.eval_batch_size,
        seed=c.seed if seed is None else seed,
        num_epochs=c.num_epochs if train else 1, shuffle=train, drop_remainder=train,
        process_index=jax.process_index(), process_count=jax.process_count())

  def pack(self, local_batch: dict) -> dict:
    """Loader batch -> the model's packed inputs (id filter applied), on the host."""
    if self.id_filter:
      local_batch = self.id_filter(local_batch)
    return self.layout.pack(local_batch)

  def to_device(self, local_batch: dict) -> dict:
    """``pack``, then global arrays sharded over the mesh."""
    return mesh_lib.to_global(self.pack(local_batch), self.mesh)

  def batches(self, source: loader.EpochBatchSource):
    """Grain iterator whose prefetch threads also do the host -> device transfer."""
    return loader.make_iterator(source, **self.config.loader, transform=self.to_device)

  def init_state(self, sample_local_batch, seed: int | None = None) -> step_lib.TrainState:
    sample = jax.jit(self.layout.unpack)(self.to_device(sample_local_batch))
    seed = self.config.seed if seed is None else seed
    init_rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    return step_lib.create_train_state(self.model, self.tx, sample, init_rng, self.mesh, self.regularizer,
                                       self.embeddings)

  def evaluate(self, state, split: str, predict=None) -> dict | list[dict]:
    """Exact metrics over every row of ``split`` (last batch padded with weight 0). With a
    ``predict`` whose probabilities have a leading seed axis (seeds.py), one dict per seed."""
    src = self.source(split, train=False)
    probs = [(predict or self.predict)(state, batch) for batch in self.batches(src)]
    probs = np.concatenate(jax.device_get(probs), axis=-1).astype(np.float64)[..., :src.num_rows]
    cols = self.dataset.columns[split]
    labels = np.asarray(cols[self.dataset.schema.label.name])
    groups = np.asarray(cols[self.config.gauc_group]) if self.config.gauc_group else None
    if probs.ndim == 1:
      return metrics_lib.evaluate(labels, probs, groups)
    return [metrics_lib.evaluate(labels, p, groups) for p in probs]


def early_stopping_update(progress: dict, value: float, es: ml_collections.ConfigDict, epoch: int) -> bool:
  """Records epoch ``epoch``'s validation ``value`` in ``progress`` (best, best_epoch, bad_epochs,
  stopped); returns whether it improved on the best so far."""
  if not np.isfinite(value):
    raise ValueError(f"valid {es.metric} is {value} after epoch {epoch}, so early stopping cannot "
                     f"compare epochs (GAUC needs users with both classes: dataset.holdout >= 2); "
                     f"set config.early_stopping.metric to 'auc' or 'logloss'")
  improved = progress["best"] is None or (value > progress["best"] if es.mode == "max"
                                          else value < progress["best"])
  if improved:
    progress.update(best=value, best_epoch=epoch, bad_epochs=0)
  else:
    progress["bad_epochs"] += 1
    if progress["bad_epochs"] >= es.patience:
      progress["stopped"] = (f"early stopping after epoch {epoch}: valid {es.metric} did not improve "
                             f"for {es.patience} epochs")
  return improved


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       dataset_path: str | os.PathLike) -> dict:
  workdir = pathlib.Path(workdir)
  main = _is_main()
  # --- Set up ---------------------------------------------------------------------------------
  setup = Setup(config, dataset_path)
  cfg_dict = config.to_dict()
  if main:
    workdir.mkdir(parents=True, exist_ok=True)
  es = config.early_stopping
  ckpt = Checkpointer(workdir / "checkpoints", es.metric, es.mode)

  # --- Data -----------------------------------------------------------------------------------
  train_src = setup.source("train", train=True)
  steps_per_epoch = train_src.batches_per_epoch
  total_steps = steps_per_epoch * config.num_epochs
  train_iter = setup.batches(train_src)

  # --- Model & optimizer ----------------------------------------------------------------------
  state = setup.init_state(train_src[0])
  rng = setup.rng
  progress = {"step": 0, "history": [], "best": None, "best_epoch": None, "bad_epochs": 0,
              "epoch_loss_sum": 0.0, "epoch_loss_count": 0, "stopped": None, "config": cfg_dict}

  # --- Resume ---------------------------------------------------------------------------------
  resumed_from = ckpt.latest_step()
  if resumed_from is not None:
    _check_same_config(ckpt.read_progress(resumed_from)["config"], cfg_dict, workdir)
    state, rng, progress = ckpt.restore(resumed_from, state, rng, train_iter)
    if main:
      print(f"resumed from step {resumed_from} (epoch {resumed_from / steps_per_epoch:.2f})", flush=True)
  if main:
    (workdir / "config.json").write_text(json.dumps(cfg_dict, indent=1) + "\n")
    with open(workdir / "metrics.jsonl", "w") as fh:
      fh.writelines(json.dumps(h) + "\n" for h in progress["history"])
  writer = SummaryWriter(str(workdir / "tb")) if main else None

  # --- Train loop -----------------------------------------------------------------------------
  step = int(progress["step"])
  pending: list[tuple[int, dict]] = []      # device metrics not yet read back (no per-step sync)
  last_finite: dict = {}
  bar = tqdm.tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=not (main and config.progress_bar), desc=f"{config.model_name}")
  t_epoch, t_log, step_log = time.time(), time.time(), step

  def flush():
    """Reads back pending step metrics; raises TrainingDiverged at the first non-finite loss."""
    nonlocal last_finite
    for s, m in jax.device_get(pending):
      loss = float(m["loss"])
      if not np.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss} at step {s} (epoch {s // steps_per_epoch + 1}); last finite "
            f"metrics: {last_finite or 'none'}; the last good checkpoint is kept in "
            f"{workdir / 'checkpoints'} (step {ckpt.latest_step()})")
      last_finite = {"step": s, **{k: float(v) for k, v in m.items()}}
      progress["epoch_loss_sum"] += loss
      progress["epoch_loss_count"] += 1
    pending.clear()

  def save(metrics=None):
    flush()
    progress["step"] = step
    ckpt.save(step, state, rng, progress, train_iter, metrics)

  try:
    while step < total_steps and progress["stopped"] is None:
      state, step_metrics = setup.train_step(state, next(train_iter), rng)
      step += 1
      pending.append((step, step_metrics))
      if step == config.debug.kill_at_step:          # fault injection for the resume tests
        ckpt.wait()
        os.kill(os.getpid(), signal.SIGKILL)
      if step % config.log_every_steps == 0:
        flush()
        rate = (step - step_log) * config.batch_size / max(time.time() - t_log, 1e-9)
        t_log, step_log = time.time(), step
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{last_finite['loss']:.4f}", samples_per_s=f"{rate:,.0f}")
        if writer:
          writer.add_scalar("train/loss", last_finite["loss"], step)
          writer.add_scalar("train/samples_per_s", rate, step)
      if step % steps_per_epoch:
        if step % config.checkpoint_every_steps == 0:
          save()
        continue

      # --- End of epoch: validate, early stopping, checkpoint --------------------------------------
      flush()
      bar.update(step - bar.n)
      epoch = step // steps_per_epoch
      valid = setup.evaluate(state, "valid")
      record = {"epoch": epoch, "step": step,
                "train_loss": progress["epoch_loss_sum"] / max(progress["epoch_loss_count"], 1),
                **{f"valid_{k}": v for k, v in valid.items()},
                "learning_rate": step_lib.learning_rate(state),
                "seconds": time.time() - t_epoch}
      value = valid[es.metric]
      improved = early_stopping_update(progress, value, es, epoch)
      if not improved and config.lr_decay_on_plateau < 1.0:
        state = step_lib.with_learning_rate(
            state, step_lib.learning_rate(state) * config.lr_decay_on_plateau)
      progress["history"].append(record)
      progress["epoch_loss_sum"], progress["epoch_loss_count"] = 0.0, 0
      if main:
        with open(workdir / "metrics.jsonl", "a") as fh:
          fh.write(json.dumps(record) + "\n")
        for k, v in valid.items():
          if np.isfinite(v):                     # GAUC is NaN when no user has both classes
            writer.add_scalar(f"valid/{k}", v, step)
        tqdm.tqdm.write(f"epoch {epoch}: train_loss {record['train_loss']:.4f}  " + "  ".join(
            f"valid_{k} {valid[k]:.4f}" for k in ("auc", "gauc", "logloss") if k in valid)
            + ("  *" if improved else ""))
      save({es.metric: value})
      t_epoch = time.time()
  finally:                                     # a crash still commits the last good save
    bar.close()
    ckpt.wait()

  # --- Test with the best checkpoint ----------------------------------------------------------
  best_step = ckpt.best_step()
  state, _, best_progress = ckpt.restore(best_step, state, rng)
  result = run_result(setup, config.seed, state, best_step, best_progress["best_epoch"], progress,
                      resumed_from_step=resumed_from)
  ckpt.close()
  if main:
    (workdir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    writer.close()
    t = result["test"]
    print(f"test: auc {t['auc']:.4f}  gauc {t.get('gauc', float('nan')):.4f}  "
          f"logloss {t['logloss']:.4f}  (best epoch {result['best_epoch']}, {workdir})", flush=True)
  return result


def run_result(setup: Setup, seed: int, best_state, best_step: int, best_epoch: int, progress: dict,
               **extra) -> dict:
  """result.json of a finished run: valid and test metrics of its best state, and its facts."""
  return {
      "model": setup.config.model_name, "dataset": str(setup.dataset_path), "seed": seed,
      "best_step": best_step, "best_epoch": best_epoch,
      "epochs_run": len(progress["history"]), "stopped": progress["stopped"] or "max epochs",
      "valid": setup.evaluate(best_state, "valid"), "test": setup.evaluate(best_state, "test"),
      **extra,
      "parameters": count_parameters(best_state.params),
      "parameters_excluding_embeddings": count_parameters(without_embeddings(best_state.params)),
      "seconds_per_epoch": float(np.mean([h["seconds"] for h in progress["history"]])),
  }


def count_parameters(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def without_embeddings(params: dict) -> dict:
  """``params`` without every subtree named "embedding" (per-id tables at any depth, e.g. a
  model's first-order weights under first_order/embedding), as AutoInt's Table 3 counts."""
  return {k: without_embeddings(v) if isinstance(v, dict) else v
          for k, v in params.items() if k != "embedding"}


def load_best(workdir: str | os.PathLike, dataset_path: str | os.PathLike):
  """(setup, train state, progress) of the best checkpoint of a run's workdir, on the prepared
  dataset at ``dataset_path``."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").is_file():
    raise FileNotFoundError(f"{workdir}: no config.json (not a ctrjax workdir)")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  setup = Setup(config, dataset_path)
  ckpt = Checkpointer(workdir / "checkpoints", config.early_stopping.metric, config.early_stopping.mode)
  best = ckpt.best_step()
  if best is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint with validation metrics yet")
  state, _, progress = ckpt.restore(best, setup.init_state(setup.source("train", train=True)[0]), setup.rng)
  ckpt.close()
  return setup, state, {**progress, "best_step": best}


def evaluate_workdir(workdir: str | os.PathLike, dataset_path: str | os.PathLike) -> dict:
  """Reloads the best checkpoint of a finished run and re-evaluates test (and valid)."""
  setup, state, progress = load_best(workdir, dataset_path)
  return {"best_step": progress["best_step"], "best_epoch": progress["best_epoch"],
          "valid": setup.evaluate(state, "valid"), "test": setup.evaluate(state, "test")}
