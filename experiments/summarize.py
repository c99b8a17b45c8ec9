"""Mean ± std over seeds of finished runs' test metrics, as a markdown table.

  .venv/bin/python -m experiments.summarize workdirs/base_seed* workdirs/lr_seed*

Runs are grouped by (model, dataset); each row states how many seeds it aggregates. The std is the
sample standard deviation (ddof=1).
"""
import collections
import json
import pathlib
import sys

import numpy as np

from experiments.grid import METRICS
from experiments.report import mean_std


def summarize(workdirs) -> str:
  groups = collections.defaultdict(list)
  for wd in map(pathlib.Path, workdirs):
    result = wd / "result.json"
    if not result.is_file():
      print(f"skipping {wd}: no result.json (unfinished run?)", file=sys.stderr)
      continue
    r = json.loads(result.read_text())
    groups[(r["model"], pathlib.Path(r["dataset"]).name)].append(r)
  lines = ["| model | dataset | seeds | test AUC | test GAUC | test logloss | best epoch |",
           "|---|---|---|---|---|---|---|"]
  for (model, dataset), runs in sorted(groups.items()):
    cells = ["{:.4f} ± {:.4f}".format(*mean_std([r["test"].get(m, np.nan) for r in runs])) for m in METRICS]
    epochs = np.array([r["best_epoch"] for r in runs])
    lines.append(f"| {model} | {dataset} | {len(runs)} | " + " | ".join(cells) + f" | {epochs.mean():.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  print(summarize(sys.argv[1:]))
