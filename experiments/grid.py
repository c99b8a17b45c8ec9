"""What the grid runner (experiments/runner.py) and its report (experiments/report.py) share: a
variant's run config, where each run lives, and the metrics of the tables. A grid itself is defined
in its config file (configs/common.py: Grid).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from configs.common import Grid

METRICS = ("auc", "gauc", "logloss")


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


def dataset_of(workdir: pathlib.Path) -> pathlib.Path:
  """The prepared dataset of the run in ``workdir`` (from its config.json; prepared if not cached)."""
  from ctrjax.data import prepare_dataset
  config_path = pathlib.Path(workdir) / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{workdir}: no config.json (not a ctrjax workdir)")
  return prepare_dataset(ml_collections.ConfigDict(json.loads(config_path.read_text())["dataset"]))


def workdir_of(root: pathlib.Path, variant: str, seed: int) -> pathlib.Path:
  return root / variant / f"seed{seed}"


def runs(grid: Grid, root: pathlib.Path):
  return [(v, s, workdir_of(root, v, s)) for v in grid.variants for s in grid.seeds]
