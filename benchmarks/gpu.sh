#!/bin/bash
# Issue 7's GPU checks as one script (run it where a GPU is; tests never depend on it):
# DIN and MIAN training throughput at batch 1024 and 8192, then K = 5 seeds in one vmapped
# program against 5 runs one after another. Writes JSON into OUTDIR (default benchmarks/results).
#   benchmarks/gpu.sh [OUTDIR]        # PYTHON=... to pick the interpreter (default python3)
set -u
out=${1:-benchmarks/results}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
timeout 200 "$py" -m benchmarks.train_throughput --configs configs/din.py configs/mian.py \
    --batch_sizes 1024 8192 --steps 100 --out "$out/train_throughput_gpu.json"
timeout 300 "$py" -m benchmarks.seeds_in_parallel --configs configs/din.py configs/mian.py --seeds 5 --epochs 1 --batch_size 1024 \
    --out "$out/seeds_in_parallel_gpu.json"
for batch in 1024 8192; do
  timeout 150 "$py" -m benchmarks.loader_vs_trainer --batch $batch --steps 100 \
      --out "$out/loader_vs_trainer_gpu_b$batch.json"
done
