#!/bin/sh
# test_expert_headroom.sh MOEC MODEL: plan.expert_headroom sizes the expert-row buffers at
# H x a device's fair share of the routes, the same in the plan (moec plan's memory plan)
# and the run (its allocated arena); a step that routes more rows to a device than that
# stops with the reason; a bad value is refused. docs/memory.md, "Expert-row buffers".
set -e
MOEC=$1
MODEL=$2
"$MOEC" plan "$MODEL" --devices 4 --expert-headroom 4 --format json > worst.json # every route
"$MOEC" plan "$MODEL" --devices 4 --expert-headroom 2 --format json > h2.json
"$MOEC" run "$MODEL" --devices 4 --steps 2 --expert-headroom 2 --json 2>/dev/null | tail -1 > run.json
/usr/bin/python3 - <<'PY'
import json
w, h, r = (json.load(open(f)) for f in ("worst.json", "h2.json", "run.json"))
plan = [(d["persist_bytes"], d["arena_bytes"]) for d in h["per_device"]]
ran = [(d["persist_bytes"], d["arena_bytes"]) for d in r["memory"]]
assert plan == ran, (plan, ran)
worst = [d["arena_bytes"] for d in w["per_device"]]
assert all(a < b for (_, a), b in zip(plan, worst)), (plan, worst)
assert r["steps"] == 2 and r["train_loss"] > 0, r
print("plan = run:", plan, "worst case arena:", worst)
PY
# 1 x the fair share: the random gate's routes are not that even
if "$MOEC" run "$MODEL" --devices 4 --steps 2 --expert-headroom 1 > h1.out 2>&1; then
  echo "FAIL: headroom 1 ran"; exit 1
fi
grep -q "rows arrive, more than the .* the buffer holds (plan.expert_headroom sizes it" h1.out
if "$MOEC" plan "$MODEL" --devices 4 --expert-headroom 0 > h0.out 2>&1; then
  echo "FAIL: headroom 0 accepted"; exit 1
fi
grep -q "expert_headroom" h0.out
echo ok
