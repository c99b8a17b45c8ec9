"""``train_and_evaluate(config, workdir, dataset_path)``: the epoch loop around the pure train step.

``EpochLoop`` is the one loop for a single run (K = 1, data parallel over the mesh) and for K seeds
trained as one vmapped program (seeds.py); a ``Program`` says how its K runs step together. Read
``EpochLoop.run`` top to bottom: resume -> train loop (evaluate on validation every epoch, early
stopping, optional LR decay on plateau) -> reload each run's best checkpoint -> test evaluation ->
result.json. Each run's bookkeeping is a ``Progress`` (progress.py).

Fault tolerance: a checkpoint every ``checkpoint_every_steps`` and at each epoch end; a workdir
that holds one resumes exactly (params, optimizer, step, RNG, data position, early-stopping
state and the metric history, from which metrics.jsonl is rewritten), from its newest intact
checkpoint (checkpoint.py), and only on the data it trained on (data.json holds the dataset's
content fingerprint). One process at a time trains in a workdir (workdir_lock.py). A loss or
a train state that becomes NaN/Inf stops the run (``TrainingDiverged``) before it is checkpointed,
and ``Restart`` continues it from its last good checkpoint with other optimiser settings.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import signal
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from ctrjax import metrics as metrics_lib
from ctrjax.data import loader
from ctrjax.data.dataset import Dataset, fingerprint
from ctrjax.data.filter import IdFrequencyFilter
from ctrjax.data.packing import BatchLayout
from ctrjax.data.schema import Schema
from ctrjax.errors import ConfigError, UserError, WorkdirFileError
from ctrjax.models import build_model
from ctrjax.train import feed as feed_lib
from ctrjax.train import lazy
from ctrjax.train import mesh as mesh_lib
from ctrjax.train import step as step_lib
from ctrjax.train import workdir_lock
from ctrjax.train.checkpoint import Checkpointer
from ctrjax.train.progress import Progress
from ctrjax.train.regularizers import EmbeddingRegularizer

# Config fields that may differ between a run and its resumption: how it is run, not what it
# computes (embedding_sharding is a layout: losses equal the replicated run's within 1e-5, tested in
# tests/test_sharding.py; a run saved on 8 devices resumes on 4).
_RESUME_FREE = ("workdir", "debug", "log_every_steps", "loader", "progress_bar", "seeds_in_parallel",
                "steps_per_call", "embedding_sharding")
# Config fields a ``Restart`` may change besides those: optimisation settings that keep the layout of
# the train state (optimizer.grad_clip_norm only on the same side of 0: clipping adds a state).
RESTART_FREE = ("optimizer.learning_rate", "optimizer.b1", "optimizer.b2", "optimizer.eps",
                "optimizer.grad_clip_norm", "lr_decay_on_plateau")


class TrainingDiverged(UserError, RuntimeError):
  """The loss or the train state became NaN/Inf; the message names the step, the last finite
  metrics and the last good checkpoint (a user error: restart it with a lower learning rate)."""


@dataclasses.dataclass(frozen=True)
class Restart:
  """Continues a workdir's run from one of its checkpoints under a config that differs from the
  run's in ``RESTART_FREE`` fields only (e.g. a lower learning rate after ``TrainingDiverged``),
  which a plain resume refuses as a different config.

  The checkpoint gives the parameters, the step, the data position, the RNG and the history (early
  stopping state included); the optimizer state too unless ``optimizer_state`` is False (fresh Adam
  moments), with the new settings and learning rate. Later checkpoints are deleted. config.json then
  holds the new config, and result.json["restarts"] (and every later checkpoint) each restart's step
  and changed fields. Once the workdir's newest checkpoint has the new config, the same call simply
  resumes it, so a crashed restart is rerun unchanged.
  """
  step: int | None = None          # the checkpoint to start from (None: the newest intact one)
  optimizer_state: bool = True     # keep the optimizer state (False: a fresh one)


def _is_main() -> bool:
  return jax.process_index() == 0


def _flat(cfg: dict, prefix: str = "") -> dict:
  """{"optimizer": {"learning_rate": x}} -> {"optimizer.learning_rate": x}."""
  out = {}
  for k, v in cfg.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
  return out


def comparable_fields(config: dict) -> dict:
  """A config's (``config.to_dict()``) fields that decide a run's results, flat (dotted key -> value
  as JSON sees it, so tuples and lists compare equal), without the resume-free ones."""
  return {k: v for k, v in _flat(json.loads(json.dumps(config))).items() if k.split(".")[0] not in _RESUME_FREE}


def config_changes(saved: dict, current: dict) -> dict[str, list]:
  """The resume-relevant fields whose values differ between two configs (``config.to_dict()``):
  {"optimizer.learning_rate": [saved, current]}."""
  saved, current = comparable_fields(saved), comparable_fields(current)
  pairs = {k: [saved.get(k, "<absent>"), current.get(k, "<absent>")] for k in sorted(set(saved) | set(current))}
  return {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}


def _check_same_config(saved: dict, current: dict, workdir: pathlib.Path):
  keys = sorted({field.split(".")[0] for field in config_changes(saved, current)})
  if keys:
    raise ConfigError(f"{workdir} holds a run with a different config (differs in {keys}); "
                      f"use another --workdir or delete it to start over (or, for other optimiser "
                      f"settings, restart it: trainer.Restart, or --restart_from=latest)")


def _check_restartable(saved: dict, current: dict, workdir: pathlib.Path):
  changes = config_changes(saved, current)
  fixed = [field for field in changes if field not in RESTART_FREE]
  if fixed:
    raise ConfigError(f"{workdir}: a restart may change only {list(RESTART_FREE)}; the config also "
                      f"differs in {fixed}")
  if "optimizer.grad_clip_norm" in changes and len({v > 0 for v in changes["optimizer.grad_clip_norm"]}) > 1:
    raise ConfigError(f"{workdir}: a restart cannot turn gradient clipping on or off "
                      f"(config.optimizer.grad_clip_norm {changes['optimizer.grad_clip_norm']}): it "
                      f"changes the optimizer state's layout")


DATA_RECORD = "data.json"


def trained_data(workdir: str | os.PathLike) -> dict | None:
  """``<workdir>/data.json``: {"dataset": its directory, "fingerprint": dataset.fingerprint} of the
  data the run trains on; None for a run trained before runs recorded it (taken as it is)."""
  path = pathlib.Path(workdir) / DATA_RECORD
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise WorkdirFileError(f"{path}: line {e.lineno} does not parse ({e.msg}; cut?)") from None


def check_same_data(workdir: str | os.PathLike, dataset_path: str | os.PathLike, data_fingerprint: str) -> None:
  """Refuses (ConfigError) a workdir whose run trained on other data than ``dataset_path``: the
  dataset was prepared again with other content (an edited spec, another raw_dir) or another
  dataset is passed; its config alone would not tell."""
  saved = trained_data(workdir)
  if saved and saved["fingerprint"] != data_fingerprint:
    raise ConfigError(f"{workdir} trained on other data: {saved['dataset']} (fingerprint "
                      f"{saved['fingerprint']}) there, {dataset_path} (fingerprint {data_fingerprint}) now; "
                      f"use another --workdir, or delete it to start over")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _widths(v) -> bool:
  """A size >= 1, a tuple of them, or None (the model's default)."""
  return v is None or all(_is_int(w) and w >= 1 for w in (v if isinstance(v, (tuple, list)) else [v]))


# config.model's fields at any depth (e.g. model.dnn.dropout), by how the field's name ends:
# (endings, the value is valid?, what is expected).
_MODEL_RULES = (
    (("dropout",), lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a rate in [0, 1)"),
    (("_dim", "_heads", "_units", "hidden", "low_rank", "num_experts", "ffn_mult"), _widths,
     "a size >= 1 (or a tuple of sizes)"),
    (("_layers",), lambda v: (_is_int(v) and v >= 0) or (isinstance(v, (tuple, list)) and _widths(v)),
     "a count >= 0 (or a tuple of widths >= 1)"),
)


def _validate_model(model: dict, prefix: str = "model") -> None:
  for name, value in model.items():
    if isinstance(value, dict):
      _validate_model(value, f"{prefix}.{name}")
      continue
    for endings, valid, expected in _MODEL_RULES:
      if name.endswith(endings) and not valid(value):
        raise ConfigError(f"config.{prefix}.{name}={value!r}: expected {expected}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before any work, naming the config field (unknown keys are already
  rejected by the locked ConfigDict); config.model's rates and sizes by ``_MODEL_RULES``."""
  def need(ok, field, value, expected):
    if not ok:
      raise ConfigError(f"config.{field}={value!r}: expected {expected}")
  es = config.early_stopping
  need(es.metric in ("auc", "gauc", "logloss"), "early_stopping.metric", es.metric, "'auc', 'gauc' or 'logloss'")
  need(es.mode in ("max", "min"), "early_stopping.mode", es.mode, "'max' or 'min'")
  need(es.patience >= 1, "early_stopping.patience", es.patience, ">= 1")
  for field in ("batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps", "log_every_steps"):
    need(config[field] >= 1, field, config[field], ">= 1")
  need(0.0 < config.lr_decay_on_plateau <= 1.0, "lr_decay_on_plateau", config.lr_decay_on_plateau, "in (0, 1]")
  need(0 < config.optimizer.learning_rate < float("inf"), "optimizer.learning_rate",
       config.optimizer.learning_rate, "a finite value > 0")
  embeddings = lazy.embedding_optimizer(config.optimizer)
  need(embeddings in lazy.EMBEDDING_OPTIMIZERS, "optimizer.embeddings", embeddings,
       f"one of {lazy.EMBEDDING_OPTIMIZERS}")
  if embeddings != "dense" and config.regularizer.mode == "full_table":
    raise ConfigError(f"config.regularizer.mode='full_table' penalises every row, but "
                      f"config.optimizer.embeddings={embeddings!r} updates only a batch's rows; "
                      f"use mode 'mba' or 'touched', or embeddings 'dense'")
  need(config.num_devices >= 0, "num_devices", config.num_devices, ">= 0 (0 = all)")
  # loader.placement and steps_per_call are absent from the config.json of runs trained before them
  placement = config.loader.get("placement", "host")
  need(placement in feed_lib.PLACEMENTS, "loader.placement", placement, f"one of {feed_lib.PLACEMENTS}")
  share = config.loader.get("device_memory_share", 0.25)
  need(0 < share <= 1, "loader.device_memory_share", share, "in (0, 1]")
  steps_per_call = config.get("steps_per_call", 1)
  need(_is_int(steps_per_call) and steps_per_call >= 1, "steps_per_call", steps_per_call, "an integer >= 1")
  need(embedding_sharding(config) in mesh_lib.EMBEDDING_SHARDINGS, "embedding_sharding",
       embedding_sharding(config), f"one of {mesh_lib.EMBEDDING_SHARDINGS}")
  _validate_model(config.model.to_dict())
  devices = config.num_devices or jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    need(config[field] % devices == 0, field, config[field], f"a multiple of the {devices} devices")


def embedding_sharding(config: ml_collections.ConfigDict) -> str:
  """``config.embedding_sharding``; "replicated" for a config saved before the field existed."""
  return config.get("embedding_sharding", "replicated")


def _table_layout(schema: Schema, mesh, sharding: str) -> tuple[Schema, mesh_lib.StateSharding]:
  """(the model's schema, the train state's StateSharding): with "rows" every table padded to a
  multiple of the mesh size and row-sharded over it (mesh.py), else the dataset's and replicated."""
  if sharding != "rows":
    return schema, mesh_lib.StateSharding(mesh)
  schema = schema.padded_rows(mesh.size)
  return schema, mesh_lib.StateSharding(mesh, schema.tables)


class Setup:
  """Everything a run and a later re-evaluation share: dataset, mesh, model, steps. The dataset is
  a prepared directory (the CLI prepares it from ``config.dataset``; the library never does)."""

  def __init__(self, config: ml_collections.ConfigDict, dataset_path: str | os.PathLike):
    validate_config(config)
    self.config = config
    self.dataset_path = pathlib.Path(dataset_path)
    self.dataset = Dataset(self.dataset_path, validate=config.dataset.validate)
    self.data_fingerprint = fingerprint(self.dataset_path)
    meta = [f.name for f in self.dataset.schema.group("meta")]
    if config.gauc_group and config.gauc_group not in meta:
      raise ConfigError(f"config.gauc_group={config.gauc_group!r} is not a meta field of "
                        f"{self.dataset_path} (meta fields: {meta}); use '' to skip GAUC")
    self.mesh = mesh_lib.make_mesh(config.num_devices)
    schema, self.state_sharding = _table_layout(self.dataset.schema, self.mesh, embedding_sharding(config))
    self.model = build_model(config.model_name, schema, config.model)
    self.tx = step_lib.make_optimizer(config.optimizer)
    self.layout = BatchLayout.from_schema(self.dataset.schema)
    reg = config.regularizer
    self.id_filter = (IdFrequencyFilter(self.dataset.schema, self.dataset.counts, reg.filter_table,
                                        reg.filter_top_k) if reg.filter_top_k else None)
    if self.id_filter and _is_main():
      print(self.id_filter.summary, flush=True)
    self.regularizer = EmbeddingRegularizer.build(
        schema, self.dataset.counts, config.regularizer.mode, config.regularizer.weight,
        config.regularizer.weight_convention)
    self.embeddings = lazy.LazyEmbeddings.build(config.optimizer, self.model)
    self.train_step, self.predict = step_lib.jit_steps(self.mesh, self.layout, self.regularizer,
                                                       self.embeddings, self.state_sharding)
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
    return loader.make_iterator(source, self.config.loader.num_threads, self.config.loader.prefetch,
                                transform=self.to_device)

  def init_state(self, sample_local_batch, seed: int | None = None) -> step_lib.TrainState:
    sample = jax.jit(self.layout.unpack)(self.to_device(sample_local_batch))
    seed = self.config.seed if seed is None else seed
    init_rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    return step_lib.create_train_state(self.model, self.tx, sample, init_rng, self.mesh, self.regularizer,
                                       self.embeddings, self.state_sharding)

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


@dataclasses.dataclass(frozen=True)
class Program:
  """The compiled steps that advance K runs of one config together, and how their state is laid
  out: one run on the mesh (``stacked`` False, K = 1: ``train_and_evaluate``) or K seeds with a
  leading seed axis on one device (``stacked`` True: seeds.py)."""
  feed: feed_lib.HostFeed | feed_lib.DeviceFeed   # feed.steps(state, rng, n): n train steps, the
                          # state donated; feed.iterator: the checkpointable data position (step i next)
  predict: Callable       # (state, eval batch) -> probabilities
  init_state: Callable    # seed -> that run's fresh (unstacked) TrainState
  steps_per_epoch: int
  stacked: bool

  def stack(self, trees: list):
    """The runs' trees -> the program's tree."""
    return jax.tree.map(lambda *x: jnp.stack(x), *trees) if self.stacked else trees[0]

  def unstack(self, tree, k: int):
    """Run ``k``'s part of the program's tree."""
    return jax.tree.map(lambda x: x[k], tree) if self.stacked else tree

  def replace_run(self, tree, k: int, run_tree):
    """The program's tree with run ``k``'s part replaced by ``run_tree``."""
    return jax.tree.map(lambda x, v: x.at[k].set(v), tree, run_tree) if self.stacked else run_tree

  def per_run(self, value) -> np.ndarray:
    """A value of the program (a scalar, or one per seed) -> a host array with one entry per run."""
    value = np.asarray(jax.device_get(value))
    return value if self.stacked else value[None]

  def of_runs(self, values: np.ndarray):
    """``per_run``'s inverse, for values to put into the state."""
    return values if self.stacked else values[0]


class CompileClock:
  """Wall seconds, while open, during which jax traced, lowered or compiled a program (or loaded
  one from the persistent compilation cache): the union of jax.monitoring's compile event spans,
  in any thread of this process, nested and overlapping spans counted once."""
  EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __enter__(self) -> "CompileClock":
    self.spans: list[tuple[float, float]] = []
    jax.monitoring.register_event_time_span_listener(self._record)
    return self

  def _record(self, event: str, start: float, end: float, **kwargs):
    if event in self.EVENTS:
      self.spans.append((start, end))

  def seconds(self) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(self.spans):
      total += max(0.0, end - max(start, reach))
      reach = max(reach, end)
    return round(total, 3)

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_time_span_listener(self._record)


@functools.partial(jax.jit, static_argnums=1)
def _all_finite(state, stacked: bool) -> jax.Array:
  """Whether every float of ``state`` is finite: a bool, or one per run of a stacked state."""
  def finite(x):
    return jnp.isfinite(x).all(axis=tuple(range(1, x.ndim)) if stacked else None)
  leaves = [finite(x) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(leaves).all(axis=0)


# A caller's hook at each epoch end of a run: (epoch, its validation metrics) -> None to go on, or
# why the run stops here (e.g. a tuning pruner's verdict: experiments/tune.py), unless early
# stopping already stopped it. The reason is kept as the run's ``stopped`` in its checkpoints, so a
# resumed run stays stopped; its best epoch so far is tested as after early stopping. Called per
# run, in every process of a multi-process run.
OnEpoch = Callable[[int, dict], str | None]


@dataclasses.dataclass
class _Run:
  """One run of an ``EpochLoop``: its seed, workdir, checkpoints, progress and logs."""
  seed: int
  workdir: pathlib.Path
  tag: str                     # prefix of its messages: "" for a single run, "seed S: " in a group
  ckpt: Checkpointer
  progress: Progress
  writer: SummaryWriter | None = None
  resumed_from: int | None = None
  last_finite: dict = dataclasses.field(default_factory=dict)   # metrics of its last finite step


class EpochLoop:
  """The epoch loop of K runs of one config that step together through a ``Program``: one run
  (``train_and_evaluate``) or K vmapped seeds (seeds.py). Run k writes ``workdirs[k]`` as a separate
  run would (config.json, data.json, metrics.jsonl, tb/, checkpoints/, result.json) and resumes from it.

  ``run()`` reads top to bottom: resume -> train steps (metrics read back every log step, the loss
  checked for each run at every step) -> at each epoch end validation, early stopping, LR decay on
  plateau and a checkpoint per run -> each run's best checkpoint tested -> result.json.

  A run is live while it trains; a run that stopped early keeps stepping in a group (the program's
  shape is fixed) but its progress is frozen. On resume the loop starts at the step of the unfinished
  run furthest behind; a run already further on (a group killed between two runs' saves, or a
  workdir resumed in the other ``seeds_in_parallel`` mode) is parked and rejoins at its own step.
  """

  def __init__(self, setup: Setup, program: Program, configs: Sequence[ml_collections.ConfigDict],
               workdirs: Sequence[str | os.PathLike], restart: Restart | None = None,
               on_epoch: OnEpoch | None = None, **result_extra):
    self.setup, self.program, self.config = setup, program, setup.config
    self.restart = restart                      # applied to each run (see ``Restart``)
    self.on_epoch = on_epoch                    # may stop a run after an epoch (see ``OnEpoch``)
    self.result_extra = result_extra            # extra result.json fields
    self.main = _is_main()
    self.total_steps = program.steps_per_epoch * self.config.num_epochs
    if self.main:
      for w in workdirs:
        pathlib.Path(w).mkdir(parents=True, exist_ok=True)
    self.runs = [_Run(seed=c.seed, workdir=pathlib.Path(w), tag=f"seed {c.seed}: " if program.stacked else "",
                      ckpt=Checkpointer(pathlib.Path(w) / "checkpoints"),
                      progress=Progress(config=c.to_dict())) for c, w in zip(configs, workdirs)]
    self.live: list[int] = []                   # the runs trained by the current step
    self.parked: dict[int, step_lib.TrainState] = {}   # run -> its state, until the loop reaches its step
    self.pending: list[tuple] = []              # (step, steps in the call, device metrics, live runs)
                                                # not yet read back

  def run(self) -> list[dict]:
    """Trains every run to its end; returns the K result dicts."""
    try:
      with CompileClock() as clock:
        self._resume()
        self._train()
        self.result_extra["compile_seconds"] = clock.seconds()
      return self._results()
    finally:              # on errors too: commits the last saves, and stops orbax's threads before
      for run in self.runs:   # the interpreter does ("can't create new thread at shutdown")
        run.ckpt.close()

  # --- Resume ---------------------------------------------------------------------------------------
  def _resume(self):
    """Restores every run from its newest intact checkpoint (or restarts it), sets the loop's first
    step, places the batches, and (re)writes each run's config.json, data.json and metrics.jsonl (a
    run that trained on other data is refused first)."""
    states, rngs, restored = [], [], []
    for run in self.runs:
      check_same_data(run.workdir, self.setup.dataset_path, self.setup.data_fingerprint)
      state = self.program.init_state(run.seed)
      rng = jax.device_put(jax.random.PRNGKey(run.seed), mesh_lib.replicated(self.setup.mesh))
      step, state, rng = (self._restart_run if self.restart else self._resume_run)(run, state, rng)
      if step is not None and self.main:
        print(f"{run.tag}resumed from step {step} (epoch {step / self.program.steps_per_epoch:.2f})",
              flush=True)
      states.append(state)
      rngs.append(rng)
      restored.append(step)
    unfinished = [k for k, run in enumerate(self.runs) if run.progress.stopped is None]
    self.start = min((self.runs[k].progress.step for k in unfinished), default=self.total_steps)
    self.live = [k for k in unfinished if self.runs[k].progress.step == self.start]
    self.parked = {k: states[k] for k in unfinished if k not in self.live}
    if self.live and restored[self.live[0]] is not None:   # the live runs share the batches' position
      self.runs[self.live[0]].ckpt.restore_data_iter(restored[self.live[0]], self.program.feed.iterator)
    self.state, self.rngs = self.program.stack(states), self.program.stack(rngs)
    if self.main:
      for run in self.runs:
        (run.workdir / "config.json").write_text(json.dumps(run.progress.config, indent=1) + "\n")
        (run.workdir / DATA_RECORD).write_text(json.dumps(
            {"dataset": str(self.setup.dataset_path), "fingerprint": self.setup.data_fingerprint}) + "\n")
        with open(run.workdir / "metrics.jsonl", "w") as fh:
          fh.writelines(json.dumps(h) + "\n" for h in run.progress.history)
        run.writer = SummaryWriter(str(run.workdir / "tb"))

  def _resume_run(self, run: _Run, state, rng):
    """(step, state, rng) of ``run``'s newest intact checkpoint, which must hold the run's config;
    (None, state, rng) for a new run."""
    found = run.ckpt.restore_latest(
        state, rng, check=lambda saved: _check_same_config(saved.config, run.progress.config, run.workdir))
    if found is None:
      return None, state, rng
    step, state, rng, run.progress = found
    run.resumed_from = step
    return step, state, rng

  def _restart_run(self, run: _Run, state, rng):
    """``_resume_run`` under ``self.restart``: the checkpoint's config may differ in RESTART_FREE
    fields, which then take effect from its step on (recorded in the progress's ``restarts``)."""
    config = run.progress.config
    found = run.ckpt.restore_latest(
        state, rng, check=lambda saved: _check_restartable(saved.config, config, run.workdir))
    if found is None:
      raise WorkdirFileError(f"{run.workdir / 'checkpoints'}: no checkpoint to restart from")
    step, restored, rng, saved = found
    if not config_changes(saved.config, config):
      if self.main:
        print(f"{run.tag}{run.workdir}'s newest checkpoint already has this config: resuming it "
              f"(no restart)", flush=True)
    else:
      if self.restart.step is not None and self.restart.step != step:
        step = self.restart.step
        _check_restartable(run.ckpt.read_progress(step).config, config, run.workdir)
        restored, rng, saved = run.ckpt.restore(step, state, rng)
      changed = config_changes(saved.config, config)
      if not self.restart.optimizer_state:
        restored = restored.replace(opt_state=state.opt_state, embedding_opt_state=state.embedding_opt_state)
      restored = step_lib.with_learning_rate(restored, config["optimizer"]["learning_rate"])
      deleted = run.ckpt.delete_after(step)
      saved.config = config
      saved.restarts = saved.restarts + [{"step": step, "changed": changed,
                                          "optimizer_state": self.restart.optimizer_state}]
      if self.main:
        print(f"{run.tag}restarting from step {step} with " + ", ".join(
            f"{field} {old} -> {new}" for field, (old, new) in changed.items())
            + ("" if self.restart.optimizer_state else ", a fresh optimizer state")
            + (f"; later checkpoints {deleted} deleted" if deleted else ""), flush=True)
    run.progress, run.resumed_from = saved, step
    return step, restored, rng

  # --- Train loop -----------------------------------------------------------------------------------
  def _train(self):
    config, steps_per_epoch = self.config, self.program.steps_per_epoch
    step = self.start
    desc = config.model_name + (f" x{len(self.runs)} seeds" if self.program.stacked else "")
    bar = tqdm.tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True,
                    disable=not (self.main and config.progress_bar), desc=desc)
    t_epoch, t_log, step_log = time.time(), time.time(), step
    def reached(every: int) -> bool:                 # a multiple of ``every`` in the last call's steps
      return step // every > (step - n) // every
    try:
      while step < self.total_steps and (self.live or self.parked):
        self._unpark(step)
        n = feed_lib.call_size(step, steps_per_epoch, config.steps_per_call)
        if any(step < self.runs[k].progress.step < step + n for k in self.parked):
          n = 1                                   # a call never steps over a parked run's step
        self.state, step_metrics = self.program.feed.steps(self.state, self.rngs, n)
        step += n
        for k in self.live:
          self.runs[k].progress.step = step
        self.pending.append((step, n, step_metrics, tuple(self.live)))
        if step - n < config.debug.kill_at_step <= step:   # fault injection for the resume tests
          for run in self.runs:
            run.ckpt.wait()
          os.kill(os.getpid(), signal.SIGKILL)
        if reached(config.log_every_steps):
          self._flush()
          rate = (step - step_log) * config.batch_size * len(self.runs) / max(time.time() - t_log, 1e-9)
          t_log, step_log = time.time(), step
          self._log_step(step, rate, bar)
        if step % steps_per_epoch:
          if reached(config.checkpoint_every_steps):
            self._settle()
            self._save()
          continue
        self._end_epoch(step // steps_per_epoch, time.time() - t_epoch)
        bar.update(step - bar.n)
        t_epoch = time.time()
    finally:
      bar.close()
      for run in self.runs:
        if run.writer:
          run.writer.close()

  def _unpark(self, step: int):
    """Puts back the parked runs whose own step the loop has reached; they train from here on."""
    for k in [k for k in self.parked if self.runs[k].progress.step == step]:
      self.state = self.program.replace_run(self.state, k, self.parked.pop(k))
      self.live = sorted(self.live + [k])

  def _flush(self):
    """Reads back the pending step metrics and adds each live run's loss to its epoch; raises
    TrainingDiverged at the first non-finite loss, naming the step (and the seed in a group)."""
    for last, n, call_metrics, live in jax.device_get(self.pending):
      for i, step in enumerate(range(last - n + 1, last + 1)):   # a call's metrics: one per step if n > 1
        per_run = {name: self.program.per_run(value[i] if n > 1 else value)
                   for name, value in call_metrics.items()}
        for k in live:
          run = self.runs[k]
          loss = float(per_run["loss"][k])
          if not np.isfinite(loss):
            raise self._diverged(run, f"loss became {loss} at step {step}", step)
          run.last_finite = {"step": step, **{name: float(v[k]) for name, v in per_run.items()}}
          run.progress.add_step_loss(loss)
    self.pending.clear()

  def _settle(self):
    """``_flush``, then checks that every live run's train state is finite. A step's loss is that of
    the state before its update, so an update to NaN/Inf (an overflowing step) shows here first:
    before the state is evaluated or checkpointed, so every kept checkpoint is finite."""
    self._flush()
    finite = self.program.per_run(_all_finite(self.state, self.program.stacked))
    for k in self.live:
      if not finite[k]:
        step = self.runs[k].progress.step
        raise self._diverged(self.runs[k], f"the parameters or optimizer state became NaN/Inf by step "
                                           f"{step}, every loss up to it finite", step)

  def _diverged(self, run: _Run, what: str, step: int) -> TrainingDiverged:
    saved = run.ckpt.latest_step()
    return TrainingDiverged(
        f"{run.tag}{what} (epoch {(step - 1) // self.program.steps_per_epoch + 1}); last finite "
        f"metrics: {run.last_finite or 'none'}; " + (
            f"the last good checkpoint is kept in {run.workdir / 'checkpoints'} (step {saved}): "
            f"restart from it with a lower learning rate (trainer.Restart; on the command line "
            f"--restart_from=latest)"
            if saved is not None else "there is no checkpoint yet"))

  def _log_step(self, step: int, rate: float, bar):
    bar.update(step - bar.n)
    bar.set_postfix(loss=" ".join(f"{self.runs[k].last_finite['loss']:.4f}" for k in self.live),
                    samples_per_s=f"{rate:,.0f}")
    for k in self.live:
      if self.runs[k].writer:
        self.runs[k].writer.add_scalar("train/loss", self.runs[k].last_finite["loss"], step)
        self.runs[k].writer.add_scalar("train/samples_per_s", rate, step)

  def _save(self):
    """Checkpoints every live run (its state settled: ``_settle``)."""
    for k in self.live:
      run = self.runs[k]
      run.ckpt.save(run.progress.step, self.program.unstack(self.state, k), self.program.unstack(self.rngs, k),
                    run.progress, self.program.feed.iterator)

  # --- End of epoch: validate, early stopping, LR decay on plateau, checkpoint ----------------------
  def _end_epoch(self, epoch: int, seconds: float):
    self._settle()                               # a diverged state is not evaluated
    es, decay = self.config.early_stopping, self.config.lr_decay_on_plateau
    valid = self.setup.evaluate(self.state, "valid", self.program.predict)
    valid = valid if self.program.stacked else [valid]
    lr = self.program.per_run(self.state.opt_state.hyperparams["learning_rate"]).astype(np.float64)
    for k in self.live:
      run = self.runs[k]
      record, improved = run.progress.end_epoch(epoch, valid[k], float(lr[k]), seconds, es)
      stop = self.on_epoch(epoch, valid[k]) if self.on_epoch else None
      if stop and run.progress.stopped is None:
        run.progress.stopped = stop
      if not improved:
        lr[k] *= decay
      if self.main:
        with open(run.workdir / "metrics.jsonl", "a") as fh:
          fh.write(json.dumps(record) + "\n")
        for name, value in valid[k].items():
          if np.isfinite(value):                 # GAUC is NaN when no user has both classes
            run.writer.add_scalar(f"valid/{name}", value, run.progress.step)
        tqdm.tqdm.write(f"{run.tag}epoch {epoch}: train_loss {record['train_loss']:.4f}  " + "  ".join(
            f"valid_{m} {valid[k][m]:.4f}" for m in ("auc", "gauc", "logloss") if m in valid[k])
            + ("  *" if improved else ""))
    if decay < 1.0:
      self.state = step_lib.with_learning_rate(self.state, self.program.of_runs(lr))
    self._save()
    self.live = [k for k in self.live if self.runs[k].progress.stopped is None]

  # --- Test with each run's best checkpoint ---------------------------------------------------------
  def _results(self) -> list[dict]:
    results = []
    for k, run in enumerate(self.runs):
      best_state, _, _ = run.ckpt.restore(run.progress.best_step, self.program.unstack(self.state, k),
                                          self.program.unstack(self.rngs, k))
      result = run_result(self.setup, run.seed, best_state, run.progress,
                          resumed_from_step=run.resumed_from, **self.result_extra)
      if self.main:
        (run.workdir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        t = result["test"]
        print(f"{run.tag}test: auc {t['auc']:.4f}  gauc {t.get('gauc', float('nan')):.4f}  "
              f"logloss {t['logloss']:.4f}  (best epoch {result['best_epoch']}, {run.workdir})", flush=True)
      results.append(result)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       dataset_path: str | os.PathLike, restart: Restart | None = None,
                       on_epoch: OnEpoch | None = None) -> dict:
  """Trains ``config`` on the prepared dataset at ``dataset_path`` into ``workdir`` (resuming what
  it holds, or restarting it: ``Restart``) and returns its result.json: the ``EpochLoop`` of one run
  on the mesh; ``on_epoch`` may stop it after an epoch (``OnEpoch``). Holds the workdir's lock
  throughout: a second process is refused (WorkdirBusy)."""
  with workdir_lock.training([workdir]):
    setup = Setup(config, dataset_path)
    source = setup.source("train", train=True)
    program = Program(feed=feed_lib.make_feed(setup, [source], stacked=False,
                                              host_batches=lambda: setup.batches(source)),
                      predict=setup.predict, init_state=lambda seed: setup.init_state(source[0], seed),
                      steps_per_epoch=source.batches_per_epoch, stacked=False)
    return EpochLoop(setup, program, [config], [workdir], restart, on_epoch).run()[0]


def run_result(setup: Setup, seed: int, best_state, progress: Progress, **extra) -> dict:
  """result.json of a finished run (``progress``: its last): valid and test metrics of its best
  state (``progress.best_step``'s checkpoint), and its facts."""
  return {
      "model": setup.config.model_name, "dataset": str(setup.dataset_path),
      "data_fingerprint": setup.data_fingerprint, "seed": seed,
      "best_step": progress.best_step, "best_epoch": progress.best_epoch,
      "epochs_run": len(progress.history), "stopped": progress.stopped or "max epochs",
      "restarts": progress.restarts,
      "valid": setup.evaluate(best_state, "valid"), "test": setup.evaluate(best_state, "test"),
      **extra,
      "parameters": count_parameters(best_state.params),
      "parameters_excluding_embeddings": count_parameters(without_embeddings(best_state.params)),
      "seconds_per_epoch": float(np.mean([h["seconds"] for h in progress.history])),
  }


def count_parameters(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def without_embeddings(params: dict) -> dict:
  """``params`` without every subtree named "embedding" (per-id tables at any depth, e.g. a
  model's first-order weights under first_order/embedding), as AutoInt's Table 3 counts."""
  return {k: without_embeddings(v) if isinstance(v, dict) else v
          for k, v in params.items() if k != "embedding"}


def load_best(workdir: str | os.PathLike, dataset_path: str | os.PathLike):
  """(setup, train state, progress) of the best checkpoint of a run's workdir (the one its newest
  checkpoint names), on the prepared dataset at ``dataset_path``. Refused (WorkdirBusy) while a run
  trains in the workdir and may replace it."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").is_file():
    raise WorkdirFileError(f"{workdir}: no config.json (not a ctrjax workdir)")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  with workdir_lock.reading(workdir):
    setup = Setup(config, dataset_path)
    check_same_data(workdir, dataset_path, setup.data_fingerprint)
    ckpt = Checkpointer(workdir / "checkpoints")
    try:
      newest = ckpt.newest_progress()
      if newest is None or newest.best_step is None:
        raise WorkdirFileError(f"{workdir / 'checkpoints'}: no checkpoint of a finished epoch yet")
      state, _, progress = ckpt.restore(newest.best_step, setup.init_state(setup.source("train", train=True)[0]),
                                        setup.rng)
    finally:
      ckpt.close()
  return setup, state, progress


def evaluate_workdir(workdir: str | os.PathLike, dataset_path: str | os.PathLike) -> dict:
  """Reloads the best checkpoint of a finished run and re-evaluates test (and valid)."""
  setup, state, progress = load_best(workdir, dataset_path)
  return {"best_step": progress.best_step, "best_epoch": progress.best_epoch,
          "valid": setup.evaluate(state, "valid"), "test": setup.evaluate(state, "test")}
