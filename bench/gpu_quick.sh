#!/usr/bin/env bash
# gpu_quick.sh: the first check of the CUDA backend on one GPU, sized for a 15-minute
# device lend (under 8 minutes on an H100/H200); bench/gpu.sh keeps the longer suite.
#
#   bench/gpu_quick.sh pack     here (no GPU needed): builds the GPU binaries
#                               (build-gpu-quick/: Release, sm_90, no LLVM, no MPI) and
#                               packs them with the libraries a CUDA image may lack
#                               (OpenBLAS, libgfortran) into build-gpu-bundle/bundle.tar.xz
#                               (git-ignored; about 6 MiB: the folder to carry)
#   bench/gpu_quick.sh [run]    on the GPU machine: unpacks the bundle (or, when its
#                               binaries cannot start there, builds with -j16), then
#     1. the GPU tests: test_cuda_ops (every op vs the CPU kernels), test_cuda_fused
#        (fused = unfused, bit for bit), test_cuda_optim (the device optimizer = optim.c
#        bit for bit), test_cuda_model (models cpu vs cuda), test_cuda_train.sh (moec
#        run/eval/grad cpu vs cuda, 2 and 4 devices), test_cuda_nccl (NCCL on the GPUs
#        present, device discipline, the device Comm), cuda_link
#     2. compute-sanitizer --tool memcheck on test_cuda_ops
#     3. the MoE layer (8192 tokens, D 1024, 64 experts of 4096, k = 2 and 4, FP32):
#        moec against PyTorch's per-expert loop and its best grouped version (sorted,
#        padded baddbmm, torch._grouped_mm), and moec's expert GEMMs against one
#        cuBLAS GEMM of the same FLOPs
#     4. LM training (bench/lm_bench.moe): moec --backend cuda against bench/lm_torch.py
#        --device cuda (cuDNN's LSTM)
#     and writes one table, $OUT/summary.md (also printed last), and $OUT/logs.tar.gz.
# Every stage has a time limit, cut to what is left of the run's budget (BUDGET seconds
# from the start, default 450): a stage with under 10 s left is listed as not run. Logs
# go to build-gpu-quick/run/; the table and a tarball of the logs to $OUT (the device
# tool's folder that comes back: summary.md, logs.tar.gz). Without a GPU every GPU stage
# is listed as skipped with the reason (the pack step and the table still work).
# Environment: OUT, BUNDLE (default build-gpu-bundle), EN_FR (the en-fr pairs for the
# translation examples; default .gpudata/en-fr, carried: bench/README.md), BUDGET, STAGES (a subset of the
# stage names below, for a rerun: e.g. STAGES="test_cuda_ops memcheck"), JOBS (a build
# there: default 16). bench/README.md has the exact device call.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-run}
BUNDLE=${BUNDLE:-$ROOT/build-gpu-bundle}
OUT=${OUT:-$ROOT/build-gpu-quick/out}
BUDGET=${BUDGET:-450}
STAGES=${STAGES:-}
JOBS=${JOBS:-16}
T0=$(date +%s)
TARGETS="moec test_cuda_ops test_cuda_model test_cuda_nccl test_cuda_optim test_cuda_fused
bench_moe_layer_cuda cuda_link_probe"

elapsed() { echo $(($(date +%s) - T0)); }

# ---- pack (here): the binaries and the libraries they need beyond glibc and CUDA
if [ "$MODE" = pack ]; then
  B=$ROOT/build-gpu-quick
  if ! cmake -S "$ROOT" -B "$B" -DMOEC_CUDA=ON -DMOEC_LLVM=OFF -DMOEC_MPI=OFF \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90-real >"$B.cmake.log" 2>&1; then
    echo "gpu_quick pack: cmake failed (see $B.cmake.log)"
    exit 1
  fi
  # shellcheck disable=SC2086 # TARGETS is a list of words
  if ! cmake --build "$B" -j"$(nproc)" --target $TARGETS >"$B.build.log" 2>&1; then
    echo "gpu_quick pack: the build failed (see $B.build.log)"
    tail -20 "$B.build.log"
    exit 1
  fi
  S=$B/bundle
  rm -rf "$S" "$BUNDLE"
  mkdir -p "$S/bin" "$S/lib" "$BUNDLE"
  for t in $TARGETS; do
    f=$(find "$B" -name "$t" -type f -perm -u+x | head -1)
    [ -n "$f" ] || { echo "gpu_quick pack: $t was not built"; exit 1; }
    strip --strip-debug -o "$S/bin/$t" "$f"
  done
  # libraries outside glibc, the compiler's runtime and CUDA (the GPU image has those)
  ldd "$S"/bin/* | awk '/=> \// { print $3 }' | sort -u | while read -r lib; do
    case $(basename "$lib") in
    libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libstdc++* | libgcc_s*) ;;
    libcuda.so* | libcudart* | libcublas* | libnvrtc* | libnccl* | libnvJitLink*) ;;
    *) cp -L "$lib" "$S/lib/" ;;
    esac
  done
  tar -C "$S" -cJf "$BUNDLE/bundle.tar.xz" bin lib
  echo "gpu_quick pack: $(du -sm "$S" | cut -f1) MiB of binaries and libraries in $BUNDLE/bundle.tar.xz" \
    "($(du -k "$BUNDLE/bundle.tar.xz" | cut -f1) KiB): carry $(basename "$BUNDLE") to the GPU machine" \
    "(bench/README.md)"
  exit 0
fi
[ "$MODE" = run ] || { echo "usage: bench/gpu_quick.sh [pack|run]"; exit 2; }

# ---- run (on the GPU machine)
W=$ROOT/build-gpu-quick/run
rm -rf "$W"
mkdir -p "$OUT" "$W"
SUMMARY=$W/summary.md
declare -a ROWS=()
row() { # row CHECK RESULT: one line of the table
  ROWS+=("| $1 | $2 | $(elapsed) s |")
  echo "== $1: $2"
}
# stage NAME LIMIT CMD...: runs CMD with the log $W/NAME.log and a time limit cut to the
# budget's rest; sets RC (124: timed out; 125: not run: the budget; 126: not in STAGES)
stage() {
  local name=$1 limit=$2 left=$((BUDGET - $(elapsed)))
  shift 2
  if [ -n "$STAGES" ] && [ "${STAGES#*"$name"}" = "$STAGES" ]; then
    RC=126
    echo "not run: not in STAGES" >"$W/$name.log"
    return
  fi
  if [ "$left" -lt 10 ]; then
    RC=125
    echo "not run: the budget of ${BUDGET}s is spent" >"$W/$name.log"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  timeout -k 5 "$limit" "$@" >"$W/$name.log" 2>&1
  RC=$?
}
verdict() { # verdict NAME: a short result from RC and the log's last lines
  local log=$W/$1.log
  case $RC in
  0) echo "ok: $(grep -E 'checks,|failures|passed' "$log" | tail -1)" ;;
  77) echo "skipped: $(grep -m1 SKIP "$log" | sed 's/^SKIP: //')" ;;
  124) echo "TIMEOUT" ;;
  125) echo "not run (budget)" ;;
  126) echo "not run (STAGES)" ;;
  *) echo "FAILED (rc $RC): $(grep -E 'FAIL|error' "$log" | head -2 | tr '\n' ' ' | cut -c1-160)" ;;
  esac
}

GPU=$( (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true) | head -1)
row "GPU" "${GPU:-none found (nvidia-smi)}"

# the binaries: the bundle's (unpacked beside the build folders, so that the carried
# folder stays the tarball alone) when they start here, else a build with JOBS jobs
BIN=""
U=$ROOT/build-gpu-quick/bundle
if [ -f "$BUNDLE/bundle.tar.xz" ]; then # python's tarfile: no xz binary needed
  rm -rf "$U"
  mkdir -p "$U"
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$BUNDLE/bundle.tar.xz" "$U" 2>"$W/unpack.log" || tar -C "$U" -xJf "$BUNDLE/bundle.tar.xz"
fi
if [ -x "$U/bin/moec" ]; then
  export LD_LIBRARY_PATH="$U/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # CUDA libraries from the toolkit, or from PyTorch's wheels (NCCL)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
  PYLIBS=$(python3 -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "*", "lib", "*.so*"))})))' 2>/dev/null || true)
  [ -n "$PYLIBS" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$PYLIBS"
  missing=$(ldd "$U"/bin/* 2>/dev/null | grep 'not found' | awk '{print $1}' | sort -u | tr '\n' ' ')
  if [ -z "$missing" ]; then
    BIN=$U/bin
    row "binaries" "the bundle ($(du -k "$BUNDLE/bundle.tar.xz" | cut -f1) KiB carried, $(du -sm "$U" | cut -f1) MiB unpacked)"
  else
    row "binaries" "the bundle cannot start here (missing: $missing): building"
  fi
fi
if [ -z "$BIN" ]; then
  B=$ROOT/build-gpu-quick-dev
  # shellcheck disable=SC2086 # TARGETS is a list of words
  stage build 300 sh -c "cmake -S '$ROOT' -B '$B' -DMOEC_CUDA=ON -DMOEC_LLVM=OFF -DMOEC_MPI=OFF \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90-real && cmake --build '$B' -j$JOBS --target $TARGETS"
  if [ $RC = 0 ]; then
    mkdir -p "$B/all"
    for t in $TARGETS; do cp "$(find "$B" -name "$t" -type f -perm -u+x | head -1)" "$B/all/"; done
    BIN=$B/all
    row "binaries" "built here with -j$JOBS"
  else
    row "binaries" "no binaries: the build failed ($(tail -1 "$W/build.log"))"
  fi
fi

GPUOK=""
if [ -n "$BIN" ]; then
  PROBE=$("$BIN/cuda_link_probe" 2>&1)
  case $PROBE in
  *": available"*) GPUOK=1 ;;
  *) row "cuda backend" "${PROBE#cuda backend: }: the GPU tests run to show that they skip; benchmarks skipped" ;;
  esac
  python3 -c 'import torch' 2>/dev/null || TORCH_MISSING="python3 has no torch"
fi
# gpu_only NAME: true when a GPU stage can run; else its row says why not
gpu_only() {
  if [ -z "$GPUOK" ]; then
    row "$1" "skipped: no usable GPU"
    return 1
  fi
  if [ -n "${TORCH_MISSING:-}" ] && [ "${2:-}" = torch ]; then
    row "$1" "skipped: $TORCH_MISSING"
    return 1
  fi
  return 0
}

if [ -n "$BIN" ]; then
  export OPENBLAS_NUM_THREADS=1 MOEC_CACHE_DIR=$ROOT/build-gpu-quick/kcache PYTHON=python3
  # ---- 1. tests (the cheapest first: their failures say the most)
  stage cuda_link 30 sh "$ROOT/tests/gpu/test_cuda_link.sh" "$BIN/moec" "$BIN/cuda_link_probe"
  row "cuda_link (libcuda not linked, moec calls NCCL)" "$(verdict cuda_link)"
  stage test_cuda_ops 120 "$BIN/test_cuda_ops"
  row "test_cuda_ops (every op, cuda vs cpu kernels)" "$(verdict test_cuda_ops)"
  stage test_cuda_nccl 60 "$BIN/test_cuda_nccl"
  row "test_cuda_nccl (NCCL, device discipline, device Comm)" "$(verdict test_cuda_nccl)"
  stage test_cuda_optim 60 "$BIN/test_cuda_optim"
  row "test_cuda_optim (device optimizer = optim.c, bits)" "$(verdict test_cuda_optim)"
  stage test_cuda_model 120 "$BIN/test_cuda_model"
  row "test_cuda_model (3 models, 20 steps cpu vs cuda)" "$(verdict test_cuda_model)"
  stage test_cuda_fused 120 "$BIN/test_cuda_fused" "$ROOT/tests/fusion_dense.moe" \
    "$ROOT/examples/lm_moe32.moe" "$ROOT/bench/fusion_dense_big.moe"
  row "test_cuda_fused (fused = unfused, bits)" "$(verdict test_cuda_fused)"
  stage test_cuda_train 240 sh "$ROOT/tests/gpu/test_cuda_train.sh" "$BIN/moec"
  row "test_cuda_train.sh (moec cuda vs cpu; 2, 4 devices)" "$(verdict test_cuda_train)"
  stage test_cuda_examples 150 sh "$ROOT/tests/gpu/test_cuda_examples.sh" "$BIN/moec" \
    "${EN_FR:-$ROOT/.gpudata/en-fr}"
  row "test_cuda_examples.sh (every example, cuda = cpu)" "$(verdict test_cuda_examples)"

  # ---- 2. compute-sanitizer on the ops test (--sanitizer: no ring check, no deliberate OOM)
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if ! gpu_only "compute-sanitizer memcheck test_cuda_ops"; then
    :
  elif [ -x "$CS" ]; then
    stage memcheck 150 "$CS" --tool memcheck --error-exitcode 9 "$BIN/test_cuda_ops" --sanitizer
    row "compute-sanitizer memcheck test_cuda_ops" \
      "$(verdict memcheck) $(grep -E 'ERROR SUMMARY' "$W/memcheck.log" | tail -1)"
  else
    row "compute-sanitizer memcheck" "not found"
  fi

  # ---- 3. the MoE layer: moec vs PyTorch (loop, best grouped), expert GEMMs vs cuBLAS
  for k in 2 4; do
    gpu_only "MoE layer k=$k" || continue
    stage "moe_moec_k$k" 60 "$BIN/bench_moe_layer_cuda" --tokens 8192 --dim 1024 --experts 64 \
      --hidden 4096 --k "$k" --reps 10 --warmup 3 --json "$W/moe_moec.jsonl"
    if [ $RC = 0 ]; then
      l="$W/moe_moec_k$k.log"
      row "MoE layer k=$k: moec fwd+bwd" "$(awk '/moe layer  /{print $3" ms"}' "$l"); expert GEMMs $(awk '/expert GEMMs .*TFLOP/{print $3" TFLOP/s"}' "$l") = $(awk '/expert \/ dense/{print $4}' "$l") of one cuBLAS GEMM ($(awk '/dense cublasSgemm/{print $3" TFLOP/s"}' "$l")); routing $(awk '/routing share/{print $3}' "$l")"
    else
      row "MoE layer k=$k: moec" "$(verdict "moe_moec_k$k")"
    fi
    gpu_only "MoE layer k=$k: PyTorch" torch || continue
    stage "moe_torch_k$k" 120 python3 "$ROOT/bench/moe_layer_torch.py" --tokens 8192 --dim 1024 \
      --experts 64 --hidden 4096 --k "$k" --reps 10 --warmup 3 --variants loop,sorted,padded,grouped \
      --moec-json "$W/moe_moec.jsonl" --json "$W/moe_torch.jsonl"
    if [ $RC = 0 ] && [ -s "$W/moe_torch.jsonl" ]; then
      row "MoE layer k=$k: PyTorch" "$(python3 - "$W/moe_torch.jsonl" "$k" <<'PY'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["k"] == int(sys.argv[2])]
r = rows[-1]
ms, m = r["ms"], r.get("moec_layer_ms")
loop = ms.get("loop")
grouped = {n: v for n, v in ms.items() if n != "loop"}
best = min(grouped, key=grouped.get) if grouped else None
out = [f"loop {loop:.3f} ms" if loop else "loop n/a"]
if best:
    out.append(f"best grouped ({best}) {grouped[best]:.3f} ms")
if m and loop:
    out.append(f"moec {loop / m:.2f}x the loop")
if m and best:
    out.append(f"{grouped[best] / m:.2f}x the best grouped")
print("; ".join(out))
PY
)"
    else
      row "MoE layer k=$k: PyTorch" "$(verdict "moe_torch_k$k") $(tail -1 "$W/moe_torch_k$k.log" | cut -c1-120)"
    fi
  done

  # moec's tokens/s after 10 warm-up steps from its --metrics lines: lm_rate JSONL TOKENS_PER_STEP
  lm_rate() { python3 "$ROOT/bench/moec_rate.py" "$1" "$2" 10 0; }
  # torch_rate LOG: PyTorch's tokens/s from lm_torch.py's JSON line
  torch_rate() { grep '^{' "$1" | tail -1 | python3 -c 'import json, sys; print("%.0f" % json.loads(sys.stdin.read())["tokens_per_s"])'; }
  ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$1" "$2" 2>/dev/null || echo n/a; }

  # ---- 4. LM training: moec --backend cuda vs PyTorch with cuDNN's LSTM (lm_bench.moe sizes)
  if gpu_only "LM training (lm_bench.moe)"; then
  stage lm_moec 90 "$BIN/moec" run "$ROOT/bench/lm_bench.moe" --backend cuda --steps 120 --quiet \
    --json --metrics "$W/lm_moec.jsonl"
  MT=nan
  if [ $RC = 0 ]; then
    MT=$(lm_rate "$W/lm_moec.jsonl" 640)
    row "LM (lm_bench.moe): moec --backend cuda" "$MT tokens/s (steps 11-120)"
  else
    row "LM: moec --backend cuda" "$(verdict lm_moec)"
  fi
  fi
  if gpu_only "LM: PyTorch, cuDNN LSTM" torch; then
    stage lm_torch 120 python3 "$ROOT/bench/lm_torch.py" --device cuda --batch 32 --steps 50 --warmup 10 --json
    if [ $RC = 0 ] && grep -q '^{' "$W/lm_torch.log"; then
      TT=$(torch_rate "$W/lm_torch.log")
      row "LM: PyTorch, cuDNN LSTM" "$TT tokens/s; moec / PyTorch $(ratio "$MT" "$TT")"
    else
      row "LM: PyTorch, cuDNN LSTM" "$(verdict lm_torch)"
    fi
  fi
  # ---- 5. as the budget allows: racecheck, the MoE layer in TF32, the scaled-up LM
  if gpu_only "compute-sanitizer racecheck test_cuda_ops" && [ -x "$CS" ]; then
    stage racecheck 90 "$CS" --tool racecheck --error-exitcode 9 "$BIN/test_cuda_ops" --sanitizer
    row "compute-sanitizer racecheck test_cuda_ops" \
      "$(verdict racecheck) $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$W/racecheck.log" | tail -1)"
  fi
  for k in 2 4; do
    gpu_only "MoE layer k=$k TF32" torch || continue
    stage "moe_moec_tf32_k$k" 60 "$BIN/bench_moe_layer_cuda" --tokens 8192 --dim 1024 --experts 64 \
      --hidden 4096 --k "$k" --reps 10 --warmup 3 --tf32 --json "$W/moe_moec_tf32.jsonl"
    M=$(awk '/moe layer  /{print $3}' "$W/moe_moec_tf32_k$k.log")
    stage "moe_torch_tf32_k$k" 90 python3 "$ROOT/bench/moe_layer_torch.py" --tokens 8192 --dim 1024 \
      --experts 64 --hidden 4096 --k "$k" --reps 10 --warmup 3 --variants sorted,padded,grouped --tf32 \
      --json "$W/moe_torch_tf32.jsonl"
    T=$(grep 'best:' "$W/moe_torch_tf32_k$k.log" | sed 's/^ *best: //')
    row "MoE layer k=$k TF32" "moec ${M:-FAILED} ms; PyTorch best grouped ${T:-FAILED}; moec $(ratio "$(echo "$T" | awk '{print $2}')" "$M") faster"
  done
  if gpu_only "LM scaled (lm_bench_gpu.moe)" torch; then
    stage lm_moec_scaled 90 "$BIN/moec" run "$ROOT/bench/lm_bench_gpu.moe" --backend cuda --steps 60 \
      --quiet --json --metrics "$W/lm_moec_scaled.jsonl"
    MS=nan
    [ $RC = 0 ] && MS=$(lm_rate "$W/lm_moec_scaled.jsonl" 2560)
    stage lm_torch_scaled 120 python3 "$ROOT/bench/lm_torch.py" --device cuda --dim 1024 --experts 32 \
      --hidden 2048 --batch 128 --steps 30 --warmup 10 --json
    TS=nan
    [ $RC = 0 ] && TS=$(torch_rate "$W/lm_torch_scaled.log")
    row "LM scaled (D 1024, 32 experts of 2048, B 128)" "moec $MS tokens/s; PyTorch $TS; moec / PyTorch $(ratio "$MS" "$TS")"
  fi
else
  row "GPU stages" "not run: no binaries"
fi

# ---- the table (and the logs) to $OUT
{
  echo "# bench/gpu_quick.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)"
  echo
  echo "| check | result | at |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} >"$SUMMARY"
cp "$SUMMARY" "$OUT/summary.md"
tar -C "$W" -czf "$OUT/logs.tar.gz" . 2>/dev/null
echo
cat "$SUMMARY"
