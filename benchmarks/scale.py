"""Scale benchmarks of issue 18, input side: (a) host vs device-resident input, 1 vs 16 steps per call;
(c) a 10^7-row synthetic dataset with 10^7 item ids: prepare, then one DIN epoch.

  .venv/bin/python -m benchmarks.scale input [--models base_model dcn din] [--batch_sizes 1024 8192]
      [--steps 32] [--rows 1000000] [--out FILE.json]
  .venv/bin/python -m benchmarks.scale big [--rows 10000000] [--items 10000000] [--max_steps 200]
      [--out FILE.json]

input: for every (model, batch size), four feeds of the trainer (ctrjax/train/feed.py) built side by
  side in one process: placement host or device x steps_per_call 1 or 16; after a warm-up that
  compiles, two interleaved rounds of ``--steps`` steps each (calls of K that never cross an epoch
  end, as the trainer's loop makes them); samples/s = steps x batch / wall time, the mean of the
  rounds. Writes benchmarks/results/scale_input.json (after each pair: a cut run keeps its rows).
big: each phase in a subprocess whose peak RSS (``os.wait4``'s ru_maxrss: resident pages, file pages
  of the memmapped columns read included) and wall time are measured: (1) ``data_prep.synthetic``
  writes the dataset; (2) one DIN epoch on it (configs/din.py, batch 1024, the lazy Adam embedding
  optimiser, host placement): set-up, compilation, then ``--max_steps`` train steps timed, and the
  epoch's time extrapolated from their rate when the epoch has more steps (said in the table).
  Writes benchmarks/results/scale_big.json.
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax
import numpy as np

from configs import base as base_config
from configs import din as din_config
from ctrjax.models import default_config
from ctrjax.train import feed as feed_lib
from ctrjax.train import trainer
from data_prep import synthetic

RESULTS = pathlib.Path(__file__).parent / "results"
REPO = pathlib.Path(__file__).resolve().parents[1]
MODES = (("host", 1), ("host", 16), ("device", 1), ("device", 16))


def _config(model: str, path, batch: int, placement: str = "host", k: int = 1):
  c = din_config.get_config() if model == "din" else base_config.get_config()
  c.model_name, c.model = model, default_config(model)
  c.dataset.name, c.dataset.path = "path", str(path)
  c.batch_size, c.steps_per_call, c.loader.placement = batch, k, placement
  c.num_devices = 1
  return c


class _Feed:
  """One feed of the trainer with its state, stepped as the trainer's loop steps it."""

  def __init__(self, config, path):
    self.setup = trainer.Setup(config, path)
    src = self.setup.source("train", train=True)
    self.feed = feed_lib.make_feed(self.setup, [src], stacked=False, host_batches=lambda: self.setup.batches(src))
    self.state = self.setup.init_state(src[0])
    self.steps_per_epoch, self.k, self.step = src.batches_per_epoch, config.steps_per_call, 0
    for n in {1, self.k}:                           # compiles the 1-step and the K-step call
      self.state, metrics = self.feed.steps(self.state, self.setup.rng, n)
      self.step += n
    jax.block_until_ready(metrics["loss"])

  def run(self, steps: int) -> float:
    """Samples/s of ``steps`` train steps (ending at the first call boundary at or after them)."""
    start, first = time.perf_counter(), self.step
    while self.step - first < steps:
      n = feed_lib.call_size(self.step, self.steps_per_epoch, self.k)
      self.state, metrics = self.feed.steps(self.state, self.setup.rng, n)
      self.step += n
    jax.block_until_ready(metrics["loss"])
    return (self.step - first) * self.setup.config.batch_size / (time.perf_counter() - start)


def bench_input(a):
  path = synthetic.prepare(num_rows=a.rows, num_items=100_000, num_users=20_000)
  rows = []
  for model in a.models:
    for batch in a.batch_sizes:
      feeds = {mode: _Feed(_config(model, path, batch, *mode), path) for mode in MODES}
      rates = {mode: [] for mode in MODES}
      for _ in range(2):
        for mode, feed in feeds.items():
          rates[mode].append(feed.run(a.steps))
      row = {"model": model, "batch_size": batch,
             **{f"{p}_k{k}": float(np.mean(rates[(p, k)])) for p, k in MODES},
             "rounds": {f"{p}_k{k}": rates[(p, k)] for p, k in MODES}}
      rows.append(row)
      print(f"{model:10s} {batch:6d} " + " ".join(f"{row[f'{p}_k{k}']:12,.0f}" for p, k in MODES)
            + f"   device K16 / host K1 = {row['device_k16'] / row['host_k1']:.2f}x", flush=True)
      _write(a.out or RESULTS / "scale_input.json", {"rows": a.rows, "steps": a.steps, "results": rows})
      del feeds
  print(f"{a.rows:,} rows, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{a.steps} steps x 2 rounds; samples/s")
  print(f"{'model':10s} {'batch':>6s} " + " ".join(f"{p + ' K' + str(k):>12s}" for p, k in MODES))
  for r in rows:
    print(f"{r['model']:10s} {r['batch_size']:6d} " + " ".join(f"{r[f'{p}_k{k}']:12,.0f}" for p, k in MODES))


def _measured(cmd: list[str]) -> dict:
  """Runs ``cmd`` (stdout: its last line is JSON); its wall seconds, peak RSS and that JSON."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  if status:
    raise RuntimeError(f"{' '.join(cmd)} failed (status {status})")
  last = out.strip().splitlines()[-1] if out.strip() else "{}"
  return {"seconds": time.perf_counter() - start, "peak_rss_mib": usage.ru_maxrss / 1024,
          **(json.loads(last) if last.startswith("{") else {})}


def bench_big(a):
  out_dir = REPO / "data" / "prepared" / f"scale-synthetic-{a.rows}-{a.items}"
  prep = _measured([sys.executable, "-m", "data_prep.synthetic", "--out", str(out_dir), "--num_rows", str(a.rows),
                    "--num_items", str(a.items), "--num_users", str(a.users), "--force"])
  print(f"prepare: {prep['seconds']:.0f} s, peak RSS {prep['peak_rss_mib']:,.0f} MiB", flush=True)
  epoch = _measured([sys.executable, "-m", "benchmarks.scale", "_epoch", "--path", str(out_dir),
                     "--max_steps", str(a.max_steps)])
  print(json.dumps(epoch), flush=True)
  _write(a.out or RESULTS / "scale_big.json", {"rows": a.rows, "items": a.items, "users": a.users,
                                               "prepare": prep, "din_epoch": epoch})


def din_epoch(a):
  """(in the subprocess) One DIN epoch's parts, timed; prints them as JSON."""
  t0 = time.perf_counter()
  c = _config("din", a.path, 1024)
  c.optimizer.embeddings = "lazy_adam"
  setup = trainer.Setup(c, a.path)
  src = setup.source("train", train=True)
  batches = setup.batches(src)
  state = setup.init_state(src[0])
  t_setup = time.perf_counter() - t0
  with trainer.CompileClock() as clock:
    state, m = setup.train_step(state, next(batches), setup.rng)
    jax.block_until_ready(m["loss"])
  t_first = time.perf_counter() - t0 - t_setup
  steps = min(a.max_steps, src.batches_per_epoch - 1)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = setup.train_step(state, next(batches), setup.rng)
  jax.block_until_ready(m["loss"])
  per_step = (time.perf_counter() - start) / steps
  print(json.dumps({"train_rows": src.num_rows, "steps_per_epoch": src.batches_per_epoch, "steps_timed": steps + 1,
                    "setup_seconds": t_setup, "first_step_seconds": t_first,
                    "compile_seconds": clock.seconds(), "seconds_per_step": per_step,
                    "epoch_seconds": t_setup + t_first + per_step * (src.batches_per_epoch - 1),
                    "extrapolated": steps + 1 < src.batches_per_epoch,
                    "samples_per_s": 1024 / per_step}))


def _write(path: pathlib.Path, payload: dict):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"devices": jax.device_count(), "platform": jax.devices()[0].platform,
                              "device_kind": jax.devices()[0].device_kind, "machine": platform.machine(),
                              "jax": jax.__version__, **payload}, indent=1) + "\n")
  print(f"wrote {path}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = ap.add_subparsers(dest="part", required=True)
  inp = sub.add_parser("input", help="(a) host vs device input, 1 vs 16 steps per call")
  inp.add_argument("--models", nargs="+", default=["base_model", "dcn", "din"])
  inp.add_argument("--batch_sizes", nargs="+", type=int, default=[1024, 8192])
  inp.add_argument("--steps", type=int, default=32)
  inp.add_argument("--rows", type=int, default=1_000_000)
  inp.add_argument("--out", type=pathlib.Path)
  big = sub.add_parser("big", help="(c) a 10^7-row dataset with 10^7 item ids: prepare, one DIN epoch")
  big.add_argument("--rows", type=int, default=10_000_000)
  big.add_argument("--items", type=int, default=10_000_000)
  big.add_argument("--users", type=int, default=1_000_000)
  big.add_argument("--max_steps", type=int, default=200)
  big.add_argument("--out", type=pathlib.Path)
  epoch = sub.add_parser("_epoch")
  epoch.add_argument("--path", required=True)
  epoch.add_argument("--max_steps", type=int, required=True)
  a = ap.parse_args()
  {"input": bench_input, "big": bench_big, "_epoch": din_epoch}[a.part](a)


if __name__ == "__main__":
  main()
