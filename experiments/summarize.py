"""Mean ± std over seeds of finished runs' test metrics, as a markdown table.

  .venv/bin/python -m experiments.summarize workdirs/base_seed* workdirs/lr_seed*

Runs are grouped by config (every field that decides a result, the seed and resume-free fields such
as progress_bar aside: experiments/grid.py config_fields), so only seeds of one config are averaged;
each row states how many seeds it aggregates, and where rows share a model and dataset, the fields
that tell them apart. The std is the sample standard deviation (ddof=1).
"""
import collections
import json
import pathlib
import sys

import numpy as np

from ctrjax.errors import UserError
from experiments.grid import METRICS, config_fields, load_run
from experiments.report import mean_std


def summarize(workdirs) -> str:
  groups = collections.defaultdict(list)
  for wd in map(pathlib.Path, workdirs):
    if not (wd / "result.json").is_file():
      print(f"skipping {wd}: no result.json (unfinished run?)", file=sys.stderr)
      continue
    try:
      r = load_run(wd)
    except UserError as e:
      print(f"skipping {wd}: {e}", file=sys.stderr)
      continue
    fields = {k: v for k, v in config_fields(r["config"]).items() if k != "seed"}
    groups[json.dumps(fields, sort_keys=True)].append(r)
  rows = collections.defaultdict(list)          # (model, dataset) -> [(config fields, runs)]
  for key, runs in groups.items():
    rows[runs[0]["model"], pathlib.Path(runs[0]["dataset"]).name].append((json.loads(key), runs))
  lines = ["| model | dataset | config | seeds | test AUC | test GAUC | test logloss | best epoch |",
           "|---|---|---|---|---|---|---|---|"]
  for (model, dataset), configs in sorted(rows.items()):
    every_field = set().union(*(fields for fields, _ in configs))
    varying = sorted(k for k in every_field if len({json.dumps(f.get(k)) for f, _ in configs}) > 1)
    for fields, runs in sorted(configs, key=lambda c: json.dumps([c[0].get(k) for k in varying])):
      cells = ["{:.4f} ± {:.4f}".format(*mean_std([r["test"].get(m, np.nan) for r in runs]))
               for m in METRICS]
      epochs = np.array([r["best_epoch"] for r in runs])
      config = ", ".join(f"{k}={fields.get(k)}" for k in varying) or "—"
      lines.append(f"| {model} | {dataset} | {config} | {len(runs)} | " + " | ".join(cells)
                   + f" | {epochs.mean():.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  print(summarize(sys.argv[1:]))
