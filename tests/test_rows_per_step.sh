#!/bin/sh
# test_rows_per_step.sh MOEC SMALL LM: expert-row buffers sized per step (docs/memory.md,
# "Expert-row buffers"). Without capacity= or expert_headroom the rows a device's experts
# receive live in their slots in the arena (x1.25 the fair share), bound at the fair share
# and grown when a step brings more: in the slots, and past them in a region apart. Checks:
# the checkpoint and losses are bit for bit those of the worst-case buffers
# (--expert-headroom P) on 2 and 4 in-process devices and on 2 MPI ranks, and with a batch
# of 4 rows whose routing outgrows the slots (the rows moved apart mid-run); the rows grow
# after the first step (logged); --poison-arena changes nothing; the plan's arena (slots
# included) is the run's, and the run never needs the region apart there; moec simulate's
# fits counts what is allocated (the paper's MoE-32 fits on 16 K40s, and does not with the
# worst-case buffers).
set -e
MOEC=$1
SMALL=$2
LM=$3
PAPER=$4
TESTS=$(cd "$(dirname "$0")" && pwd)
. "$TESTS/rows_lib.sh"
for p in 2 4; do
  worst_vs_step w$p s$p "$SMALL" $p
done
grep -q "rows arrived at step [1-9]" s4.err || fail "the region never grew after step 0"
grep -m1 "rows arrived at step [1-9]" s4.err
run p4 "$SMALL" --devices 4 --poison-arena
same s4 p4
# 4 rows a step on 4 devices: one device's expert rows outgrow their slots and move apart
worst_vs_step wb sb "$SMALL" 4 --batch 4
grep -q "apart from the arena" sb.err || fail "the rows never outgrew their slots at batch 4"
grep -m1 "apart from the arena" sb.err
run pb "$SMALL" --devices 4 --batch 4 --poison-arena
same sb pb
if [ -n "$MPI2" ]; then
  LAUNCH=$MPI2
  run m2 "$SMALL"
  LAUNCH=
  same s2 m2
else
  echo "no mpirun: the MPI case skipped"
fi

# the plan against the run (lm_moe32, 4 devices, 20 training steps): the same arena, the
# expert rows' slots in it; the run never moves them apart (its routing stays within
# x1.25 of the fair share: docs/memory.md), and the plan counts no region apart either
"$MOEC" plan "$LM" --devices 4 --format json > plan.json
"$MOEC" plan "$LM" --devices 4 --expert-headroom 4 --format json > worst.json
"$MOEC" run "$LM" --devices 4 --steps 20 --no-eval --json 2> lm.err | tail -1 > lm.json
"$MOEC" simulate "$LM" --cluster 4xK40 --format json > sim.json
/usr/bin/python3 - <<'PY'
import json
p, w, r, s = (json.load(open(f)) for f in ("plan.json", "worst.json", "lm.json", "sim.json"))
for d, (a, b, c) in enumerate(zip(p["per_device"], r["memory"], w["per_device"])):
    assert a["arena_bytes"] == b["arena_bytes"], ("static arena", d, a, b)
    exp, mar, high = a["rows_bytes"], a["rows_margin_bytes"], b["rows_bytes"]
    worst = c["arena_bytes"]  # every route's rows, in the arena with the rest
    assert 0 < exp and abs(mar - 1.25 * exp) <= 1, (d, exp, mar)
    assert high == 0 and a["rows_apart_bytes"] == 0, (d, high, a)
    assert a["arena_bytes"] < worst, (d, a, worst)
    assert a["planned_bytes"] == a["persist_bytes"] + a["arena_bytes"] + \
        a["optimizer_allocated_bytes"], a
    print("device %d: arena %d (the expert rows' slots in it) = run's; nothing apart; rows "
          "apart would be %d (x1.25 %d); the worst case's arena %d"
          % (d, a["arena_bytes"], exp, mar, worst))
m = s["memory"]
assert m["rows_margin_bytes"] > 0 and m["rows_apart_bytes"] == 0 and m["planned_bytes"] == \
    m["persist_bytes"] + m["arena_bytes"] + m["optimizer_bytes"], m
print("simulate: the rows in the arena's slots,", m["planned_bytes"], "allocated")
PY
# the paper's MoE-32 on its 16 K40s: fits at the per-step sizing, not at the worst case
"$MOEC" simulate "$PAPER" --cluster 16xK40 > fits.txt
grep -q "^fits *yes" fits.txt || fail "paper MoE-32 does not fit at the per-step sizing"
grep "expert rows sized per step" fits.txt
"$MOEC" simulate "$PAPER" --cluster 16xK40 --expert-headroom 16 > worst.txt
grep -q "^fits *NO" worst.txt || fail "paper MoE-32 fits with every route's buffers"
echo ok
