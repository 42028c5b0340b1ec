#!/usr/bin/env bash
# run_lm_bench.sh: moec vs PyTorch on the LSTM-MoE LM benchmark, each in its best
# configuration, against the machine's measured sgemm peak.
#
#   bench/run_lm_bench.sh [--rounds R] [--steps N] [--torch-steps N] [--skip-gemm]
#                         [--skip-torch] [--skip-profile]
#
# On an otherwise idle machine, one after the other:
#   1. bench/gemm_peak.c: OpenBLAS sgemm GFLOP/s at the model's shapes and the 2-thread
#      peak (the better of two large shapes);
#   2. bench/op_profile.c: the step's GEMM FLOPs (from moec's graph; the same model,
#      so the same FLOPs for PyTorch) and moec's step by part;
#   3. R rounds (default 3), each: moec (MOEC_THREADS=2 and 1) and PyTorch
#      (bench/lm_torch.py: 1 thread; 2 threads with OMP_WAIT_POLICY=PASSIVE, ACTIVE and
#      unset), side by side in the same window.
# Tokens/s are over the timed steps after 5 warm-up steps on both sides (moec: from
# its metrics file). Prints a table of every run (tokens/s, ms/step, GFLOP/s over the
# step, % of the 2-thread sgemm peak) and each side's best, and the ratio of the bests;
# the load average before each phase. Results also go to build/bench/ (lm_runs.txt,
# summary.txt). MOEC=path/to/moec overrides the binary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

rounds=3
steps=45
torch_steps=30
gemm=1
torch=1
profile=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --torch-steps) torch_steps="$2"; shift ;;
    --skip-gemm) gemm=0 ;;
    --skip-torch) torch=0 ;;
    --skip-profile) profile=0 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_lm_bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
[ "$steps" -gt 5 ] || { echo "run_lm_bench: --steps must exceed the 5 warm-up steps" >&2; exit 2; }

moec="${MOEC:-build/moec}"
bdir="$(dirname "$moec")"
py=/usr/bin/python3
out=build/bench
mkdir -p "$out"
load() { cut -d' ' -f1-3 /proc/loadavg; }
if [ ! -x "$moec" ]; then
  echo "run_lm_bench: $moec is missing: run scripts/setup first" >&2
  exit 1
fi
if [ "$torch" = 1 ] && ! "$py" -c 'import torch' 2>/dev/null; then
  echo "run_lm_bench: no torch in $py: PyTorch skipped (apt-get install python3-torch)" >&2
  torch=0
fi
echo "run_lm_bench: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(load)"

peak=""
if [ "$gemm" = 1 ]; then
  echo; echo "== OpenBLAS sgemm, 2 threads; load average $(load)"
  cc -O2 -o "$out/gemm_peak" bench/gemm_peak.c \
     -I/usr/include/x86_64-linux-gnu/openblas-pthread -I/usr/include/openblas -lopenblas -lm
  OPENBLAS_NUM_THREADS=2 "$out/gemm_peak" 1 | tee "$out/gemm_peak.txt"
  peak=$(grep "^gemm_peak: peak" "$out/gemm_peak.txt" | awk '{print $3}')
elif [ -f "$out/gemm_peak.txt" ]; then
  peak=$(grep "^gemm_peak: peak" "$out/gemm_peak.txt" | awk '{print $3}')
  echo "run_lm_bench: sgemm peak $peak GFLOP/s from an earlier $out/gemm_peak.txt"
fi

gflop=""
prof="$bdir/op_profile"
if [ "$profile" = 1 ] && [ -x "$prof" ]; then
  echo; echo "== moec's step by layer, op and part (bench/op_profile.c); load average $(load)"
  MOEC_THREADS=2 "$prof" bench/lm_bench.moe 5 | tee "$out/op_profile.txt"
fi
[ -f "$out/op_profile.txt" ] && gflop=$("$py" -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"): print(json.loads(l)["gemm_gflop"])' "$out/op_profile.txt" | tail -n 1)
[ -n "$gflop" ] || echo "run_lm_bench: no $prof (build it with CMake): no FLOPs, no % of peak"

runs="$out/lm_runs.txt"
: >"$runs"
# one moec run: tokens/s over steps 6..N from the metrics' cumulative rate
moec_run() { # moec_run ROUND THREADS
  local m="$out/moec_metrics.json" l
  l=$(load)
  MOEC_THREADS="$2" "$moec" run bench/lm_bench.moe --steps "$steps" --quiet --json \
    --metrics "$m" </dev/null >"$out/moec.txt" 2>&1 ||
    { cat "$out/moec.txt"; echo "run_lm_bench: moec run failed" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\n' "$1" "moec, $2 thread$([ "$2" = 1 ] || echo s)" \
    "$("$py" bench/moec_rate.py "$m" $((32 * 20)) 5)" "$l" >>"$runs"
}
torch_run() { # torch_run ROUND THREADS POLICY
  local l pol="${3:-}" name
  l=$(load)
  name="PyTorch, $2 thread$([ "$2" = 1 ] || echo s)"
  [ "$2" = 1 ] || name="$name, ${pol:-default} wait"
  env ${pol:+OMP_WAIT_POLICY=$pol} OMP_NUM_THREADS="$2" OPENBLAS_NUM_THREADS="$2" \
    MKL_NUM_THREADS="$2" "$py" bench/lm_torch.py --threads "$2" --steps "$torch_steps" \
    --warmup 5 --json >"$out/torch.txt" 2>&1 ||
    { cat "$out/torch.txt"; echo "run_lm_bench: lm_torch.py failed" >&2; exit 1; }
  "$py" - "$out/torch.txt" "$1" "$name" "$l" <<'PY' >>"$runs"
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{d['tokens_per_s']:.1f}\t{sys.argv[4]}")
PY
}

for r in $(seq 1 "$rounds"); do
  echo; echo "== round $r of $rounds: moec ($steps steps) and PyTorch ($torch_steps steps); load average $(load)"
  moec_run "$r" 2
  moec_run "$r" 1
  if [ "$torch" = 1 ]; then
    torch_run "$r" 1
    torch_run "$r" 2 PASSIVE
    torch_run "$r" 2 ACTIVE
    torch_run "$r" 2 ""
  fi
  tail -n "$([ "$torch" = 1 ] && echo 6 || echo 2)" "$runs" | cut -f2,3 | sed 's/\t/: /; s/$/ tokens\/s/'
done

echo
echo "run_lm_bench: load average at the end $(load) (above ~0.5 before a run, another job shared the cores)"
"$py" - "$runs" "${gflop:-0}" "${peak:-0}" <<'PY' | tee "$out/summary.txt"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
gflop, peak = float(sys.argv[2]), float(sys.argv[3])
nt = 32 * 20
print(f"{'round':>5}  {'run':<36} {'tokens/s':>9} {'ms/step':>8} {'GFLOP/s':>8} {'% peak':>7}  load before")
best = {}
for r, name, tps, ld in rows:
    tps = float(tps)
    ms = nt / tps * 1e3
    gfs = gflop * tps / nt if gflop else 0
    pct = f"{100 * gfs / peak:6.1f}%" if gflop and peak else "      -"
    print(f"{r:>5}  {name:<36} {tps:9.0f} {ms:8.1f} {gfs:8.1f} {pct}  {ld}")
    side = name.split(",")[0]
    if tps > best.get(side, (0, ""))[0]:
        best[side] = (tps, name)
if gflop:
    print(f"the step: {gflop:.2f} GFLOP of GEMM work (moec's graph: forward and backward)"
          + (f"; 2-thread sgemm peak {peak:.1f} GFLOP/s" if peak else ""))
for side, (tps, name) in best.items():
    pct = f", {100 * gflop * tps / nt / peak:.0f}% of the sgemm peak" if gflop and peak else ""
    print(f"best {side}: {tps:.0f} tokens/s ({name}){pct}")
if "moec" in best and "PyTorch" in best:
    print(f"run_lm_bench: moec / best PyTorch = {best['moec'][0] / best['PyTorch'][0]:.2f}x")
PY
