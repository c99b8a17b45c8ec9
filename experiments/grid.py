"""What the grid runner (experiments/runner.py) and its report (experiments/report.py) share: a
variant's run config, where a grid's runs and report live, a run's files, how configs compare, and
the metrics of the tables. A grid itself is defined in its config file (configs/common.py: Grid).

A run's identity is its resolved config: a grid run with --config.* overrides lives in its own
folders (``grid_dirs``), and a finished run is only ever reused or reported as the config it was
trained with (``config_fields``, ``differing_fields``).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import Any

import ml_collections

from configs.common import Grid
from ctrjax.errors import UserError

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


def workdir_of(root: pathlib.Path, variant: str, seed: int) -> pathlib.Path:
  return root / variant / f"seed{seed}"


def runs(grid: Grid, root: pathlib.Path):
  return [(v, s, workdir_of(root, v, s)) for v in grid.variants for s in grid.seeds]


def config_fields(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """The fields of a run config that decide its results, flat (dotted key -> value as JSON reads
  it): the trainer's resume check, whose resume-free fields (workdir, debug, progress_bar, ...) are
  left out."""
  from ctrjax.train import trainer
  return trainer.comparable_fields(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)


def differing_fields(a: dict[str, Any], b: dict[str, Any], ignore=()) -> list[str]:
  """The sorted keys of two ``config_fields`` whose values differ (a key one lacks differs)."""
  missing = object()
  return sorted(k for k in a.keys() | b.keys() if k not in ignore and a.get(k, missing) != b.get(k, missing))


def default_workdir(config_arg: str) -> pathlib.Path:
  """``workdirs/<config file stem>[_<ARG>]`` for ``--config=FILE[:ARG]``."""
  path, _, arg = config_arg.partition(":")
  name = pathlib.Path(path).stem + (f"_{re.sub(r'[^A-Za-z0-9=.,-]+', '_', arg)}" if arg else "")
  return pathlib.Path("workdirs") / name


def dataset_label(dataset: ml_collections.ConfigDict) -> str:
  """The dataset's name in results/: its name, for name='path' the prepared directory's name, for
  name='spec' 'spec-<spec file stem>'."""
  if dataset.name == "path":
    return pathlib.Path(dataset.path).resolve().name
  return f"spec-{pathlib.Path(dataset.spec).stem}" if dataset.name == "spec" else dataset.name


def grid_dirs(grid: Grid, arg: str, config: ml_collections.ConfigDict,
              default_config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None = None
              ) -> tuple[pathlib.Path, pathlib.Path, dict[str, Any]]:
  """(run root, results directory, overrides) of a grid run with ``--config=arg`` (FILE[:ARG]).

  ``config`` is the resolved config, ``default_config`` the file's own ``get_config(ARG)``; the
  overrides are the ``config_fields`` where they differ (dotted key -> value). Without overrides:
  ``workdirs/<FILE stem>[_<ARG>]`` and ``results/<grid name>/<dataset label>`` (``dataset_label``).
  With them both names end in ``_ov-<8 hex digits of the overrides>`` and both folders get an
  overrides.json, so runs of another config neither reuse nor overwrite the file's own. An explicit
  ``workdir`` (--workdir) is the run root as given, and the results go under ``<workdir>/results/``,
  never into the git-tracked results/."""
  overrides, suffix = overrides_of(config, default_config)
  results = pathlib.Path("results") / grid.name / (dataset_label(config.dataset) + suffix)
  if workdir:
    run_root, results = pathlib.Path(workdir), pathlib.Path(workdir) / results
  else:
    run_root = default_workdir(arg)
    run_root = run_root.with_name(run_root.name + suffix)
  write_overrides([run_root, results], overrides)
  return run_root, results, overrides


def overrides_of(config: ml_collections.ConfigDict,
                 default_config: ml_collections.ConfigDict) -> tuple[dict[str, Any], str]:
  """The ``config_fields`` where ``config`` differs from ``default_config`` (dotted key -> value),
  and the folder-name suffix they give: ``_ov-<8 hex digits of them>``, or '' without any."""
  resolved, default = config_fields(config), config_fields(default_config)
  overrides = {k: resolved.get(k) for k in differing_fields(resolved, default)}
  digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
  return overrides, f"_ov-{digest}" if overrides else ""


def write_overrides(folders: list[pathlib.Path], overrides: dict[str, Any]) -> None:
  """An overrides.json in each folder (created), if there are overrides."""
  for folder in folders if overrides else ():
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "overrides.json").write_text(json.dumps(overrides, indent=1, sort_keys=True) + "\n")


def load_run(workdir: pathlib.Path) -> dict:
  """A finished run's result.json with its ``config`` (config.json) and per-epoch ``history``
  (metrics.jsonl). A file that is missing or does not parse, or a history shorter or longer than
  the result's epochs, is a one-line UserError naming the file (rerunning the run repairs it: the
  trainer resumes from its checkpoints and rewrites all three)."""
  workdir = pathlib.Path(workdir)
  result = _read_json(workdir / "result.json")
  config = _read_json(workdir / "config.json")
  metrics = workdir / "metrics.jsonl"
  history = [_parse(metrics, line, n) for n, line in enumerate(_read_text(metrics).splitlines(), 1)]
  if len(history) != result["epochs_run"]:
    raise UserError(f"{metrics}: {len(history)} epochs, but result.json ran {result['epochs_run']} (cut?)")
  return {**result, "config": config, "history": history}


def _read_text(path: pathlib.Path) -> str:
  if not path.is_file():
    raise UserError(f"{path}: missing")
  return path.read_text()


def _read_json(path: pathlib.Path):
  return _parse(path, _read_text(path))


def _parse(path: pathlib.Path, text: str, line: int | None = None):
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: line {line or e.lineno} does not parse ({e.msg}; cut?)") from None
