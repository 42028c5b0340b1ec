#!/bin/sh
# test_calibrate_mpi.sh MOEC EXAMPLES: `mpirun -np 2 moec calibrate --mpi` adds the MPI
# ranks' figures (latency, bandwidth; the in-situ kernel factors of a rank, a call's time,
# and each collective's per-call time, as "rank_kernels") to a profile, replacing an
# earlier section; `moec plan --mpi` costs the kernels and collectives with them (the
# ranks' factors doubled double its kernel time, the in-process devices' plan unchanged),
# and refuses a profile without them (or with an older section lacking the factors);
# --mpi outside mpirun is refused. Exit 77 without mpirun.
set -eu
MOEC=$1
EX=$2
command -v mpirun >/dev/null 2>&1 || { echo "SKIP: mpirun not found"; exit 77; }
W=$(mktemp -d "${TMPDIR:-/tmp}/moec_calibrate_mpi.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
mpi() {
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
    timeout 120 mpirun --oversubscribe -np "$@"
}
# a profile's compute constants (the in-process calibration's; these are made up)
cat >"$W/p.json" <<'JSON'
{"moec_profile": 1, "name": "calibrated",
 "gflops": 30, "gemm_half": 20, "launch_us": 2, "elem_gbs": 4,
 "link_gbs": 6, "latency_us": 3, "cores": 2}
JSON
cp "$W/p.json" "$W/plain.json"
if "$MOEC" calibrate --mpi -o "$W/p.json" >"$W/out" 2>&1; then fail "--mpi without mpirun ran"; fi
grep -q 'start it as `mpirun' "$W/out" || fail "no mpirun message: $(cat "$W/out")"
if mpi 2 "$MOEC" calibrate --mpi --quick -o "$W/none.json" >"$W/out" 2>&1; then
  fail "--mpi with no profile ran"
fi
grep -q 'measure this machine first' "$W/out" || fail "no-profile message: $(cat "$W/out")"
for _ in 1 2; do # the second replaces the first section
  mpi 2 "$MOEC" calibrate --mpi --quick -o "$W/p.json" >"$W/out" 2>&1 ||
    fail "mpirun calibrate --mpi: $(cat "$W/out")"
  grep -q 'MPI, 2 ranks: link' "$W/out" || fail "summary: $(cat "$W/out")"
done
[ "$(grep -c '"mpi"' "$W/p.json")" = 1 ] || fail "not one mpi section: $(cat "$W/p.json")"
"$MOEC" plan "$EX/lm_moe32.moe" --devices 2 --profile "$W/p.json" --format json \
  >"$W/inproc.json" || fail "plan"
"$MOEC" plan "$EX/lm_moe32.moe" --devices 2 --profile "$W/p.json" --mpi --format json \
  >"$W/mpi.json" || fail "plan --mpi"
python3 - "$W" <<'PY' || fail "profile or plan --mpi"
import json, sys
w = sys.argv[1]
p = json.load(open(w + "/p.json"))
m = p["mpi"]
k = m["rank_kernels"]
assert m["ranks"] == 2 and m["link_gbs"] > 0 and m["latency_us"] > 0, m
for op in ("all_to_all", "all_to_all_back", "all_reduce", "call"):  # in situ on 2 ranks
    assert k[op + "_us"] >= 0, (op, k)
for op in ("matmul", "lstm", "lstm_bwd", "grouped_matmul", "dropout", "xent", "optimizer"):
    assert k[op] > 0, (op, k.get(op))
assert p["gflops"] == 30 and p["link_gbs"] == 6, p  # the rest kept
a = json.load(open(w + "/inproc.json"))["cost_model"]
b = json.load(open(w + "/mpi.json"))["cost_model"]
assert a["link_gbs"] == 6 and a["latency_us"] == 3, a
assert abs(b["link_gbs"] - m["link_gbs"]) <= 1e-5 * m["link_gbs"], (b, m)
assert abs(b["latency_us"] - m["latency_us"]) <= 1e-5 * m["latency_us"] + 1e-9, (b, m)
assert b["name"] == "calibrated, MPI ranks", b
assert b["comm_s"] > 0 and b["comm_s"] != a["comm_s"], (a, b)
# the in-process devices' factors all 1, the ranks' 1 (f1) or 2 (f2), no call or
# collective time: a plan on ranks doubles its kernels' time with the ranks' factors
ones = {op: (0 if op.endswith("_us") else 1) for op in k}
p["kernels"] = {"all_cores": ones, "one_thread": ones}
p["norm_ns"] = 0  # the passes before the update (not scaled by the factors) left out
for f in (1, 2):
    m["rank_kernels"] = {op: (0 if op.endswith("_us") else f) for op in k}
    json.dump(p, open(w + "/f%d.json" % f, "w"))
del m["rank_kernels"]  # a section an older moec wrote: its collectives alone
m.update({op + "_us": 5 for op in ("all_to_all", "all_to_all_back", "all_reduce")})
json.dump(p, open(w + "/old.json", "w"))
PY
for f in 1 2; do
  for how in inproc mpi; do
    flag=""
    [ $how = mpi ] && flag=--mpi
    "$MOEC" plan "$EX/lm_moe32.moe" --devices 2 --profile "$W/f$f.json" $flag --format json \
      >"$W/f$f$how.json" || fail "plan f$f $how"
  done
done
python3 - "$W" <<'PY' || fail "the ranks' factors not applied"
import json, sys
w = sys.argv[1]
c = {n: json.load(open(w + "/f%s.json" % n))["cost_model"] for n in ("1inproc", "2inproc", "1mpi", "2mpi")}
a, b = c["1mpi"], c["2mpi"]
assert a["comm_s"] > 0 and abs(b["comm_s"] - a["comm_s"]) < 1e-12, (a, b)
assert abs(b["step_s"] - (2 * a["step_s"] - a["comm_s"])) < 1e-6 * a["step_s"], (a, b)
assert c["1inproc"]["step_s"] == c["2inproc"]["step_s"], c  # in-process: its own factors
print("plan --mpi on 2 ranks: kernels %.3f ms at the ranks' factors 1, %.3f ms at 2" % (
    (a["step_s"] - a["comm_s"]) * 1e3, (b["step_s"] - b["comm_s"]) * 1e3))
PY
if "$MOEC" plan "$EX/lm_moe32.moe" --devices 2 --profile "$W/old.json" --mpi >/dev/null \
  2>"$W/err"; then
  fail "plan --mpi with an MPI section without the ranks' factors ran"
fi
grep -q 'no valid "rank_kernels"' "$W/err" || fail "message: $(cat "$W/err")"
if "$MOEC" plan "$EX/lm_moe32.moe" --devices 2 --profile "$W/plain.json" --mpi >/dev/null \
  2>"$W/err"; then
  fail "plan --mpi with no MPI figures ran"
fi
grep -q 'no MPI figures' "$W/err" || fail "message: $(cat "$W/err")"
echo "calibrate --mpi: ok"
