"""Interaction plot of a factorial grid (configs/mian_factorial.py): one panel per level of the first
factor, the last factor on the x axis, one line per level of the middle factor; test AUC mean ± std
over seeds from the grid's table.csv (variant names are the factors' levels joined by '-').

  .venv/bin/python -m experiments.factorial results/mian_factorial/synthetic
writes factorial.png beside the table.
"""
from __future__ import annotations

import csv
import pathlib
import sys

from experiments.plotting import plt, save_figure


def read_levels(table_csv: pathlib.Path) -> dict[tuple[str, ...], tuple[float, float]]:
  """(level of each factor) -> (test AUC mean, std) for every variant of the table."""
  with open(table_csv) as fh:
    rows = list(csv.DictReader(fh))
  out = {}
  for row in rows:
    levels = tuple(row["variant"].split("-"))
    if len(levels) != 3:
      raise ValueError(f"{table_csv}: variant {row['variant']!r} is not three factor levels joined by '-'")
    out[levels] = (float(row["auc_mean"]), float(row["auc_std"]))
  return out


def figure(results_dir: str | pathlib.Path) -> pathlib.Path:
  results_dir = pathlib.Path(results_dir)
  auc = read_levels(results_dir / "table.csv")
  panels, lines, xs = (list(dict.fromkeys(k[i] for k in auc)) for i in range(3))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), sharey=True, squeeze=False)
  for ax, panel in zip(axes[0], panels):
    for line in lines:
      points = [(i, *auc[(panel, line, x)]) for i, x in enumerate(xs) if (panel, line, x) in auc]
      if points:
        i, mean, std = zip(*points)
        ax.errorbar(i, mean, yerr=std, marker="o", capsize=3, label=line)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_title(panel)
    ax.set_xlabel("behaviour input")
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel("test AUC (mean ± std over seeds)")
  fig.suptitle(f"{results_dir.parent.name} on {results_dir.name}")
  fig.tight_layout()
  out = results_dir / "factorial.png"
  save_figure(fig, out)
  return out


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m experiments.factorial RESULTS_DIR")
  print(figure(sys.argv[1]))
