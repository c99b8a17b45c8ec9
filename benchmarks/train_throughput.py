"""Steady-state training throughput (samples/s) per model config and batch size, side by side.

  .venv/bin/python -m benchmarks.train_throughput [--configs configs/mian.py configs/base.py]
      [--batch_sizes 128 1024] [--steps 100] [--dataset ml-latest-small] [--out FILE.json]

Every (config, batch size) pair trains on batches already on the device (the loader is measured
separately in benchmarks.loader_vs_trainer), after a warm-up that includes compilation; the pairs
are interleaved in two rounds so that machine noise hits all of them alike. Prints a table and
writes benchmarks/results/train_throughput.json.
"""
import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np

import data_prep
from ctrjax.train import trainer
from experiments.main import load_config_module

OUT = pathlib.Path(__file__).parent / "results" / "train_throughput.json"


def _config(path: str, dataset: str, batch: int):
  c = load_config_module(path).get_config()
  c.dataset, c.batch_size = data_prep.switch_dataset(c.dataset, dataset), batch
  return c


class _Bench:
  def __init__(self, config, warmup=10):
    self.setup = trainer.Setup(config, data_prep.prepare(config.dataset))
    src = self.setup.source("train", train=True)
    self.batches = [self.setup.to_device(src[i]) for i in range(8)]
    self.state = self.setup.init_state(src[0])
    self.i = 0
    self.run(warmup)

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.state, m = self.setup.train_step(self.state, self.batches[self.i % 8], self.setup.rng)
      self.i += 1
    jax.block_until_ready(m["loss"])
    return steps * self.setup.config.batch_size / (time.perf_counter() - start)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--configs", nargs="+", default=["configs/mian.py", "configs/base.py"])
  ap.add_argument("--batch_sizes", nargs="+", type=int, default=[128, 1024])
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--dataset", default="ml-latest-small")
  ap.add_argument("--out", type=pathlib.Path, default=OUT)
  a = ap.parse_args()
  benches = {(c, b): _Bench(_config(c, a.dataset, b)) for c in a.configs for b in a.batch_sizes}
  rates = {k: [] for k in benches}
  for _ in range(2):
    for k, bench in benches.items():
      rates[k].append(bench.run(a.steps))
  print(f"{a.dataset}, {jax.device_count()} {jax.devices()[0].platform} device(s), {a.steps} steps x 2 rounds")
  print(f"{'config':22s} {'batch':>6s} {'samples/s (mean of 2 rounds)':>30s}")
  rows = []
  for (c, b), r in rates.items():
    print(f"{c:22s} {b:6d} {np.mean(r):30,.0f}")
    rows.append({"config": c, "batch_size": b, "samples_per_s": float(np.mean(r)), "rounds": r})
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(json.dumps({"dataset": a.dataset, "devices": jax.device_count(),
                               "platform": jax.devices()[0].platform,
                               "device_kind": jax.devices()[0].device_kind, "machine": platform.machine(),
                               "jax": jax.__version__, "rows": rows}, indent=1) + "\n")
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
