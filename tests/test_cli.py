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
