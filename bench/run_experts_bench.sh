#!/usr/bin/env bash
# run_experts_bench.sh: moec's training step as the number of experts grows, at fixed
# k and expert size: bench/lm_bench.moe (k=4, hidden 512, D=256, B=32, T=20) with
# 16, 64, 256 and 1024 experts, timed by bench/op_profile.c, step time by part.
#
#   bench/run_experts_bench.sh [--experts "16 64 256 1024"] [--steps N]
#                              [--optimizer "adam factored"] [--cpu-time]
#                              [--baseline OTHER_OP_PROFILE] [--fold-ab]
#
# Compute per token does not grow with the experts (each token visits k of them); what
# must grow is the gate (x . w_gate and x . w_noise are D x E, and the gating ops on
# [B*T, E]) and memory traffic proportional to the parameters: the optimizer's pass
# (Adam: 28 bytes a parameter) and the expert GEMMs reading every expert's weights and
# writing their gradients. Prints, per optimizer (one or a list, default adam) and E:
# parameters, ms/step, the parts (gate, dispatch, expert GEMMs, optimizer, other) and the
# step's ratio to the first E. Results also in build/bench/experts.txt. OP_PROFILE=path overrides build/op_profile. --cpu-time: the
# process's CPU time rather than the wall clock (op_profile --cpu-time; with
# MOEC_THREADS=1, the one-thread work a step, robust to other load on the machine).
# --baseline B: another build's op_profile (e.g. main's) run just before this one on
# each model, a "before" row above each "after" row: A/B side by side, same minutes.
# --fold-ab: the same, "before" being this op_profile with --no-fold (the experts' dW
# written by grouped_matmul_dw and read by the optimizer, not folded): the fold's A/B.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
experts="16 64 256 1024"
steps=5
opt=adam
timing=()
baseline=
base_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --experts) experts="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --optimizer) opt="$2"; shift ;;
    --cpu-time) timing=(--cpu-time) ;;
    --baseline) baseline="$2"; shift ;;
    --fold-ab) baseline="${OP_PROFILE:-build/op_profile}"; base_args=(--no-fold) ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run_experts_bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
for o in $opt; do
  case "$o" in adam|factored) ;; *) echo "run_experts_bench: --optimizer adam, factored or both" >&2; exit 2 ;; esac
done
prof="${OP_PROFILE:-build/op_profile}"
[ -x "$prof" ] || { echo "run_experts_bench: $prof is missing: run scripts/setup first" >&2; exit 1; }
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "run_experts_bench: baseline $baseline is not an executable" >&2; exit 1; }
out=build/bench
mkdir -p "$out"
: >"$out/experts.txt"
echo "run_experts_bench: $(nproc) cores, ${MOEC_THREADS:-default} threads, optimizer $opt${timing:+, CPU time}, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for o in $opt; do
  for e in $experts; do
    f="$out/experts_${o}_$e"
    sed "s/experts=16/experts=$e/; s/adam(lr=1e-3)/$o(lr=1e-3)/" bench/lm_bench.moe >"$f.moe"
    params=$(build/moec check "$f.moe" --json 2>/dev/null |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin).get("params", 0))' 2>/dev/null || echo 0)
    runs="now"
    [ -z "$baseline" ] || runs="before after"
    for run in $runs; do
      bin=("$prof")
      [ "$run" = before ] && bin=("$baseline" ${base_args[@]+"${base_args[@]}"})
      load=$(cut -d' ' -f1-3 /proc/loadavg)
      "${bin[@]}" ${timing[@]+"${timing[@]}"} "$f.moe" "$steps" >"$f.$run.txt"
      echo "$o $run $e $params $load $(tail -n 1 "$f.$run.txt")" >>"$out/experts.txt"
      echo "  $o, $e experts, $run done ($(head -n 1 "$f.$run.txt" | sed 's/.*timed steps, //; s/:.*//'))"
    done
  done
done
/usr/bin/python3 - "$out/experts.txt" <<'PY'
import json, sys
rows = []
for l in open(sys.argv[1]):
    o, run, e, params, l1, l5, l15, js = l.split(" ", 7)
    rows.append((o, run, int(e), int(params), l1, json.loads(js)))
keys = ["gate", "dispatch", "experts", "optimizer", "other"]
print(f"{'optim':>8} {'run':>6} {'experts':>7} {'params':>8} {'ms/step':>8} {'x':>5}  " +
      " ".join(f"{k:>9}" for k in ["gate", "dispatch", "expertGEMM", "optimizer", "other"]) +
      "  load")
base = {}
for o, run, e, p, ld, d in rows:
    base.setdefault((o, run), d["ms_step"])  # each optimizer's (and binary's) first E
    print(f"{o:>8} {run:>6} {e:>7} {p / 1e6:7.1f}M {d['ms_step']:8.1f} " +
          f"{d['ms_step'] / base[(o, run)]:5.2f}  " +
          " ".join(f"{d['ms_' + k]:9.1f}" for k in keys) + f"  {ld}")
PY
