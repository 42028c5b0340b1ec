#!/usr/bin/env bash
# run_lm_bench.sh: moec vs PyTorch on the LSTM-MoE LM benchmark, 2 threads each.
#
#   bench/run_lm_bench.sh [--steps N] [--threads N] [--skip-gemm]
#
# Runs, one after the other on an otherwise idle machine:
#   1. bench/gemm_peak.c  (OpenBLAS sgemm GFLOP/s at the model's shapes and the peak)
#   2. bench/lm_torch.py  (PyTorch, /usr/bin/python3 with Debian's python3-torch)
#   3. build/moec run bench/lm_bench.moe --json  (moec; tokens_per_s from its JSON line)
#   4. bench/op_profile.c (moec's step by layer and op; the MoE layer's GFLOP/s)
# and prints both tokens/s, the ratio moec / PyTorch, and the MoE layer's GFLOP/s
# against the sgemm peak. Results also go to
# build/bench/ (JSON). MOEC=path/to/moec overrides the binary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

steps=40
threads=2
gemm=1
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --skip-gemm) gemm=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_lm_bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

export OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
moec="${MOEC:-build/moec}"
py=/usr/bin/python3
out=build/bench
mkdir -p "$out"
echo "run_lm_bench: $(nproc) cores, $threads threads each, load average $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$gemm" = 1 ]; then
  echo; echo "== OpenBLAS sgemm"
  cc -O2 -o "$out/gemm_peak" bench/gemm_peak.c \
     -I/usr/include/x86_64-linux-gnu/openblas-pthread -I/usr/include/openblas -lopenblas -lm
  "$out/gemm_peak" 1 | tee "$out/gemm_peak.txt"
fi

echo; echo "== PyTorch (bench/lm_torch.py); load average $(cut -d' ' -f1-3 /proc/loadavg)"
torch_steps=$(( steps < 30 ? steps : 30 ))
"$py" bench/lm_torch.py --threads "$threads" --steps "$torch_steps" --warmup 5 --json | tee "$out/torch.txt"
torch_tps=$(tail -n 1 "$out/torch.txt" | "$py" -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_s"])')

echo; echo "== moec (moec run bench/lm_bench.moe); load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ! -x "$moec" ]; then
  echo "run_lm_bench: $moec is missing: run scripts/setup first" >&2
  exit 1
fi
set +e
"$moec" run bench/lm_bench.moe --steps "$steps" --json </dev/null | tee "$out/moec.txt"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
  echo "run_lm_bench: moec run exited with $rc" >&2
  exit 1
fi
moec_tps=$(grep '^{' "$out/moec.txt" | tail -n 1 | "$py" -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_s"])')

echo; echo "== moec by layer and op (bench/op_profile.c); load average $(cut -d' ' -f1-3 /proc/loadavg)"
bdir="$(dirname "$moec")"
moe_gflops=""
if [ -x "$bdir/op_profile" ] || [ -f "$bdir/libmoeccore.a" ]; then
  prof="$bdir/op_profile"      # built by CMake (tests/bench.cmake) ...
  if [ ! -x "$prof" ]; then    # ... or here, from the library
    prof="$out/op_profile"
    cc -O2 -D_GNU_SOURCE -I. -I"$bdir" -o "$prof" bench/op_profile.c "$bdir/libmoeccore.a" \
       -lopenblas -lm -lpthread
  fi
  "$prof" bench/lm_bench.moe 5 | tee "$out/op_profile.txt"
  moe_gflops=$(grep "^op_profile: MoE layer" "$out/op_profile.txt" | head -1 | sed 's/.*: \([0-9.]*\) GFLOP\/s over the whole layer.*/\1/')
else
  echo "run_lm_bench: $bdir/libmoeccore.a is missing: no per-layer profile"
fi
peak=""
[ -f "$out/gemm_peak.txt" ] && peak=$(grep "^gemm_peak: peak" "$out/gemm_peak.txt" | awk '{print $3}')

echo
echo "run_lm_bench: load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (above ~0.5 before a phase, another job shared the cores)"
"$py" - "$moec_tps" "$torch_tps" "$threads" "$moe_gflops" "$peak" <<'PY' | tee "$out/summary.txt"
import sys
m, t, th = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"run_lm_bench: {th} threads each: moec {m:.0f} tokens/s, PyTorch {t:.0f} tokens/s, "
      f"ratio {m / t:.2f}x")
g, p = sys.argv[4], sys.argv[5]
if g and p:
    print(f"run_lm_bench: MoE layer {float(g):.1f} GFLOP/s = {100 * float(g) / float(p):.0f}% "
          f"of the sgemm peak {float(p):.1f} GFLOP/s")
PY
