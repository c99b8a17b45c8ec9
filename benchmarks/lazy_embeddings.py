"""Train-step time of dense vs lazy Adam on the embedding tables as the item vocabulary grows.

  .venv/bin/python -m benchmarks.lazy_embeddings [--vocab_sizes 10000 100000 1000000 10000000]
      [--batch_size 1024] [--steps 5] [--rounds 8]

configs/base.py's BaseModel (embedding dim 16, MLP 200-80) on synthetic batches shaped like
MovieLens (candidate item with 3 genres, 30 behaviours with theirs, user, hour), mba regulariser;
item ids uniform over the vocabulary (the worst case for memory locality). Only the item table
grows. The lazy step uses it whole while it has no more rows than the batch's 31,744 item-id slots
(+ 1), row-sparse beyond (column "lazy item table"; ctrjax/train/lazy.py), so growth is also
printed over the row-sparse sizes alone.

For each vocabulary size the dense (optax over everything) and the lazy_adam train steps are
built side by side, and all (vocabulary, optimiser) pairs are timed in interleaved rounds after a
warm-up that includes compilation, so that machine noise hits them alike. Each step is timed on
its own (block_until_ready); the table gives the median and the minimum (the least disturbed step
on a shared machine). Prints the table and each optimiser's growth ratio (time at the largest
vocabulary / at the smallest) and writes benchmarks/results/lazy_embeddings.json.

Memory: at 10^7 rows a [V, 16] float32 table is 640 MB; dense Adam holds the table and two moments
and, during a step, a dense gradient and its update (~3.2 GB peak), lazy Adam the table and two
moments (~1.9 GB); all sizes together peak at ~6 GB.
"""
import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np

from configs import base as base_config
from ctrjax.data.packing import BatchLayout
from ctrjax.data.schema import Field, Schema
from ctrjax.models import build_model
from ctrjax.train import mesh as mesh_lib
from ctrjax.train import step as step_lib
from ctrjax.train.lazy import LazyEmbeddings, uses_whole_table
from ctrjax.train.regularizers import EmbeddingRegularizer

OUT = pathlib.Path(__file__).parent / "results" / "lazy_embeddings.json"
T, GENRES_PER_ITEM, GENRES, USERS, HOURS = 30, 3, 22, 100_000, 26
NUM_BATCHES = 8
STATS = {"median": np.median, "min": np.min}    # min: the least disturbed step on a shared machine


def _schema(items: int) -> Schema:
  return Schema((
      Field("item_id", "item", "categorical", vocab_size=items),
      Field("item_genres", "item", "categorical", shape=(GENRES_PER_ITEM,), vocab_size=GENRES, table="genre"),
      Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=items, table="item_id"),
      Field("hist_genres", "behavior", "sequence", shape=(T, GENRES_PER_ITEM), max_len=T, vocab_size=GENRES,
            table="genre"),
      Field("user_id", "user", "categorical", vocab_size=USERS),
      Field("hour", "context", "categorical", vocab_size=HOURS),
      Field("label", "label", "numeric", dtype="float32"),
  ))


def _loader_batch(items: int, batch_size: int, rng: np.random.Generator) -> dict:
  """A batch as the loader yields it: behaviours left-padded to T, random history lengths."""
  ids = lambda hi, shape: rng.integers(2, hi, shape).astype(np.int32)  # noqa: E731
  hist = ids(items, (batch_size, T))
  hist[np.arange(T) < rng.integers(0, T + 1, (batch_size, 1))] = 0
  return {"item": {"item_id": ids(items, batch_size),
                   "item_genres": ids(GENRES, (batch_size, GENRES_PER_ITEM))},
          "behavior": {"hist_item_id": hist,
                       "hist_genres": ids(GENRES, (batch_size, T, GENRES_PER_ITEM)) * (hist[..., None] != 0)},
          "user": {"user_id": ids(USERS, batch_size)}, "context": {"hour": ids(HOURS, batch_size)},
          "label": rng.integers(0, 2, batch_size).astype(np.float32),
          "meta": {"weight": np.ones(batch_size, np.float32)}}


class _Bench:
  """One optimiser's jitted train step, state and device batches at one vocabulary size."""

  def __init__(self, embeddings: str, items: int, batch_size: int, warmup: int = 3):
    config = base_config.get_config()
    config.optimizer.embeddings = embeddings
    schema = _schema(items)
    model = build_model(config.model_name, schema, config.model)
    rng = np.random.default_rng(0)
    counts = {t: rng.integers(0, 50, v, dtype=np.int32) for t, v in schema.tables.items()}
    regularizer = EmbeddingRegularizer.build(schema, counts, "mba", 1e-6)
    lazy = LazyEmbeddings.build(config.optimizer, model)
    mesh, layout = mesh_lib.make_mesh(1), BatchLayout.from_schema(schema)
    self.batches = [mesh_lib.to_global(layout.pack(_loader_batch(items, batch_size, rng)), mesh)
                    for _ in range(NUM_BATCHES)]
    self.step, _ = step_lib.jit_steps(mesh, layout, regularizer, lazy)
    self.state = step_lib.create_train_state(
        model, step_lib.make_optimizer(config.optimizer), jax.jit(layout.unpack)(self.batches[0]),
        jax.random.PRNGKey(0), mesh, regularizer, lazy)
    self.rng = jax.random.PRNGKey(1)
    self.i = 0
    self.run(warmup)

  def run(self, steps: int) -> list[float]:
    """Seconds per step, each step waited for."""
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batches[self.i % NUM_BATCHES], self.rng)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - start)
      self.i += 1
    return times


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--vocab_sizes", nargs="+", type=int, default=[10**4, 10**5, 10**6, 10**7])
  ap.add_argument("--batch_size", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=8)
  a = ap.parse_args()
  optimizers = ("dense", "lazy_adam")
  benches = {(items, o): _Bench(o, items, a.batch_size) for items in a.vocab_sizes for o in optimizers}
  times = {k: [] for k in benches}
  for r in range(a.rounds):
    for k, bench in benches.items():
      times[k] += bench.run(a.steps)
    print(f"round {r + 1}/{a.rounds} done", flush=True)
  slots = a.batch_size * (1 + T)
  rows = []
  for items in a.vocab_sizes:
    table = "whole" if uses_whole_table(items, slots) else "row-sparse"
    rows.append({"items": items, "lazy_item_table": table,
                 "step_seconds": {o: times[items, o] for o in optimizers}})
    rows[-1].update({f"{o}_{s}_ms": 1e3 * float(stat(times[items, o]))
                     for o in optimizers for s, stat in STATS.items()})
  sparse = [r for r in rows if r["lazy_item_table"] == "row-sparse"]
  spans = {"all": (rows[0], rows[-1])}
  if len(sparse) > 1:
    spans["row_sparse"] = (sparse[0], sparse[-1])
  growth = {f"{o}_{s}_{span}": last[f"{o}_{s}_ms"] / first[f"{o}_{s}_ms"]
            for span, (first, last) in spans.items() for o in optimizers for s in STATS}
  print(f"\n{jax.device_count()} {jax.devices()[0].platform} device(s), batch {a.batch_size} "
        f"({slots:,} item-id slots), step times over {a.rounds} rounds x {a.steps} steps: median / min")
  print(f"{'item rows':>22s} {'dense Adam ms':>17s} {'lazy Adam ms':>15s} {'dense/lazy':>11s}  "
        f"lazy item table")
  for r in rows:
    print(f"{r['items']:>22,} {r['dense_median_ms']:8.1f} / {r['dense_min_ms']:6.1f} "
          f"{r['lazy_adam_median_ms']:6.1f} / {r['lazy_adam_min_ms']:5.1f} "
          f"{r['dense_median_ms'] / r['lazy_adam_median_ms']:10.1f}x  {r['lazy_item_table']}")
  for span, (first, last) in spans.items():
    label = f"growth {last['items']:.0e}/{first['items']:.0e}".replace("+0", "")
    print(f"{label:>22s} " + " ".join(
        f"{growth[f'{o}_median_{span}']:7.2f}x / {growth[f'{o}_min_{span}']:.2f}x" for o in optimizers))
  OUT.parent.mkdir(parents=True, exist_ok=True)
  OUT.write_text(json.dumps({"batch_size": a.batch_size, "steps": a.steps, "rounds": a.rounds,
                             "devices": jax.device_count(), "platform": jax.devices()[0].platform,
                             "machine": platform.machine(), "jax": jax.__version__,
                             "growth": growth, "rows": rows}, indent=1) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
