"""One ctrjax training run for the comparison; prints one ``RESULT {json}`` line.

  .venv/bin/python -m benchmarks.compare_torch.jax_runner --model din \
      --dataset data/prepared/synthetic-<hash> [--epochs 1] [--warmup 20] [--seed 0] [--batch_norm]
      [--dnn_kernel_init xavier_normal|torch_linear] [--compile_cache DIR [--prime]]

The trainer's own path: Setup (dataset, model, jitted steps), the grain loader with the host ->
device transfer in its threads, the jitted train step. Without --compile_cache end to end includes
every compile; with it, jax's persistent compilation cache in DIR (every program, whatever its
compile time), and --prime only fills it: init, a few train steps and one prediction, no RESULT.
"""
import argparse
import json
import resource
import time

import jax
import ml_collections
import numpy as np

from benchmarks.compare_torch import spec
from configs import base
from ctrjax.layers.mlp import DENSE_INITIALIZERS
from ctrjax.models import default_config
from ctrjax.train import trainer


def config(model: str, dataset: str, epochs: int, seed: int, batch_norm: bool,
           dnn_kernel_init: str = "xavier_normal") -> ml_collections.ConfigDict:
  """configs/base.py with the shared hyperparameters of spec.py."""
  c = base.get_config()
  c.model_name = model
  c.model = default_config(model, **spec.ctrjax_model_config(model, batch_norm, dnn_kernel_init))
  c.dataset.name, c.dataset.path = "path", dataset
  c.batch_size = c.eval_batch_size = spec.BATCH_SIZE
  c.optimizer.learning_rate = spec.LEARNING_RATE
  c.num_epochs, c.seed, c.progress_bar = epochs, seed, False
  return c


def prime(setup: trainer.Setup, state, batches, steps: int = 3) -> None:
  """Compiles what a timed run compiles (train steps, then prediction) into the persistent cache."""
  for _ in range(steps):
    state, _ = setup.train_step(state, next(batches), setup.rng)
  test = setup.source("test", train=False)
  jax.block_until_ready(setup.predict(state, next(setup.batches(test))))
  print(f"primed the compilation cache for {setup.config.model_name}", flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", choices=spec.MODELS, required=True)
  ap.add_argument("--dataset", required=True, help="prepared ctrjax dataset directory")
  ap.add_argument("--epochs", type=int, default=1)
  ap.add_argument("--warmup", type=int, default=20, help="steps excluded from the steady state")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch_norm", action="store_true", help="BatchNorm in the DNNs")
  ap.add_argument("--dnn_kernel_init", choices=sorted(DENSE_INITIALIZERS), default="xavier_normal",
                  help="the DNN's kernel initialiser (torch_linear: PyTorch's nn.Linear default)")
  ap.add_argument("--compile_cache", help="jax persistent compilation cache directory")
  ap.add_argument("--prime", action="store_true", help="only compile into --compile_cache")
  a = ap.parse_args()
  if a.prime and not a.compile_cache:
    ap.error("--prime needs --compile_cache")
  if a.compile_cache:
    jax.config.update("jax_compilation_cache_dir", a.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  t_start = time.perf_counter()
  run_config = config(a.model, a.dataset, a.epochs, a.seed, a.batch_norm, a.dnn_kernel_init)
  setup = trainer.Setup(run_config, run_config.dataset.path)
  src = setup.source("train", train=True)
  steps = src.batches_per_epoch * a.epochs
  batches = setup.batches(src)
  state = setup.init_state(src[0])
  if a.prime:
    prime(setup, state, batches)
    return
  t_warm = None
  for step in range(1, steps + 1):
    state, metrics = setup.train_step(state, next(batches), setup.rng)
    if step == a.warmup:
      jax.block_until_ready(metrics["loss"])
      t_warm = time.perf_counter()
  jax.block_until_ready(state.params)
  t_end = time.perf_counter()

  test = setup.source("test", train=False)
  probs = np.concatenate(jax.device_get([setup.predict(state, b) for b in setup.batches(test)]))
  probs = probs[:test.num_rows]
  y = np.asarray(setup.dataset.columns["test"][setup.dataset.schema.label.name])
  result = {"library": "ctrjax", "model": a.model, "seed": a.seed, "steps": steps, "warmup": a.warmup,
            "samples_per_s": spec.rates(steps, a.warmup, spec.BATCH_SIZE, t_start, t_warm, t_end),
            "train_seconds": t_end - t_start, "test_auc": spec.auc(y, probs),
            "test_logloss": spec.logloss(y, probs),
            "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "jax": jax.__version__, "devices": f"{jax.device_count()} {jax.devices()[0].platform}"}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
