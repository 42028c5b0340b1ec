#!/bin/sh
# plan_vs_run.sh MOEC [PROFILE] [MODEL.moe ...]: the cost model against runs on this
# machine. For each model (default: the language-model examples and bench/lm_bench.moe)
# under every strategy on 1, 2 and 4 in-process devices: `moec plan`'s predicted step
# time beside the measured one (a short run of STEPS steps: the median step, the first
# left out), and the plan's collective bytes per step beside
# the run's (all_reduce, reshard, all_gather_topm: sent bytes; all_to_all(_back): the
# rows moved, the plan's payload). Prints a table; the last line is the median and worst
# |predicted/measured - 1| over the rows. tests/test_plan_run.sh asserts the bytes.
#   STEPS (default 6), BATCH (default: the file's), OMPI/threads: as for moec run.
#   RUNS=DIR: keep each run's JSON in DIR and reuse it when there (the model's predictions
#   against the same runs, e.g. after a change to the cost model or a new profile).
#   MPI=1: the devices as MPI ranks (mpirun -np P moec run; plan --mpi, which needs the
#   profile's MPI section); 1-device rows as usual.
set -eu
MOEC=$1
shift
PROFILE=""
if [ $# -gt 0 ] && [ "${1%.json}" != "$1" ]; then
  PROFILE="--profile $1"
  shift
fi
HERE=$(cd "$(dirname "$0")" && pwd)
if [ $# -eq 0 ]; then
  set -- "$HERE/../examples/lm_4xlstm.moe" "$HERE/../examples/lm_moe4.moe" \
    "$HERE/../examples/lm_moe32.moe" "$HERE/../examples/lm_moe256.moe" \
    "$HERE/../examples/lm_moe256h.moe" "$HERE/lm_bench.moe"
fi
STEPS=${STEPS:-6}
EXTRA=""
[ -n "${BATCH:-}" ] && EXTRA="--batch $BATCH"
PY=${MOEC_PYTHON:-python3}
[ -n "${RUNS:-}" ] && mkdir -p "$RUNS"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
: >"$W/rows"
for model in "$@"; do
  name=$(basename "$model" .moe)
  for strategy in paper data_parallel hmoe; do
    for p in 1 2 4; do
      [ "$p" = 1 ] && [ "$strategy" != paper ] && continue
      mpi=""
      [ "${MPI:-0}" = 1 ] && [ "$p" -gt 1 ] && mpi="--mpi"
      # shellcheck disable=SC2086
      if ! "$MOEC" plan "$model" --devices $p --strategy $strategy $EXTRA $PROFILE $mpi \
        --format json >"$W/plan.json" 2>/dev/null; then
        continue # refused (fewer experts than devices, no hmoe layer)
      fi
      saved="${RUNS:-$W}/run-$name-$strategy-$p${mpi:+-mpi}.json"
      if [ -n "${RUNS:-}" ] && [ -s "$saved" ]; then
        cp "$saved" "$W/run.json"
      elif [ -n "$mpi" ]; then
        # shellcheck disable=SC2086
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np $p \
          "$MOEC" run "$model" --strategy $strategy $EXTRA --steps "$STEPS" --no-eval --quiet \
          --json 2>/dev/null | grep '^{' | tail -n 1 >"$W/run.json" || continue
      else
        # shellcheck disable=SC2086
        "$MOEC" run "$model" --devices $p --strategy $strategy $EXTRA --steps "$STEPS" \
          --no-eval --quiet --json >"$W/run.json" 2>/dev/null || continue
      fi
      [ -s "$W/run.json" ] || continue
      [ -n "${RUNS:-}" ] && cp "$W/run.json" "$saved"
      "$PY" - "$W/plan.json" "$W/run.json" "$name" "$strategy" "$p" >>"$W/rows" <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
run = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
pred = plan["cost_model"]["step_s"]
meas = run["step_ms_median"] / 1e3 if "step_ms_median" in run else plan["B"] * plan["T"] / run["tokens_per_s"]
pb = rb = 0
for op in plan["ops"]:
    c = op.get("collective")
    if c:
        pb += c["payload"] if op["op"].startswith("all_to_all") else c["expected"]
for kind, rc in run["comm"].items():
    rb += rc["payload_bytes"] if kind.startswith("all_to_all") else rc["sent_bytes"]
print("%-12s %-13s %2s %10.2f %10.2f %7.2f %14d %14d %s" % (sys.argv[3], sys.argv[4], sys.argv[5],
      pred * 1e3, meas * 1e3, pred / meas, pb, round(rb), "equal" if pb == round(rb) else "DIFFER"))
PYEOF
    done
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-12s %-13s %2s %10s %10s %7s %14s %14s %s\n' model strategy P "pred ms" "meas ms" \
  ratio "plan B/step" "run B/step" bytes
cat "$W/rows"
"$PY" - "$W/rows" <<'PYEOF'
import sys
r = [abs(float(l.split()[5]) - 1) for l in open(sys.argv[1]) if l.strip()]
r.sort()
if r:
    print("rows %d: median |pred/meas - 1| %.2f, worst %.2f, within 30%%: %d" % (
        len(r), r[len(r) // 2], r[-1], sum(x <= 0.3 for x in r)))
PYEOF
