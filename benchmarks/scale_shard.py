"""Scale, the model side (issue 18 (b), (d)): row-sharded against replicated embedding tables, and
lazy Adam's step time as the item table grows, against the table traffic inside it.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python -m benchmarks.scale_shard sharding \\
      [--items 1000000] [--batch_size 1024] [--steps 5] [--rounds 4]
  .venv/bin/python -m benchmarks.scale_shard lazy [--vocab_sizes 10000 100000 1000000 10000000] \\
      [--batch_size 1024] [--steps 5] [--rounds 8]

Both use benchmarks/lazy_embeddings.py's BaseModel on MovieLens-shaped synthetic batches (mba
regulariser, item ids uniform over the vocabulary); every variant is timed in interleaved rounds
after a warm-up with compilation, each step waited for (median and min over the steps).

sharding (b), on 8 (simulated) devices: ``config.embedding_sharding`` "replicated" against "rows"
for dense and lazy Adam. Per device: the bytes of the train state's arrays (tables, moments,
regulariser weights) and the compiled step's temporaries (XLA's memory analysis); per step: the
collectives of the compiled step and their bytes; step time. Simulated devices share the host's
cores, so step time here says what the partitioned program costs in compute, not in interconnect.

lazy (d), on one device: per vocabulary size
  * step: the lazy_adam train step (``_Bench``); at a size where the lazy step uses the item table
    whole (no more rows than the batch's id slots), also with the row-sparse path forced on it, so
    that growth can be read over one algorithm;
  * table traffic: the step's table part alone, jitted and donated like the step: the gather of the
    batch's compact rows from the table, its two moments and its regulariser weights, and
    ``LazyEmbeddings.update``'s scatters back (the same code, on the step's compact indices);
  * numpy: the same row gathers and scatters with numpy fancy indexing, a reference outside XLA.
Step minus table traffic is the part of the step that does not touch the table.
Writes benchmarks/results/scale_shard_{sharding,lazy}.json (or ``--out``).
"""
import argparse
import json
import pathlib
import platform
import re
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import lazy_embeddings as lazy_bench
from configs import base as base_config
from ctrjax.data.packing import BatchLayout
from ctrjax.models import build_model
from ctrjax.train import lazy as lazy_lib
from ctrjax.train import mesh as mesh_lib
from ctrjax.train import step as step_lib
from ctrjax.train.regularizers import EmbeddingRegularizer

RESULTS = pathlib.Path(__file__).parent / "results"
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "bf16": 2, "s8": 1, "u8": 1}


def _timed(fn, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def _stats(times: list[float]) -> dict:
  return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times))}


# --- (b) sharded against replicated tables ------------------------------------------------------

class _ShardedBench:
  """One (optimiser, table layout) train step on every device, its state and global batches."""

  def __init__(self, embeddings: str, sharding: str, items: int, batch_size: int):
    config = base_config.get_config()
    config.optimizer.embeddings = embeddings
    mesh = mesh_lib.make_mesh()
    schema = lazy_bench._schema(items)
    model_schema = schema.padded_rows(mesh.size) if sharding == "rows" else schema
    model = build_model(config.model_name, model_schema, config.model)
    rng = np.random.default_rng(0)
    counts = {t: rng.integers(0, 50, v, dtype=np.int32) for t, v in schema.tables.items()}
    regularizer = EmbeddingRegularizer.build(model_schema, counts, "mba", 1e-6)
    lazy = lazy_lib.LazyEmbeddings.build(config.optimizer, model)
    layout = BatchLayout.from_schema(schema)
    self.sharding = mesh_lib.StateSharding(mesh, model_schema.tables if sharding == "rows" else {})
    self.batches = [mesh_lib.to_global(layout.pack(lazy_bench._loader_batch(items, batch_size, rng)), mesh)
                    for _ in range(lazy_bench.NUM_BATCHES)]
    self.step, _ = step_lib.jit_steps(mesh, layout, regularizer, lazy, self.sharding)
    self.state = step_lib.create_train_state(
        model, step_lib.make_optimizer(config.optimizer), jax.jit(layout.unpack)(self.batches[0]),
        jax.random.PRNGKey(0), mesh, regularizer, lazy, self.sharding)
    self.rng = jax.device_put(jax.random.PRNGKey(1), mesh_lib.replicated(mesh))
    compiled = self.step.lower(self.state, self.batches[0], self.rng).compile()
    self.hlo, self.memory = compiled.as_text(), compiled.memory_analysis()
    self.i = 0
    self.run(2)

  def run(self, steps: int) -> list[float]:
    def one():
      self.state, metrics = self.step(self.state, self.batches[self.i % len(self.batches)], self.rng)
      self.i += 1
      return self.state, metrics
    return _timed(one, steps)

  def state_bytes_per_device(self) -> int:
    """The largest over devices of the bytes of the train state's shards it holds."""
    per_device = {}
    for leaf in jax.tree.leaves(self.state):
      for s in leaf.addressable_shards:
        per_device[s.device] = per_device.get(s.device, 0) + s.data.nbytes
    return max(per_device.values())

  def collectives(self) -> dict:
    """{op: [count, bytes of its results]} over the compiled step's collectives, per device."""
    found = {}
    for shape, op in re.findall(r"= (\(.*?\)|\S+) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(", self.hlo):
      size = sum(DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                 for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape))
      count, total = found.get(op, (0, 0))
      found[op] = (count + 1, total + size)
    return found


def sharding_main(a):
  if jax.device_count() < 2:
    raise SystemExit("run with several devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8")
  variants = [(o, s) for o in ("dense", "lazy_adam") for s in ("replicated", "rows")]
  benches = {v: _ShardedBench(*v, a.items, a.batch_size) for v in variants}
  times = {v: [] for v in variants}
  for r in range(a.rounds):
    for v, bench in benches.items():
      times[v] += bench.run(a.steps)
    print(f"round {r + 1}/{a.rounds} done", flush=True)
  rows = []
  for (optimiser, layout), bench in benches.items():
    memory = bench.memory
    rows.append({"optimizer": optimiser, "tables": layout, **_stats(times[optimiser, layout]),
                 "state_bytes_per_device": bench.state_bytes_per_device(),
                 "temp_bytes_per_device": int(memory.temp_size_in_bytes) if memory else None,
                 "collectives": bench.collectives(), "step_seconds": times[optimiser, layout]})
  table_bytes = a.items * 16 * 4
  print(f"\n{jax.device_count()} {jax.devices()[0].platform} devices, item table {a.items:,} x 16 "
        f"float32 = {table_bytes / 2**20:.0f} MiB, global batch {a.batch_size}; per device: state, "
        f"step temporaries; per step: collectives (count, MiB); ms per step median / min")
  print(f"{'optimiser':>10s} {'tables':>11s} {'state MiB':>10s} {'temp MiB':>9s} {'ms':>16s}  collectives")
  for r in rows:
    coll = ", ".join(f"{op} {n} ({b / 2**20:.2f})" for op, (n, b) in sorted(r["collectives"].items()))
    temp = f"{r['temp_bytes_per_device'] / 2**20:9.1f}" if r["temp_bytes_per_device"] is not None else "      n/a"
    print(f"{r['optimizer']:>10s} {r['tables']:>11s} {r['state_bytes_per_device'] / 2**20:10.1f} {temp} "
          f"{r['median_ms']:7.1f} / {r['min_ms']:6.1f}  {coll or '-'}")
  _write(a.out or "scale_shard_sharding.json", a, rows)


# --- (d) lazy scaling against the table traffic ---------------------------------------------------

class _TableTraffic:
  """The lazy step's table part alone on its own copy of the item table, moments and weights:
  ``LazyEmbeddings.gather`` of the batch's compact rows, then ``LazyEmbeddings.update``, jitted
  with the arrays donated (as the step donates its state)."""

  def __init__(self, items: int, batch_size: int):
    config = base_config.get_config()
    config.optimizer.embeddings = "lazy_adam"
    schema = lazy_bench._schema(items)
    model = build_model(config.model_name, schema, config.model)
    embeddings = lazy_lib.LazyEmbeddings.build(config.optimizer, model)
    layout = BatchLayout.from_schema(schema)
    rng = np.random.default_rng(0)
    compact = jax.jit(lambda packed: embeddings.compact(layout.unpack(packed)))
    self.compacts = [compact(layout.pack(lazy_bench._loader_batch(items, batch_size, rng)))
                     for _ in range(lazy_bench.NUM_BATCHES)]
    path = ("embedding", "item_id")
    key = jax.random.PRNGKey(0)
    self.tables = {path: jax.random.normal(key, (items, 16), jnp.float32)}
    self.opt_state = embeddings.init(self.tables)
    self.weights = jnp.ones(items, jnp.float32)

    def traffic(tables, opt_state, weights, compact):
      rows = embeddings.gather(tables, compact)
      weight = jnp.take(weights, compact.index["item_id"], mode="fill", fill_value=0)
      grads = {p: r * weight[:, None] for p, r in rows.items()}
      tables, opt_state = embeddings.update(tables, opt_state, compact, rows, grads, jnp.float32(1e-3))
      return tables, opt_state, weights
    self.traffic = jax.jit(traffic, donate_argnums=(0, 1, 2))
    self.i = 0
    self.run(3)

  def run(self, steps: int) -> list[float]:
    def one():
      self.tables, self.opt_state, self.weights = self.traffic(
          self.tables, self.opt_state, self.weights, self.compacts[self.i % len(self.compacts)])
      self.i += 1
      return self.tables
    return _timed(one, steps)


class _NumpyTraffic:
  """The same row gathers and scatters with numpy fancy indexing (outside XLA)."""

  def __init__(self, traffic: _TableTraffic):
    items = traffic.weights.shape[0]
    self.arrays = [np.random.default_rng(0).standard_normal((items, 16), np.float32) for _ in range(3)]
    self.weights = np.ones(items, np.float32)
    self.index = [np.asarray(c.index["item_id"])[np.asarray(c.touched["item_id"])] for c in traffic.compacts]
    self.i = 0

  def run(self, steps: int) -> list[float]:
    def one():
      index = self.index[self.i % len(self.index)]
      weight = self.weights[index]
      for a in self.arrays:
        a[index] = a[index] * (1.0 - 1e-3 * weight[:, None])
      self.i += 1
    return _timed(one, steps)


def lazy_main(a):
  slots = a.batch_size * (1 + lazy_bench.T)
  variants = {}
  for items in a.vocab_sizes:
    variants[items, "step"] = lazy_bench._Bench("lazy_adam", items, a.batch_size)
    if lazy_lib.uses_whole_table(items, slots):
      whole = lazy_lib.uses_whole_table          # the item table row-sparse, the others as they are
      with mock.patch.object(lazy_lib, "uses_whole_table", lambda rows, n: rows != items and whole(rows, n)):
        variants[items, "step, row-sparse forced"] = lazy_bench._Bench("lazy_adam", items, a.batch_size)
    variants[items, "table traffic"] = _TableTraffic(items, a.batch_size)
    variants[items, "numpy traffic"] = _NumpyTraffic(variants[items, "table traffic"])
  times = {k: [] for k in variants}
  for r in range(a.rounds):
    for k, bench in variants.items():
      times[k] += bench.run(a.steps)
    print(f"round {r + 1}/{a.rounds} done", flush=True)
  rows = [{"items": items, "what": what, **_stats(times[items, what]), "step_seconds": times[items, what]}
          for items, what in variants]
  by = {(r["items"], r["what"]): r for r in rows}
  first, last = a.vocab_sizes[0], a.vocab_sizes[-1]
  growth = {}
  for what in ("step", "table traffic", "numpy traffic"):
    for s in ("median_ms", "min_ms"):
      growth[f"{what}, {s[:-3]}"] = by[last, what][s] / by[first, what][s]
      if (first, "step, row-sparse forced") in by and what == "step":
        growth[f"step row-sparse, {s[:-3]}"] = by[last, "step"][s] / by[first, "step, row-sparse forced"][s]
  print(f"\n{jax.devices()[0].platform}, batch {a.batch_size} ({slots:,} item-id slots); ms per call, "
        f"median / min over {a.rounds} rounds x {a.steps}")
  print(f"{'item rows':>12s} {'what':>26s} {'ms':>16s}  {'step - table traffic':>20s}")
  for r in rows:
    rest = ""
    if r["what"] == "step":
      t = by[r["items"], "table traffic"]
      rest = f"{r['median_ms'] - t['median_ms']:8.1f} / {r['min_ms'] - t['min_ms']:6.1f}"
    print(f"{r['items']:>12,} {r['what']:>26s} {r['median_ms']:7.1f} / {r['min_ms']:6.1f}  {rest:>20s}")
  for k, v in growth.items():
    print(f"growth {last:.0e} / {first:.0e} {k:>28s}: {v:.2f}x")
  _write(a.out or "scale_shard_lazy.json", a, rows, growth=growth)


def _write(name: str, a, rows: list[dict], **extra):
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / name).write_text(json.dumps({
      "args": vars(a), "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "machine": platform.machine(), "jax": jax.__version__, **extra, "rows": rows}, indent=1) + "\n")
  print(f"wrote {RESULTS / name}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = ap.add_subparsers(dest="part", required=True)
  sharding = sub.add_parser("sharding", help="(b) row-sharded against replicated tables")
  sharding.add_argument("--items", type=int, default=1_000_000)
  lazy = sub.add_parser("lazy", help="(d) lazy Adam's step as the item table grows")
  lazy.add_argument("--vocab_sizes", nargs="+", type=int, default=[10**4, 10**5, 10**6, 10**7])
  for p, rounds in ((sharding, 4), (lazy, 8)):
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--out", default="", help="JSON file name under benchmarks/results/")
  a = ap.parse_args()
  (sharding_main if a.part == "sharding" else lazy_main)(a)


if __name__ == "__main__":
  main()
