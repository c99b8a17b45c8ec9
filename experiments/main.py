"""Command line: ``python -m experiments.main run --config=FILE[:ARG] [--config.key=value]``,
``python -m experiments.main report --config=GRID_FILE[:ARG]`` (a grid's tables from its finished runs),
``python -m experiments.main tune --config=FILE[:ARG] [--trials N] [--timeout S]`` (experiments/tune.py)
or ``python -m experiments.main eval WORKDIR`` (see run.sh, which wraps them). It prepares the dataset
(``data_prep.prepare``) and hands its path to the library.

Multi-process (one process per host, e.g. on a GPU cluster): pass --coordinator_address,
--num_processes and --process_id (or nothing on SLURM/TPU, where jax.distributed detects them)
together with --distributed.
"""
import importlib.util
import json
import os
import pathlib
import re
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import data_prep
from configs import common
from ctrjax.data.schema import SchemaError
from ctrjax.errors import UserError
from ctrjax.train import trainer
from experiments import grid as grid_lib
from experiments import report, runner, tune

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir or workdirs/<config>).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_bool("debug", False, "Show the traceback of a user error (also CTRJAX_DEBUG=1).")
_RESTART = flags.DEFINE_string(
    "restart_from", None, "Continue a single run's workdir from a checkpoint with changed optimiser "
    "settings (trainer.RESTART_FREE, e.g. a lower --config.optimizer.learning_rate after a divergence): "
    "'latest' (the newest intact checkpoint) or a step number; prints what it changes.")
_FRESH_OPTIMIZER = flags.DEFINE_bool(
    "fresh_optimizer_state", False, "With --restart_from: start the optimizer's moments afresh.")
_TRIALS = flags.DEFINE_integer(
    "trials", None, f"tune, or a grid's protocol 'tuned': trials per study (default {tune.DEFAULT_TRIALS} for "
    f"tune, {common.TUNED_TRIALS} per variant for 'tuned').")
_VARIANTS = flags.DEFINE_list(
    "variants", None, "A grid: train only these variants (names, or a section's name such as 'DIN Table 3'; "
    "the reference is always trained); the report covers every finished variant, the protocol 'tuned' "
    "its table these.")
_TIMEOUT = flags.DEFINE_float(
    "timeout", None, "tune, or a grid's protocol 'tuned': start no trial after this many seconds; the best "
    "is then chosen among the finished trials.")


def load_config_module(filename: str):
  """The config file as a module (a grid config defines get_grid next to get_config)."""
  path = filename.partition(":")[0]
  if not pathlib.Path(path).is_file():
    raise UserError(f"--config={filename}: no config file {path}")
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def share_device(environ) -> str | None:
  """``CTRJAX_WORKERS_PER_DEVICE=N`` (N grid or tune workers sharing each accelerator) sets, in
  ``environ`` and unless already set, ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and
  ``XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/N``: each process then takes at most its share of the
  device's memory, as it needs it (jax reads both when it creates its backend: docs/training.md).
  Returns what it set, as a line to print (None without the variable)."""
  workers = environ.get("CTRJAX_WORKERS_PER_DEVICE", "")
  if not workers:
    return None
  if not workers.isdigit() or int(workers) < 1:
    raise UserError(f"CTRJAX_WORKERS_PER_DEVICE={workers!r}: expected an integer >= 1")
  set_here = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  if not (environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or environ.get("XLA_CLIENT_MEM_FRACTION")):
    set_here["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / int(workers):.3g}"
  set_here = {k: v for k, v in set_here.items() if k not in environ}
  environ.update(set_here)
  return (f"CTRJAX_WORKERS_PER_DEVICE={workers}: " + " ".join(f"{k}={v}" for k, v in set_here.items())
          if set_here else f"CTRJAX_WORKERS_PER_DEVICE={workers}: the XLA_* memory variables were already set")


def main(argv):
  line = share_device(os.environ)       # before jax creates its backend
  if line:
    print(line, flush=True)
  # orbax logs every save/restore at INFO; keep the console to our progress bar and results.
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(lambda r: "did not provide metrics" not in r.getMessage())
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(".jax_cache").absolute()))
  command = argv[1] if len(argv) > 1 else ""
  if command == "eval":
    if len(argv) != 3:
      raise UserError("usage: eval WORKDIR")
    return _eval(pathlib.Path(argv[2]))
  if command not in ("run", "report", "tune"):
    raise UserError(f"unknown command {command!r}; use 'run', 'report', 'tune' or 'eval'")
  config = _CONFIG.value
  if config is None:
    raise UserError(f"{command} needs --config=FILE[:ARG]")
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  module = load_config_module(config_arg)
  arg = config_arg.partition(":")[2] or None
  grid = module.get_grid(arg) if hasattr(module, "get_grid") else None
  explicit_workdir = _WORKDIR.value or config.workdir or None
  if grid is None and command == "report":
    raise UserError(f"report: {config_arg} is not a grid config (it defines no get_grid)")
  if command == "tune" and grid is not None:
    raise UserError(f"tune: {config_arg} is a grid; tune each variant with its protocol 'tuned': "
                    f"./run.sh {config_arg.partition(':')[0]}:tuned[,...]")
  if _VARIANTS.value is not None and (grid is None or command != "run"):
    raise UserError("--variants: only for running a grid (./run.sh GRID_CONFIG --variants=...)")
  only = grid.select(_VARIANTS.value) if _VARIANTS.value is not None else None
  tuning = command == "tune" or (grid is not None and grid.tuned)
  for flag in (_TRIALS, _TIMEOUT):
    if flag.value is not None and not tuning:
      raise UserError(f"--{flag.name}: only for tune and a grid's protocol 'tuned'")
  if _TRIALS.value is not None and _TRIALS.value < 1:
    raise UserError(f"--trials={_TRIALS.value}: at least 1")
  if tuning and _RESTART.value:
    raise UserError("--restart_from: a study resumes its trials by itself; rerun the same command")
  trainer.validate_config(config)
  dataset_path = data_prep.prepare(config.dataset)
  if command == "tune":
    root, results = tune.tune_dirs(config_arg, config, module.get_config(arg), explicit_workdir)
    _announce(jax, root)
    tune.tune_config(config_arg, config, common.search_space(module, arg), root, results, dataset_path,
                     _TRIALS.value or tune.DEFAULT_TRIALS, _TIMEOUT.value, _command(command))
    return
  if grid is None:
    workdir = pathlib.Path(explicit_workdir or grid_lib.default_workdir(config_arg))
    _announce(jax, workdir)
    trainer.train_and_evaluate(config, workdir, dataset_path, restart=_restart())
    return
  if _RESTART.value:
    raise UserError("--restart_from: restart a grid's run with ./run.sh CONFIG --workdir=<its run directory>")
  root, results, overrides = grid_lib.grid_dirs(grid, config_arg, config, module.get_config(arg),
                                                explicit_workdir)
  if overrides:
    print(f"overrides {json.dumps(overrides)}: runs in {root}, report in {results}", flush=True)
  if command == "report" and grid.tuned:
    raise UserError(f"report: the protocol 'tuned' writes its tables when it ends; rerun "
                    f"./run.sh {config_arg} (finished trials and runs are reused)")
  if command == "report":
    runner.check_finished(config, grid, root, dataset_path)
    report.write_report(grid, root, results, dataset_path)
    return
  _announce(jax, root)
  if grid.tuned:
    paper_arg = common.untuned_arg(arg)
    paper_config_arg = config_arg.partition(":")[0] + (f":{paper_arg}" if paper_arg else "")
    paper_grid = module.get_grid(paper_arg)
    paper_root, paper_results, _ = grid_lib.grid_dirs(paper_grid, paper_config_arg, config,
                                                      module.get_config(paper_arg), explicit_workdir)
    tune.tune_grid(config, grid.restricted(only) if only else grid, root, results,
                   (paper_grid, paper_root, paper_results), common.search_space(module, arg), dataset_path,
                   _TRIALS.value or common.TUNED_TRIALS, _TIMEOUT.value, _command(command))
    return
  runner.run_grid(config, grid, root, results, dataset_path, only)


def _command(command: str) -> str:
  """The ./run.sh command line of this call (recorded in the results), from its flags (sys.argv)."""
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  rest = [a for a in sys.argv[1:] if a != command and not a.startswith("--config=")]
  return shlex.join(["./run.sh", *(["tune"] if command == "tune" else []), config_arg, *rest])


def _restart() -> trainer.Restart | None:
  """--restart_from as a trainer.Restart (None without it)."""
  if _RESTART.value is None:
    return None
  if _RESTART.value != "latest" and not _RESTART.value.isdigit():
    raise UserError(f"--restart_from={_RESTART.value!r}: 'latest' or a checkpoint's step number")
  step = None if _RESTART.value == "latest" else int(_RESTART.value)
  return trainer.Restart(step=step, optimizer_state=not _FRESH_OPTIMIZER.value)


def _announce(jax, workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    print(f"workdir {workdir}; devices {jax.device_count()} ({jax.devices()[0].platform}), "
          f"processes {jax.process_count()}", flush=True)


def _eval(workdir: pathlib.Path) -> None:
  """Re-evaluates the best checkpoint and prints it next to the logged result, if there is one (a
  run killed before its end has checkpoints but no result.json)."""
  out = trainer.evaluate_workdir(workdir, data_prep.prepare_for_workdir(workdir))
  print(f"best step {out['best_step']}, best epoch {out['best_epoch']}")
  try:
    logged = json.loads((workdir / "result.json").read_text())["test"]
  except (OSError, ValueError, KeyError) as e:
    logged = None
    print(f"no logged test result to compare with ({workdir / 'result.json'}: {type(e).__name__})")
  for split in ("valid", "test"):
    for k in ("auc", "gauc", "logloss"):
      if k in out[split]:
        note = f"  (logged {logged.get(k, float('nan')):.6f})" if split == "test" and logged else ""
        print(f"{split} {k}: {out[split][k]:.6f}{note}")


def _debug(argv) -> bool:
  return "--debug" in argv or os.environ.get("CTRJAX_DEBUG") == "1"


def _one_line(e: BaseException) -> str:
  """The last line of an error's message (absl wraps a config file's own error in its traceback)."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  line = lines[-1] if lines else type(e).__name__
  return re.sub(r"^(ValueError|KeyError|AttributeError|TypeError): ", "", line)


def _unknown_override(argv) -> str | None:
  """The first ``--config.a.b=`` override naming a field the config file does not have, as a message."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  path, _, arg = config_arg.partition(":")
  config = load_config_module(path).get_config(arg or None)
  for a in argv:
    if not a.startswith("--config."):
      continue
    key = a[len("--config."):].split("=", 1)[0]
    if missing := common.missing_field(config, key):
      _, part, hint = missing
      return f"--config.{key}: {path} has no field {part!r} ({hint})"
  return None


def parse_flags(argv):
  """absl's flag parsing, with a user error (bad flag, unknown or mistyped config field, bad config
  argument) as one line and exit status 2 instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 -- absl and ml_collections raise several types here
    if _debug(argv):
      raise
    try:
      message = _unknown_override(argv) or _one_line(e)
    except Exception:  # noqa: BLE001 -- the config file itself fails: its own error is the message
      message = _one_line(e)
    print(f"error: {message}  (--debug for the traceback)", file=sys.stderr)
    sys.exit(2)


def run(argv):
  """``main`` with user errors (config values, data, workdir conflicts, divergence) as one line on
  stderr and exit status 2; ``--debug`` or CTRJAX_DEBUG=1 shows the traceback instead."""
  try:
    main(argv)
  except (UserError, SchemaError, ValueError) as e:
    if _debug(sys.argv):
      raise
    print(f"error: {_one_line(e) if not isinstance(e, UserError) else e}  (--debug for the traceback)",
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(run, flags_parser=parse_flags)
