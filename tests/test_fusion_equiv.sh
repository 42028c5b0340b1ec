#!/bin/sh
# test_fusion_equiv.sh MOEC SRCDIR: fused = unfused and host JIT = interpreter.
# Trains examples/lm_moe32.moe (MoE) and
# tests/fusion_dense.moe (dense, made of elementwise chains and trees) for 20 steps
# three ways: --fuse false --no-jit (unfused kernels, interpreter), --fuse true --no-jit
# (fused JIT kernels), --fuse true (and the host JIT). The per-step
# metrics (loss, xent, aux, grad norm, expert balance; %.9g, which round-trips a
# float32) must be the same text: bit-identical training. Skips (77) without LLVM.
set -eu
MOEC=$1
SRC=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if ! "$MOEC" ir "$SRC/examples/lm_moe32.moe" --fuse true --after fusion >"$T/ir" 2>&1; then
  cat "$T/ir"; exit 1
fi
if ! grep -q ' = fused(' "$T/ir"; then
  echo "skipped: no fused groups (moec built without LLVM)"; exit 77
fi
fail=0
for path in examples/lm_moe32 tests/fusion_dense; do
  model=$(basename $path)
  for mode in base fuse jit; do
    case $mode in
      base) f=false j=--no-jit ;;
      fuse) f=true j=--no-jit ;;
      jit) f=true j= ;;
    esac
    "$MOEC" run "$SRC/$path.moe" --fuse $f $j --steps 20 --eval-every 0 \
      --quiet --metrics "$T/$model.$mode.jsonl" >/dev/null 2>"$T/err" || { cat "$T/err"; exit 1; }
    # drop timings; keep every number that depends on the arithmetic
    grep '"event":"step"' "$T/$model.$mode.jsonl" | sed 's/"tokens_per_s":[^,]*,//' >"$T/$model.$mode"
  done
  n=$(wc -l <"$T/$model.base")
  [ "$n" -eq 20 ] || { echo "$model: expected 20 step lines, got $n"; fail=1; }
  for mode in fuse jit; do
    if cmp -s "$T/$model.base" "$T/$model.$mode"; then
      echo "$model: $mode = unfused interpreter over 20 steps (bit-identical)"
    else
      echo "$model: $mode differs from the unfused interpreter:"
      diff "$T/$model.base" "$T/$model.$mode" | head -6
      fail=1
    fi
  done
done
exit $fail
