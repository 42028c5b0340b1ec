#!/bin/sh
# test_lstmp.sh: training an LM with lstm(proj=) layers end to end (moec binary): the
# same losses with recompute (the lstms) and with the interpreter without fusion, and on
# 2 in-process devices to 1e-6 relative (the gate's smooth load is summed per device,
# then over the devices: other roundings than one device's sum); the loss falls below the unigram perplexity; a
# checkpoint resumes with the projected state (NAME.h [B, P]) carried.
#
#   usage: test_lstmp.sh MOEC
MOEC=$1
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

cat >p.moe <<'EOF'
model lstmp {
  let V = 32
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=16)
  h = lstm(emb, units=32, proj=12)
  d = dropout(h, p=0.1)
  m = moe(d, experts=4, k=2, hidden=16)
  h2 = lstm(m, units=24, proj=16)
  loss = softmax_xent(h2, targets, vocab=V)
  output loss
}
train {
  data = synthetic(topics=4, vocab=32, seed=3)
  batch = 16
  unroll = 10
  steps = 80
  optimizer = adam(lr=0.01)
  clip = 1.0
}
EOF

# the "train_loss" (or another key's) value of a --json line
val() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" "$2" | tail -1; }

"$MOEC" run p.moe --json --quiet >base.json 2>base.err || { fail "run"; cat base.err; }
base=$(val train_loss base.json)
[ -n "$base" ] || fail "no train_loss in the run's --json"
i=0
for opts in "--devices 2" "--recompute h,h2" "--recompute all --devices 2" "--no-jit --no-fuse"; do
  i=$((i + 1))
  # shellcheck disable=SC2086
  "$MOEC" run p.moe --json --quiet $opts >v$i.json 2>v$i.err || { fail "$opts"; cat v$i.err; continue; }
  got=$(val train_loss v$i.json)
  tol=0 # one device: the same bits; two: within 1e-6 relative (the header)
  case "$opts" in *--devices*) tol=1e-6 ;; esac
  if awk -v a="$got" -v b="$base" -v t="$tol" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= t * b) }'; then
    echo "ok: $opts: train_loss $got (one device $base)"
  else
    fail "$opts: train_loss $got, want $base (within $tol relative)"
  fi
done

# learning: valid perplexity below the unigram's
awk -v v="$(val valid_ppl base.json)" -v u="$(val unigram_ppl base.json)" \
  'BEGIN { exit !(v > 0 && v < u) }' || fail "valid_ppl $(val valid_ppl base.json) not below unigram $(val unigram_ppl base.json)"

# resume: 40 + 40 steps from a checkpoint == 80 steps (the carried h is [B, 12] and [B, 16])
"$MOEC" run p.moe --steps 40 --save half.safetensors --quiet >/dev/null 2>h.err || { fail "first half"; cat h.err; }
"$MOEC" run p.moe --load half.safetensors --json --quiet >r.json 2>r.err || { fail "resume"; cat r.err; }
got=$(val last_loss r.json)
want=$(val last_loss base.json)
if [ -n "$got" ] && [ "$got" = "$want" ]; then echo "ok: resumed last_loss $got"; else fail "resumed last_loss '$got', want '$want'"; fi

[ $fails -eq 0 ] && echo "test_lstmp: all passed"
exit $((fails != 0))
