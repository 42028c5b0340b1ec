#!/bin/sh
# test_expert_bwd.sh MOEC SRCDIR: plan.expert_bwd = fused (the experts' hidden gradient
# GEMM and relu's backward as one grouped_matmul_relu_bwd, written over the hidden
# activation; passes/fusion.c) trains to the same step losses and checkpoint bits as split
# (grouped_matmul, then relu_bwd): tests/expert_bwd.moe on one device with 1 and 2
# threads, with --fuse false (no folded dW: the op over the hidden activation), with a
# NaN-poisoned arena, resumed at step 6, in float64 (losses); examples/lm_moe256h.moe
# (hmoe) on 2 and 4 in-process devices (expert rows sized per step, in their slots), on 8
# at 8 rows a step (the rows outgrow the slots and move apart) and on 2 MPI ranks when
# mpirun is here; examples/lm_moe32.moe with recompute = all against split without. The
# graphs: the fused op by default, not with split, not on the cuda backend (its kernels
# do not take this form).
set -e
MOEC=$1
SRC=$2
. "$SRC/tests/rows_lib.sh"
EB=$SRC/tests/expert_bwd.moe
"$MOEC" ir "$EB" --after fusion >fused.ir 2>&1 || fail "moec ir: $(cat fused.ir)"
"$MOEC" ir "$EB" --after fusion --expert-bwd split >split.ir 2>&1 || fail "moec ir split"
"$MOEC" ir "$EB" --after fusion --backend cuda >cuda.ir 2>&1 || fail "moec ir cuda"
grep -q ' = grouped_matmul_relu_bwd(m.h, ' fused.ir || fail "no grouped_matmul_relu_bwd over m.h"
grep -q ' = relu_bwd(' fused.ir && fail "fused: a relu_bwd is left"
grep -q ' = relu_bwd(m.grouped_matmul' split.ir || fail "split: no relu_bwd of the GEMM"
grep -q 'grouped_matmul_relu_bwd' split.ir && fail "split: the fused op"
grep -q 'grouped_matmul_relu_bwd' cuda.ir && fail "cuda: the fused op"
echo "ok: the fused op by default; split and cuda keep grouped_matmul, relu_bwd"

MOEC_THREADS=1 run split "$EB" --expert-bwd split
MOEC_THREADS=1 run fused "$EB"
same split fused
MOEC_THREADS=2 run fused2 "$EB"
same split fused2
run poisoned "$EB" --poison-arena
same split poisoned
run split_nofuse "$EB" --expert-bwd split --fuse false
run fused_nofuse "$EB" --fuse false --poison-arena
same split_nofuse fused_nofuse
# resumed: 6 steps, saved, 6 more = 12 uninterrupted (split)
"$MOEC" run "$EB" --steps 6 --no-eval --save half.ck >half.err 2>&1 || fail "half: $(tail -3 half.err)"
"$MOEC" run "$EB" --steps 12 --no-eval --load half.ck --save resumed.ck --metrics resumed.metrics \
  >resumed.err 2>&1 || fail "resumed: $(tail -3 resumed.err)"
cmp -s split.ck resumed.ck || fail "resumed at step 6: the checkpoint differs from split's"
echo "resumed = split: the checkpoint at step 12, bit for bit"

# float64 (no checkpoints there): the step losses
for x in split fused; do
  "$MOEC" run "$EB" --f64 --expert-bwd $x --steps 6 --no-eval --metrics "f64.$x.metrics" \
    >"f64.$x.err" 2>&1 || fail "f64 $x: $(tail -3 "f64.$x.err")"
  grep '"event":"step"' "f64.$x.metrics" | sed 's/.*"loss":\([^,]*\),.*/\1/' >"f64.$x.loss"
done
[ "$(wc -l <f64.fused.loss)" -eq 6 ] && cmp -s f64.split.loss f64.fused.loss ||
  fail "f64: the losses differ"
echo "f64: fused = split, 6 losses"

H=$SRC/examples/lm_moe256h.moe
for p in 2 4; do
  run "h$p.split" "$H" --devices $p --expert-bwd split
  run "h$p.fused" "$H" --devices $p --poison-arena
  same "h$p.split" "h$p.fused"
done
run h8small.split "$H" --devices 8 --batch 8 --expert-bwd split
run h8small.fused "$H" --devices 8 --batch 8 --poison-arena
same h8small.split h8small.fused
grep -q "apart from the arena" h8small.fused.err || fail "8 devices at 8 rows: the rows never moved apart"
if [ -n "$MPI2" ]; then
  LAUNCH=$MPI2 run hmpi.fused "$H" --devices 2
  same h2.split hmpi.fused
fi

M=$SRC/examples/lm_moe32.moe
run m32.split "$M" --expert-bwd split
run m32.all "$M" --recompute all --poison-arena
same m32.split m32.all
echo "expert_bwd: ok"
