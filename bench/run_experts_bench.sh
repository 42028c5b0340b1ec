#!/usr/bin/env bash
# run_experts_bench.sh: moec's training step as the number of experts grows, at fixed
# k and expert size: bench/lm_bench.moe (k=4, hidden 512, D=256, B=32, T=20) with
# 16, 64, 256 and 1024 experts, timed by bench/op_profile.c, step time by part.
#
#   bench/run_experts_bench.sh [--experts "16 64 256 1024"] [--steps N] [--optimizer adam|factored]
#
# Compute per token does not grow with the experts (each token visits k of them); what
# must grow is the gate (x . w_gate and x . w_noise are D x E, and the gating ops on
# [B*T, E]) and memory traffic proportional to the parameters: the optimizer's pass
# (Adam: 28 bytes a parameter) and the expert GEMMs reading every expert's weights and
# writing their gradients. Prints, per E: parameters, ms/step, the parts (gate, dispatch,
# expert GEMMs, optimizer, other) and the step's ratio to the first E. Results also in
# build/bench/experts.txt. OP_PROFILE=path overrides build/op_profile.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
experts="16 64 256 1024"
steps=5
opt=adam
while [ $# -gt 0 ]; do
  case "$1" in
    --experts) experts="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --optimizer) opt="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_experts_bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
case "$opt" in adam|factored) ;; *) echo "run_experts_bench: --optimizer adam or factored" >&2; exit 2 ;; esac
prof="${OP_PROFILE:-build/op_profile}"
[ -x "$prof" ] || { echo "run_experts_bench: $prof is missing: run scripts/setup first" >&2; exit 1; }
out=build/bench
mkdir -p "$out"
: >"$out/experts.txt"
echo "run_experts_bench: $(nproc) cores, ${MOEC_THREADS:-default} threads, optimizer $opt, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for e in $experts; do
  sed "s/experts=16/experts=$e/; s/adam(lr=1e-3)/$opt(lr=1e-3)/" bench/lm_bench.moe >"$out/experts_$e.moe"
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  "$prof" "$out/experts_$e.moe" "$steps" >"$out/experts_$e.txt"
  params=$(build/moec check "$out/experts_$e.moe" --json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin).get("params", 0))' 2>/dev/null || echo 0)
  echo "$e $params $load $(tail -n 1 "$out/experts_$e.txt")" >>"$out/experts.txt"
  echo "  $e experts done ($(head -n 1 "$out/experts_$e.txt" | sed 's/.*timed steps, //; s/:.*//'))"
done
/usr/bin/python3 - "$out/experts.txt" <<'PY'
import json, sys
rows = []
for l in open(sys.argv[1]):
    e, params, l1, l5, l15, js = l.split(" ", 5)
    rows.append((int(e), int(params), l1, json.loads(js)))
base = rows[0][3]["ms_step"]
keys = ["gate", "dispatch", "experts", "optimizer", "other"]
print(f"{'experts':>7} {'params':>8} {'ms/step':>8} {'x':>5}  " +
      " ".join(f"{k:>9}" for k in ["gate", "dispatch", "expertGEMM", "optimizer", "other"]) +
      "  load")
for e, p, ld, d in rows:
    print(f"{e:>7} {p / 1e6:7.1f}M {d['ms_step']:8.1f} {d['ms_step'] / base:5.2f}  " +
          " ".join(f"{d['ms_' + k]:9.1f}" for k in keys) + f"  {ld}")
PY
