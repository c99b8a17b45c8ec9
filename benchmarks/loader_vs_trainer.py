"""Loader throughput next to trainer throughput on a 1M-row synthetic dataset (goal: loader >= 10x).

  .venv/bin/python -m benchmarks.loader_vs_trainer [--rows 1000000] [--batch 1024] [--steps 200] [--out FILE.json]

Both are measured in one process, side by side, in steady state (compile and warm-up excluded):
  * loader: the grain iterator the trainer uses (batch gather from memmaps, 2 read threads);
  * loader + transfer: the same with the host -> device transfer done in the loader's threads
    (the iterator the trainer consumes);
  * trainer: BaseModel train steps on batches already on device (the loader's cost excluded).
Prints a table and writes benchmarks/results/loader_vs_trainer.json.
"""
import argparse
import json
import pathlib
import platform
import time

import jax

from configs import base as base_config
from ctrjax.data import loader
from ctrjax.train import trainer
from data_prep import synthetic

OUT = pathlib.Path(__file__).parent / "results" / "loader_vs_trainer.json"


def _rate(fn, n, warmup=5):
  for _ in range(warmup):
    fn()
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return n / (time.perf_counter() - t)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=1_000_000)
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--out", type=pathlib.Path, default=OUT)
  a = ap.parse_args()
  path = synthetic.prepare(num_rows=a.rows, num_items=100_000, num_users=20_000)
  c = base_config.get_config()
  c.dataset.name, c.dataset.path, c.batch_size = "path", str(path), a.batch
  setup = trainer.Setup(c, path)
  src = setup.source("train", train=True)

  it = loader.make_iterator(src, **c.loader)
  loader_rate = _rate(lambda: next(it), a.steps * 2)
  it2 = setup.batches(src)                   # what the trainer iterates: transfer in the loader threads
  transfer_rate = _rate(lambda: jax.block_until_ready(next(it2)), a.steps * 2)

  batches = [setup.to_device(src[i]) for i in range(16)]
  state = setup.init_state(src[0])
  holder = {"state": state, "i": 0}

  def train_once():
    holder["state"], m = setup.train_step(holder["state"], batches[holder["i"] % 16], setup.rng)
    holder["i"] += 1
    jax.block_until_ready(m["loss"])
  train_rate = _rate(train_once, a.steps)

  rows = {
      "loader (grain, batch gather)": loader_rate * a.batch,
      "loader + host->device arrays": transfer_rate * a.batch,
      "trainer step (BaseModel, data on device)": train_rate * a.batch,
  }
  ratio = rows["loader + host->device arrays"] / rows["trainer step (BaseModel, data on device)"]
  print(f"{a.rows:,} rows, batch {a.batch}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
  print(f"{'pipeline':45s} {'samples/s':>12s}")
  for k, v in rows.items():
    print(f"{k:45s} {v:12,.0f}")
  print(f"loader+transfer / trainer = {ratio:.1f}x (goal >= 10x)")
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(json.dumps({
      "rows": a.rows, "batch_size": a.batch, "steps": a.steps, "devices": jax.device_count(),
      "platform": jax.devices()[0].platform, "machine": platform.machine(), "jax": jax.__version__,
      "samples_per_s": rows, "loader_over_trainer": ratio}, indent=1) + "\n")
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
