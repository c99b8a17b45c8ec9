"""K seeds in one vmapped program (ctrjax/train/seeds.py) against the same K runs one after another.

  .venv/bin/python -m benchmarks.seeds_in_parallel [--configs configs/mian.py configs/din.py]
      [--seeds 5] [--epochs 1] [--dataset ml-latest-small] [--batch_size N] [--out FILE.json]

Per config: the end-to-end wall time (set-up, compilation with the persistent cache cold for that
config, training, validation and test) of K separate ``train_and_evaluate`` runs and of one
``train_seeds`` group, with early stopping off (a fixed number of epochs) so both do the same work;
their ratio, and the largest difference in test AUC between a seed's two runs. The two modes
alternate config by config in one process, so machine noise hits both. Prints a table and writes
benchmarks/results/seeds_in_parallel.json.
"""
import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import jax

import data_prep
from ctrjax.train import seeds as seeds_lib
from ctrjax.train import trainer
from experiments.main import load_config_module

OUT = pathlib.Path(__file__).parent / "results" / "seeds_in_parallel.json"


def _config(path: str, dataset: str, epochs: int, batch_size: int):
  c = load_config_module(path).get_config()
  c.dataset = data_prep.switch_dataset(c.dataset, dataset)
  c.num_epochs, c.progress_bar, c.num_devices = epochs, False, 1
  c.batch_size = batch_size or c.batch_size
  c.early_stopping.patience = epochs + 1        # no early stop: both modes train every epoch
  return c


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--configs", nargs="+", default=["configs/mian.py", "configs/din.py"])
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--epochs", type=int, default=1)
  ap.add_argument("--dataset", default="ml-latest-small")
  ap.add_argument("--batch_size", type=int, default=0, help="0 = the config's")
  ap.add_argument("--out", type=pathlib.Path, default=OUT)
  a = ap.parse_args()
  seeds = list(range(a.seeds))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    for path in a.configs:
      config = _config(path, a.dataset, a.epochs, a.batch_size)
      name = pathlib.Path(path).stem
      dataset_path = data_prep.prepare(config.dataset)
      start = time.perf_counter()
      separate = [trainer.train_and_evaluate(seeds_lib.seed_config(config, s), tmp / f"{name}_sep{s}",
                                             dataset_path)
                  for s in seeds]
      t_separate = time.perf_counter() - start
      start = time.perf_counter()
      together = seeds_lib.train_seeds(config, seeds, [tmp / f"{name}_par{s}" for s in seeds], dataset_path)
      t_together = time.perf_counter() - start
      rows.append({
          "config": path, "seeds": a.seeds, "epochs": a.epochs, "batch_size": config.batch_size,
          "separate_s": t_separate, "together_s": t_together, "speedup": t_separate / t_together,
          "max_test_auc_diff": max(abs(x["test"]["auc"] - y["test"]["auc"]) for x, y in zip(separate, together)),
          "test_auc_separate": [x["test"]["auc"] for x in separate],
          "test_auc_together": [y["test"]["auc"] for y in together]})
      print(f"{path}: {t_separate:.1f} s one by one, {t_together:.1f} s in one program", flush=True)
  print(f"\n{a.seeds} seeds, {a.epochs} epoch(s) on {a.dataset}, {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s) visible (1 used)")
  print(f"{'config':<22}{'batch':>6}{'K runs one by one (s)':>24}{'K in one program (s)':>23}"
        f"{'speed-up':>10}{'max |Δ test AUC|':>19}")
  for r in rows:
    print(f"{r['config']:<22}{r['batch_size']:>6}{r['separate_s']:>24.1f}{r['together_s']:>23.1f}"
          f"{r['speedup']:>9.2f}x{r['max_test_auc_diff']:>19.5f}")
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                               "cpu_count": os.cpu_count(), "platform": jax.devices()[0].platform,
                               "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
                               "rows": rows}, indent=1) + "\n")
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
