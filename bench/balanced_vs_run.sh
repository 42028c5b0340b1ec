#!/bin/sh
# balanced_vs_run.sh MOEC MODEL.moe DEVICES [PROFILE.json]: expert placement under skewed
# routing, the cost model against runs. MODEL's MoE layers train SKEW_STEPS steps (default
# 300) on one device without their balancing losses (w_importance = w_load = 0 added to
# each moe/hmoe call), so the gate skews; that run's metrics are the measured loads and
# its checkpoint the starting point. `moec plan --loads` predicts the step under each
# expert policy (contiguous, the default, round_robin, balanced) on DEVICES in-process
# devices; each policy then runs STEPS more steps (default 30) from the checkpoint: the
# same routing under every placement, which does not change the arithmetic. ROUNDS
# (default 3) rounds alternate the policies, the load average printed before each; each
# policy's fastest median step is taken. BASELINE=MOEC2 (another build, e.g. main before
# a change) plans and runs every policy too, beside MOEC in each round, from the same
# loads and checkpoint. In-process devices run their kernels inline, one thread each, so
# the runs have no thread or wait setting to choose. Prints predicted and measured ms, the
# busiest device's share of the routed rows, and whether the measured order of the
# policies is the predicted one.
set -eu
MOEC=$1
MODEL=$2
P=$3
PROFILE=${4:-}
SKEW_STEPS=${SKEW_STEPS:-300}
STEPS=${STEPS:-30}
ROUNDS=${ROUNDS:-3}
PY=${MOEC_PYTHON:-python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
sed 's/moe(\([^)]*\))/moe(\1, w_importance=0, w_load=0)/' "$MODEL" >"$W/skew.moe"
"$MOEC" run "$W/skew.moe" --devices 1 --steps "$SKEW_STEPS" --no-eval --quiet \
  --metrics "$W/loads.jsonl" --save "$W/ck.safetensors" >/dev/null
"$PY" - "$W/loads.jsonl" <<'PYEOF'
import json, sys
last = [l for l in open(sys.argv[1]) if '"moe"' in l][-1]
for m in json.loads(last)["moe"]:
    print("layer %s after the skewing run: busiest expert %.2fx the mean load" %
          (m["name"], m["load_max_over_mean"]))
PYEOF
set -- --devices "$P" --loads "$W/loads.jsonl"
[ -n "$PROFILE" ] && PROF="--profile $PROFILE" || PROF=""
BINS="new:$MOEC"
[ -n "${BASELINE:-}" ] && BINS="base:$BASELINE $BINS"
for b in $BINS; do
  for e in contiguous round_robin balanced; do
    # shellcheck disable=SC2086
    "${b#*:}" plan "$W/skew.moe" "$@" --experts $e $PROF --format json >"$W/plan-${b%%:*}-$e.json"
  done
done
r=0
while [ "$r" -lt "$ROUNDS" ]; do
  echo "round $((r + 1)): load average $(cut -d' ' -f1-3 /proc/loadavg)"
  for b in $BINS; do
    for e in contiguous round_robin balanced; do
      "${b#*:}" run "$W/skew.moe" "$@" --experts $e --load "$W/ck.safetensors" \
        --steps $((SKEW_STEPS + STEPS)) --no-eval --quiet --json 2>/dev/null | tail -n 1 \
        >"$W/run-${b%%:*}-$e-$r.json"
    done
  done
  r=$((r + 1))
done
for b in $BINS; do
  "$PY" - "$W" "$ROUNDS" "${b%%:*}" <<'PYEOF'
import json, sys
w, rounds, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pols = ["contiguous", "round_robin", "balanced"]
pred, meas = {}, {}
print("%s:\n%-12s %9s %9s %8s %s" % (tag, "experts", "pred ms", "meas ms", "busiest",
                                     "runs (median step ms)"))
for e in pols:
    plan = json.load(open("%s/plan-%s-%s.json" % (w, tag, e)))
    pred[e] = plan["cost_model"]["step_s"] * 1e3
    runs = [json.loads(open("%s/run-%s-%s-%d.json" % (w, tag, e, r)).read())["step_ms_median"]
            for r in range(rounds)]
    meas[e] = min(runs)
    rows = [d["expert_rows"] for d in plan["per_device"]]
    share = max(rows) / sum(rows) if sum(rows) else 0
    print("%-12s %9.3f %9.3f %7.1f%% %s" % (e, pred[e], meas[e], 100 * share,
                                           " ".join("%.2f" % x for x in runs)))
agree = sum((pred[a] < pred[b]) == (meas[a] < meas[b])
            for i, a in enumerate(pols) for b in pols[i + 1:])
print("pairs ordered as predicted: %d of 3; balanced against contiguous: predicted %.2fx, "
      "measured %.2fx" % (agree, pred["contiguous"] / pred["balanced"],
                          meas["contiguous"] / meas["balanced"]))
PYEOF
done
