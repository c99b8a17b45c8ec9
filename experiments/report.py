"""A grid's report: tables and figures from its finished runs.

Outputs in the results directory that experiments/grid.py ``grid_dirs`` names (``results/<grid
name>/<dataset label>[_ov-<digest of the --config.* overrides>]/``): ``table.md``, ``table.csv``
(per variant: test AUC, GAUC and logloss mean ± std over seeds, Δ AUC vs the reference, Welch
t-test p-value of AUC vs the reference, RelaImpr, seconds per epoch, compile seconds (ctrjax/train/
trainer.py CompileClock; — for runs from before it was recorded), parameters excluding
embeddings), ``ablation.png`` (bars with error bars), ``curves.png`` (validation AUC/logloss per
epoch) and ``attention.png`` (a model's attention weights over 14 random test samples) where the
grid asks for them. Runs whose configs differ in more than their variant and seed share no table.
"""
from __future__ import annotations

import csv
import pathlib

import numpy as np
from scipy import stats

from configs.common import Grid
from ctrjax.errors import UserError
from experiments import factorial
from experiments.grid import METRICS, config_fields, differing_fields, load_run, workdir_of
from experiments.plotting import plt, save_figure


def _load(grid: Grid, root: pathlib.Path) -> dict[str, list[dict]]:
  """Results of the variants whose every seed has finished (a grid still running has others). A
  cut run file is a UserError naming it, as are runs one table cannot compare (``_check_comparable``)."""
  out = {}
  for variant in grid.variants:
    workdirs = [workdir_of(root, variant, s) for s in grid.seeds]
    if all((w / "result.json").is_file() for w in workdirs):
      try:
        out[variant] = [load_run(w) for w in workdirs]
      except UserError as e:
        raise UserError(f"{e}; rerun the grid to repair it") from None
  _check_comparable(grid, root, out)
  return out


def _check_comparable(grid: Grid, root: pathlib.Path, results: dict[str, list[dict]]) -> None:
  """Refuses runs whose configs differ in more than their variant's own override fields and the
  seed (e.g. runs of one grid trained at two learning rates): their Δ and p-values would compare
  more than the variants. An override of a subtree (ablation_din's ``model``) owns every field in
  it. The UserError names two such runs and the fields. Runs trained on different data (result.json's
  ``data_fingerprint``; runs older than it carry none) are refused too."""
  fingerprints = {}
  for v, rs in results.items():
    for seed, r in zip(grid.seeds, rs):
      if r.get("data_fingerprint"):
        fingerprints.setdefault(r["data_fingerprint"], workdir_of(root, v, seed))
  if len(fingerprints) > 1:
    (fa, wa), (fb, wb) = list(fingerprints.items())[:2]
    raise UserError(f"{wa} and {wb} trained on different data (dataset fingerprints {fa}, {fb}), so one "
                    "table cannot compare them; rerun one grid into another --workdir")
  runs = [(workdir_of(root, v, seed), config_fields(r["config"]), (*grid.variants[v], "seed"))
          for v, rs in results.items() for seed, r in zip(grid.seeds, rs)]
  every_field, missing = set().union(*(fields for _, fields, _ in runs)), object()
  owned = lambda keys: {f for f in every_field if any(f == k or f.startswith(k + ".") for k in keys)}
  runs = [(workdir, fields, owned(keys)) for workdir, fields, keys in runs]
  first = {}                          # field -> (its value, the run) of the first run not overriding it
  for run in runs:
    workdir, fields, own = run
    for key in every_field - own:
      value, (first_workdir, first_fields, first_own) = first.setdefault(key, (fields.get(key, missing), run))
      if fields.get(key, missing) != value:
        differing = differing_fields(first_fields, fields, ignore=first_own | own)
        raise UserError(f"{first_workdir} and {workdir} differ in {differing} beyond their variants' own "
                        "fields and the seed, so one table cannot compare them; rerun one grid into "
                        "another --workdir")


def mean_std(values) -> tuple[float, float]:
  """Mean and sample std (ddof=1; 0 for one value) of one metric over seeds."""
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
      row[f"{m}_mean"], row[f"{m}_std"] = mean_std([r["test"].get(m, np.nan) for r in rs])
    row["delta_auc"] = row["auc_mean"] - ref_auc.mean()
    row["p_value"] = (float("nan") if variant == grid.reference or len(rs) < 2
                      else float(stats.ttest_ind(auc, ref_auc, equal_var=False).pvalue))
    row["rela_impr_pct"] = ((row[f"{grid.relaimpr_metric}_mean"] - 0.5) / (ref_relaimpr - 0.5) - 1.0) * 100.0
    row["seconds_per_epoch"] = float(np.mean([r["seconds_per_epoch"] for r in rs]))
    # runs trained before result.json recorded compile seconds have none: NaN, "—" in table.md
    row["compile_seconds"] = float(np.mean([r.get("compile_seconds", np.nan) for r in rs]))
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
  pending = [v for v in grid.variants if v not in by_name]
  head = ("| variant | seeds | test AUC | test GAUC | test logloss | Δ AUC | p (Welch, AUC) "
          f"| RelaImpr ({grid.relaimpr_metric.upper()}) | s/epoch | compile s | params (excl. emb.) | best epoch |")
  lines = [f"# {title}", "",
           f"Mean ± std over seeds; Δ, p and RelaImpr against `{grid.reference}`. p < 0.05 marked *.", ""]
  if pending:
    lines += [f"Not finished yet, so not in the tables: {', '.join(pending)}.", ""]
  for section, variants in grid.comparing_sections(by_name).items():   # only finished variants
    if section:
      lines += [f"## {section}", ""]
    lines += [head, "|" + "---|" * 12]
    for v in variants:
      r = by_name[v]
      p = r["p_value"]
      p_text = "—" if np.isnan(p) else f"{p:.3g}{' *' if p < 0.05 else ''}"
      compile_text = "—" if np.isnan(r["compile_seconds"]) else f"{r['compile_seconds']:.1f}"
      lines.append(
          f"| {v} | {r['seeds']} | {_pm(r, 'auc')} | {_pm(r, 'gauc')} | {_pm(r, 'logloss')} | {r['delta_auc']:+.4f} "
          f"| {p_text} | {r['rela_impr_pct']:+.2f} % | {r['seconds_per_epoch']:.1f} | "
          f"{compile_text} | "
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
  if grid.factorial:
    factorial.figure(results_dir)
    factorial.contrasts(results_dir, grid.reference)
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
