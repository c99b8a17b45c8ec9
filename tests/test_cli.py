"""The command line's user errors: one line on stderr naming the field, file or argument, exit status
2, no traceback (``--debug`` shows it). Real processes, as a user runs them."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  env.pop("CTRJAX_DEBUG", None)
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, names", [
    (("run", "--config=configs/base.py:quick", "--config.foo=1"), "--config.foo: configs/base.py has no field 'foo'"),
    (("run", "--config=configs/base.py", "--config.model.embed_dimm=8"), "did you mean embed_dim?"),
    (("run", "--config=configs/base.py:quik"), "configs/base.py: bad argument 'quik'"),
    (("run", "--config=configs/base.py", "--config.batch_size=abc"), "--config.batch_size=abc"),
    (("run", "--config=configs/base.py", "--config.early_stopping.metric=acu"), "config.early_stopping.metric='acu'"),
    (("run", "--config=configs/nope.py"), "no config file configs/nope.py"),
    (("eval", "/nonexistent/run"), "/nonexistent/run: no config.json"),
    (("frob", "--config=configs/base.py"), "unknown command 'frob'"),
])
def test_a_user_error_is_one_line_naming_the_culprit(args, names):
  proc = _cli(*args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and names in errors[0], proc.stderr[-2000:]


def test_debug_shows_the_traceback():
  proc = _cli("run", "--config=configs/base.py:quik", "--debug")
  assert proc.returncode != 0 and "Traceback" in proc.stderr


TINY_CONFIG = '''
from configs import base


def get_config(arg=None):
  c = base.get_config("quick")
  c.dataset.name, c.dataset.path = "path", "{dataset}"
  c.model.dnn.hidden, c.batch_size, c.eval_batch_size, c.progress_bar = (8,), 64, 256, False
  c.checkpoint_every_steps, c.num_epochs = 10, 2
  return c
'''


def test_a_killed_run_is_evaluated_and_restarted_from_the_command_line_with_another_learning_rate(tmp_path):
  from data_prep import synthetic
  dataset = synthetic.generate(tmp_path / "ds", num_rows=2000, num_items=100, num_users=40, max_len=5, seed=2)
  config = tmp_path / "tiny.py"
  config.write_text(TINY_CONFIG.format(dataset=dataset))
  run = ("run", f"--config={config}", f"--workdir={tmp_path / 'run'}")
  killed = _cli(*run, "--config.debug.kill_at_step=30")     # after epoch 1 (25 steps), then SIGKILL
  assert killed.returncode == -9, killed.stderr[-2000:]
  evaluated = _cli("eval", str(tmp_path / "run"))           # a half-written workdir: no result.json
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert "no logged test result" in evaluated.stdout and "test auc: " in evaluated.stdout, evaluated.stdout
  lower = "--config.optimizer.learning_rate=3e-4"
  refused = _cli(*run, lower)                              # another lr: a plain resume refuses it
  assert refused.returncode == 2 and "--restart_from=latest" in refused.stderr, refused.stderr[-2000:]
  restarted = _cli(*run, lower, "--restart_from=latest")
  assert restarted.returncode == 0, restarted.stderr[-2000:]
  assert "restarting from step" in restarted.stdout and "test: auc" in restarted.stdout, restarted.stdout
  bad = _cli(*run, lower, "--restart_from=newest")
  assert bad.returncode == 2 and "--restart_from='newest'" in bad.stderr
