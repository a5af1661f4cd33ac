#!/usr/bin/env bash
# Every GPU check in one go, for a machine with one CUDA device (a few minutes of GPU time in all):
#   1. the CUDA tests (tests/unit/test_cuda.py, the CUDA metric test, fp16 training with the gradient scaler),
#   2. benchmarks/quality.py --preset gpu (single-head vs K = 4 vs MH-C, 3 seeds, runs in parallel on the GPU),
#   3. benchmarks/speed.py --device cuda (step time, peak memory and validation time ratios; beside them the fork's
#      FP32 single-head step and MH-C with amp bf16, channels_last, bf16 + channels_last (issue 12's target: >= 1.5x
#      the fork's step rate, <= 0.7x its memory) and compile; --reference when .ref/NAFNet-main holds the paper's
#      reference code),
#   4. benchmarks/heads.py --preset gpu --scores (head_init x assignment, scores; the runs in parallel on the GPU).
# Each part has its own time limit (seconds: TEST_S, QUALITY_S, SPEED_S, HEADS_S) and the next part runs whatever the last did;
# PARTS (default "tests quality speed heads") chooses the parts; QUALITY_ARGS adds arguments to quality.py.
# When quality.py is stopped by its limit, its tables are written from the validations it recorded.
# Results and one log (run.log) go to $OUT (default benchmarks/results/gpu).
# Usage, from the repository root: OUT=/some/dir bash benchmarks/run_gpu.sh
# With a folder .whl/ of wheels (basicsr, lmdb, addict for the machine's Python) they are installed to /tmp/site first.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/run.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } 2>&1 | tee -a "$LOG"
python3 -c 'import torch, basicsr_mh, basicsr; print("torch", torch.__version__, "basicsr", basicsr.__version__)' \
    2>&1 | tee -a "$LOG"

PARTS=${PARTS:-tests quality speed heads}
if [[ " $PARTS " == *" tests "* ]]; then
    echo "== 1. CUDA tests" | tee -a "$LOG"
    timeout "${TEST_S:-100}" python3 -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py tests/unit/test_metrics.py \
        tests/unit/test_acceleration.py -k "cuda or fp16" \
        2>&1 | tee -a "$LOG" | tail -n 5
fi

if [[ " $PARTS " == *" quality "* ]]; then
    echo "== 2. quality.py --preset gpu" | tee -a "$LOG"
    timeout "${QUALITY_S:-420}" python3 benchmarks/quality.py --preset gpu --out "$OUT" ${QUALITY_ARGS:-} 2>&1 \
        | tee -a "$LOG" | grep -v '^  \[' | tail -n 40
    if [ ! -f "$OUT/quality_gpu.md" ] && [ -f "$OUT/quality_gpu.records.jsonl" ]; then
        echo "quality.py stopped by its limit: tables from the recorded validations" | tee -a "$LOG"
        python3 benchmarks/quality.py --summarize "$OUT/quality_gpu.records.jsonl" --out "$OUT" 2>&1 | tee -a "$LOG"
    fi
fi

if [[ " $PARTS " == *" speed "* ]]; then
    echo "== 3. speed.py --device cuda" | tee -a "$LOG"
    REF=()
    [ -f .ref/NAFNet-main/basicsr/models/archs/MHNAFNet_arch.py ] && REF=(--reference .ref)
    timeout "${SPEED_S:-300}" python3 benchmarks/speed.py --device cuda --repeats 5 --steps 3 --memory-repeats 1 \
        --variants "${SPEED_VARIANTS:-fork,mhc_bf16,mhc_cl,mhc_bf16_cl,mhc_compile}" "${REF[@]}" --out "$OUT" 2>&1 \
        | tee -a "$LOG"
fi
if [[ " $PARTS " == *" heads "* ]]; then
    echo "== 4. heads.py --preset gpu --scores" | tee -a "$LOG"
    timeout "${HEADS_S:-480}" python3 benchmarks/heads.py --preset gpu --scores --out "$OUT" 2>&1 \
        | tee -a "$LOG" | grep -v '^  \[' | tail -n 40
    if [ ! -f "$OUT/heads_gpu.md" ] && [ -f "$OUT/heads_gpu.records.jsonl" ]; then
        python3 benchmarks/heads.py --summarize "$OUT/heads_gpu.records.jsonl" --out "$OUT" 2>&1 | tee -a "$LOG"
    fi
fi
date | tee -a "$LOG"
