#!/bin/sh
# test_calibrate.sh MOEC EXAMPLES: moec calibrate --quick writes the in-situ kernel factors
# (every core and one thread: a call's time, per op, the optimizer's; a collective call's
# time beyond the model), plan reads them and every op's modelled time is scaled by its
# factor (doubling every factor doubles a step's kernel time on 1 and 2 devices, with no
# call or collective time added), a malformed factor table is refused by name; the cores
# other processes kept busy meanwhile are printed and written.
set -eu
MOEC=$1
EX=$2
W=$(mktemp -d "${TMPDIR:-/tmp}/moec_calibrate.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
"$MOEC" calibrate --quick -o "$W/p.json" >"$W/out" 2>&1 || fail "calibrate: $(cat "$W/out")"
grep -q 'kernels in situ' "$W/out" || fail "no kernel summary: $(cat "$W/out")"
grep -q 'other processes kept [0-9.]* of the [0-9]* cores busy' "$W/out" || fail "no busy cores: $(cat "$W/out")"
python3 - "$W" <<'PY' || fail "profile's kernels"
import json, os, sys
w = sys.argv[1]
p = json.load(open(w + "/p.json"))
k = p["kernels"]
assert p["dram_gbs"] > 0 and p["llc_mib"] >= 0, (p.get("dram_gbs"), p.get("llc_mib"))
assert 0 <= p["busy_cores"] <= os.cpu_count() + 0.5, p.get("busy_cores")  # of /proc/stat
assert 0 < p["norm_ns"] < 1e3, p.get("norm_ns")  # the norm's serial pass, ns an element
del p["dram_gbs"], p["llc_mib"]  # the factors alone below (the memory rule is plan_unit's)
p["norm_ns"] = 0  # and the passes before the update (plan_unit's) not modelled
for s in ("all_cores", "one_thread"):
    for op in ("matmul", "lstm", "lstm_bwd", "grouped_matmul", "dropout", "xent", "optimizer"):
        assert k[s][op] > 0, (s, op, k[s].get(op))
    assert k[s]["call_us"] >= 0
for op in ("all_to_all", "all_to_all_back", "all_reduce"):  # in situ on 2 and 4 devices
    assert k["one_thread"][op + "_us"] >= 0, (op, k["one_thread"].get(op + "_us"))
# every factor doubled and no call time: the same profile otherwise
for s in ("all_cores", "one_thread"):
    for op in k[s]:
        k[s][op] = 0 if op.endswith("_us") else 2 * k[s][op]
json.dump(p, open(w + "/p2.json", "w"))
for s in ("all_cores", "one_thread"):
    k[s] = {op: (0 if op.endswith("_us") else v / 2) for op, v in k[s].items()}
json.dump(p, open(w + "/p1.json", "w"))
p["kernels"]["one_thread"] = {"matmul": "x"}
json.dump(p, open(w + "/bad.json", "w"))
PY
"$MOEC" plan "$EX/lm_moe32.moe" --profile "$W/p.json" >"$W/plan" || fail "plan"
grep -q "in-situ factor" "$W/plan" || fail "plan does not say it uses the factors"
for d in 1 2; do
  for v in 1 2; do
    "$MOEC" plan "$EX/lm_moe32.moe" --devices $d --profile "$W/p$v.json" --format json \
      >"$W/s$d$v.json" || fail "plan p$v on $d devices"
  done
done
python3 - "$W" <<'PY' || fail "factors not applied"
import json, sys
w = sys.argv[1]
for d in (1, 2):  # 2 devices: the one-thread set; the collectives' model is not scaled
    a = json.load(open(w + "/s%d1.json" % d))["cost_model"]
    b = json.load(open(w + "/s%d2.json" % d))["cost_model"]
    assert a["step_s"] > 0 and (d == 1) == (a["comm_s"] == 0), (d, a)
    assert abs(b["comm_s"] - a["comm_s"]) < 1e-12, (d, a, b)
    assert abs(b["step_s"] - (2 * a["step_s"] - a["comm_s"])) < 1e-6 * a["step_s"], (d, a, b)
PY
if "$MOEC" plan "$EX/lm_moe32.moe" --profile "$W/bad.json" 2>"$W/err" >/dev/null; then
  fail "malformed kernels accepted"
fi
grep -q '"kernels" factors are malformed' "$W/err" || fail "message: $(cat "$W/err")"
echo "calibrate: ok"
