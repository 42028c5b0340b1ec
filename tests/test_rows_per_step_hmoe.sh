#!/bin/sh
# test_rows_per_step_hmoe.sh MOEC HMOE MESHED: an hmoe layer's expert-row buffers sized per
# step (docs/memory.md, "Expert-row buffers"): both levels of its two-level exchange, the
# group rows the group-level all-to-all brings and the expert rows the expert-level one
# brings, in the region outside the arena. Checks: losses and checkpoint bit for bit those
# of the worst-case buffers (--expert-headroom P) for HMOE (lm_moe256h: 16 groups of 16)
# on 2, 4 and 8 in-process devices, and for MESHED (md_hmoe2: a group's experts on two
# devices, so expert rows cross devices) on a 2x2 mesh; the region grows after step 0 at
# both levels; --poison-arena changes nothing; 2 MPI ranks; the plan's static arena equal
# to the run's and the run's region between the plan's expected one and its x1.25.
set -e
MOEC=$1
HMOE=$2
MESHED=$3
TESTS=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
. "$TESTS/rows_lib.sh"
RUN_ARGS="--strategy hmoe"
for p in 2 4 8; do
  run w$p "$HMOE" --devices $p --expert-headroom $p # every route: the worst case
  run s$p "$HMOE" --devices $p
  same w$p s$p
done
for lv in group expert; do
  grep -q "'m' ($lv level): [0-9]* rows arrived at step [1-9]" s4.err s8.err ||
    fail "the $lv level's rows never grew after step 0"
done
grep -hm2 "rows arrived at step [1-9]" s4.err
run p4 "$HMOE" --devices 4 --poison-arena
same s4 p4
run mw "$MESHED" --devices 4 --mesh 2x2 --expert-headroom 4
run ms "$MESHED" --devices 4 --mesh 2x2
same mw ms
grep -q "(expert level): [0-9]* rows arrived at step [1-9]" ms.err ||
  fail "the meshed model's expert rows never grew after step 0"
if command -v mpirun >/dev/null 2>&1; then
  LAUNCH="env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun \
    --oversubscribe -np 2"
  run m2 "$HMOE"
  LAUNCH=
  same s2 m2
else
  echo "no mpirun: the MPI case skipped"
fi

# the plan against the run (4 devices, 20 training steps): the same static arena; the
# run's region at its most between the plan's expected one and the plan's x1.25
"$MOEC" plan "$HMOE" --devices 4 --strategy hmoe --format json > plan.json
"$MOEC" run "$HMOE" --devices 4 --strategy hmoe --steps 20 --no-eval --json 2> lm.err |
  tail -1 > lm.json
/usr/bin/python3 - <<'PY'
import json
p, r = (json.load(open(f)) for f in ("plan.json", "lm.json"))
assert len(p["per_device"]) == len(r["memory"]) == 4
for d, (a, b) in enumerate(zip(p["per_device"], r["memory"])):
    assert a["arena_bytes"] == b["arena_bytes"], ("static arena", d, a, b)
    exp, mar, high = a["rows_bytes"], a["rows_margin_bytes"], b["rows_bytes"]
    assert 0 < exp <= high <= mar, (d, exp, high, mar)
    print("device %d: static arena %d = run's; rows: plan expected %d, x1.25 %d; run's most "
          "%d (%.3f of the plan's x1.25)" % (d, a["arena_bytes"], exp, mar, high, high / mar))
PY
echo ok
