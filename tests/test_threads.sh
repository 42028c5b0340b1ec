#!/bin/sh
# test_threads.sh MOEC: one model, one answer for any thread count. The CPU kernels and
# the optimizer split their work by shape only (runtime/threads.c), so training with
# MOEC_THREADS=1, 2 and 3 gives the same losses, gradient norms and eval losses to
# every printed digit (float32, and float64 with --f64); with OPENBLAS_NUM_THREADS=2 as
# the only setting, the same again (moec then runs 2 threads of its own).
set -u
MOEC=$1
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
run() { # run TAG [FLAGS...]: metrics without the timings -> $W/TAG
  tag=$1
  shift
  "$@" "$HERE/../examples/lm_moe32.moe" --steps 6 --quiet --metrics "$W/$tag.json" \
    >"$W/$tag.out" 2>&1 || { cat "$W/$tag.out"; fail "$tag: moec run failed"; }
  sed 's/"tokens_per_s":[^,]*,//; s/,"seconds":[^,}]*//' "$W/$tag.json" >"$W/$tag"
  [ "$(grep -c '"event":"step"' "$W/$tag")" -eq 6 ] || fail "$tag: expected 6 steps"
}
for t in 1 2 3; do
  run t$t env MOEC_THREADS=$t "$MOEC" run
  [ $t = 1 ] || cmp -s "$W/t1" "$W/t$t" || { diff "$W/t1" "$W/t$t" | head; fail "$t threads differ from 1"; }
done
run ob env -u MOEC_THREADS OPENBLAS_NUM_THREADS=2 "$MOEC" run
cmp -s "$W/t1" "$W/ob" || fail "OPENBLAS_NUM_THREADS=2 differs from MOEC_THREADS=1"
run f1 env MOEC_THREADS=1 "$MOEC" run --f64
run f3 env MOEC_THREADS=3 "$MOEC" run --f64
cmp -s "$W/f1" "$W/f3" || fail "--f64: 3 threads differ from 1"
MOEC_THREADS=x "$MOEC" run "$HERE/../examples/lm_moe32.moe" --steps 1 >"$W/bad.out" 2>&1 &&
  fail "MOEC_THREADS=x accepted"
grep -q "MOEC_THREADS='x': expected a whole number >= 1" "$W/bad.out" ||
  { cat "$W/bad.out"; fail "no clear error for MOEC_THREADS=x"; }
echo "ok: 1, 2, 3 threads (and OPENBLAS_NUM_THREADS=2) train the same bits; --f64 too"
