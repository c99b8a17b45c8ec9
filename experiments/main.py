"""Command line: ``python -m experiments.main run --config=FILE[:ARG] [--config.key=value]``,
``python -m experiments.main report --config=GRID_FILE[:ARG]`` (a grid's tables from its finished runs) or
``python -m experiments.main eval WORKDIR`` (see run.sh, which wraps them). It prepares the dataset
(``data_prep.prepare``) and hands its path to the library.

Multi-process (one process per host, e.g. on a GPU cluster): pass --coordinator_address,
--num_processes and --process_id (or nothing on SLURM/TPU, where jax.distributed detects them)
together with --distributed.
"""
import importlib.util
import json
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import data_prep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir or workdirs/<config>).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _default_workdir(config_arg: str) -> pathlib.Path:
  path, _, arg = config_arg.partition(":")
  name = pathlib.Path(path).stem + (f"_{re.sub(r'[^A-Za-z0-9=.,-]+', '_', arg)}" if arg else "")
  return pathlib.Path("workdirs") / name


def load_config_module(filename: str):
  """The config file as a module (a grid config defines get_grid next to get_config)."""
  path = filename.partition(":")[0]
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(argv):
  # orbax logs every save/restore at INFO; keep the console to our progress bar and results.
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(lambda r: "did not provide metrics" not in r.getMessage())
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(".jax_cache").absolute()))
  from ctrjax.train import trainer
  command = argv[1] if len(argv) > 1 else ""
  if command == "eval":
    if len(argv) != 3:
      raise app.UsageError("usage: eval WORKDIR")
    out = trainer.evaluate_workdir(argv[2], data_prep.prepare_for_workdir(argv[2]))
    logged = json.loads((pathlib.Path(argv[2]) / "result.json").read_text())["test"]
    for k in ("auc", "gauc", "logloss"):
      if k in out["test"]:
        print(f"test {k}: {out['test'][k]:.6f}  (logged {logged.get(k, float('nan')):.6f})")
    return
  if command not in ("run", "report"):
    raise app.UsageError(f"unknown command {command!r}; use 'run', 'report' or 'eval'")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError(f"{command} needs --config=FILE[:ARG]")
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  workdir = pathlib.Path(_WORKDIR.value or config.workdir or _default_workdir(config_arg))
  module = load_config_module(config_arg)
  grid = module.get_grid(config_arg.partition(":")[2] or None) if hasattr(module, "get_grid") else None
  dataset_path = data_prep.prepare(config.dataset)
  if grid is not None:
    from experiments import report, runner
    results = pathlib.Path("results") / grid.name / config.dataset.name
  if command == "report":
    if grid is None:
      raise app.UsageError(f"report: {config_arg} is not a grid config (it defines no get_grid)")
    try:
      report.write_report(grid, workdir, results, dataset_path)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    return
  if jax.process_index() == 0:
    print(f"workdir {workdir}; devices {jax.device_count()} ({jax.devices()[0].platform}), "
          f"processes {jax.process_count()}", flush=True)
  try:
    if grid is not None:
      runner.run_grid(config, grid, workdir, results, dataset_path)
    else:
      trainer.train_and_evaluate(config, workdir, dataset_path)
  except trainer.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
