#!/bin/sh
# test_fold_dw.sh MOEC SRCDIR: the few-row experts' weight gradient folded into the
# optimizer (fold=1, passes/fusion.c) trains bit for bit as unfused (--fuse false).
# tests/fold_dw.moe with 64 experts (about 2 rows each: dW made by the optimizer; clipping
# on and off, resumed) and 16 (about 8: the kernel's and the optimizer's experts mixed),
# Adam and factored, fused on 1 and 2 threads against unfused on 1: the step metrics
# (loss, grad norm, ...; %.9g) and the checkpoint's tensors must be the same; 2 devices
# (no fold there) too.
# Skips (77) without LLVM (no fusion pass: nothing is folded).
set -eu
MOEC=$1
SRC=$2
PY=/usr/bin/python3
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T"
"$MOEC" ir "$SRC/tests/fold_dw.moe" --fuse true --after fusion >ir 2>&1 || { cat ir; exit 1; }
if ! grep -q ' = fused(' ir; then
  echo "skipped: no fusion pass (moec built without LLVM)"; exit 77
fi
grep -q 'grouped_matmul_dw(.*fold=1' ir || { echo "FAIL: no folded grouped_matmul_dw in moec ir"; grep grouped_matmul_dw ir; exit 1; }
"$MOEC" ir "$SRC/tests/fold_dw.moe" --fuse false --after fusion >ir0 2>&1
if grep -q 'fold=1' ir0; then echo "FAIL: --fuse false still folds"; exit 1; fi
fail=0
# steps(NAME, ARGS...): the run's step metrics without timings, in NAME; its checkpoint NAME.st
steps() {
  name=$1; shift
  "$MOEC" run m.moe --quiet --metrics "$name.jsonl" --save "$name.st" "$@" >/dev/null 2>"$name.err" ||
    { echo "FAIL: $name: run failed"; cat "$name.err"; fail=1; return 0; }
  grep '"event":"step"' "$name.jsonl" | sed 's/"tokens_per_s":[^,]*,//; s/"elapsed":[^,]*,//' >"$name"
}
# same(A, B, WHAT): step metrics and checkpoint tensors equal
same() {
  if [ ! -s "$1" ] || ! cmp -s "$1" "$2"; then
    echo "FAIL: $3: step metrics differ"; diff "$1" "$2" | head -4; fail=1; return 0
  fi
  if ! "$PY" - "$1.st" "$2.st" <<'PY'
import json, struct, sys
def tensors(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
bad = [k for k in a if a[k] != b.get(k)] + [k for k in b if k not in a]
if bad: print("tensors differ:", bad[:5]); sys.exit(1)
PY
  then echo "FAIL: $3: checkpoints differ"; fail=1; return 0; fi
  echo "ok: $3 ($(wc -l <"$1") steps, checkpoint tensors equal)"
}
for E in 64 16; do
  sed "s/experts=64/experts=$E/" "$SRC/tests/fold_dw.moe" >m.moe
  for opt in adam factored; do
    clips="0.5 0"
    [ $E = 64 ] || clips=0.5
    for clip in $clips; do
      n="e$E.$opt.c$clip"
      MOEC_THREADS=1 steps "$n.false" --optimizer "$opt(lr=1e-2)" --clip $clip --fuse false
      for th in 1 2; do
        MOEC_THREADS=$th steps "$n.t$th" --optimizer "$opt(lr=1e-2)" --clip $clip --fuse true
        same "$n.false" "$n.t$th" "$E experts, $opt, clip $clip, $th threads: fused = unfused"
      done
    done
    [ $E = 64 ] || continue
    # resumed: 6 steps, save, 6 more (fused) = 12 unfused without a break
    n="e$E.$opt.c0.5"
    MOEC_THREADS=2 "$MOEC" run m.moe --quiet --optimizer "$opt(lr=1e-2)" --steps 6 --save half.st >/dev/null 2>err ||
      { echo "FAIL: half run"; cat err; fail=1; }
    MOEC_THREADS=2 "$MOEC" run m.moe --quiet --optimizer "$opt(lr=1e-2)" --load half.st --save "res.st" \
      --metrics res.jsonl >/dev/null 2>err || { echo "FAIL: resumed run"; cat err; fail=1; }
    grep '"event":"step"' res.jsonl | sed 's/"tokens_per_s":[^,]*,//; s/"elapsed":[^,]*,//' >res
    grep -E '"step":(7|8|9|10|11|12)[,}]' "$n.false" >tail
    cp "$n.false.st" tail.st
    same tail res "$E experts, $opt: fused, resumed at step 6 = unfused uninterrupted"
  done
done
# two devices in one process: no fold (docs/training.md); fused = unfused still
cp "$SRC/tests/fold_dw.moe" m.moe
for opt in adam factored; do
  for f in true false; do
    MOEC_THREADS=1 steps "d2.$opt.$f" --optimizer "$opt(lr=1e-2)" --devices 2 --fuse $f
  done
  same "d2.$opt.false" "d2.$opt.true" "2 devices, $opt: fused = unfused"
done
exit $fail
