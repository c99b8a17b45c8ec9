"""``./run.sh tune CONFIG[:ARG] [--trials N] [--timeout S]``: a config's hyperparameters tuned with
Optuna on validation AUC, then the best setting trained with seeds 0-4 and tested; and the grid
protocol ``tuned`` (``./run.sh GRID:tuned``): every variant tuned alike, beside the grid's runs.

A study (``Tuning``) searches the config file's ``get_search_space(arg)`` (configs/common.py) with
a TPE sampler and a median pruner on the validation AUC of each epoch, in a journal file several
processes append to under a file lock (optuna's JournalStorage). Its identity is the resolved base
config (seed included), the search space and the dataset's content fingerprint: its folder and
name are ``study-<digest of the three>``, so another config, space or data is another study and
never mixes trials. Trial k trains the base config
with its sampled values (and seed TRIAL_SEED, none of the seeds reported) in ``<study>/trial<k>``;
its value is the validation AUC of its best epoch. Test metrics play no part in the selection.

Workers: start the command again. Under the study's ask lock a worker either takes over a trial a
dead worker left running, or asks for a new one while fewer than N trials exist, and claims it
with a file lock (experiments/runner.py) before letting go, so N trials are started in all, none
twice. A trial whose worker was killed is resumed, not replaced: the same trial number and
parameters, its run resumed from its checkpoints (the pruner sees each epoch once). Each worker
then waits for the trials still running, takes the COMPLETE trial of highest value (pruned and
failed trials are not candidates) and trains its setting with FULL_SEEDS, each seed claimed as a
grid run is. ``--timeout S``: no new trial after S seconds (a trial killed after that stays for a
rerun); the best is then chosen among the trials finished.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import pathlib
import time
from collections.abc import Collection

import ml_collections
import numpy as np
import optuna
import tqdm
from scipy import stats

from configs.common import FULL_SEEDS, Choice, Fixed, Grid, LogUniform, SearchSpace, Uniform, missing_field
from ctrjax.data.dataset import fingerprint
from ctrjax.errors import ConfigError, UserError
from ctrjax.train import trainer
from experiments import grid as grid_lib
from experiments import report, runner
from experiments.plotting import plt, save_figure

TRIAL_SEED = 1000          # trials train with this seed, so a lucky seed cannot win the selection
DEFAULT_TRIALS = 20        # ./run.sh tune without --trials (the grid protocol: TUNED_TRIALS)
PRUNED = "pruned"          # how a pruned trial's result.json "stopped" begins
PRUNER_STARTUP_TRIALS = 3  # the median rule applies once 3 trials are complete ...
PRUNER_WARMUP_EPOCHS = 1   # ... and never to a trial's first epoch

optuna.logging.set_verbosity(optuna.logging.WARNING)   # a line per trial is ours (``_train_trial``)


def check_space(config: ml_collections.ConfigDict, space: SearchSpace, source: str) -> None:
  """Each key of ``space`` must be a field of ``config`` and each value it can take must pass the
  config's checks (type, trainer.validate_config); else a ConfigError naming ``source`` and the key."""
  for key in space:
    if missing := missing_field(config, key):
      walked, part, hint = missing
      raise ConfigError(f"{source}: search space key {key!r}: config{walked} has no field {part!r} ({hint})")
  fixed = {k: d.value for k, d in space.items() if isinstance(d, Fixed)}
  for key, dist in space.items():
    for value in _extremes(dist):
      try:
        trainer.validate_config(grid_lib.with_overrides(config, {**fixed, key: value}, config.seed))
      except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: search space {key}={value!r} does not fit the config: "
                          f"{str(e).strip().splitlines()[-1]}") from None


def _extremes(dist) -> list:
  if isinstance(dist, (LogUniform, Uniform)):
    return [dist.lo, dist.hi]
  return list(dist.values) if isinstance(dist, Choice) else [dist.value]


def split_space(config: ml_collections.ConfigDict, space: SearchSpace,
                overrides: Collection[str] = ()) -> tuple[SearchSpace, dict[str, str]]:
  """A grid variant's space: (the keys of ``space`` it searches, {each other key: why not}). Its
  ``config`` may lack a key (LR has no model.dnn), or its ``overrides`` set it: a factor of the
  grid (mian_factorial's model.dnn.hidden) keeps the variant's value."""
  flat = grid_lib.config_fields(config)
  has = lambda key: key in flat or any(k.startswith(key + ".") for k in flat)
  dropped = {k: "its config has no such field" for k in space if not has(k)}
  dropped.update({k: "the variant sets it" for k in space if k in overrides and k not in dropped})
  return {k: d for k, d in space.items() if k not in dropped}, dropped


def describe_space(space: SearchSpace) -> dict[str, str]:
  return {key: repr(dist) for key, dist in space.items()}


@dataclasses.dataclass
class Tuning:
  """One study: a base config and its search space, in ``folder`` (``<root>/study-<digest>``),
  which holds the journal (journal.log), study.json, trial<k>/ and seeds/trial<k>/seed<s>/."""
  label: str                       # how messages name it: the config file, or the grid's variant
  base: ml_collections.ConfigDict  # the config the trials start from
  space: SearchSpace
  folder: pathlib.Path
  dataset_path: pathlib.Path
  _storage: optuna.storages.JournalStorage | None = dataclasses.field(default=None, repr=False)

  @classmethod
  def create(cls, label: str, base: ml_collections.ConfigDict, space: SearchSpace, root: pathlib.Path,
             dataset_path: pathlib.Path) -> Tuning:
    identity = {"config": grid_lib.config_fields(base), "space": describe_space(space),
                "data_fingerprint": fingerprint(dataset_path)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    folder = pathlib.Path(root) / f"study-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    tuning = cls(label, base, space, folder, pathlib.Path(dataset_path))
    optuna.create_study(study_name=folder.name, storage=tuning.storage(), direction="maximize", load_if_exists=True)
    return tuning

  # --- The study --------------------------------------------------------------------------------
  def storage(self) -> optuna.storages.JournalStorage:
    """The study's journal: appended under a lock file, so workers on one filesystem share it."""
    if self._storage is None:
      path = str(self.folder / "journal.log")
      self._storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
          path, optuna.storages.journal.JournalFileOpenLock(path)))
    return self._storage

  def study(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The study (``create`` made it), with ``sampler`` (for ``ask``) and the median pruner."""
    return optuna.load_study(
        study_name=self.folder.name, storage=self.storage(), sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                           n_warmup_steps=PRUNER_WARMUP_EPOCHS))

  def trials(self) -> list[optuna.trial.FrozenTrial]:
    return self.study().get_trials(deepcopy=False)

  def _sampler(self, number: int, budget: int) -> optuna.samplers.TPESampler:
    """TPE seeded by the base seed and the trial's number (two workers asking at once never draw
    the same startup trial; one worker's study is reproducible); random for its first
    min(10, max(3, N/2)) trials, then TPE."""
    seed = int(np.random.SeedSequence([self.base.seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, budget // 2)))

  def _suggest(self, trial: optuna.Trial) -> dict:
    """The trial's config values (dotted key -> value, Fixed ones too), sampled on first call."""
    values = {}
    for key, dist in self.space.items():
      if isinstance(dist, LogUniform | Uniform):
        values[key] = trial.suggest_float(key, dist.lo, dist.hi, log=isinstance(dist, LogUniform))
      elif isinstance(dist, Choice):
        labels = [Choice.label(v) for v in dist.values]
        values[key] = dist.values[labels.index(trial.suggest_categorical(key, labels))]
      else:
        values[key] = dist.value
    return values

  def values(self, params: dict) -> dict:
    """A finished trial's params (Choice labels) -> its config values."""
    out = {}
    for key, dist in self.space.items():
      if isinstance(dist, Choice):
        out[key] = dist.values[[Choice.label(v) for v in dist.values].index(params[key])]
      else:
        out[key] = dist.value if isinstance(dist, Fixed) else params[key]
    return out

  def _claim_path(self, number: int) -> pathlib.Path:
    return self.folder / f".trial{number}.lock"

  # --- Trials -----------------------------------------------------------------------------------
  def run_trials(self, budget: int, deadline: float = math.inf) -> None:
    """Trains trials until the study holds ``budget`` of them (a dead worker's first) or the
    ``deadline`` (time.time()) passes."""
    while time.time() < deadline:
      claim = self._next_trial(budget)
      if claim is None:
        return
      number, lock = claim
      with lock:
        self._train_trial(number)

  def _next_trial(self, budget: int):
    """(number, its claim) of a trial a dead worker left running or of a new trial, or None when
    the study holds ``budget`` trials; decided under the study's ask lock."""
    with runner._lock(self.folder / ".ask.lock", wait=True):
      trials = self.trials()
      for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
          lock = runner._lock(self._claim_path(t.number), wait=False)
          if lock:
            print(f"{self.label} trial {t.number}: its worker stopped; resuming it", flush=True)
            return t.number, lock
      if len(trials) >= budget:
        return None
      study = self.study(self._sampler(len(trials), budget))
      trial = study.ask()
      self._suggest(trial)
      return trial.number, runner._lock(self._claim_path(trial.number), wait=False)

  def _train_trial(self, number: int) -> None:
    """Trains trial ``number`` (resuming its workdir), reporting each epoch's valid AUC to the
    pruner, and tells the study how it ended: COMPLETE (value: its best epoch's valid AUC),
    PRUNED, or FAIL if training diverged."""
    study, storage = self.study(), self.storage()
    trial = optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number))
    values = self._suggest(trial)
    config = grid_lib.with_overrides(self.base, values, TRIAL_SEED)
    config.progress_bar = False
    tag = f"{self.label} trial {number}"
    print(f"{tag}: {_params_text(values, self.space)}", flush=True)
    bar = tqdm.tqdm(total=config.num_epochs, initial=len(study.trials[number].intermediate_values),
                    unit="epoch", desc=tag, dynamic_ncols=True, leave=False)

    def on_epoch(epoch: int, valid: dict) -> str | None:
      trial.report(valid["auc"], epoch - 1)            # optuna's steps start at 0
      bar.update(1)
      bar.set_postfix(valid_auc=f"{valid['auc']:.4f}")
      if trial.should_prune():
        return f"{PRUNED} after epoch {epoch}: valid AUC below the median of earlier trials there"
      return None
    try:
      result = trainer.train_and_evaluate(config, self.folder / f"trial{number}", self.dataset_path,
                                          on_epoch=on_epoch)
    except trainer.TrainingDiverged as e:
      trial.set_user_attr("failed", str(e))
      study.tell(number, state=optuna.trial.TrialState.FAIL)
      print(f"{tag}: failed ({e})", flush=True)
      return
    finally:
      bar.close()
    pruned = result["stopped"].startswith(PRUNED)
    facts = {"valid_auc": result["valid"]["auc"], "best_epoch": result["best_epoch"],
             "epochs": result["epochs_run"], "seconds": result["seconds_per_epoch"] * result["epochs_run"],
             "stopped": result["stopped"]}
    for key, value in facts.items():
      trial.set_user_attr(key, value)
    if pruned:
      study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
      study.tell(number, result["valid"]["auc"])
    print(f"{tag}: {'pruned' if pruned else 'complete'}, valid AUC {facts['valid_auc']:.4f} (best epoch "
          f"{facts['best_epoch']} of {facts['epochs']}, {facts['seconds']:.0f} s)", flush=True)

  def wait_for_running(self, deadline: float = math.inf) -> None:
    """Waits for the trials other workers train; resumes any whose worker died (before ``deadline``)."""
    running = [t.number for t in self.trials() if t.state == optuna.trial.TrialState.RUNNING]
    for number in running:
      with runner._lock(self._claim_path(number), wait=True):
        if self.trials()[number].state == optuna.trial.TrialState.RUNNING and time.time() < deadline:
          print(f"{self.label} trial {number}: its worker stopped; resuming it", flush=True)
          self._train_trial(number)

  def best(self) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial of highest value (valid AUC), the earliest among equals; None if none."""
    complete = [t for t in self.trials() if t.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None

  # --- Seeds ------------------------------------------------------------------------------------
  def seeds_grid(self, best: optuna.trial.FrozenTrial, seeds=FULL_SEEDS) -> tuple[Grid, pathlib.Path]:
    """The best trial's setting as a one-variant grid ``trial<k>`` over ``seeds``, and its run root
    (``<study>/seeds``): its runs are ``<study>/seeds/trial<k>/seed<s>``."""
    variant = f"trial{best.number}"
    return Grid(name=self.folder.name, variants={variant: self.values(best.params)}, seeds=tuple(seeds),
                reference=variant), self.folder / "seeds"

  def seed_jobs(self, seeds=FULL_SEEDS) -> list:
    """A grid job (experiments/runner.py) per seed of the best setting, claimed as a grid run is."""
    best = self.best()
    if best is None:
      return []
    grid, root = self.seeds_grid(best, seeds)
    return runner.grid_jobs(self.base, grid, root, self.dataset_path, tag=f"{self.label} ")

  def seed_runs(self, seeds=FULL_SEEDS) -> list[dict]:
    """The best setting's finished seed runs (load_run), [] if they have not all finished."""
    best = self.best()
    if best is None:
      return []
    grid, root = self.seeds_grid(best, seeds)
    workdirs = [w for _, _, w in grid_lib.runs(grid, root)]
    if not all((w / "result.json").is_file() for w in workdirs):
      return []
    return [grid_lib.load_run(w) for w in workdirs]

  # --- Outputs ----------------------------------------------------------------------------------
  def write_outputs(self, results_dir: pathlib.Path, command: str, seeds=FULL_SEEDS) -> dict:
    """trials.csv, best.json, table.md, optimization_history.png and param_importance.png in
    ``results_dir``; returns best.json's content."""
    results_dir.mkdir(parents=True, exist_ok=True)
    trials, best, runs = self.trials(), self.best(), self.seed_runs(seeds)
    self._write_trials_csv(trials, results_dir / "trials.csv")
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in optuna.trial.TrialState
              if any(t.state == state for t in trials)}
    summary = {
        "config": self.label, "study": str(self.folder), "trials": counts,
        "selection": "the COMPLETE trial of highest validation AUC (its best epoch); test never used",
        "trial_seed": TRIAL_SEED, "space": describe_space(self.space),
        "best_trial": best.number if best else None,
        "params": self.values(best.params) if best else None,
        "valid_auc": best.value if best else None,
        "seeds": list(seeds) if runs else [],
        "test": {m: dict(zip(("mean", "std"), report.mean_std([r["test"][m] for r in runs])))
                 for m in grid_lib.METRICS if runs and m in runs[0]["test"]},
        "per_seed": [{"seed": r["seed"], "test": r["test"], "valid": r["valid"], "best_epoch": r["best_epoch"]}
                     for r in runs],
        "command": command,
    }
    (results_dir / "best.json").write_text(json.dumps(summary, indent=1) + "\n")
    (results_dir / "table.md").write_text(self._markdown(summary, runs))
    _plot_history(trials, results_dir / "optimization_history.png", f"{self.label}: valid AUC per trial")
    _plot_importance(self.study(), results_dir / "param_importance.png", f"{self.label}: parameter importance")
    print(f"wrote {results_dir}/ trials.csv, best.json, table.md and figures", flush=True)
    return summary

  def _write_trials_csv(self, trials, path: pathlib.Path) -> None:
    keys = [k for k, d in self.space.items() if not isinstance(d, Fixed)]
    with open(path, "w", newline="") as fh:
      writer = csv.writer(fh)
      writer.writerow(["number", "state", *keys, "valid_auc", "best_epoch", "epochs", "seconds"])
      for t in trials:
        a = t.user_attrs
        writer.writerow([t.number, t.state.name.lower(), *(t.params.get(k, "") for k in keys),
                         a.get("valid_auc", ""), a.get("best_epoch", ""), a.get("epochs", ""),
                         f"{a['seconds']:.1f}" if "seconds" in a else ""])

  def _markdown(self, summary: dict, runs: list[dict]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    lines = [f"# {self.label} tuned on {grid_lib.dataset_label(self.base.dataset)}", "",
             f"Study `{self.folder}`: {sum(summary['trials'].values())} trials ({counts}), each trained "
             f"with seed {TRIAL_SEED}; selection: the complete trial of highest validation AUC.", ""]
    if summary["best_trial"] is None:
      return "\n".join(lines + ["No trial complete yet.", ""])
    lines += [f"Best: trial {summary['best_trial']}, valid AUC {summary['valid_auc']:.4f}: "
              f"{_params_text(summary['params'], self.space)}.", ""]
    if not runs:
      return "\n".join(lines + ["Its seeds have not all finished yet.", ""])
    lines += ["Its setting trained with each seed, tested at its best epoch:", "",
              "| seed | test AUC | test GAUC | test logloss | valid AUC | best epoch |", "|---|---|---|---|---|---|"]
    for r in runs:
      lines.append(f"| {r['seed']} | {r['test']['auc']:.4f} | {r['test'].get('gauc', math.nan):.4f} | "
                   f"{r['test']['logloss']:.4f} | {r['valid']['auc']:.4f} | {r['best_epoch']} |")
    pm = lambda m: (f"{summary['test'][m]['mean']:.4f} ± {summary['test'][m]['std']:.4f}"
                    if m in summary["test"] else "—")
    valid = report.mean_std([r["valid"]["auc"] for r in runs])
    lines += [f"| mean ± std | {pm('auc')} | {pm('gauc')} | {pm('logloss')} | {valid[0]:.4f} ± {valid[1]:.4f} "
              f"| {np.mean([r['best_epoch'] for r in runs]):.1f} |", "", f"Command: `{summary['command']}`", ""]
    return "\n".join(lines)


def _params_text(values: dict, space: SearchSpace) -> str:
  def text(v):
    if isinstance(v, float):
      return f"{v:.3g}"
    return Choice.label(v) if isinstance(v, (tuple, list)) else str(v)
  return ", ".join(f"{k} {text(v)}" for k, v in values.items() if not isinstance(space[k], Fixed))


def _plot_history(trials, path: pathlib.Path, title: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  for state, style in ((optuna.trial.TrialState.COMPLETE, dict(color="tab:blue", marker="o", label="complete")),
                       (optuna.trial.TrialState.PRUNED, dict(color="tab:gray", marker="x", label="pruned"))):
    shown = [t for t in trials if t.state == state and "valid_auc" in t.user_attrs]
    if shown:
      ax.scatter([t.number for t in shown], [t.user_attrs["valid_auc"] for t in shown], **style)
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  if complete:
    best = np.maximum.accumulate([t.value for t in complete])
    ax.step([t.number for t in complete], best, where="post", color="tab:orange", label="best so far")
  ax.set_xlabel("trial")
  ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  ax.set_ylabel("valid AUC (best epoch)")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def _plot_importance(study: optuna.Study, path: pathlib.Path, title: str) -> None:
  """optuna.importance's (PED-ANOVA) importances over the complete trials, as bars."""
  fig, ax = plt.subplots(figsize=(7, 3.5))
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  try:
    importances = optuna.importance.get_param_importances(study) if len(complete) >= 2 else {}
  except (RuntimeError, ValueError):   # e.g. every complete trial has the same value
    importances = {}
  if importances:
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance (optuna's PED-ANOVA over {len(complete)} complete trials, normalised)")
  else:
    ax.text(0.5, 0.5, f"needs 2+ complete trials that differ (have {len(complete)})", ha="center", va="center")
    ax.set_axis_off()
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


# --- Commands ------------------------------------------------------------------------------------
def tune_dirs(config_arg: str, config: ml_collections.ConfigDict, default_config: ml_collections.ConfigDict,
              workdir: str | None = None) -> tuple[pathlib.Path, pathlib.Path]:
  """(study root, results directory) of ``tune --config=config_arg``: ``workdirs/tune/<sub>`` and
  ``results/tune/<sub>``, <sub> = ``<config>[_ARG]/<dataset label>[_ov-<digest of the --config.*
  overrides>]`` (experiments/grid.py ``overrides_of``); with an explicit ``workdir``, that folder
  and ``<workdir>/results/tune/<sub>``."""
  overrides, suffix = grid_lib.overrides_of(config, default_config)
  sub = (pathlib.Path("tune") / grid_lib.default_workdir(config_arg).name
         / (grid_lib.dataset_label(config.dataset) + suffix))
  root, results = (pathlib.Path(workdir), pathlib.Path(workdir) / "results" / sub) if workdir else (
      pathlib.Path("workdirs") / sub, pathlib.Path("results") / sub)
  grid_lib.write_overrides([root, results], overrides)
  if overrides:
    print(f"overrides {json.dumps(overrides)}: studies in {root}, results in {results}", flush=True)
  return root, results


def _deadline(timeout: float | None) -> float:
  return time.time() + timeout if timeout else math.inf


def tune_config(label: str, config: ml_collections.ConfigDict, space: SearchSpace, root: pathlib.Path,
                results_dir: pathlib.Path, dataset_path: pathlib.Path, trials: int,
                timeout: float | None, command: str) -> dict:
  """``./run.sh tune``: the study of ``config`` over ``space`` under ``root`` (``trials`` trials,
  no new one after ``timeout`` seconds), the best setting's seeds, then the outputs in
  ``results_dir``; returns best.json's content."""
  check_space(config, space, label)
  tuning = Tuning.create(label, config, space, root, dataset_path)
  print(f"study {tuning.folder} ({trials} trials); results in {results_dir}", flush=True)
  deadline = _deadline(timeout)
  tuning.run_trials(trials, deadline)
  tuning.wait_for_running(deadline)
  runner._work_through(tuning.seed_jobs())
  with runner._lock(pathlib.Path(root) / ".report.lock", wait=True):
    summary = tuning.write_outputs(results_dir, command)
  if summary["best_trial"] is None:
    raise UserError(f"{tuning.folder}: no trial is complete; see {results_dir / 'trials.csv'}")
  return summary


def tune_grid(config: ml_collections.ConfigDict, grid: Grid, root: pathlib.Path, results_dir: pathlib.Path,
              paper: tuple[Grid, pathlib.Path, pathlib.Path], space: SearchSpace, dataset_path: pathlib.Path,
              trials: int, timeout: float | None, command: str) -> list[dict]:
  """The grid protocol 'tuned': the grid's ordinary runs of ``grid``'s variants (``paper``: the
  ordinary grid, its run root and results directory; runner.run_grid; ``grid`` may be restricted
  to some variants: ``--variants``), then for every variant a study of ``trials`` trials over ``space``
  less the keys its config lacks (under ``root/<variant>/``), each best setting's seeds, each
  study's outputs in ``results_dir/<variant>/`` and the side-by-side table in ``results_dir``."""
  paper_grid, paper_root, paper_results = paper
  runner.run_grid(config, paper_grid, paper_root, paper_results, dataset_path, only=tuple(grid.variants))
  bases = {v: grid_lib.with_overrides(config, overrides, config.seed) for v, overrides in grid.variants.items()}
  kept = {v: split_space(base, space, grid.variants[v]) for v, base in bases.items()}
  lacking = lambda key, dropped: dropped.get(key, "").startswith("its config")
  nowhere = [k for k in space if all(lacking(k, dropped) for _, dropped in kept.values())]
  if nowhere:       # a key no variant's config has is a typo: named as for one config
    check_space(bases[grid.reference], {nowhere[0]: space[nowhere[0]]}, f"{grid.name}, every variant")
  tunings = {}
  for variant, base in bases.items():
    check_space(base, kept[variant][0], f"{grid.name}, variant {variant}")
    tunings[variant] = Tuning.create(variant, base, kept[variant][0], root / variant, dataset_path)
  print(f"{len(tunings)} studies of {trials} trials under {root}; results in {results_dir}", flush=True)
  deadline = _deadline(timeout)
  for tuning in tunings.values():
    tuning.run_trials(trials, deadline)
  for tuning in tunings.values():
    tuning.wait_for_running(deadline)
  runner._work_through([job for tuning in tunings.values() for job in tuning.seed_jobs(grid.seeds)])
  with runner._lock(root / ".report.lock", wait=True):
    for variant, tuning in tunings.items():
      tuning.write_outputs(results_dir / variant, command, grid.seeds)
    paper_runs = {v: [grid_lib.load_run(w) for w in (grid_lib.workdir_of(paper_root, v, s) for s in paper_grid.seeds)]
                  for v in grid.variants}
    tuned_runs = {v: runs for v, tuning in tunings.items() if (runs := tuning.seed_runs(grid.seeds))}
    return write_side_by_side(grid, paper_runs, tuned_runs, tunings, space,
                              {v: d for v, (_, d) in kept.items() if d}, results_dir, trials, paper_results,
                              command)


def write_side_by_side(grid: Grid, paper_runs: dict[str, list[dict]], tuned_runs: dict[str, list[dict]],
                       tunings: dict[str, Tuning], space: SearchSpace, dropped: dict[str, dict[str, str]],
                       results_dir: pathlib.Path, trials: int, paper_results: pathlib.Path,
                       command: str) -> list[dict]:
  """table.md and table.csv: each variant's paper-setting row and tuned row, Δ and Welch p against
  the reference in the same setting (report.table_rows), its rank there, and tuned minus paper."""
  if grid.reference not in tuned_runs:
    raise UserError(f"{results_dir}: the reference {grid.reference!r} has no tuned seeds (no complete "
                    f"trial?); see {results_dir / grid.reference / 'trials.csv'}")
  rows = []
  for setting, runs in (("paper", paper_runs), ("tuned", tuned_runs)):
    for row in report.table_rows(grid, runs):
      paper_auc = [r["test"]["auc"] for r in paper_runs[row["variant"]]]
      tuned_auc = [r["test"]["auc"] for r in runs[row["variant"]]]
      tuned = setting == "tuned"
      rows.append({"setting": setting, **row,
                   "delta_vs_paper": float(np.mean(tuned_auc) - np.mean(paper_auc)) if tuned else math.nan,
                   "p_vs_paper": (float(stats.ttest_ind(tuned_auc, paper_auc, equal_var=False).pvalue)
                                  if tuned and len(tuned_auc) > 1 else math.nan)})
  results_dir.mkdir(parents=True, exist_ok=True)
  with open(results_dir / "table.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (results_dir / "table.md").write_text(_side_by_side_markdown(grid, rows, tunings, space, dropped, results_dir,
                                                               trials, paper_results, command))
  _plot_side_by_side(grid, rows, results_dir / "paper_vs_tuned.png", f"{grid.name} on {results_dir.name}")
  print(f"wrote {results_dir}/table.md, table.csv and paper_vs_tuned.png", flush=True)
  return rows


def _plot_side_by_side(grid: Grid, rows: list[dict], path: pathlib.Path, title: str) -> None:
  """Test AUC (mean ± std over seeds) of each variant in the paper setting and tuned, side by side."""
  by_key = {(r["variant"], r["setting"]): r for r in rows}
  order = [v for v in grid.variants if (v, "paper") in by_key or (v, "tuned") in by_key]
  fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(order) + 2), 4.2))
  for offset, setting, color in ((-0.15, "paper", "tab:gray"), (0.15, "tuned", "tab:blue")):
    shown = [(i, by_key[v, setting]) for i, v in enumerate(order) if (v, setting) in by_key]
    ax.errorbar([i + offset for i, _ in shown], [r["auc_mean"] for _, r in shown], yerr=[r["auc_std"] for _, r in shown],
                fmt="o", capsize=4, color=color, label=setting)
  ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
  ax.set_ylabel("test AUC")
  ax.set_title(f"{title}: paper setting vs tuned, mean ± std over {len(grid.seeds)} seeds", fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def _side_by_side_markdown(grid, rows, tunings, space, dropped, results_dir, trials, paper_results, command) -> str:
  by_key = {(r["variant"], r["setting"]): r for r in rows}
  p_text = lambda p: "—" if np.isnan(p) else f"{p:.3g}{' *' if p < 0.05 else ''}"
  pm = lambda r, m: "—" if np.isnan(r[f"{m}_mean"]) else f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}"
  lines = [f"# {grid.name} on {results_dir.name}", "",
           f"Each variant in two settings: **paper**, the grid's own (its runs and report: `{paper_results}`), "
           f"and **tuned**, the best of {trials} trials of the variant's own study (TPE sampler, median "
           f"pruning per epoch; selected on validation AUC only, trials trained with seed {TRIAL_SEED}), "
           f"then trained with seeds {list(grid.seeds)}. Mean ± std over seeds; Δ and p (Welch, test AUC) "
           f"against `{grid.reference}` in the same setting; rank: by test AUC within the section and "
           "setting; Δ vs paper: tuned minus paper of the same variant, with its p. p < 0.05 marked *.", ""]
  pending = [v for v in grid.variants if (v, "tuned") not in by_key]
  if pending:
    lines += [f"No tuned seeds (no complete trial): {', '.join(pending)}.", ""]
  present = {v for v, _ in by_key}
  # nothing compared yet (the reference alone): every section, its tuned row against its paper row
  for section, variants in (grid.comparing_sections(present) or grid.sections or {"": tuple(grid.variants)}).items():
    if section:
      lines += [f"## {section}", ""]
    rank = {}
    for setting in ("paper", "tuned"):
      present = sorted((v for v in variants if (v, setting) in by_key), key=lambda v: -by_key[v, setting]["auc_mean"])
      rank.update({(v, setting): i for i, v in enumerate(present, 1)})
    lines += ["| variant | setting | seeds | test AUC | test GAUC | test logloss | Δ AUC | p (Welch, AUC) | rank "
              "| Δ vs paper | p vs paper | best epoch |", "|" + "---|" * 12]
    for v in variants:
      for setting in ("paper", "tuned"):
        if (v, setting) not in by_key:
          continue
        r = by_key[v, setting]
        vs_paper = "" if setting == "paper" else f"{r['delta_vs_paper']:+.4f}"
        lines.append(f"| {v} | {setting} | {r['seeds']} | {pm(r, 'auc')} | {pm(r, 'gauc')} | {pm(r, 'logloss')} "
                     f"| {r['delta_auc']:+.4f} | {p_text(r['p_value'])} | {rank[v, setting]} | {vs_paper} "
                     f"| {'' if setting == 'paper' else p_text(r['p_vs_paper'])} | {r['best_epoch_mean']:.1f} |")
    orders = {setting: " > ".join(v for (v, s), _ in sorted(rank.items(), key=lambda kv: kv[1]) if s == setting)
              for setting in ("paper", "tuned")}
    lines += ["", f"Order by test AUC, paper: {orders['paper']}; tuned: {orders['tuned']}"
              + (" (the same)." if orders["paper"] == orders["tuned"] else " (changed)."), ""]
  lines += ["## Tuned settings", "", "Search space: " + "; ".join(f"`{k}` {d!r}" for k, d in space.items()) + ".", ""]
  for v, keys in dropped.items():
    lines.append(f"* {v}: not searched: " + ", ".join(f"`{k}` ({why})" for k, why in keys.items()))
  lines += [""] if dropped else []
  lines += ["| variant | trials | best trial | valid AUC | setting |", "|---|---|---|---|---|"]
  for v, tuning in tunings.items():
    best = tuning.best()
    found = ([str(best.number), f"{best.value:.4f}", _params_text(tuning.values(best.params), tuning.space)]
             if best else ["—"] * 3)
    lines.append(f"| {v} | {len(tuning.trials())} | " + " | ".join(found) + " |")
  lines += ["", f"Per variant: `<variant>/` (trials.csv, best.json, table.md, figures). Command: `{command}`", ""]
  return "\n".join(lines)
