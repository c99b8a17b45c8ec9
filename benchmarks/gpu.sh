#!/bin/bash
# The GPU checks as one script (run it where a GPU is; tests never depend on it). Issue 7: DIN and MIAN
# training throughput at batch 1024 and 8192, K = 5 seeds in one vmapped program against 5 runs one
# after another, loader vs trainer. Issue 18: host vs device-resident input with 1 vs 16 steps per
# call (benchmarks.scale input), and a grid's wall time with 1 worker against WORKERS workers sharing
# the GPU (CTRJAX_WORKERS_PER_DEVICE), each in its own empty jax compilation cache, the dataset
# prepared beforehand. Writes JSON into OUTDIR (default benchmarks/results).
#   benchmarks/gpu.sh [OUTDIR]        # PYTHON=... the interpreter (default python3); GRID=... the grid
#                                     # (default configs/ablation_mian.py:quick); WORKERS=N (default 4)
set -u
out=$(realpath -m "${1:-benchmarks/results}")
mkdir -p "$out"
py=${PYTHON:-python3}
grid=${GRID:-configs/ablation_mian.py:quick}
workers=${WORKERS:-4}
repo=$(pwd)
[[ $grid = /* ]] || grid=$repo/$grid
export PYTHONUNBUFFERED=1 PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
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
timeout 500 "$py" -m benchmarks.scale input --models base_model dcn din --batch_sizes 1024 8192 --steps 160 \
    --out "$out/scale_input_gpu.json"

# A grid's wall time: 1 worker; WORKERS workers; WORKERS workers with device placement and 16 steps per call.
"$py" -c "import sys, data_prep; from experiments.main import load_config_module as load
c = load(sys.argv[1]).get_config(sys.argv[1].partition(':')[2] or None); data_prep.prepare(c.dataset)" "$grid"
grid_run() {  # name, workers, extra flags...
  local name=$1 n=$2; shift 2
  local dir; dir=$(mktemp -d)         # its cwd: a fresh .jax_cache; the runs under it
  local share=""; [ "$n" -gt 1 ] && share=$n    # one worker: jax's default memory settings
  local start; start=$(date +%s)
  for i in $(seq "$n"); do
    (cd "$dir" && CTRJAX_WORKERS_PER_DEVICE=$share timeout 1200 "$py" -m experiments.main run \
        --config="$grid" --workdir="$dir/runs" --config.progress_bar=False "$@" > "worker$i.log" 2>&1) &
  done
  wait
  local seconds=$(($(date +%s) - start))
  local finished; finished=$(find "$dir/runs" -name result.json | wc -l)
  echo "grid $grid, $name: $n worker(s), $finished runs finished, $seconds s"
  echo "{\"grid\": \"$grid\", \"mode\": \"$name\", \"workers\": $n, \"runs_finished\": $finished, \"wall_seconds\": $seconds}" \
      > "$out/grid_workers_gpu_$name.json"
}
grid_run one_worker 1
grid_run "${workers}_workers" "$workers"
grid_run "${workers}_workers_device_k16" "$workers" --config.loader.placement=auto --config.steps_per_call=16
