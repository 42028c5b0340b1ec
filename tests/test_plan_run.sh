#!/bin/sh
# test_plan_run.sh MOEC EXAMPLE.moe [FLAGS...]: the plan is what runs (FLAGS: settings for
# both, e.g. --tables sharded). For EXAMPLE under every
# strategy on 1, 2 and 4 in-process devices, hmoe also on a 2x2 mesh (a small batch, 2
# steps, no evaluation),
# `moec plan --format json` and `moec run --json` must agree:
#   - per device, byte for byte: parameters, optimizer state, the memory plan's
#     persistent region and arena (the plan computes them with each device's own shard,
#     bind and memplan passes; the run reports what its program allocated);
#   - per step, summed over devices, per collective kind: the bytes sent by every
#     all_reduce, reshard and all_gather_topm (deterministic) equal the plan's expected
#     bytes; the rows every all_to_all and all_to_all_back moves equal the plan's payload
#     (noisy top-k routes every row to k experts) and what they send stays within it.
set -eu
MOEC=$1
MODEL=$2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PY=${MOEC_PYTHON:-python3}
name=$(basename "$MODEL" .moe)
shift 2
set -- --batch 8 --unroll 4 --steps 2 --seed 3 "$@"
n=0
for strategy in paper data_parallel hmoe; do
  # hmoe also on a 2x2 mesh (4m): its two-level exchange, groups kept within a node
  for p in 1 2 4 $([ $strategy = hmoe ] && echo 4m); do
    mesh=
    [ $p = 4m ] && { p=4; mesh="--mesh 2x2"; }
    if ! "$MOEC" plan "$MODEL" "$@" --devices $p $mesh --strategy $strategy --format json \
      >"$W/plan.json" 2>"$W/plan.err"; then
      # a plan the devices cannot hold (fewer experts than devices): run must refuse it too
      if "$MOEC" run "$MODEL" "$@" --devices $p $mesh --strategy $strategy --quiet --no-eval \
        >/dev/null 2>&1; then
        echo "FAIL: $name $strategy on $p: plan refused, run ran: $(cat "$W/plan.err")"
        exit 1
      fi
      echo "ok: $name $strategy on $p: refused by plan and run alike"
      continue
    fi
    "$MOEC" run "$MODEL" "$@" --devices $p $mesh --strategy $strategy --quiet --no-eval --json \
      >"$W/run.json" 2>"$W/run.err" || { cat "$W/run.err"; echo "FAIL: run $name $strategy $p"; exit 1; }
    "$PY" - "$W/plan.json" "$W/run.json" "$name $strategy on $p${mesh:+ ($mesh)}" <<'PYEOF'
import json, sys
plan = json.load(open(sys.argv[1]))
run = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
what = sys.argv[3]
bad = []
for pd, rd in zip(plan["per_device"], run["memory"]):
    for pk, rk in (("param_allocated_bytes", "param_bytes"), ("optimizer_allocated_bytes", "optimizer_bytes"),
                   ("persist_bytes", "persist_bytes"), ("arena_bytes", "arena_bytes")):
        if int(pd[pk]) != int(rd[rk]):
            bad.append("device %d %s: plan %d, run %d" % (pd["device"], rk, pd[pk], rd[rk]))
if len(plan["per_device"]) != len(run["memory"]):
    bad.append("devices: plan %d, run %d" % (len(plan["per_device"]), len(run["memory"])))
kinds = {}
for op in plan["ops"]:
    c = op.get("collective")
    if c:
        k = kinds.setdefault(op["op"], {"payload": 0, "expected": 0, "upper": 0})
        for f in ("payload", "expected", "upper"):
            k[f] += c[f]
for kind, rc in run["comm"].items():
    pc = kinds.get(kind, {"payload": 0, "expected": 0, "upper": 0})
    if kind in ("all_reduce", "reshard", "all_gather_topm"):
        if round(rc["sent_bytes"]) != pc["expected"]:
            bad.append("%s sent %g bytes a step, the plan expects %d" % (kind, rc["sent_bytes"], pc["expected"]))
    else:
        if round(rc["payload_bytes"]) != pc["payload"]:
            bad.append("%s moved %g bytes a step, the plan's payload is %d" % (kind, rc["payload_bytes"], pc["payload"]))
        if rc["sent_bytes"] > pc["upper"] + 0.5:
            bad.append("%s sent %g bytes a step, over the plan's upper bound %d" % (kind, rc["sent_bytes"], pc["upper"]))
for kind in kinds:
    if kind not in run["comm"]:
        bad.append("the run reports no %s" % kind)
if bad:
    print("FAIL: %s:\n  %s" % (what, "\n  ".join(bad)))
    sys.exit(1)
print("ok: %s: memory of %d devices and %d collective kinds as planned" % (what, len(run["memory"]), len(kinds)))
PYEOF
    n=$((n + 1))
  done
done
[ "$n" -gt 0 ] || { echo "FAIL: nothing compared"; exit 1; }
