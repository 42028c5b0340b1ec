#!/bin/sh
# test_hostile.sh: hostile inputs to the moec binary: each a clear error and a
# non-zero exit (never a crash, a hang or an unbounded read), or correct behaviour.
#
#   usage: test_hostile.sh MOEC CASE
#
#   sizes   : a model whose tensors overflow int64 once B and T are bound (check,
#             plan and run say which tensor and the limit)
#   paths   : /dev/zero, a FIFO and a directory as the .moe, data and checkpoint
#             path: refused at once with what they are
#   steps   : checkpoints whose optim.step / train.step are INT64_MAX, not int64 or
#             negative: refused naming the key; train.step 2^31-1 with --steps 6
#             (a resume past the end) ends at once instead of generating 2^31 batches
#   files   : --save through a symlink keeps the link, onto a FIFO is refused and
#             leaves it, a dead save's temporary is removed; a text corpus of bytes
#             that are not UTF-8: every header moec writes parses with Python's json,
#             the vocabulary comes back (resume and eval --data)
#   compile : hmoe with 4000 groups plans in seconds (the passes were quadratic)
#   diverge : lr = 1e30 with --eval-every 1 --save: exit 1 naming the step and the
#             first op that went non-finite, no checkpoint written (a fresh run leaves
#             none, a resumed one leaves the good one byte for byte); lr = 1e6 (a
#             finite loss whose perplexity overflows) too; 2 devices too
#   writes  : stdout (run, --json, check, ir, plan, eval) and --metrics on a full
#             disk (/dev/full): exit 1 naming the stream, reported once; a bad --save
#             path fails before step 1
#   resume  : a checkpoint without a carried state (state.h.c) or an optimizer
#             moment: an error naming the tensor; --steps / --set train.steps 1e20
#             and other integer flags out of range: an error naming the setting
#   mpi_inputs: MPI ranks with different data files or different --load files (the
#             same paths in different directories): stopped with a message
#   mpi     : a rank stopped (SIGSTOP) during start-up (MPI_Init waits for it: at
#             least 30 s) or training (MOEC_COMM_TIMEOUT=3): the job ends with the
#             watchdog's message
#
# Needs python3 (json, struct: the standard library); mpi needs mpirun.
set -u
MOEC=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
CASE=$2
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not found (edits checkpoint headers)"; exit 77; }
. "$(dirname "$0")/lib.sh"
t_tmpdir test_hostile

# expect_error PATTERN CMD...: CMD exits 1 (2: the frontend's located errors) within 30 s
# and its stderr contains PATTERN
expect_error() {
  pat=$1
  shift
  timeout -s KILL 30 "$@" >out.txt 2>err.txt </dev/null
  rc=$?
  if [ $rc -eq 0 ]; then
    fail "'$*' succeeded, expected an error with '$pat'"
  elif [ $rc -eq 137 ]; then
    fail "'$*' still running after 30 s (a hang)"
  elif [ $rc -ne 1 ] && [ $rc -ne 2 ]; then
    fail "'$*' exited $rc (a crash?)"; cat err.txt
  elif ! grep -qF -- "$pat" err.txt; then
    fail "'$*' exited $rc without '$pat':"; cat err.txt
  else
    pass "error '$pat'"
  fi
}

# headers_json FILE...: every file's safetensors header parses with Python's json
headers_json() {
  python3 - "$@" <<'EOF'
import json, struct, sys
for p in sys.argv[1:]:
    d = open(p, "rb").read()
    n = struct.unpack("<Q", d[:8])[0]
    json.loads(d[8:8 + n])  # bytes: decoded as strict UTF-8
EOF
}

# drop_tensor FILE NAME...: rewrites a checkpoint without the tensors NAME (data repacked)
drop_tensor() {
  python3 - "$@" <<'EOF'
import json, struct, sys
p, names = sys.argv[1], sys.argv[2:]
d = open(p, "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
data = d[8 + n:]
for name in names:
    del h[name]
out, at = b"", 0
for k, e in h.items():
    if k == "__metadata__":
        continue
    b, f = e["data_offsets"]
    out += data[b:f]
    e["data_offsets"] = [at, at + f - b]
    at += f - b
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * (-(8 + len(t)) % 8)
open(p, "wb").write(struct.pack("<Q", len(t)) + t + out)
EOF
}

# set_meta FILE KEY VALUE: rewrites a checkpoint with one metadata value changed
set_meta() {
  python3 - "$@" <<'EOF'
import json, struct, sys
p, k, v = sys.argv[1:4]
d = open(p, "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
h["__metadata__"][k] = v
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * (-(8 + len(t)) % 8)
open(p, "wb").write(struct.pack("<Q", len(t)) + t + d[8 + n:])
EOF
}

cat >m.moe <<'EOF'
model small {
  let V = 32
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=8)
  h = lstm(emb, units=8)
  m = moe(h, experts=4, k=2, hidden=8)
  loss = softmax_xent(m, targets, vocab=V)
  output loss
}
train {
  data = synthetic(topics=2, vocab=V, seed=1)
  batch = 4
  unroll = 5
  steps = 3
  optimizer = adam(lr=1e-2)
}
EOF

case $CASE in
sizes)
  cat >big.moe <<'EOF'
model t {
  input x : f32[B, T, 1]
  input targets : i32[B, T]
  m = moe(x, experts=1048576, k=1048576, hidden=1048576)
  loss = softmax_xent(m, targets, vocab=2)
  output loss
}
train { batch = 1048576 unroll = 16 }
EOF
  # every command compiles for the train block's B and T (one compile path): each
  # names the first tensor past a limit (here a dimension past 2^31 - 1)
  for c in check plan "ir --after memplan" run; do
    # shellcheck disable=SC2086
    expect_error "(2^31 - 1, the limit per dimension)" "$MOEC" $c big.moe
    grep -q "with B = 1048576, T = 16" err.txt || fail "$c: the message gives B and T"
  done
  # past 2^48 elements, with every dimension in range
  cat >big2.moe <<'EOF'
model t {
  input x : f32[B, T, 4096, 65536]
  input targets : i32[B, T, 4096]
  m = dense(x, units=2)
  loss = softmax_xent(m, targets, vocab=2)
  output loss
}
train { batch = 65536 unroll = 32 }
EOF
  for c in check plan run; do
    expect_error "tensor 'x' of type f32[B, T, 4096, 65536] would hold more than 281474976710655 elements (2^48 - 1, the limit per tensor) with B = 65536, T = 32" \
      "$MOEC" $c big2.moe
  done
  ;;
paths)
  mkfifo fifo
  mkdir adir
  for p in /dev/zero fifo adir; do
    what="it is not a regular file"
    [ "$p" = adir ] && what="it is a directory"
    expect_error "cannot read '$p': $what" "$MOEC" check "$p"
    sed "s|synthetic(topics=2, vocab=V, seed=1)|\"$p\"|" m.moe >d.moe
    expect_error "cannot read data file '$p': $what" "$MOEC" run d.moe
    expect_error "cannot read checkpoint '$p': $what" "$MOEC" eval m.moe --load "$p"
  done
  expect_error "it is not a regular file (a FIFO)" "$MOEC" run m.moe --load fifo
  ;;
steps)
  "$MOEC" run m.moe --save ck.safetensors --quiet >/dev/null 2>&1 || fail "the base run failed"
  for v in 9223372036854775807 99999999999999999999 -1 1e3; do
    cp ck.safetensors o.safetensors
    set_meta o.safetensors optim.step "$v"
    expect_error "optim.step '$v' is not an integer from 0 to 2147483647" \
      "$MOEC" run m.moe --load o.safetensors --steps 6 --quiet
  done
  cp ck.safetensors t.safetensors
  set_meta t.safetensors train.step 9223372036854775807
  expect_error "cannot position the train data at step 9223372036854775807" \
    "$MOEC" run m.moe --load t.safetensors --steps 6 --quiet
  cp ck.safetensors e.safetensors
  set_meta e.safetensors train.step 2147483647
  timeout -s KILL 60 "$MOEC" run m.moe --load e.safetensors --steps 6 --quiet >e.out 2>e.err &&
    pass "a resume past the end (train.step 2^31-1, --steps 6) ends at once" ||
    { fail "a resume past the end: exit $?"; cat e.err; }
  ;;
files)
  # through a symlink: the target is replaced, the link stays
  ln -s real.safetensors link.safetensors
  "$MOEC" run m.moe --save link.safetensors --quiet >/dev/null 2>err.txt || { fail "save via a symlink"; cat err.txt; }
  [ -L link.safetensors ] && [ -f real.safetensors ] && [ ! -L real.safetensors ] &&
    pass "--save through a symlink keeps the link" || fail "--save replaced the symlink"
  # a FIFO is refused and left as it was; a dead process's temporary is removed
  mkfifo pipe.safetensors
  expect_error "cannot save 'pipe.safetensors': it is not a regular file" \
    "$MOEC" run m.moe --save pipe.safetensors --quiet
  [ -p pipe.safetensors ] && pass "the FIFO is still a FIFO" || fail "the FIFO was replaced"
  : >real.safetensors.tmp.2147483646
  "$MOEC" run m.moe --save real.safetensors --quiet >/dev/null 2>&1 || fail "save over a dead temporary"
  [ ! -e real.safetensors.tmp.2147483646 ] && pass "a dead save's temporary is removed" ||
    fail "the stale temporary is still there"
  # a corpus of words that are not UTF-8
  python3 - <<'EOF'
import random
random.seed(3)
words = [b"caf\xe9", b"\xff\xfe", b"na\xefve", b"ok", b"\xc3\xa9t\xc3\xa9", b"\x80x", b"plain"]
with open("raw.txt", "wb") as f:
    for i in range(400):
        f.write(b" ".join(random.choice(words) for _ in range(8)) + b"\n")
EOF
  sed 's|synthetic(topics=2, vocab=V, seed=1)|"raw.txt"|' m.moe >raw.moe
  "$MOEC" run raw.moe --save raw.safetensors --quiet >/dev/null 2>err.txt || { fail "text run"; cat err.txt; }
  headers_json raw.safetensors real.safetensors link.safetensors &&
    pass "Python's json parses every header moec wrote" || fail "a header is not strict JSON"
  python3 - <<'EOF' && pass "the raw-byte vocabulary is stored as a U8 tensor" || fail "vocabulary tensor"
import json, struct
d = open("raw.safetensors", "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
e = h["__metadata__.data.vocab"]
assert e["dtype"] == "U8" and "data.vocab" not in h["__metadata__"], h["__metadata__"]
b, f = e["data_offsets"]
v = d[8 + n + b:8 + n + f].split(b"\n")
assert v[0] == b"<unk>" and b"\xff\xfe" in v and b"caf\xe9" in v, v
EOF
  "$MOEC" run raw.moe --load raw.safetensors --steps 5 --save raw2.safetensors --quiet >/dev/null 2>err.txt &&
    pass "resume with the raw-byte vocabulary" || { fail "resume with the raw-byte vocabulary"; cat err.txt; }
  "$MOEC" eval raw.moe --load raw2.safetensors --data raw.txt --json >ev.out 2>err.txt &&
    pass "eval --data with the stored vocabulary" || { fail "eval --data"; cat err.txt; }
  headers_json raw2.safetensors || fail "the resumed checkpoint's header is not strict JSON"
  ;;
diverge)
  # a fresh run: no checkpoint at all
  expect_error "training diverged at step 1: the valid loss is nan; the first non-finite value: tensor 'h.xw', output of op matmul of layer 'h' (6:7) in the forward pass" \
    "$MOEC" run m.moe --lr 1e30 --eval-every 1 --steps 6 --save d.safetensors
  [ ! -e d.safetensors ] && pass "no checkpoint of a diverged run" || fail "a diverged run saved"
  # a resumed run: the good checkpoint stays byte for byte
  "$MOEC" run m.moe --steps 2 --save g.safetensors --quiet >/dev/null 2>&1 || fail "the base run failed"
  cp g.safetensors g0.safetensors
  expect_error "training diverged at step 3: the valid loss is nan; the first non-finite value:" \
    "$MOEC" run m.moe --load g.safetensors --lr 1e30 --eval-every 1 --steps 6 --save g.safetensors
  cmp -s g.safetensors g0.safetensors && pass "the good checkpoint is intact" ||
    fail "the good checkpoint was overwritten"
  # without evaluations: the training loss of step 2 (step 1's update overflowed)
  expect_error "training diverged at step 2: the loss is nan; the first non-finite value: tensor" \
    "$MOEC" run m.moe --lr 1e30 --no-eval --steps 6 --save n.safetensors
  [ ! -e n.safetensors ] && pass "no checkpoint without evaluations either" || fail "saved"
  # finite but absurd: perplexity inf
  expect_error "training diverged at step 1: the valid loss is " \
    "$MOEC" run m.moe --lr 1e6 --eval-every 1 --steps 6 --save p.safetensors
  grep -q "(its perplexity overflows)" err.txt || fail "the perplexity case says why"
  [ ! -e p.safetensors ] && pass "no checkpoint with an overflowing perplexity" || fail "saved"
  # two devices: every rank stops, rank 0 says where
  expect_error "training diverged at step 1: the valid loss is nan; the first non-finite value: tensor 'h.xw', output of op matmul of layer 'h' (6:7) in the forward pass on device" \
    "$MOEC" run m.moe --lr 1e30 --eval-every 1 --steps 6 --devices 2 --save t.safetensors
  [ ! -e t.safetensors ] && pass "no checkpoint on 2 devices" || fail "saved on 2 devices"
  ;;
writes)
  [ -w /dev/full ] || { echo "SKIP: no writable /dev/full"; exit 77; }
  expect_error "cannot write the standard output: No space left on device" \
    sh -c "'$MOEC' run m.moe >/dev/full"
  expect_error "cannot write the metrics file '/dev/full': No space left on device" \
    "$MOEC" run m.moe --quiet --metrics /dev/full
  expect_error "cannot write the standard output: No space left on device" \
    sh -c "'$MOEC' run m.moe --quiet --json >/dev/full"
  for c in check "ir --after memplan" plan; do # every command's stdout
    expect_error "cannot write the standard output: No space left on device" \
      sh -c "'$MOEC' $c m.moe >/dev/full"
  done
  "$MOEC" run m.moe --quiet --json --metrics ok.jsonl --save ok.safetensors >ok.json 2>err.txt &&
    [ -s ok.json ] && [ -s ok.jsonl ] && pass "the same outputs on a disk with room" ||
    { fail "outputs on a disk with room"; cat err.txt; }
  expect_error "cannot write the standard output: No space left on device" \
    sh -c "'$MOEC' eval m.moe --load ok.safetensors --json >/dev/full"
  [ "$(grep -c "cannot write" err.txt)" -eq 1 ] || fail "the write error is reported once"
  # a save path that cannot be written: refused before step 1, not after the last
  mkdir adir
  long=$(python3 -c "print('x' * 5000)")
  for p in adir "" "$long/c.safetensors" /nonexistent/c.safetensors; do
    expect_error "cannot save" "$MOEC" run m.moe --steps 3 --save "$p"
    grep -q "step 1" out.txt && fail "--save '$p' was refused only after training"
  done
  ;;
resume)
  "$MOEC" run m.moe --save ck.safetensors --quiet >/dev/null 2>&1 || fail "the base run failed"
  cp ck.safetensors s.safetensors
  drop_tensor s.safetensors state.h.c
  expect_error "checkpoint 's.safetensors' has optimizer state but lacks 'state.h.c', the carried state" \
    "$MOEC" run m.moe --load s.safetensors --steps 6 --quiet
  cp ck.safetensors o.safetensors
  drop_tensor o.safetensors optim.v.m.w1
  expect_error "lacks 'optim.v.m.w1'" "$MOEC" run m.moe --load o.safetensors --steps 6 --quiet
  # weights only (no optimizer, no state): a fresh start with a note, as documented
  cp ck.safetensors w.safetensors
  # shellcheck disable=SC2046
  drop_tensor w.safetensors $(python3 -c "
import json, struct
d = open('w.safetensors', 'rb').read()
h = json.loads(d[8:8 + struct.unpack('<Q', d[:8])[0]])
print(' '.join(k for k in h if k.startswith(('optim.', 'state.'))))")
  set_meta w.safetensors optim.step 0
  python3 - <<'EOF'
import json, struct
d = open("w.safetensors", "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
for k in ("optim.step", "optim.kind", "train.step"):
    h["__metadata__"].pop(k, None)
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * (-(8 + len(t)) % 8)
open("w.safetensors", "wb").write(struct.pack("<Q", len(t)) + t + d[8 + n:])
EOF
  "$MOEC" run m.moe --load w.safetensors --steps 2 --quiet >/dev/null 2>err.txt &&
    grep -q "holds weights only" err.txt && pass "a weights-only checkpoint starts afresh" ||
    { fail "a weights-only checkpoint"; cat err.txt; }
  for f in "--steps 1e20" "--set train.steps=1e20" "--steps 2147483648" "--steps -1"; do
    # shellcheck disable=SC2086
    expect_error "'steps' must be" "$MOEC" run m.moe $f
  done
  expect_error "'batch' must be" "$MOEC" run m.moe --batch 1e20
  expect_error "'eval_every' must be" "$MOEC" run m.moe --eval-every 1e20
  expect_error "'unroll' must be" "$MOEC" run m.moe --set train.unroll=4294967297
  ;;
mpi_inputs)
  command -v mpirun >/dev/null 2>&1 || { echo "SKIP: mpirun not found"; exit 77; }
  mkdir d1 d2
  for d in d1 d2; do
    sed 's|synthetic(topics=2, vocab=V, seed=1)|"c.txt"|; s|let V = 32|let V = 16|' m.moe >$d/t.moe
  done
  python3 - <<'EOF'
for d, w in (("d1", "the cat sat on a mat"), ("d2", "a dog ran in the park")):
    open(d + "/c.txt", "w").write("".join("%s %d\n" % (w, i % 9) for i in range(300)))
EOF
  mpi() {
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
      timeout -s KILL 100 mpirun --oversubscribe -np 1 -wdir "$TMP/d1" "$MOEC" run t.moe "$@" : \
      -np 1 -wdir "$TMP/d2" "$MOEC" run t.moe "$@" >mpi.out 2>&1
  }
  mpi --steps 2 --quiet
  if grep -q "moec was built without MPI" mpi.out; then echo "SKIP: moec built without MPI"; exit 77; fi
  grep -q "inconsistent data (a digest of its tokens and vocabulary) across ranks" mpi.out &&
    pass "ranks on different data files stop" || { cat mpi.out; fail "different data files"; }
  cp d1/c.txt d2/c.txt
  (cd d1 && "$MOEC" run t.moe --steps 2 --save ck.safetensors --quiet >/dev/null 2>&1) || fail "run in d1"
  (cd d2 && "$MOEC" run t.moe --steps 3 --save ck.safetensors --quiet >/dev/null 2>&1) || fail "run in d2"
  mpi --steps 4 --quiet --load ck.safetensors
  grep -q "inconsistent --load checkpoint (a digest of the file) across ranks" mpi.out &&
    pass "ranks resuming different checkpoints stop" || { cat mpi.out; fail "different checkpoints"; }
  cp d1/ck.safetensors d2/ck.safetensors
  mpi --steps 4 --quiet --load ck.safetensors &&
    pass "the same data and checkpoint train together" || { cat mpi.out; fail "the same inputs"; }
  ;;
compile)
  sed 's|m = moe(h, experts=4, k=2, hidden=8)|m = hmoe(h, groups=4000, experts=2, k_group=1, k=1, hidden=2)|' m.moe >h.moe
  t0=$(date +%s)
  if timeout -s KILL 120 "$MOEC" plan h.moe >plan.out 2>err.txt; then
    t=$(($(date +%s) - t0))
    echo "hmoe(groups=4000): moec plan took ${t} s"
    [ "$t" -le 60 ] && pass "4000 groups plan in ${t} s" || fail "4000 groups took ${t} s to plan"
  else
    fail "plan of hmoe(groups=4000)"
    cat err.txt
  fi
  ;;
mpi)
  command -v mpirun >/dev/null 2>&1 || { echo "SKIP: mpirun not found"; exit 77; }
  cat >stop.sh <<'EOF'
#!/bin/sh
# runs its arguments, then stops them (SIGSTOP) after $STOP_AFTER seconds
"$@" &
p=$!
sleep "$STOP_AFTER"
kill -STOP $p
wait $p
EOF
  chmod +x stop.sh
  for at in 0.05 8; do
    t0=$(date +%s)
    STOP_AFTER=$at MOEC_COMM_TIMEOUT=3 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      OMPI_MCA_rmaps_base_oversubscribe=1 timeout -s KILL 100 mpirun --oversubscribe -x STOP_AFTER \
      -x MOEC_COMM_TIMEOUT -np 1 "$MOEC" run m.moe --steps 1000000 --quiet : \
      -np 1 ./stop.sh "$MOEC" run m.moe --steps 1000000 --quiet >mpi.out 2>&1
    rc=$?
    t=$(($(date +%s) - t0))
    echo "a rank stopped after ${at} s: exit $rc after ${t} s"
    if grep -q "moec was built without MPI" mpi.out; then echo "SKIP: moec built without MPI"; exit 77; fi
    [ $rc -ne 0 ] && [ $rc -ne 137 ] || { cat mpi.out; fail "stopped after ${at} s: exit $rc"; }
    grep -q "timed out after [0-9]* s (a peer rank probably died" mpi.out &&
      pass "stopped after ${at} s: the watchdog ended the job in ${t} s" ||
      { cat mpi.out; fail "stopped after ${at} s: no watchdog message"; }
  done
  ;;
*)
  echo "usage: test_hostile.sh MOEC sizes|paths|steps|files|diverge|writes|resume|compile|mpi|mpi_inputs"
  exit 2
  ;;
esac
finish
