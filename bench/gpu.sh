#!/usr/bin/env bash
# gpu.sh: the CUDA backend on a GPU machine, in one command (docs/cuda.md):
#   1. configure and build with MOEC_CUDA=ON (sm_90 + PTX), optimised
#   2. the GPU tests (ctest -L gpu: every op against the CPU kernels; whole models
#      20 steps cpu vs cuda), then the whole test suite
#   3. compute-sanitizer memcheck and racecheck on test_cuda_ops
#   4. benchmarks: the MoE layer fwd+bwd (8192 tokens, D 1024, 64 experts of 4096,
#      k = 2 and 4; FP32, then TF32) in moec and in PyTorch (python3)
#   5. lm: LM training on the GPU: `moec run --backend cuda` of bench/lm_bench.moe (the
#      CPU benchmark's model) and bench/lm_bench_gpu.moe (scaled up) against
#      bench/lm_torch.py --device cuda (cuDNN LSTM, FP32) on the same sizes: tokens/s
#      after warm-up and the ratio
#   6. a short table last
# Logs and JSON under $OUT (default build-gpu/out). Usage:
#   bench/gpu.sh [STAGES]   STAGES: any of build test sanitize bench lm (default: all five)
#   QUICK=1 bench/gpu.sh    smaller benchmark (2048 tokens) and no TF32 pass
#   BUILD=dir OUT=dir BUILD_TYPE=Release   (defaults: build-gpu, build-gpu/out, RelWithDebInfo)
# Through the device tool (10 minutes a command; the build dir is kept between calls):
#   bench/gpu.sh build test sanitize      then      bench/gpu.sh bench lm
set -u
STAGES=${*:-build test sanitize bench lm}
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-gpu}
OUT=${OUT:-$BUILD/out}
mkdir -p "$OUT"
JOBS=$(nproc 2>/dev/null || echo 4)
declare -a ROWS=()
row() { ROWS+=("$(printf '%-44s %s' "$1" "$2")"); echo "== $1: $2"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 ||
  echo "no nvidia-smi" >"$OUT/gpu.txt"
row "GPU" "$(head -1 "$OUT/gpu.txt")"

# ---- 1. build (the later stages build what they need too: cmake --build is incremental)
if cmake -S "$ROOT" -B "$BUILD" -DMOEC_CUDA=ON -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >"$OUT/cmake.log" 2>&1 &&
   cmake --build "$BUILD" -j"$JOBS" --target moec test_cuda_ops test_cuda_model test_cuda_optim bench_moe_layer_cuda \
     >"$OUT/build.log" 2>&1; then
  row "build (CUDA targets)" "ok"
else
  row "build (CUDA targets)" "FAILED (see $OUT/build.log)"
  tail -30 "$OUT/cmake.log" "$OUT/build.log"
  printf '%s\n' "${ROWS[@]}"
  exit 1
fi
if want build || want test; then
  cmake --build "$BUILD" -j"$JOBS" >>"$OUT/build.log" 2>&1 && row "build (everything)" "ok" ||
    row "build (everything)" "FAILED (see $OUT/build.log)"
fi

# ---- 2. tests
if want test; then
(cd "$BUILD" && ctest -L gpu --output-on-failure) >"$OUT/ctest_gpu.log" 2>&1
row "ctest -L gpu" "$(grep -E 'tests passed|tests failed' "$OUT/ctest_gpu.log" | tail -1)"
"$BUILD/tests/test_cuda_ops" >"$OUT/test_cuda_ops.log" 2>&1
row "test_cuda_ops" "rc=$? $(tail -1 "$OUT/test_cuda_ops.log")"
"$BUILD/tests/test_cuda_model" >"$OUT/test_cuda_model.log" 2>&1
row "test_cuda_model" "rc=$? $(tail -1 "$OUT/test_cuda_model.log")"
"$BUILD/tests/test_cuda_optim" >"$OUT/test_cuda_optim.log" 2>&1
row "test_cuda_optim (device optimizer)" "rc=$? $(tail -1 "$OUT/test_cuda_optim.log")"
sh "$ROOT/tests/gpu/test_cuda_train.sh" "$BUILD/moec" >"$OUT/test_cuda_train.log" 2>&1
row "test_cuda_train (moec run --backend cuda)" "rc=$? $(tail -1 "$OUT/test_cuda_train.log")"
(cd "$BUILD" && ctest -j"$JOBS" --output-on-failure) >"$OUT/ctest_all.log" 2>&1
row "ctest (all)" "$(grep -E 'tests passed|tests failed' "$OUT/ctest_all.log" | tail -1)"
fi

# ---- 3. compute-sanitizer
if want sanitize; then
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$CS" ]; then
  for tool in memcheck racecheck; do
    "$CS" --tool "$tool" --error-exitcode 9 "$BUILD/tests/test_cuda_ops" --sanitizer >"$OUT/$tool.log" 2>&1
    rc=$?
    row "compute-sanitizer $tool" "rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1)"
  done
else
  row "compute-sanitizer" "not found"
fi
fi

# ---- 4. benchmarks
if want bench; then
TOK=8192
[ "${QUICK:-0}" = 1 ] && TOK=2048
MODES="fp32 tf32"
[ "${QUICK:-0}" = 1 ] && MODES="fp32"
rm -f "$OUT/moec.jsonl" "$OUT/torch.jsonl"
for mode in $MODES; do
  flag=""
  [ "$mode" = tf32 ] && flag="--tf32"
  for k in 2 4; do
    log="$OUT/bench_moec_k${k}_$mode.log"
    "$BUILD/bench/bench_moe_layer_cuda" --tokens $TOK --k $k $flag --json "$OUT/moec.jsonl" >"$log" 2>&1
    if grep -q 'moe layer ' "$log"; then
      row "moec layer k=$k $mode" "$(grep -E 'moe layer ' "$log" | awk '{print $3" ms"}') | experts $(grep 'expert / dense' "$log" | awk '{print $4}') of dense | routing $(grep 'routing share' "$log" | awk '{print $3}')"
    else
      row "moec layer k=$k $mode" "$(tail -1 "$log")"
    fi
    tlog="$OUT/bench_torch_k${k}_$mode.log"
    python3 "$ROOT/bench/moe_layer_torch.py" --tokens $TOK --k $k $flag --moec-json "$OUT/moec.jsonl" \
      --json "$OUT/torch.jsonl" >"$tlog" 2>&1
    if grep -q 'best:' "$tlog"; then
      row "torch k=$k $mode" "$(grep 'best:' "$tlog" | sed 's/^ *best: //')"
    else
      row "torch k=$k $mode" "$(tail -1 "$tlog")"
    fi
  done
done
fi

# ---- 5. LM training on the GPU: moec run --backend cuda vs PyTorch with cuDNN's LSTM
if want lm; then
# moec's rate after 10 warm-up steps from its --metrics lines: moec_rate JSONL TOKENS_PER_STEP
moec_rate() { python3 "$ROOT/bench/moec_rate.py" "$1" "$2" 10 0; }
for size in cpu_model scaled; do
  if [ $size = cpu_model ]; then
    moe=bench/lm_bench.moe bt=640 msteps=${LM_STEPS:-200}
    targs="--batch 32"
  else
    moe=bench/lm_bench_gpu.moe bt=2560 msteps=${LM_STEPS:-80}
    targs="--dim 1024 --experts 32 --hidden 2048 --batch 128"
  fi
  [ "${QUICK:-0}" = 1 ] && msteps=30
  mlog="$OUT/lm_moec_$size.log"
  "$BUILD/moec" run "$ROOT/$moe" --backend cuda --steps "$msteps" --quiet --json \
    --metrics "$OUT/lm_moec_$size.jsonl" </dev/null >"$mlog" 2>&1
  if [ $? = 0 ]; then
    mt=$(moec_rate "$OUT/lm_moec_$size.jsonl" $bt)
    row "LM $size: moec --backend cuda" "$mt tokens/s (after 10 warm-up steps; $msteps steps)"
  else
    mt=nan
    row "LM $size: moec --backend cuda" "FAILED: $(tail -1 "$mlog")"
  fi
  tlog="$OUT/lm_torch_$size.log"
  python3 "$ROOT/bench/lm_torch.py" --device cuda $targs --steps 50 --warmup 10 --json >"$tlog" 2>&1
  if grep -q '^{' "$tlog"; then
    tt=$(grep '^{' "$tlog" | tail -1 | python3 -c 'import json,sys; print("%.0f" % json.loads(sys.stdin.read())["tokens_per_s"])')
    row "LM $size: PyTorch cuDNN LSTM" "$tt tokens/s"
    row "LM $size: moec / PyTorch" "$(python3 -c "import sys; m, t = float('$mt'), float('$tt'); print(f'{m / t:.2f}x')")"
  else
    row "LM $size: PyTorch cuDNN LSTM" "FAILED: $(tail -1 "$tlog")"
  fi
done
fi

# ---- 6. table
echo
echo "================ bench/gpu.sh summary ($OUT) ================"
printf '%s\n' "${ROWS[@]}"
for f in "$OUT"/bench_moec_k*_fp32.log "$OUT"/bench_torch_k*_fp32.log; do
  [ -f "$f" ] && { echo "--- $(basename "$f")"; cat "$f"; }
done
