#!/bin/sh
# test_rows_per_step_hmoe.sh MOEC HMOE MESHED: an hmoe layer's expert-row buffers sized per
# step (docs/memory.md, "Expert-row buffers"): both levels of its two-level exchange, the
# group rows the group-level all-to-all brings and the expert rows the expert-level one
# brings, in their slots in the arena (a region apart once a step outgrows them). Checks:
# losses and checkpoint bit for bit those
# of the worst-case buffers (--expert-headroom P) for HMOE (lm_moe256h: 16 groups of 16)
# on 2, 4 and 8 in-process devices, and for MESHED (md_hmoe2: a group's experts on two
# devices, so expert rows cross devices) on a 2x2 mesh; the region grows after step 0 at
# both levels; on 8 devices at 8 rows a step they outgrow their slots and move apart
# (the same bits); --poison-arena changes nothing; 2 MPI ranks; the plan's arena (the
# slots in it) equal to the run's and nothing apart in either, also when the plan takes
# the run's measured loads (--loads). The plan's expected region per
# level of the exchange under skewed loads files: on HMOE (each group with its experts)
# both levels at the device's routed share; on MESHED (a group's experts on its node's
# two devices) a loads file with even groups and uneven experts leaves the group rows at
# uniform routing's and scales the expert rows alone.
set -e
MOEC=$1
HMOE=$2
MESHED=$3
TESTS=$(cd "$(dirname "$0")" && pwd)
. "$TESTS/rows_lib.sh"
RUN_ARGS="--strategy hmoe"
for p in 2 4 8; do
  worst_vs_step w$p s$p "$HMOE" $p
done
for lv in group expert; do
  grep -q "'m' ($lv level): [0-9]* rows arrived at step [1-9]" s4.err s8.err ||
    fail "the $lv level's rows never grew after step 0"
done
grep -hm2 "rows arrived at step [1-9]" s4.err
run p4 "$HMOE" --devices 4 --poison-arena
same s4 p4
worst_vs_step wb sb "$HMOE" 8 --batch 8
grep -q "level): [0-9]* rows arrived at step [0-9]*; .*apart from the arena" sb.err ||
  fail "the rows never outgrew their slots on 8 devices at batch 8"
grep -hm1 "apart from the arena" sb.err
worst_vs_step mw ms "$MESHED" 4 --mesh 2x2
grep -q "(expert level): [0-9]* rows arrived at step [1-9]" ms.err ||
  fail "the meshed model's expert rows never grew after step 0"
if [ -n "$MPI2" ]; then
  LAUNCH=$MPI2
  run m2 "$HMOE"
  LAUNCH=
  same s2 m2
else
  echo "no mpirun: the MPI case skipped"
fi

# the plan against the run (4 devices, 20 training steps): the same arena, the expert
# rows' slots in it; neither moves them apart
"$MOEC" plan "$HMOE" --devices 4 --strategy hmoe --format json > plan.json
"$MOEC" run "$HMOE" --devices 4 --strategy hmoe --steps 20 --no-eval --json \
  --metrics lm.metrics 2> lm.err | tail -1 > lm.json
"$MOEC" plan "$HMOE" --devices 4 --strategy hmoe --loads lm.metrics --format json > planl.json
/usr/bin/python3 - <<'PY'
import json
r = json.load(open("lm.json"))
for f in ("plan.json", "planl.json"):
    p = json.load(open(f))
    assert len(p["per_device"]) == len(r["memory"]) == 4
    for d, (a, b) in enumerate(zip(p["per_device"], r["memory"])):
        assert a["arena_bytes"] == b["arena_bytes"], ("static arena", d, a, b)
        exp, mar, high = a["rows_bytes"], a["rows_margin_bytes"], b["rows_bytes"]
        assert 0 < exp < mar and high == 0 and a["rows_apart_bytes"] == 0, (f, d, exp, high, a)
        assert a["planned_bytes"] == a["persist_bytes"] + a["arena_bytes"] + \
            a["optimizer_allocated_bytes"], a
        print("%s device %d: arena %d (the slots in it) = run's; nothing apart (it would be "
              "%d, x1.25 %d)" % (f, d, a["arena_bytes"], exp, mar))
PY

# skewed loads files: E experts in G groups, "heavy" a weight per expert
loads() {
  /usr/bin/python3 -c 'import sys; print("{\"moe\":[{\"name\":\"m\",\"load\":[%s]}]}" % ",".join(sys.argv[1:]))' "$@"
}
# HMOE: group 0's experts 8x, the first half of every group's 3x
loads $(/usr/bin/python3 -c 'print(" ".join(str((8 if e < 16 else 1) * (3 if e % 16 < 8 else 1)) for e in range(256)))') > skew.loads
"$MOEC" plan "$HMOE" --devices 4 --strategy hmoe --loads skew.loads --format json > plans.json
# MESHED: groups even (96 each), each group's experts on its first device 3x the second's
loads 24 24 24 8 8 8 8 8 8 24 24 24 > even_groups.loads
"$MOEC" plan "$MESHED" --devices 4 --mesh 2x2 --strategy hmoe --format json > mplan.json
"$MOEC" plan "$MESHED" --devices 4 --mesh 2x2 --strategy hmoe --loads even_groups.loads \
  --format json > mplanl.json
/usr/bin/python3 - <<'PY'
import json
def dev(f):
    return json.load(open(f))["per_device"]
u, s = dev("plan.json"), dev("plans.json")
for d in range(4):  # both levels at the device's routed share over uniform's 1/4
    want = s[d]["route_share"] / 0.25
    got = s[d]["rows_bytes"] / u[d]["rows_bytes"]
    assert abs(got - want) < 0.01 * want, ("hmoe", d, got, want)
    print("hmoe, skewed: device %d's expected rows %.3f x uniform's (routed share %.3f)" % (
        d, got, s[d]["route_share"]))
assert s[0]["rows_bytes"] > 1.8 * u[0]["rows_bytes"], (s[0], u[0])  # the file is skewed
# device 0's routing outgrows its slots (x1.25 uniform's): the plan adds the region apart
assert s[0]["rows_apart_bytes"] == s[0]["rows_margin_bytes"] > 0 and u[0]["rows_apart_bytes"] == 0
assert s[0]["planned_bytes"] == s[0]["persist_bytes"] + s[0]["arena_bytes"] + \
    s[0]["optimizer_allocated_bytes"] + s[0]["rows_apart_bytes"], s[0]
u, s = dev("mplan.json"), dev("mplanl.json")
r = [s[d]["rows_bytes"] / u[d]["rows_bytes"] for d in range(4)]
e = [s[d]["route_share"] / 0.25 for d in range(4)]  # the expert level's: 1.5, .5, .5, 1.5
print("meshed, groups even: expected rows x uniform's %s; the expert level's share x %s" % (
    ["%.3f" % x for x in r], ["%.3f" % x for x in e]))
# devices 0 and 2 hold a group's rows (at uniform's) and 3 experts (at their share), 1 and
# 3 experts alone
assert abs(e[0] - 1.5) < 1e-9 and abs(e[2] - 0.5) < 1e-9, e
assert 1.05 < r[0] < 0.95 * e[0] and 1.05 * e[2] < r[2] < 0.95, r
for d in (1, 3):
    assert abs(r[d] - e[d]) < 0.02 * e[d], (d, r, e)
PY
echo ok
