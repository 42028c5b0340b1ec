#!/bin/sh
# test_train.sh: end-to-end training tests of the moec binary.
#
#   usage: test_train.sh MOEC CASE   CASE: resume | converge | grad_eval | errors | text
#
#   resume    : 10 steps == 5 steps + --save + --load + 5 steps, bit for bit (every
#               step's loss and the final evaluation), on an LSTM-MoE model with gate
#               noise and dropout; with adam and with factored
#   converge  : a short run on the synthetic corpus ends within 35% of the corpus's
#               entropy floor (perplexity) and below 40% of the unigram perplexity
#   grad_eval : moec grad writes one gradient per parameter and loss = xent + aux;
#               moec eval of the saved checkpoint repeats the run's test perplexity
#   text      : a word-level text corpus: resume == uninterrupted, the vocabulary
#               stored in the checkpoint, moec eval --data on another text file
#   errors    : missing data file, checkpoint of another model, token ids outside the
#               vocabulary, malformed checkpoint, cuda, more devices than experts, too little
#               memory, bad token file: each a non-zero exit and a clear message
#
# Needs python3 for reading JSON (skips with 77 without it).
set -u
MOEC=$1
CASE=$2
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not found (reads the JSON output)"; exit 77; }
. "$(dirname "$0")/lib.sh"
t_tmpdir test_train

cat >moe.moe <<'EOF'
# a small LSTM-MoE LM with gate noise and dropout: every random draw is exercised
model small {
  let V = 32
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=16)
  h = lstm(emb, units=32)
  d = dropout(h, p=0.1)
  m = moe(d, experts=4, k=2, hidden=16)
  loss = softmax_xent(m, targets, vocab=V)
  output loss
}
train {
  data = synthetic(topics=4, vocab=32, seed=3)
  batch = 16
  unroll = 10
  steps = 10
  eval_every = 4
  optimizer = adam(lr=0.01)
  clip = 1.0
}
EOF

case $CASE in
resume)
  for opt in "adam(lr=0.01)" "factored(lr=0.01)"; do
    sed "s/optimizer = .*/optimizer = $opt/" moe.moe >r.moe
    "$MOEC" run r.moe --steps 10 --metrics full.jsonl --json --quiet >full.out 2>full.err ||
      { fail "$opt: uninterrupted run failed"; cat full.err; continue; }
    "$MOEC" run r.moe --steps 5 --save half.safetensors --quiet >/dev/null 2>h.err ||
      { fail "$opt: first half failed"; cat h.err; continue; }
    "$MOEC" run r.moe --steps 10 --load half.safetensors --metrics resumed.jsonl --json --quiet \
      >resumed.out 2>r.err || { fail "$opt: resumed run failed"; cat r.err; continue; }
    # steps 6..10 and the final evaluations, compared as printed (%.9g of float32)
    # (eval_every 4: both runs evaluate on valid at step 8)
    grep -E '"step":(6|7|8|9|10)[,}]' full.jsonl \
      | sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//; s/,"seconds":[^,}]*//' >a.txt
    grep -E '"step":(6|7|8|9|10)[,}]' resumed.jsonl \
      | sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//; s/,"seconds":[^,}]*//' >b.txt
    if [ "$(wc -l <a.txt)" -lt 7 ]; then
      fail "$opt: too few metric lines"; cat a.txt
    elif cmp -s a.txt b.txt; then
      pass "$opt: resumed run == uninterrupted run ($(wc -l <a.txt) lines)"
    else
      fail "$opt: resumed run differs"; diff a.txt b.txt
    fi
    t1=$(json full.out test_ppl); t2=$(json resumed.out test_ppl)
    [ "$t1" = "$t2" ] && pass "$opt: test ppl $t1 == $t2" || fail "$opt: test ppl $t1 != $t2"
    # same seed twice: the same run; another seed: another run
    "$MOEC" run r.moe --steps 3 --json --quiet >s1.out 2>/dev/null
    "$MOEC" run r.moe --steps 3 --json --quiet >s2.out 2>/dev/null
    "$MOEC" run r.moe --steps 3 --json --quiet --seed 2 >s3.out 2>/dev/null
    [ "$(json s1.out last_loss)" = "$(json s2.out last_loss)" ] && pass "$opt: deterministic" ||
      fail "$opt: two runs with one seed differ"
    [ "$(json s1.out last_loss)" != "$(json s3.out last_loss)" ] && pass "$opt: --seed matters" ||
      fail "$opt: --seed 2 gave the same loss"
  done
  ;;
converge)
  cat >c.moe <<'EOF'
model conv {
  let V = 16
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=32)
  h = lstm(emb, units=64)
  m = moe(h, experts=4, k=2, hidden=32)
  loss = softmax_xent(m, targets, vocab=V)
  output loss
}
train {
  data = synthetic(topics=4, vocab=16, seed=3)
  batch = 16
  unroll = 10
  steps = 600
  optimizer = adam(lr=0.02)
}
EOF
  "$MOEC" run c.moe --json --metrics c.jsonl >c.out 2>c.err || { fail "training failed"; cat c.err; }
  tail -4 c.out
  test=$(json c.out test_ppl); floor=$(json c.out floor_ppl); uni=$(json c.out unigram_ppl)
  # the floor is the entropy rate given the hidden topic: no model beats it; a
  # unigram model (token frequencies of the stationary distribution, which
  # test_data checks against a sample) scores exp(H(marginal))
  if check "$floor < $test < 1.35 * $floor"; then pass "test ppl $test within 35% of the floor $floor"
  else fail "test ppl $test not within 35% of the floor $floor"; fi
  if check "$test < 0.4 * $uni"; then pass "test ppl $test below 40% of the unigram ppl $uni"
  else fail "test ppl $test not below 40% of the unigram ppl $uni"; fi
  n=$(grep -c '"event":"step"' c.jsonl)
  [ "$n" = 600 ] && pass "600 step lines in --metrics" || fail "$n step lines in --metrics"
  grep -q '"importance_cv"' c.jsonl && pass "MoE balance in --metrics" || fail "no MoE stats in --metrics"
  ;;
grad_eval)
  "$MOEC" run moe.moe --steps 6 --save w.safetensors --json --quiet >run.out 2>run.err ||
    { fail "training failed"; cat run.err; }
  "$MOEC" eval moe.moe --load w.safetensors --json >eval.out 2>eval.err || { fail "eval failed"; cat eval.err; }
  a=$(json run.out test_ppl); b=$(json eval.out test_ppl)
  [ "$a" = "$b" ] && pass "moec eval repeats the run's test ppl ($a)" || fail "eval ppl $b != run's $a"
  python3 -c 'import struct; open("F.bin","wb").write(struct.pack("<33H", *[(7*i) % 32 for i in range(33)]))'
  sed 's/batch = 16/batch = 3/' moe.moe >g.moe
  "$MOEC" grad g.moe --load w.safetensors --tokens F.bin --out G.safetensors --json >g.out 2>g.err ||
    { fail "grad failed"; cat g.err; }
  python3 - <<'EOF' && pass "moec grad: loss = xent + aux, one gradient per parameter" || fail "moec grad output"
import json, struct
g = json.loads(open("g.out").read().strip().splitlines()[-1])
assert abs(g["loss"] - g["xent"] - g["aux"]) <= 1e-6 * abs(g["loss"]), g
assert g["aux"] > 0, g
def names(path):
    d = open(path, "rb").read()
    n = struct.unpack("<Q", d[:8])[0]
    h = json.loads(d[8:8 + n])
    return {k: v for k, v in h.items() if k != "__metadata__"}
w = {k: v for k, v in names("w.safetensors").items() if not k.startswith(("optim.", "state."))}
gr = names("G.safetensors")
assert set(w) == set(gr), (set(w) ^ set(gr))
assert all(w[k]["shape"] == gr[k]["shape"] for k in w)
EOF
  "$MOEC" grad g.moe --load w.safetensors --tokens F.bin --out G64.safetensors --f64 --json >g64.out 2>&1 ||
    fail "grad --f64 failed"
  check "abs($(json g.out loss) - $(json g64.out loss)) < 1e-4" && pass "grad f32 ~ f64 loss" || fail "grad f32 vs f64"
  ;;
errors)
  sed 's|data = .*|data = "no_such_file.txt"|' moe.moe >missing.moe
  expect_error "cannot read data file 'no_such_file.txt'" "$MOEC" run missing.moe --steps 1
  python3 -c 'import struct; open("big.bin","wb").write(struct.pack("<400H", *[i % 40 for i in range(400)]))'
  sed 's|data = .*|data = "big.bin"|' moe.moe >bin.moe
  expect_error "token id 32 at position 32 is outside the model's vocabulary (32 ids)" "$MOEC" run bin.moe --steps 1
  sed 's/vocab=32, seed=3/vocab=40, seed=3/' moe.moe >vocab.moe
  expect_error "synthetic(vocab=40) differs from the model's softmax_xent vocab 32" "$MOEC" run vocab.moe
  "$MOEC" run moe.moe --steps 2 --save w.safetensors --quiet >/dev/null 2>&1 || fail "training failed"
  sed 's/units=32/units=24/' moe.moe >other.moe
  expect_error "is for another model: 'h.weight_ih' has shape [128, 16], the model needs [96, 16]" \
    "$MOEC" run other.moe --steps 3 --load w.safetensors
  expect_error "is for another model" "$MOEC" eval other.moe --load w.safetensors
  printf 'garbage' >bad.safetensors
  expect_error "is not a valid safetensors file" "$MOEC" eval moe.moe --load bad.safetensors
  expect_error "cannot read checkpoint 'nope.safetensors'" "$MOEC" eval moe.moe --load nope.safetensors
  expect_error "moec run: error: --backend cuda: " env CUDA_VISIBLE_DEVICES= "$MOEC" run moe.moe --backend cuda
  expect_error "has 4 experts for 8 devices" "$MOEC" run moe.moe --devices 8
  MOEC_MEMORY_LIMIT=100000 expect_error "only 0.00 GiB of memory is available" "$MOEC" run moe.moe
  printf 'abc' >short.bin
  expect_error "needs 176 uint16 ids" "$MOEC" grad moe.moe --load w.safetensors --tokens short.bin
  expect_error "--load CKPT is required" "$MOEC" eval moe.moe
  expect_error "unknown option '--stepz'" "$MOEC" run moe.moe --stepz 3
  expect_error "cannot save 'no/such/dir/c.safetensors'" \
    "$MOEC" run moe.moe --steps 1 --save no/such/dir/c.safetensors
  ;;
text)
  # a word-level text corpus: 90/5/5 split by lines, vocabulary in the checkpoint
  python3 - <<'EOF'
import random
r = random.Random(5)
words = ["w%d" % i for i in range(60)]
with open("corpus.txt", "w") as f:
    for _ in range(2000):
        f.write(" ".join(r.choice(words[:40]) for _ in range(r.randint(3, 12))) + "\n")
with open("other.txt", "w") as f:
    for _ in range(100):
        f.write(" ".join(r.choice(words) for _ in range(8)) + "\n")
EOF
  sed -e 's|data = .*|data = "corpus.txt"|' -e 's/dropout(h, p=0.1)/dropout(h, p=0.0)/' moe.moe >t.moe
  "$MOEC" run t.moe --steps 6 --eval-every 3 --metrics full.jsonl --json --quiet >t1.out 2>t.err ||
    { fail "text run failed"; cat t.err; }
  "$MOEC" run t.moe --steps 3 --eval-every 3 --save t.safetensors --quiet >/dev/null 2>t.err ||
    { fail "text run failed"; cat t.err; }
  "$MOEC" run t.moe --steps 6 --eval-every 3 --load t.safetensors --metrics res.jsonl --json --quiet \
    >t2.out 2>t.err || { fail "text resume failed"; cat t.err; }
  grep -E '"step":(4|5|6)[,}]' full.jsonl | sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//; s/,"seconds":[^,}]*//' >a.txt
  sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//; s/,"seconds":[^,}]*//' res.jsonl >b.txt
  cmp -s a.txt b.txt && [ "$(wc -l <a.txt)" -ge 5 ] && pass "text: resumed run == uninterrupted run" ||
    { fail "text: resumed run differs"; diff a.txt b.txt; }
  python3 - <<'EOF' && pass "text: the vocabulary is in the checkpoint" || fail "text: checkpoint vocabulary"
import json, struct
d = open("t.safetensors", "rb").read()
h = json.loads(d[8:8 + struct.unpack("<Q", d[:8])[0]])
v = h["__metadata__"]["data.vocab"].split("\n")
assert v[0] == "<unk>" and "<eos>" in v and len(v) == 32, v  # 40 words + <eos> > 31: capped
EOF
  "$MOEC" eval t.moe --load t.safetensors --data other.txt --json >e.out 2>e.err ||
    { fail "eval --data failed"; cat e.err; }
  # 100 lines of 8 words + <eos>: 900 tokens after a priming <eos>; 16 streams of 56: 5 full
  # batches of 10 and a partial one of 5 predict 16 * 55 = 880; 15 stream starts and the last
  # 901 - 896 = 5 are not predicted, and said so
  check "$(json e.out tokens) == 880 and $(json e.out left_out) == 20" &&
    pass "eval --data: whole file in batches of 16 x 10 and a last one of 16 x 5" ||
    fail "eval --data: $(json e.out tokens) tokens, $(json e.out left_out) left out"
  "$MOEC" eval t.moe --load t.safetensors --data other.txt --batch 1 --unroll 64 --json >e1.out 2>e.err ||
    { fail "eval --batch 1 failed"; cat e.err; }
  check "$(json e1.out tokens) == 900 and $(json e1.out left_out) == 0" &&
    pass "eval --data --batch 1: every token predicted" || fail "eval --batch 1: $(json e1.out tokens) tokens"
  head -1 other.txt >one.txt
  "$MOEC" eval t.moe --load t.safetensors --data one.txt --json >e2.out 2>e.err ||
    { fail "eval of one line failed"; cat e.err; }
  check "$(json e2.out tokens) == 9 and $(json e2.out batch) == 1 and $(json e2.out unroll) == 9" &&
    pass "eval of one line: batch and unroll fitted (1 x 9)" || { fail "eval of one line"; cat e2.out e.err; }
  check "$(json e.out test_ppl) > 1" && pass "eval --data: test ppl $(json e.out test_ppl)" || fail "eval --data ppl"
  ;;
*)
  echo "usage: test_train.sh MOEC resume|converge|grad_eval|errors|text"
  exit 2
  ;;
esac
finish
