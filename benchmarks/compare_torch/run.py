"""ctrjax against DeepCTR-Torch and torch-rechub side by side: training samples/s, test AUC, logloss.

  benchmarks/compare_torch/run.sh [--rows 200000] [--items 50000] [--models din,dien,...]
      [--repeats 3] [--epochs 1] [--warmup 20]

run.sh builds the torch venv and calls this module. One synthetic dataset (data_prep.synthetic) is
generated once; its train and test arrays are exported to one npz, so every library trains on the
same encoded ids and labels (the torch side right-pads the histories, which both libraries need).
Each (model, library) trains in a fresh process, libraries alternating run by run, with the
hyperparameters of spec.py. Per model and library it prints steady-state and end-to-end samples/s
(means over repeats), ctrjax's steady-state ratio to the library, test AUC and logloss, peak RSS;
writes benchmarks/results/compare_torch.json. Goal: ctrjax >= 3x the faster torch library per model
at equal AUC. With --compile_cache, ctrjax's runs read a persistent compilation cache that one
untimed run per model filled first, so its end-to-end rate is that of a user's second run.
"""
import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys

import numpy as np

from benchmarks.compare_torch import spec
from ctrjax.data.dataset import Dataset
from ctrjax.layers.mlp import DENSE_INITIALIZERS
from data_prep import synthetic

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / "benchmarks" / "results" / "compare_torch.json"
CACHE = REPO / "cache" / "compare_torch"
COMPILE_CACHE = CACHE / "jax_compilation_cache"


def export(dataset: pathlib.Path, seed: int, cache: pathlib.Path = CACHE) -> pathlib.Path:
  """The dataset's train and test columns (plus DIEN negatives and vocabulary sizes) as one npz,
  cached in ``cache`` by the dataset's name."""
  out = cache / f"{dataset.name}.npz"
  if out.is_file():
    return out
  ds = Dataset(dataset)
  arrays = {f"vocab_{f.name}": np.int64(f.vocab_size) for f in ds.schema.fields if f.has_ids}
  for split in ("train", "test"):
    for name in (*spec.SPARSE, spec.HISTORY, ds.schema.label.name):
      arrays[f"{split}_{name}"] = np.asarray(ds.columns[split][name])
  train_hist = arrays[f"train_{spec.HISTORY}"]
  pool = train_hist[train_hist != 0]
  for i, split in enumerate(("train", "test")):
    hist = arrays[f"{split}_{spec.HISTORY}"]
    arrays[f"{split}_{spec.NEG_HISTORY}"] = spec.sample_negatives(hist, pool, seed + i)
  cache.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".tmp.npz")
  np.savez(tmp, **arrays)
  tmp.rename(out)
  return out


def schedule(models: list[str], libraries: list[str], repeats: int) -> list[tuple[int, str, str]]:
  """(repeat, model, library) in run order: per model the libraries that have it, their order
  rotated by repeat and model so that each library goes first equally often."""
  runs = []
  for r in range(repeats):
    for i, model in enumerate(models):
      libs = [lib for lib in libraries if model in spec.AVAILABLE[lib]]
      k = (r + i) % len(libs)
      runs += [(r, model, lib) for lib in libs[k:] + libs[:k]]
  return runs


def run_one(cmd: list[str], timeout: float) -> dict:
  """Runs a runner; its RESULT line as a dict, or {"error": the last line of its output}."""
  try:
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  for line in p.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (p.stderr or p.stdout).strip().splitlines()
  return {"error": f"exit {p.returncode}: {tail[-1] if tail else 'no output'}"}


def _mean(values) -> float:
  return float(np.mean(list(values)))


def summarise(results: list[dict], models: list[str], libraries: list[str]) -> list[dict]:
  """Means over repeats per (model, library); ctrjax's steady-state ratio to each library, and to
  the faster torch library with the AUC difference (ctrjax minus it)."""
  rows = []
  for model in models:
    per = {}
    for lib in libraries:
      mine = [r for r in results if r["model"] == model and r["library"] == lib]
      ok = [r for r in mine if "error" not in r]
      errors = [r["error"] for r in mine if "error" in r]
      if model not in spec.AVAILABLE[lib]:
        per[lib] = {"status": "n/a"}
      elif not ok:
        per[lib] = {"status": "failed", "errors": errors}
      else:
        auc = [r["test_auc"] for r in ok]
        per[lib] = {"status": "ok", "runs": len(ok), "errors": errors,
                    "steady": _mean(r["samples_per_s"]["steady"] for r in ok),
                    "end_to_end": _mean(r["samples_per_s"]["end_to_end"] for r in ok),
                    "test_auc": _mean(auc), "test_auc_std": float(np.std(auc)),
                    "test_logloss": _mean(r["test_logloss"] for r in ok),
                    "peak_rss_mib": _mean(r["peak_rss_mib"] for r in ok),
                    "parameters": ok[0]["parameters"]}
    jx = per["ctrjax"]
    row = {"model": model, "libraries": per, "fastest_torch": None}
    if jx["status"] == "ok":
      for lib, p in per.items():
        if lib != "ctrjax" and p["status"] == "ok":
          p["ctrjax_speedup"] = jx["steady"] / p["steady"]
      torch_ok = [lib for lib, p in per.items() if lib != "ctrjax" and p["status"] == "ok"]
      if torch_ok:
        fastest = max(torch_ok, key=lambda lib: per[lib]["steady"])
        row.update(fastest_torch=fastest, speedup=per[fastest]["ctrjax_speedup"],
                   auc_delta=jx["test_auc"] - per[fastest]["test_auc"])
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  head = (f"{'model':8s} {'library':20s} {'steady/s':>9s} {'e2e/s':>9s} {'ctrjax x':>8s} "
          f"{'test AUC':>8s} {'AUC sd':>6s} {'logloss':>8s} {'peak MiB':>8s} {'params':>9s}")
  lines = [head, "-" * len(head)]
  for row in rows:
    for lib, p in row["libraries"].items():
      name = spec.LIBRARY_NAMES[lib]
      if p["status"] != "ok":
        lines.append(f"{row['model']:8s} {name:20s} {p['status']:>9s}")
        continue
      ratio = f"{p['ctrjax_speedup']:.2f}" if "ctrjax_speedup" in p else ""
      lines.append(f"{row['model']:8s} {name:20s} {p['steady']:9,.0f} {p['end_to_end']:9,.0f} "
                   f"{ratio:>8s} {p['test_auc']:8.4f} {p['test_auc_std']:6.4f} {p['test_logloss']:8.4f} "
                   f"{p['peak_rss_mib']:8,.0f} {p['parameters']:9,d}")
    if row["fastest_torch"]:
      lines.append(f"{'':8s} ctrjax / {spec.LIBRARY_NAMES[row['fastest_torch']]} (the faster): "
                   f"{row['speedup']:.2f}x steady (goal >= 3x), AUC {row['auc_delta']:+.4f}")
  return "\n".join(lines)


def _command(a, lib: str, model: str, repeat: int, dataset: pathlib.Path,
             npz: pathlib.Path) -> list[str]:
  """The runner command line of one run (ctrjax's venv or the torch venv)."""
  if lib == "ctrjax":
    cmd = [sys.executable, "-m", "benchmarks.compare_torch.jax_runner", "--dataset", str(dataset)]
  else:
    cmd = [a.torch_python, "-m", "benchmarks.compare_torch.torch_runner", "--library", lib,
           "--data", str(npz), "--threads", str(a.torch_threads), "--device", a.torch_device]
  cmd += ["--model", model, "--epochs", str(a.epochs), "--warmup", str(a.warmup),
          "--seed", str(a.seed + repeat)]
  if lib == "ctrjax":
    cmd += ["--dnn_kernel_init", a.ctrjax_dnn_kernel_init]
    if a.compile_cache:
      cmd += ["--compile_cache", str(COMPILE_CACHE)]
  if (lib, model) == ("rechub", "deepfm"):
    cmd += ["--deepfm_first_order", a.rechub_deepfm_first_order]
  return cmd + (["--batch_norm"] if a.batch_norm else [])


def prime_compile_cache(a, models: list[str], dataset: pathlib.Path, npz: pathlib.Path) -> None:
  """Empties COMPILE_CACHE and fills it with one untimed ctrjax run per model (--prime)."""
  shutil.rmtree(COMPILE_CACHE, ignore_errors=True)
  for model in models:
    cmd = _command(a, "ctrjax", model, 0, dataset, npz) + ["--prime"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=a.timeout)
    if p.returncode:
      tail = (p.stderr or p.stdout).strip().splitlines()
      raise SystemExit(f"priming the compilation cache for {model} failed: "
                       f"{tail[-1] if tail else p.returncode}")
    print(f"  primed ctrjax {model}", flush=True)


def _progress(res: dict) -> str:
  head = f"  repeat {res['repeat']} {res['model']:8s} {res['library']:8s} "
  if "error" in res:
    return head + res["error"]
  rate = res["samples_per_s"]
  return head + (f"steady {rate['steady']:9,.0f}/s  e2e {rate['end_to_end']:9,.0f}/s  "
                 f"AUC {res['test_auc']:.4f}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=200_000)
  ap.add_argument("--items", type=int, default=50_000)
  ap.add_argument("--users", type=int, default=2_000)
  ap.add_argument("--max_len", type=int, default=30)
  ap.add_argument("--models", default=",".join(spec.MODELS))
  ap.add_argument("--libraries", default=",".join(spec.LIBRARIES))
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--epochs", type=int, default=1)
  ap.add_argument("--warmup", type=int, default=20, help="steps excluded from the steady state")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch_norm", action="store_true",
                  help="BatchNorm in ctrjax's and DeepCTR-Torch's DNNs (torch-rechub's always have it)")
  ap.add_argument("--torch_threads", type=int, default=0,
                  help="torch intra-op threads (0: torch's default)")
  ap.add_argument("--torch_device", default="cpu", help="cpu, or cuda where torch has a GPU (ctrjax "
                  "takes jax's default device)")
  ap.add_argument("--compile_cache", action="store_true",
                  help=f"ctrjax with a persistent compilation cache ({COMPILE_CACHE.relative_to(REPO)}), "
                  "filled by one untimed run per model first")
  ap.add_argument("--ctrjax_dnn_kernel_init", choices=sorted(DENSE_INITIALIZERS),
                  default="xavier_normal", help="ctrjax's DNN kernel initialiser (torch_linear: the "
                  "torch libraries' nn.Linear default)")
  ap.add_argument("--rechub_deepfm_first_order", choices=("linear", "per_feature"), default="linear",
                  help="torch-rechub's DeepFM first-order term: its own Linear over the field "
                  "embeddings, or the paper's scalar weight per id (as ctrjax and DeepCTR-Torch)")
  ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
  ap.add_argument("--torch_python", default=str(REPO / "cache" / "torch-venv" / "bin" / "python"))
  ap.add_argument("--out", default=str(OUT))
  a = ap.parse_args()
  try:
    models = spec.parse_models(a.models)
  except ValueError as e:
    ap.error(str(e))
  libraries = [lib.strip() for lib in a.libraries.split(",")]
  if any(lib not in spec.LIBRARIES for lib in libraries) or "ctrjax" not in libraries:
    ap.error(f"--libraries {a.libraries!r}: ctrjax plus any of {','.join(spec.LIBRARIES[1:])}")
  if any(lib != "ctrjax" for lib in libraries) and not pathlib.Path(a.torch_python).is_file():
    ap.error(f"--torch_python {a.torch_python} does not exist; "
             f"benchmarks/compare_torch/run.sh builds it")

  dataset = synthetic.prepare(num_rows=a.rows, num_items=a.items, num_users=a.users,
                              max_len=a.max_len, seed=a.seed)
  steps = a.epochs * (Dataset(dataset, validate=False).num_rows("train") // spec.BATCH_SIZE)
  if not 0 < a.warmup < steps:
    ap.error(f"--warmup {a.warmup} must be below the {steps} training steps; raise --rows or --epochs")
  npz = export(dataset, a.seed)
  print(f"dataset {dataset} ({a.rows:,} rows, {a.items:,} items); {steps} steps of "
        f"{spec.BATCH_SIZE}, warm-up {a.warmup}; torch arrays {npz}", flush=True)

  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  notes = spec.deviations(models, libraries, a.batch_norm)
  if a.ctrjax_dnn_kernel_init != "xavier_normal":
    notes.append(f"ctrjax: DNN kernels initialised {a.ctrjax_dnn_kernel_init} (PyTorch's nn.Linear "
                 "default), as the torch libraries'")
  if a.rechub_deepfm_first_order != "linear" and "deepfm" in models and "rechub" in libraries:
    notes.append("torch-rechub deepfm: first-order term replaced by a scalar weight per id "
                 "(--rechub_deepfm_first_order per_feature)")
  runs = schedule(models, libraries, a.repeats)
  if a.compile_cache:
    prime_compile_cache(a, models, dataset, npz)
  results = []
  for r, model, lib in runs:
    results.append({"repeat": r, "model": model, "library": lib,
                    **run_one(_command(a, lib, model, r, dataset, npz), a.timeout)})
    print(_progress(results[-1]), flush=True)
    rows = summarise(results, models, libraries)
    out.write_text(json.dumps({  # after every run, so a stopped grid keeps what it measured
        "args": vars(a), "dataset": str(dataset), "steps": steps, "machine": platform.machine(),
        "cpus": os.cpu_count(), "hparams": spec.HPARAMS, "deviations": notes,
        "complete": len(results) == len(runs), "summary": rows, "runs": results}, indent=1) + "\n")

  print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch on {a.torch_device}; batch {spec.BATCH_SIZE}, embedding "
        f"{spec.EMBED_DIM}, Adam {spec.LEARNING_RATE:g}, {a.epochs} epoch(s), DNN BatchNorm "
        f"{'on' if a.batch_norm else 'off'}; means over {a.repeats} repeat(s)"
        + ("; ctrjax with a warm persistent compilation cache" if a.compile_cache else ""))
  print(table(rows))
  print("\n".join(["deviations from the shared hyperparameters:", *notes]))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
