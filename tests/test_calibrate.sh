#!/bin/sh
# test_calibrate.sh MOEC EXAMPLES: moec calibrate --quick writes the in-situ kernel factors
# (every core and one thread: a call's time, per op, the optimizer's), plan reads them and
# every op's modelled time is scaled by its factor (doubling every factor doubles a
# one-device step with no call time), a malformed factor table is refused by name.
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
python3 - "$W" <<'PY' || fail "profile's kernels"
import json, sys
w = sys.argv[1]
p = json.load(open(w + "/p.json"))
k = p["kernels"]
for s in ("all_cores", "one_thread"):
    for op in ("matmul", "lstm", "lstm_bwd", "grouped_matmul", "dropout", "xent", "optimizer"):
        assert k[s][op] > 0, (s, op, k[s].get(op))
    assert k[s]["call_us"] >= 0
# every factor doubled and no call time: the same profile otherwise
for s in ("all_cores", "one_thread"):
    for op in k[s]:
        k[s][op] = 0 if op == "call_us" else 2 * k[s][op]
json.dump(p, open(w + "/p2.json", "w"))
for s in ("all_cores", "one_thread"):
    k[s] = {op: (0 if op == "call_us" else v / 2) for op, v in k[s].items()}
json.dump(p, open(w + "/p1.json", "w"))
p["kernels"]["one_thread"] = {"matmul": "x"}
json.dump(p, open(w + "/bad.json", "w"))
PY
"$MOEC" plan "$EX/lm_moe32.moe" --profile "$W/p.json" >"$W/plan" || fail "plan"
grep -q "in-situ factor" "$W/plan" || fail "plan does not say it uses the factors"
for v in 1 2; do
  "$MOEC" plan "$EX/lm_moe32.moe" --profile "$W/p$v.json" --format json >"$W/s$v.json" ||
    fail "plan p$v"
done
python3 - "$W" <<'PY' || fail "factors not applied"
import json, sys
w = sys.argv[1]
a = json.load(open(w + "/s1.json"))["cost_model"]["step_s"]
b = json.load(open(w + "/s2.json"))["cost_model"]["step_s"]
assert a > 0 and abs(b / a - 2) < 1e-6, (a, b)
PY
if "$MOEC" plan "$EX/lm_moe32.moe" --profile "$W/bad.json" 2>"$W/err" >/dev/null; then
  fail "malformed kernels accepted"
fi
grep -q '"kernels" factors are malformed' "$W/err" || fail "message: $(cat "$W/err")"
echo "calibrate: ok"
