#!/bin/sh
# test_hostile.sh: hostile inputs to the moec binary: each a clear error and a
# non-zero exit (never a crash, a hang or an unbounded read), or correct behaviour.
#
#   usage: test_hostile.sh MOEC CASE
#
#   sizes   : a model whose tensors overflow int64 once B and T are bound (plan and
#             run say which tensor and the limit)
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
#   mpi     : a rank stopped (SIGSTOP) during start-up (MPI_Init waits for it: at
#             least 30 s) or training (MOEC_COMM_TIMEOUT=3): the job ends with the
#             watchdog's message
#
# Needs python3 (json, struct: the standard library); mpi needs mpirun.
set -u
MOEC=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
CASE=$2
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not found (edits checkpoint headers)"; exit 77; }
TMP=$(mktemp -d /tmp/moec_test_hostile.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 1
FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }

# expect_error PATTERN CMD...: CMD exits 1 within 30 s and its stderr contains PATTERN
expect_error() {
  pat=$1
  shift
  timeout -s KILL 30 "$@" >out.txt 2>err.txt </dev/null
  rc=$?
  if [ $rc -eq 0 ]; then
    fail "'$*' succeeded, expected an error with '$pat'"
  elif [ $rc -eq 137 ]; then
    fail "'$*' still running after 30 s (a hang)"
  elif [ $rc -ne 1 ]; then
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
  "$MOEC" check big.moe >/dev/null 2>&1 || fail "check refuses a model whose layers are in range"
  for c in plan "ir --after memplan" run; do
    # shellcheck disable=SC2086
    expect_error "(2^48 - 1, the limit per tensor) with B = 1048576, T = 16" "$MOEC" $c big.moe
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
  echo "usage: test_hostile.sh MOEC sizes|paths|steps|files|compile|mpi"
  exit 2
  ;;
esac
[ "$FAILS" -eq 0 ] || { echo "$FAILS failures"; exit 1; }
echo "all passed"
