"""Grid runner: every variant × seed of a config, then a table and figures.

A config file becomes a grid by defining ``get_grid(arg) -> Grid`` next to ``get_config(arg)``;
``./run.sh configs/ablation_mian.py[:arg]`` then runs the whole grid. Each run has its own workdir
``<root>/<variant>/seed<k>``: a run with a ``result.json`` is skipped, an interrupted one resumes
from its checkpoint, so a killed grid rerun ends with the same table as an uninterrupted one.

With ``config.seeds_in_parallel`` each variant's unfinished seeds train together as one vmapped program
(ctrjax/train/seeds.py); such a group restarts from scratch if it was killed.

Start the same command several times (in other terminals, or on hosts that share the filesystem) to
work through one grid with several workers: each run (a variant's seed group with
``seeds_in_parallel``) is claimed with a file lock, so no run is trained twice, and a run whose
worker died is taken over.

Outputs in ``results/<grid name>/<dataset>/``: ``table.md``, ``table.csv`` (per variant: test AUC,
GAUC and logloss mean ± std over seeds, Δ AUC vs the reference, Welch t-test p-value of AUC vs the
reference, RelaImpr, seconds per epoch, parameters excluding embeddings), ``ablation.png`` (bars with
error bars), ``curves.png`` (validation AUC/logloss per epoch) and ``attention.png`` (a model's
attention weights over 14 random test samples) where the grid asks for them.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import pathlib
import time
from typing import Any, Callable, NamedTuple

import ml_collections
import numpy as np
from scipy import stats

import data_prep
from experiments.plotting import plt, save_figure

METRICS = ("auc", "gauc", "logloss")


@dataclasses.dataclass(frozen=True)
class Grid:
  name: str                                        # results/<name>/...
  variants: dict[str, dict[str, Any]]              # variant -> {"dotted.config.key": value}
  seeds: tuple[int, ...]
  reference: str                                   # Δ, p-value and RelaImpr are against this variant
  sections: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # table parts
  curves: tuple[str, ...] = ()                     # variants whose validation curves are plotted
  attention: tuple[str, str, tuple[str, ...]] | None = None  # (variant, attention key, token labels)
  relaimpr_metric: str = "auc"                     # RelaImpr on test AUC, or on GAUC (the DIN paper's)

  def __post_init__(self):
    if self.reference not in self.variants:
      raise ValueError(f"grid {self.name!r}: reference {self.reference!r} is not a variant")
    named = [v for vs in self.sections.values() for v in vs] + list(self.curves)
    named += [self.attention[0]] if self.attention else []
    unknown = sorted(set(named) - set(self.variants))
    if unknown:
      raise ValueError(f"grid {self.name!r}: sections/curves/attention name unknown variants {unknown}")
    if self.relaimpr_metric not in ("auc", "gauc"):
      raise ValueError(f"grid {self.name!r}: relaimpr_metric={self.relaimpr_metric!r}; 'auc' or 'gauc'")


FULL_SEEDS = (0, 1, 2, 3, 4)
PROTOCOLS = {"quick": ((0, 1), 1),       # a smoke run: 2 seeds, 1 epoch
             "short": ((0, 1, 2), 3)}    # a grid too heavy for a small CPU: 3 seeds, at most 3 epochs


def parse_arg(arg: str | None, config_file: str, datasets: tuple[str, ...]) -> dict:
  """A grid config's argument, comma-separated: at most one of PROTOCOLS ('quick', 'short'), and/or
  'dataset=NAME' -> dict."""
  out = {"protocol": None, "dataset": datasets[0]}
  for token in filter(None, (arg or "").split(",")):
    key, sep, value = token.partition("=")
    if not sep and key in PROTOCOLS:
      if out["protocol"]:
        raise ValueError(f"{config_file}: {out['protocol']!r} and {key!r} are two protocols; pick one")
      out["protocol"] = key
    elif key == "dataset" and value in datasets:
      out["dataset"] = value
    else:
      raise ValueError(f"{config_file}: bad argument {token!r}; use one of {tuple(PROTOCOLS)}, and/or "
                       f"'dataset=' one of {datasets}")
  return out


def apply_grid_arg(config: ml_collections.ConfigDict, a: dict) -> ml_collections.ConfigDict:
  """A grid's run config from its parsed argument: the dataset, the protocol's epoch cap (early
  stopping still picks the best epoch), one progress line per run instead of a bar."""
  config.dataset = data_prep.switch_dataset(config.dataset, a["dataset"])
  if a["protocol"]:
    config.num_epochs = PROTOCOLS[a["protocol"]][1]
  config.progress_bar = False
  return config


def grid_identity(name: str, a: dict) -> dict:
  """Grid name and seeds from the parsed argument: a protocol's seeds under ``<name>_<protocol>``,
  else FULL_SEEDS under ``<name>``."""
  if a["protocol"]:
    return {"name": f"{name}_{a['protocol']}", "seeds": PROTOCOLS[a["protocol"]][0]}
  return {"name": name, "seeds": FULL_SEEDS}


def with_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any], seed: int):
  """A copy of ``config`` with dotted-key overrides and the seed; an unknown key is an error."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in {**overrides, "seed": seed}.items():
    *parents, last = key.split(".")
    target = out
    for p in parents:
      target = target[p]
    if last not in target:
      raise KeyError(f"grid override {key!r}: config has no field {last!r} there")
    target[last] = value
  return out


def workdir_of(root: pathlib.Path, variant: str, seed: int) -> pathlib.Path:
  return root / variant / f"seed{seed}"


def runs(grid: Grid, root: pathlib.Path):
  return [(v, s, workdir_of(root, v, s)) for v in grid.variants for s in grid.seeds]


def run_grid(config: ml_collections.ConfigDict, grid: Grid, root: pathlib.Path,
             results_dir: pathlib.Path, dataset_path: pathlib.Path) -> list[dict]:
  """Trains every (variant, seed) not finished yet, then writes the table and figures. With
  ``config.seeds_in_parallel`` a variant's unfinished seeds train together (ctrjax/train/seeds.py).

  Several workers may run the same grid at once (the same command started again, on this machine
  or on hosts sharing the filesystem): each run is claimed with a lock, so a worker takes the runs
  no other holds, then waits for the others' runs and takes over any whose worker died."""
  from ctrjax.train import trainer
  root, results_dir = pathlib.Path(root), pathlib.Path(results_dir)
  if config.seeds_in_parallel:
    return _run_grid_seeds_in_parallel(config, grid, root, results_dir, dataset_path)
  todo = runs(grid, root)
  jobs = []
  for i, (variant, seed, workdir) in enumerate(todo, 1):
    def train(variant=variant, seed=seed, workdir=workdir):
      trainer.train_and_evaluate(with_overrides(config, grid.variants[variant], seed), workdir, dataset_path)
    jobs.append(_Job(f"[{i}/{len(todo)}] {variant} seed {seed}", root / variant / f".seed{seed}.lock",
                     lambda w=workdir: (w / "result.json").is_file(), lambda w=workdir: f"running in {w}",
                     train))
  _work_through(jobs)
  return _report(grid, root, results_dir, dataset_path)


def _run_grid_seeds_in_parallel(config, grid: Grid, root: pathlib.Path, results_dir: pathlib.Path,
                                dataset_path: pathlib.Path):
  from ctrjax.train import seeds as seeds_lib
  jobs = []
  for i, variant in enumerate(grid.variants, 1):
    workdirs = {s: workdir_of(root, variant, s) for s in grid.seeds}
    pending = lambda workdirs=workdirs: [s for s, w in workdirs.items() if not (w / "result.json").is_file()]

    def train(variant=variant, workdirs=workdirs, pending=pending):
      todo = pending()
      seeds_lib.train_seeds(with_overrides(config, grid.variants[variant], todo[0]), todo,
                            [workdirs[s] for s in todo], dataset_path)
    jobs.append(_Job(f"[{i}/{len(grid.variants)}] {variant}", root / f".{variant}.lock",
                     lambda pending=pending: not pending(),
                     lambda v=variant, pending=pending: f"seeds {pending()} in one program under {root / v}",
                     train))
  _work_through(jobs)
  return _report(grid, root, results_dir, dataset_path)


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


def _load_run(workdir: pathlib.Path) -> dict:
  result = json.loads((workdir / "result.json").read_text())
  history = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {**result, "history": history}


def _load(grid: Grid, root: pathlib.Path) -> dict[str, list[dict]]:
  """Results of the variants whose every seed has finished (a grid still running has others)."""
  out = {}
  for variant in grid.variants:
    workdirs = [workdir_of(root, variant, s) for s in grid.seeds]
    if all((w / "result.json").is_file() for w in workdirs):
      out[variant] = [_load_run(w) for w in workdirs]
  return out


def _mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def table_rows(grid: Grid, results: dict[str, list[dict]]) -> list[dict]:
  ref_auc = np.array([r["test"]["auc"] for r in results[grid.reference]])
  ref_relaimpr = np.mean([r["test"][grid.relaimpr_metric] for r in results[grid.reference]])
  rows = []
  for variant, rs in results.items():
    auc = np.array([r["test"]["auc"] for r in rs])
    row = {"variant": variant, "seeds": len(rs)}
    for m in METRICS:
      row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r["test"].get(m, np.nan) for r in rs])
    row["delta_auc"] = row["auc_mean"] - ref_auc.mean()
    row["p_value"] = (float("nan") if variant == grid.reference or len(rs) < 2
                      else float(stats.ttest_ind(auc, ref_auc, equal_var=False).pvalue))
    row["rela_impr_pct"] = ((row[f"{grid.relaimpr_metric}_mean"] - 0.5) / (ref_relaimpr - 0.5) - 1.0) * 100.0
    row["seconds_per_epoch"] = float(np.mean([r["seconds_per_epoch"] for r in rs]))
    row["params_excl_embeddings"] = rs[0]["parameters_excluding_embeddings"]
    row["best_epoch_mean"] = float(np.mean([r["best_epoch"] for r in rs]))
    rows.append(row)
  return rows


def _pm(row: dict, metric: str) -> str:
  """'mean ± std' of a metric, '—' where the dataset has none (GAUC without a user field)."""
  mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
  return "—" if np.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _markdown(grid: Grid, rows: list[dict], title: str) -> str:
  by_name = {r["variant"]: r for r in rows}
  sections = grid.sections or {"": tuple(by_name)}
  pending = [v for v in grid.variants if v not in by_name]
  head = ("| variant | seeds | test AUC | test GAUC | test logloss | Δ AUC | p (Welch, AUC) "
          f"| RelaImpr ({grid.relaimpr_metric.upper()}) | s/epoch | params (excl. emb.) | best epoch |")
  lines = [f"# {title}", "",
           f"Mean ± std over seeds; Δ, p and RelaImpr against `{grid.reference}`. p < 0.05 marked *.", ""]
  if pending:
    lines += [f"Not finished yet, so not in the tables: {', '.join(pending)}.", ""]
  for section, variants in sections.items():
    variants = [v for v in variants if v in by_name]
    if all(v == grid.reference for v in variants):      # nothing finished to compare with yet
      continue
    if section:
      lines += [f"## {section}", ""]
    lines += [head, "|" + "---|" * 11]
    for v in variants:
      r = by_name[v]
      p = r["p_value"]
      p_text = "—" if np.isnan(p) else f"{p:.3g}{' *' if p < 0.05 else ''}"
      lines.append(
          f"| {v} | {r['seeds']} | {_pm(r, 'auc')} | {_pm(r, 'gauc')} | {_pm(r, 'logloss')} | {r['delta_auc']:+.4f} "
          f"| {p_text} | {r['rela_impr_pct']:+.2f} % | {r['seconds_per_epoch']:.1f} | "
          f"{r['params_excl_embeddings']:,} | {r['best_epoch_mean']:.1f} |")
    lines.append("")
  return "\n".join(lines)


def write_report(grid: Grid, root: pathlib.Path, results_dir: pathlib.Path,
                 dataset_path: pathlib.Path) -> list[dict]:
  """Tables and figures of the finished variants (all of them once the grid has run; any time
  before that with ``./run.sh report CONFIG[:ARG]``, which lists the unfinished ones)."""
  results = _load(grid, root)
  if grid.reference not in results:
    raise ValueError(f"{root}: the reference variant {grid.reference!r} has not finished all seeds "
                     f"{grid.seeds}; nothing to compare against yet")
  rows = table_rows(grid, results)
  results_dir.mkdir(parents=True, exist_ok=True)
  title = f"{grid.name} on {results_dir.name}"
  (results_dir / "table.md").write_text(_markdown(grid, rows, title))
  with open(results_dir / "table.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  _plot_bars(grid, rows, results_dir / "ablation.png", title)
  if any(v in results for v in grid.curves):
    _plot_curves(grid, results, results_dir / "curves.png", title)
  if grid.attention and grid.attention[0] in results:
    variant, key, labels = grid.attention
    _plot_attention(workdir_of(root, variant, grid.seeds[0]), key, dataset_path, labels,
                    results_dir / "attention.png",
                    f"{key.upper()} attention, {variant}, seed {grid.seeds[0]}: 14 random test samples")
  print(f"wrote {results_dir}/table.md, table.csv and figures", flush=True)
  return rows


def _plot_bars(grid: Grid, rows: list[dict], path: pathlib.Path, title: str):
  by_name = {r["variant"]: r for r in rows}
  order = [v for vs in grid.sections.values() for v in vs] or list(by_name)
  order = [v for v in dict.fromkeys(order) if v in by_name]
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(order)), 4.2))
  for ax, metric, better in zip(axes, ("auc", "logloss"), ("higher", "lower")):
    means = [by_name[v][f"{metric}_mean"] for v in order]
    stds = [by_name[v][f"{metric}_std"] for v in order]
    colors = ["tab:orange" if v == grid.reference else "tab:blue" for v in order]
    ax.bar(range(len(order)), means, yerr=stds, capsize=4, color=colors)
    lo, hi = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
    ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_title(f"test {metric.upper()} ({better} is better)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  fig.suptitle(f"{title}: mean ± std over {len(grid.seeds)} seeds (orange: {grid.reference})")
  fig.tight_layout()
  save_figure(fig, path)


def _plot_curves(grid: Grid, results: dict[str, list[dict]], path: pathlib.Path, title: str):
  curves = [v for v in grid.curves if v in results]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, metric in zip(axes, ("valid_auc", "valid_logloss")):
    for variant in curves:
      per_epoch: dict[int, list[float]] = {}
      for r in results[variant]:
        for h in r["history"]:
          per_epoch.setdefault(h["epoch"], []).append(h[metric])
      epochs = sorted(per_epoch)
      mean = np.array([np.mean(per_epoch[e]) for e in epochs])
      std = np.array([np.std(per_epoch[e]) for e in epochs])
      ax.errorbar(epochs, mean, yerr=std, marker="o", capsize=3, label=variant)
    ax.set_xlabel("epoch")
    ax.set_xticks(sorted({h["epoch"] for v in curves for r in results[v] for h in r["history"]}))
    ax.set_title(f"{metric.replace('_', ' ')} (mean ± std over seeds that reached the epoch)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  save_figure(fig, path)


def attention_weights(workdir: pathlib.Path, key: str, dataset_path: pathlib.Path, num_samples: int = 14,
                      seed: int = 0):
  """The best checkpoint's ``attention[key]`` weights for ``num_samples`` random test rows."""
  import jax
  from ctrjax.data import loader
  from ctrjax.train import step as step_lib
  from ctrjax.train import trainer
  setup, state, _ = trainer.load_best(workdir, dataset_path)
  rows = np.sort(np.random.default_rng(seed).choice(setup.dataset.num_rows("test"), num_samples, replace=False))
  batch = setup.layout.unpack(setup.layout.pack(
      loader.gather(setup.dataset, "test", rows, np.ones(num_samples, np.float32))))
  out = state.apply_fn(step_lib.model_variables(state, state.params), batch, train=False)
  if key not in out.get("attention", {}):
    raise KeyError(f"{workdir}: the model returns no attention[{key!r}] "
                   f"(has {sorted(out.get('attention', {}))})")
  return np.asarray(jax.device_get(out["attention"][key])), rows


def _plot_attention(workdir, key, dataset_path, labels, path, title):
  weights, rows = attention_weights(workdir, key, dataset_path)
  fig, ax = plt.subplots(figsize=(1.1 * weights.shape[1] + 2.5, 0.42 * weights.shape[0] + 1.8))
  im = ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0)
  ax.set_xticks(range(weights.shape[1]), labels[:weights.shape[1]], rotation=30, ha="right")
  ax.set_yticks(range(len(rows)), [f"test row {r}" for r in rows])
  for i in range(weights.shape[0]):
    for j in range(weights.shape[1]):
      ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=7,
              color="white" if weights[i, j] < weights.max() * 0.6 else "black")
  fig.colorbar(im, ax=ax, label="attention weight")
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)
