"""Dataset preparation under concurrency and damage: two real processes preparing the same dataset
build it once (the second waits, then reuses it), and a damaged cached copy is rebuilt, never reused."""
import os
import subprocess
import sys

import numpy as np

from ctrjax.data.dataset import Dataset
from data_prep import movielens, synthetic
from tests.conftest import REPO


def _prep_process(module, out_root, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen([sys.executable, "-m", f"data_prep.{module}", "--out_root", str(out_root), *args],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_preparing_one_dataset_build_it_once(tmp_path):
  procs = [_prep_process("movielens", tmp_path, "--dataset", "ml-latest-small") for _ in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
  assert sum("reusing cached" in o for o in outputs) == 1, outputs
  (path,) = [p for p in tmp_path.iterdir() if p.is_dir()]
  assert not path.name.endswith(".partial")
  Dataset(path, validate=True)


def test_a_damaged_cached_copy_is_rebuilt_not_reused(tmp_path, capsys):
  args = dict(num_rows=3000, num_items=100, num_users=40, max_len=5, seed=3)
  path = synthetic.prepare(tmp_path, **args)
  column = path / "train" / "label.npy"
  expected = np.load(column)
  column.write_bytes(column.read_bytes()[:200])             # cut, as a killed copy would leave it
  assert synthetic.prepare(tmp_path, **args) == path
  np.testing.assert_array_equal(np.load(column), expected)
  Dataset(path, validate=True)

  raw = REPO / "data" / "movielens-latest-small"
  ml = movielens.prepare("ml-latest-small", tmp_path, raw_dir=raw, max_len=5)
  (ml / "valid" / "item_id.npy").unlink()
  capsys.readouterr()
  assert movielens.prepare("ml-latest-small", tmp_path, raw_dir=raw, max_len=5) == ml
  assert "damaged" in capsys.readouterr().out
  Dataset(ml, validate=True)
