#!/usr/bin/env bash
# The issue's required CPU generation cells, as two sequences side by side (one per core, 1 thread each).
#   bash benchmarks/run_cells.sh [OUTPUT_DIR]      (default runs/bench; one JSON and one log per cell)
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
O=${1:-runs/bench}
mkdir -p "$O"
PY=${PYTHON:-python}
B="$PY benchmarks/bench_generate.py --preset 0.5b-shaped-4l --size 256 --num-iter 64 --threads 1"
(
  $B --dtype fp32 --batch 1 --json $O/g_fp32_b1.json > $O/g_fp32_b1.log 2>&1
  $B --dtype fp32 --batch 4 --json $O/g_fp32_b4.json > $O/g_fp32_b4.log 2>&1
  # inpaint (right half redrawn) against text-to-image in one run
  $B --dtype fp32 --batch 1 --repeats 2 --no-baseline --inpaint --json $O/g_fp32_b1_inpaint.json \
      > $O/g_fp32_b1_inpaint.log 2>&1
) &
(
  $B --dtype bf16 --batch 1 --ablate --json $O/g_bf16_b1.json > $O/g_bf16_b1.log 2>&1
  $B --dtype bf16 --batch 4 --json $O/g_bf16_b4.json > $O/g_bf16_b4.log 2>&1
  $PY benchmarks/bench_generate.py --preset 0.5b --size 256 --num-iter 16 --threads 1 --dtype fp32 --batch 1 \
      --json $O/g_full05b_fp32_b1_16.json > $O/g_full05b_fp32_b1_16.log 2>&1
) &
wait
echo "done: $O"
