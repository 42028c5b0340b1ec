#!/bin/sh
# test_backend_cli.sh: choosing the backend (moec run/eval/grad --backend, the plan
# block's `backend`) where CUDA cannot run. CUDA_VISIBLE_DEVICES= hides every GPU, so
# this runs the same on a GPU machine, a machine without a GPU or driver, and a build
# without CUDA:
#   - --backend cuda: exit 1, "moec CMD: error: --backend cuda: " and the reason
#     ("no CUDA device (cudaGetDeviceCount: ...)" or "moec was built without CUDA"),
#     for run, eval and grad; never a crash
#   - plan { backend = cuda }: the same error naming the plan block; --backend cpu
#     overrides it and trains with the same losses as a file without the line
#   - a checkpoint named by --save/--load is left as it was by the failed run
#   - --backend cuda --devices 2 (several GPUs) fails with the same reason; unknown
#     backends are refused
#   - the device settings are options as data: plan.tf32 (--tf32, --set plan.tf32=...)
#     is checked like the file's settings and echoed by --json (no effect on the cpu:
#     the same losses), --no-nccl and --cuda-alloc-limit are taken, bad values refused
#   - plans for cuda: every example on 1 and 4 devices (row-sparse gradients dense on
#     cuda); an op the cuda backend lacks refused by `moec plan` at its layer
# (`check && pass ... || fail ...`: pass always succeeds, so fail runs only on a failed check)
# shellcheck disable=SC2015
set -u
MOEC=$1
EX=$(cd "$(dirname "$0")/../examples" && pwd)
. "$(dirname "$0")/lib.sh"
t_tmpdir test_backend
CUDA_VISIBLE_DEVICES=
export CUDA_VISIBLE_DEVICES
REASON='(no CUDA device \(cudaGetDeviceCount: [^)]+\)|moec was built without CUDA)'

# expect RC PATTERN CMD...: CMD exits with RC and its stderr matches the ERE PATTERN
expect() {
  want=$1 pat=$2
  shift 2
  "$@" >out.txt 2>err.txt
  rc=$?
  if [ $rc -ne "$want" ]; then
    fail "'$*' exited $rc, expected $want"; cat err.txt
  elif ! grep -qE -- "$pat" err.txt; then
    fail "'$*': no '$pat' in:"; cat err.txt
  else
    pass "$(head -1 err.txt) (exit $rc)"
  fi
}

cat >m.moe <<'EOF'
model small {
  let V = 32
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=16)
  h = lstm(emb, units=16)
  m = moe(h, experts=4, k=2, hidden=16)
  loss = softmax_xent(m, targets, vocab=V)
  output loss
}
train {
  data = synthetic(topics=4, vocab=32, seed=3)
  batch = 4
  unroll = 5
  steps = 3
}
EOF
sed 's/^train {/plan {\n  backend = cuda\n}\ntrain {/' m.moe >p.moe
grep -q 'backend = cuda' p.moe || fail "p.moe has no plan block"

expect 1 "^moec run: error: --backend cuda: $REASON" "$MOEC" run m.moe --backend cuda
expect 1 "^moec run: error: --backend cuda: $REASON" "$MOEC" run m.moe --backend=cuda --devices 2
expect 1 "^moec run: error: backend = cuda \(plan block\): $REASON" "$MOEC" run p.moe
expect 2 "command line:[0-9]+:[0-9]+: error: 'backend' must be auto, cpu or cuda, got 'gpu'" "$MOEC" run m.moe --backend gpu

"$MOEC" run m.moe --save ck.safetensors --json --quiet >a.out 2>a.err || { fail "cpu run"; cat a.err; }
cp ck.safetensors keep.safetensors
expect 1 "^moec run: error: --backend cuda: $REASON" \
  "$MOEC" run m.moe --backend cuda --load ck.safetensors --save ck.safetensors --steps 6
cmp -s ck.safetensors keep.safetensors && pass "the checkpoint is left as it was" ||
  fail "the failed run changed the checkpoint"
expect 1 "^moec eval: error: --backend cuda: $REASON" "$MOEC" eval m.moe --backend cuda --load ck.safetensors
expect 1 "^moec eval: error: backend = cuda \(plan block\): $REASON" "$MOEC" eval p.moe --load ck.safetensors
python3 -c 'import struct; open("F.bin","wb").write(struct.pack("<24H", *[(5*i) % 32 for i in range(24)]))' 2>/dev/null ||
  printf '%048d' 0 >F.bin
expect 1 "^moec grad: error: --backend cuda: $REASON" \
  "$MOEC" grad m.moe --backend cuda --load ck.safetensors --tokens F.bin

# --backend cpu overrides the plan block: the same run as without the line
"$MOEC" run p.moe --backend cpu --save ck2.safetensors --json --quiet >b.out 2>b.err ||
  { fail "--backend cpu over backend = cuda"; cat b.err; }
la=$(grep '^{' a.out | sed 's/.*"last_loss":\([^,}]*\).*/\1/')
lb=$(grep '^{' b.out | sed 's/.*"last_loss":\([^,}]*\).*/\1/')
[ -n "$la" ] && [ "$la" = "$lb" ] && pass "--backend cpu overrides the plan block (last loss $la)" ||
  fail "--backend cpu over the plan block: last loss '$lb', expected '$la'"
"$MOEC" eval p.moe --backend auto --load ck2.safetensors >/dev/null 2>e.err && pass "eval --backend auto runs" ||
  { fail "eval --backend auto"; cat e.err; }

# the device settings: data, not the environment
expect 1 "^moec run: error: --backend cuda: $REASON" "$MOEC" run m.moe --backend cuda --devices 2 --no-nccl
expect 2 "command line:[0-9]+:[0-9]+: error: 'tf32' must be true or false, got 'maybe'" \
  "$MOEC" run m.moe --tf32 maybe
expect 2 "^moec run: error: --cuda-alloc-limit 'lots': not a number of bytes" \
  "$MOEC" run m.moe --cuda-alloc-limit lots
"$MOEC" run m.moe --set plan.tf32=true --no-nccl --cuda-alloc-limit 4096 --json --quiet >t.out 2>t.err ||
  { fail "cpu run with the device settings"; cat t.err; }
lt=$(grep '^{' t.out | sed 's/.*"last_loss":\([^,}]*\).*/\1/')
grep '^{' t.out | grep -q '"tf32": true' && [ "$lt" = "$la" ] &&
  pass "--set plan.tf32=true --no-nccl --cuda-alloc-limit: echoed, no effect on the cpu (last loss $lt)" ||
  { fail "device settings on the cpu: last loss '$lt', expected '$la'"; grep '^{' t.out; }

# plans for the cuda backend (no GPU needed: the compiler checks the graph against the
# cuda kernel table): every example compiles for cuda on 1 and 4 devices (and the
# hierarchical strategy), with the row-sparse gradients all-reduced dense there (no
# sparse_all_reduce kernel on cuda); an op the cuda backend lacks is refused by plan too,
# at its layer
if "$MOEC" --version | grep -q 'features:.*cuda'; then
  bad=""
  for f in "$EX"/lm_*.moe "$EX"/nmt_*.moe; do
    for n in 1 4; do
      "$MOEC" plan "$f" --backend cuda --devices "$n" >pl.out 2>pl.err || bad="$bad $(basename "$f"):$n"
    done
  done
  "$MOEC" plan "$EX/lm_moe256h.moe" --backend cuda --devices 4 --strategy hmoe >pl.out 2>pl.err ||
    bad="$bad lm_moe256h:hmoe4"
  [ -z "$bad" ] && pass "every example plans for cuda on 1 and 4 devices" ||
    { fail "plans for cuda refused:$bad"; cat pl.err; }
  nc=$("$MOEC" ir "$EX/lm_moe32.moe" --after comm --devices 4 | grep -c sparse_all_reduce)
  ng=$("$MOEC" ir "$EX/lm_moe32.moe" --after comm --devices 4 --backend cuda | grep -c sparse_all_reduce)
  [ "$nc" -gt 0 ] && [ "$ng" -eq 0 ] &&
    pass "the embedding's gradient: sparse_all_reduce on the cpu ($nc), dense on cuda" ||
    fail "sparse_all_reduce: $nc on the cpu, $ng on cuda (want > 0 and 0)"
  expect 1 "lm_moe32.moe:[0-9]+:[0-9]+: error: layer 'emb': tables = sharded needs op table_gather, which the cuda backend does not run yet" \
    "$MOEC" plan "$EX/lm_moe32.moe" --backend cuda --devices 4 --tables sharded
else
  echo "skip: moec was built without CUDA (no cuda kernel table to plan against)"
fi

finish
