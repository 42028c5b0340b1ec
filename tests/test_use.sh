#!/bin/sh
# test_use.sh: using a trained model and watching training, end to end (moec binary).
#
#   usage: test_use.sh MOEC SRC CASE
#   CASE: schedule | accumulate | interrupt | interrupt_mpi | max_time | sample_score | plot | trace | tokenize
#
#   schedule     : the lr of every step in the metrics equals the schedule's formula
#                  (warm-up, hold, rsqrt / cosine / linear / none, min_lr); sema's errors
#   accumulate   : accumulate = 4 at batch 8 == batch 32 (1e-6 relative loss, 20 steps,
#                  with dropout and gate noise), on 1 device and on 2
#   interrupt    : kill -INT during a run with --save: non-zero exit, how to resume, the
#                  checkpoint; the resumed run's losses == an uninterrupted run's, bit for
#                  bit, and the metrics file holds every step once; on 2 devices too
#   max_time     : --max-time ends a long run as a normal end (final evaluation, checkpoint
#                  of the last step) on 1 and 2 devices and 2 MPI ranks, and a translation
#                  model's; durations (90s, 10m, 1h30m) and bad ones
#   interrupt_mpi: the same under `mpirun -np 2`, SIGINT sent to mpirun (as Ctrl-C is): each
#                  rank exits 143, one complete checkpoint, resumed == uninterrupted
#   sample_score : moec sample is deterministic per seed, greedy at temperature 0; moec
#                  score of one line works; score's test perplexity == eval --batch 1's
#   plot         : moec plot draws a PNG and an SVG from a metrics file
#   trace        : moec run --trace on 2 devices: valid trace-event JSON, both devices'
#                  tracks with forward, backward, optimizer, data and the all-to-alls
#   tokenize     : tiny-shakespeare: unknown rates of words, words(lower, split_punct),
#                  words(spell=chars) and bpe(vocab=) in --json; spelled words through a
#                  checkpoint (score's text, sample); per-word perplexity = exp(-logprob /
#                  words) with the words counted here; separate valid/test files; .bin splits
#
# Needs python3 for reading JSON (skips with 77 without it).
set -u
MOEC=$1
SRC=$2
CASE=$3
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not found (reads the JSON output)"; exit 77; }
. "$(dirname "$0")/lib.sh"
t_tmpdir test_use
# steps FILE: the step lines of a metrics file without their timings
steps() { grep '"event":"step"' "$1" | sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//'; }

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
  batch = 32
  unroll = 10
  steps = 20
  eval_every = 0
  optimizer = adam(lr=0.01)
  clip = 1.0
}
EOF

case $CASE in
schedule)
  for opt in "adam(lr=0.01, warmup=4)" "adam(lr=0.01, warmup=3, decay=rsqrt)" \
    "adam(lr=0.02, warmup=2, hold=3, decay=cosine, min_lr=0.001)" \
    "factored(lr=0.01, warmup=5, decay=linear)" "adam(lr=0.01, hold=5, decay=rsqrt, min_lr=0.006)" \
    "adam(lr=0.01, warmup=2, decay=linear, weight_decay=0.1)"; do
    sed "s/optimizer = .*/optimizer = $opt/" moe.moe >s.moe
    "$MOEC" run s.moe --steps 20 --no-eval --metrics s.jsonl --quiet >/dev/null 2>s.err ||
      { fail "$opt: run failed"; cat s.err; continue; }
    # the formulas of docs/training.md, written out here
    python3 - "$opt" <<'EOF' && pass "$opt: lr of each of 20 steps == formula" || fail "$opt: lr differs"
import json, math, re, sys
a = dict((k, float(v)) for k, v in re.findall(r"(\w+)=([\w.]+)", sys.argv[1]) if k != "decay")
decay = (re.findall(r"decay=(\w+)", sys.argv[1]) or ["none"])[0]
lr, W, H, lo, S = a["lr"], a.get("warmup", 0), a.get("hold", 0), a.get("min_lr", 0), 20
def want(t):
    if t <= W: return lr * t / W
    P = W + H
    if t <= P or decay == "none": return lr
    s = min(1.0, (t - P) / (S - P))
    if decay == "rsqrt": return max(lo, lr * math.sqrt(max(P, 1) / t))
    if decay == "cosine": return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * s))
    return lr - (lr - lo) * s
rows = [json.loads(l) for l in open("s.jsonl") if '"event":"step"' in l]
assert len(rows) == 20, len(rows)
for r in rows:
    assert abs(r["lr"] - want(r["step"])) <= 1e-7 * lr, (r["step"], r["lr"], want(r["step"]))
EOF
  done
  # the paper's appendix E recipe is expressible (2000 warm-up, 8000 at lr, then 1/sqrt)
  sed "s/optimizer = .*/optimizer = adam(lr=0.001, warmup=2000, hold=8000, decay=rsqrt)/" moe.moe >p.moe
  "$MOEC" check p.moe >/dev/null 2>p.err && pass "appendix E's recipe passes check" ||
    { fail "appendix E's recipe"; cat p.err; }
  # weight decay changes the run (decoupled: it applies to weight matrices)
  sed "s/optimizer = .*/optimizer = adam(lr=0.01, weight_decay=0.5)/" moe.moe >w.moe
  "$MOEC" run moe.moe --steps 3 --no-eval --json --quiet >w0.out 2>/dev/null
  "$MOEC" run w.moe --steps 3 --no-eval --json --quiet >w1.out 2>/dev/null
  check "$(json w0.out last_loss) != $(json w1.out last_loss)" && pass "weight_decay changes the run" ||
    fail "weight_decay=0.5 gave the same loss"
  for bad in "adam(lr=0.01, decay=exp):decay" "adam(lr=0.01, warmup=-1):warmup" \
    "adam(lr=0.01, min_lr=0.1, decay=cosine):min_lr" "factored(lr=0.01, weight_decay=-2):weight_decay"; do
    sed "s/optimizer = .*/optimizer = ${bad%:*}/" moe.moe >b.moe
    expect_error "${bad#*:}" "$MOEC" check b.moe
    grep -q "^ *\^" err.txt && pass "${bad%:*}: a caret" || { fail "${bad%:*}: no caret"; cat err.txt; }
  done
  ;;
accumulate)
  rel() { # A B: the largest relative difference of the step losses
    python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = ([json.loads(l) for l in open(f) if '"event":"step"' in l] for f in sys.argv[1:3])
assert len(a) == len(b) == 20, (len(a), len(b))
print(max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b)))
EOF
  }
  for dev in 1 2; do
    "$MOEC" run moe.moe --devices $dev --no-eval --metrics big.jsonl --quiet >/dev/null 2>e.err ||
      { fail "batch 32 on $dev devices"; cat e.err; continue; }
    "$MOEC" run moe.moe --devices $dev --no-eval --batch 8 --set train.accumulate=4 \
      --metrics acc.jsonl --quiet >/dev/null 2>e.err || { fail "accumulate on $dev devices"; cat e.err; continue; }
    d=$(rel big.jsonl acc.jsonl)
    check "$d <= 1e-6" && pass "$dev device(s): accumulate = 4 x batch 8 == batch 32 (rel $d)" ||
      fail "$dev device(s): accumulate differs by $d"
  done
  sed 's/moe(d, experts=4, k=2, hidden=16)/moe(d, experts=4, k=2, hidden=16, capacity=1.5)/' moe.moe >c.moe
  expect_error "capacity=" "$MOEC" check c.moe --set train.accumulate=2
  ;;
interrupt)
  # interrupted on 1 device (SIGINT) and on 2 in-process devices (SIGTERM)
  for dev in 1 2; do
    sig=INT; [ $dev = 2 ] && sig=TERM
    rm -f i.jsonl i.safetensors
    "$MOEC" run moe.moe --devices $dev --steps 1000000 --save i.safetensors --metrics i.jsonl \
      --quiet >i.out 2>i.err &
    pid=$!
    n=0 # until steps are being written (the handler is installed by then) and 0.5 s more
    while [ ! -s i.jsonl ] && [ $n -lt 300 ] && kill -0 $pid 2>/dev/null; do
      sleep 0.1; n=$((n + 1))
    done
    sleep 0.5
    kill -$sig $pid
    t=0 # the stop must come (no hang): 30 s at most
    while kill -0 $pid 2>/dev/null && [ $t -lt 150 ]; do sleep 0.2; t=$((t + 1)); done
    if kill -0 $pid 2>/dev/null; then
      kill -KILL $pid; fail "$dev devices: SIG$sig did not stop the run"; continue
    fi
    wait $pid
    rc=$?
    [ $rc -ne 0 ] && pass "$dev devices: SIG$sig: exit $rc" || fail "$dev devices: SIG$sig: exit 0"
    grep -q "resume with: moec run" i.out i.err && pass "$dev devices: says how to resume" ||
      { fail "$dev devices: no resume line"; cat i.out i.err; }
    s=$(steps i.jsonl | tail -1 | sed 's/.*"step":\([0-9]*\).*/\1/')
    [ -s i.safetensors ] && [ "${s:-0}" -gt 0 ] && pass "$dev devices: checkpoint at step $s" ||
      { fail "$dev devices: no checkpoint"; cat i.err; continue; }
    e=$((s + 10))
    "$MOEC" run moe.moe --devices $dev --steps $e --load i.safetensors --metrics i.jsonl --quiet \
      >/dev/null 2>r.err || { fail "$dev devices: resume failed"; cat r.err; continue; }
    "$MOEC" run moe.moe --devices $dev --steps $e --metrics u.jsonl --quiet >/dev/null 2>u.err ||
      { fail "$dev devices: uninterrupted run failed"; cat u.err; continue; }
    steps i.jsonl >a.txt
    steps u.jsonl >b.txt
    [ "$(wc -l <a.txt)" -eq $e ] && cmp -s a.txt b.txt &&
      pass "$dev devices: steps 1..$e once each, resumed == uninterrupted (bit for bit)" ||
      { fail "$dev devices: resumed metrics differ ($(wc -l <a.txt) lines for $e steps)"; diff a.txt b.txt | head; }
  done
  # --save-every 5: a run killed outright (no handler) leaves a checkpoint of a step that
  # is a multiple of 5, and it resumes
  "$MOEC" run moe.moe --steps 1000000 --save-every 5 --save e.safetensors --quiet >/dev/null 2>e.err &
  pid=$!
  n=0
  while [ ! -s e.safetensors ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  sleep 0.5
  kill -KILL $pid
  wait $pid 2>/dev/null
  s=$(python3 -c "
import json, struct
f = open('e.safetensors', 'rb'); n = struct.unpack('<Q', f.read(8))[0]
print(json.loads(f.read(n))['__metadata__']['train.step'])" 2>/dev/null)
  check "${s:-0} > 0 and ${s:-0} % 5 == 0" && pass "--save-every 5: a checkpoint at step $s after kill -9" ||
    { fail "--save-every: step '$s'"; cat e.err; }
  "$MOEC" run moe.moe --steps $((s + 2)) --load e.safetensors --no-eval --quiet >/dev/null 2>e.err &&
    pass "--save-every: it resumes" || { fail "--save-every: resume"; cat e.err; }
  ;;
interrupt_mpi)
  # `mpirun -np 2 moec run` stopped as a Ctrl-C stops it: SIGINT to mpirun. OpenMPI 4.1's
  # mpirun does not pass SIGINT on: it sends its ranks SIGCONT, SIGTERM a second later
  # and SIGKILL a second after that (odls_base_sigkill_timeout, 1 s); the ranks are in
  # process groups of their own, so the terminal's SIGINT never reaches them.
  command -v mpirun >/dev/null 2>&1 || { echo "SKIP: mpirun not found"; exit 77; }
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  # each rank's exit status: a shell ignoring the signals around it (moec installs its own
  # handlers over the inherited SIG_IGN) writes it down
  printf '%s\n' "trap '' INT TERM" '"$@"' 'echo $? >"rank$OMPI_COMM_WORLD_RANK.rc"' >rank.sh
  mpirun -np 2 sh rank.sh "$MOEC" run moe.moe --steps 1000000 --save i.safetensors \
    --metrics i.jsonl --quiet >i.out 2>i.err &
  pid=$!
  n=0 # until steps are being written (the handlers are installed by then) and 0.5 s more
  while [ ! -s i.jsonl ] && [ $n -lt 600 ] && kill -0 $pid 2>/dev/null; do
    sleep 0.1; n=$((n + 1))
  done
  sleep 0.5
  kill -INT $pid
  t=0 # mpirun's own sequence takes 2 s; 60 s at most
  while kill -0 $pid 2>/dev/null && [ $t -lt 300 ]; do sleep 0.2; t=$((t + 1)); done
  if kill -0 $pid 2>/dev/null; then
    kill -KILL $pid; fail "SIGINT to mpirun did not stop the job"; cat i.out i.err; exit 1
  fi
  wait $pid
  rc=$?
  [ $rc -ne 0 ] && pass "mpirun: exit $rc" || fail "mpirun: exit 0 after SIGINT"
  # mpirun SIGKILLs what is left as soon as one rank exits, so not every wrapper may live
  # to write its status: those written are 143, and there is one at least
  st=$(cat rank*.rc 2>/dev/null | sort -u | tr '\n' ' ')
  [ "$st" = "143 " ] && pass "the ranks stopped on SIGTERM and exited 143" ||
    { fail "rank exit statuses '$st' (want 143)"; cat i.err; }
  [ "$(grep -c 'interrupted (SIGTERM; mpirun relays a Ctrl-C' i.err)" = 1 ] &&
    [ "$(grep -c 'checkpoint saved to i.safetensors' i.err)" = 1 ] &&
    grep -q '^resume with: mpirun -np 2 moec run moe.moe .*--load i.safetensors' i.err &&
    pass "one message: the signal as mpirun relays it, the checkpoint, how to resume" ||
    { fail "the interrupt message"; cat i.err; }
  s=$(steps i.jsonl | tail -1 | sed 's/.*"step":\([0-9]*\).*/\1/')
  # the checkpoint: complete (size = header + the last tensor's end), at the last step
  # the metrics hold, no temporary file left beside it
  c=$(python3 -c "
import json, os, struct
f = open('i.safetensors', 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n))
end = max(v['data_offsets'][1] for k, v in h.items() if k != '__metadata__')
assert os.path.getsize('i.safetensors') == 8 + n + end, 'torn'
print(h['__metadata__']['train.step'])" 2>&1)
  [ "$c" = "${s:-x}" ] && [ -z "$(ls i.safetensors.tmp* 2>/dev/null)" ] &&
    pass "checkpoint complete at step $s, the metrics' last" ||
    { fail "checkpoint: '$c', metrics' last step '$s'"; ls -la; exit 1; }
  e=$((s + 10))
  timeout 120 mpirun -np 2 "$MOEC" run moe.moe --steps $e --load i.safetensors --metrics i.jsonl \
    --quiet >/dev/null 2>r.err || { fail "resume on 2 ranks failed"; cat r.err; }
  timeout 120 mpirun -np 2 "$MOEC" run moe.moe --steps $e --metrics u.jsonl --quiet >/dev/null \
    2>u.err || { fail "uninterrupted run on 2 ranks failed"; cat u.err; }
  steps i.jsonl >a.txt
  steps u.jsonl >b.txt
  [ "$(wc -l <a.txt)" -eq $e ] && cmp -s a.txt b.txt &&
    pass "2 MPI ranks: steps 1..$e once each, resumed == uninterrupted (bit for bit)" ||
    { fail "resumed metrics differ ($(wc -l <a.txt) lines for $e steps)"; diff a.txt b.txt | head; }
  ;;
sample_score)
  python3 - <<'EOF'
import random
r = random.Random(5)
words = ["w%d" % i for i in range(40)]
with open("corpus.txt", "w") as f:
    for _ in range(2000):
        f.write(" ".join(r.choice(words) for _ in range(r.randint(3, 12))) + "\n")
EOF
  sed -e 's|data = .*|data = "corpus.txt"|' -e 's/let V = 32/let V = 48/' moe.moe >t.moe
  "$MOEC" run t.moe --steps 30 --save t.safetensors --quiet >/dev/null 2>t.err ||
    { fail "training on text failed"; cat t.err; }
  "$MOEC" sample t.moe --load t.safetensors --tokens 40 --seed 7 >s1.txt 2>s.err ||
    { fail "sample failed"; cat s.err; }
  "$MOEC" sample t.moe --load t.safetensors --tokens 40 --seed 7 >s2.txt 2>/dev/null
  "$MOEC" sample t.moe --load t.safetensors --tokens 40 --seed 8 >s3.txt 2>/dev/null
  cmp -s s1.txt s2.txt && pass "sample: one seed, one text" || fail "sample: seed 7 twice differs"
  cmp -s s1.txt s3.txt && fail "sample: seeds 7 and 8 give the same text" || pass "sample: another seed, another text"
  check "sum(len(l.split()) + 1 for l in open('s1.txt')) - 1 >= 40 - 1" &&
    pass "sample: 40 tokens ($(wc -w <s1.txt) words)" || { fail "sample: too few tokens"; cat s1.txt; }
  "$MOEC" sample t.moe --load t.safetensors --tokens 20 --temperature 0 --seed 1 >g1.txt 2>/dev/null
  "$MOEC" sample t.moe --load t.safetensors --tokens 20 --temperature 0 --seed 2 --prompt "" >g2.txt 2>/dev/null
  [ -s g1.txt ] && cmp -s g1.txt g2.txt && pass "sample: temperature 0 is greedy (no draw)" ||
    fail "sample: temperature 0 depends on the seed"
  "$MOEC" sample t.moe --load t.safetensors --tokens 10 --top-k 3 --prompt "w1 w2" >k.txt 2>/dev/null &&
    head -c 5 k.txt | grep -q "^w1 w2" && pass "sample: the prompt comes first" || { fail "sample --prompt"; cat k.txt; }
  expect_error "--load CKPT is required" "$MOEC" sample t.moe
  expect_error "--temperature needs a number" "$MOEC" sample t.moe --load t.safetensors --temperature -1
  "$MOEC" run moe.moe --steps 1 --no-eval --save syn.safetensors --quiet >/dev/null 2>&1
  expect_error "holds no vocabulary" "$MOEC" sample moe.moe --load syn.safetensors
  head -1 corpus.txt >one.txt
  "$MOEC" score t.moe --load t.safetensors --data one.txt --json >o.out 2>o.err ||
    { fail "score of one line failed"; cat o.err; }
  check "$(json o.out tokens) == $(wc -w <one.txt) + 1" && pass "score: one line, every token ($(json o.out tokens))" ||
    fail "score one line: $(json o.out tokens) tokens"
  "$MOEC" score t.moe --load t.safetensors --json >sc.out 2>sc.err || { fail "score failed"; cat sc.err; }
  "$MOEC" eval t.moe --load t.safetensors --batch 1 --json >ev.out 2>ev.err || { fail "eval --batch 1 failed"; cat ev.err; }
  check "$(json sc.out tokens) == $(json ev.out tokens) and abs($(json sc.out ppl) / $(json ev.out test_ppl) - 1) < 1e-6" &&
    pass "score ppl $(json sc.out ppl) == eval ppl $(json ev.out test_ppl) over $(json sc.out tokens) tokens" ||
    fail "score $(json sc.out ppl) ($(json sc.out tokens) tokens) != eval $(json ev.out test_ppl) ($(json ev.out tokens))"
  check "$(grep -c '"line"' sc.out) == $(json sc.out sentences)" && pass "score: one JSON line per sentence" ||
    fail "score: per-sentence lines"
  ;;
plot)
  command -v gnuplot >/dev/null 2>&1 || { echo "SKIP: gnuplot not found (scripts/setup installs it)"; exit 77; }
  "$MOEC" run moe.moe --steps 12 --eval-every 4 --metrics m.jsonl --quiet >/dev/null 2>m.err ||
    { fail "run failed"; cat m.err; }
  "$MOEC" plot m.jsonl -o m.png >p.out 2>&1 && head -c 8 m.png | od -c | grep -q "P   N   G" &&
    pass "plot: a PNG ($(wc -c <m.png) bytes)" || { fail "plot png"; cat p.out; }
  "$MOEC" plot m.jsonl -o m.svg >p.out 2>&1 && grep -q "<svg" m.svg && pass "plot: an SVG" ||
    { fail "plot svg"; cat p.out; }
  expect_error "no.jsonl" "$MOEC" plot no.jsonl
  echo '{"event":"step"' >bad.jsonl
  expect_error "bad.jsonl" "$MOEC" plot bad.jsonl -o bad.png
  ;;
trace)
  "$MOEC" run "$SRC/examples/lm_moe32.moe" --devices 2 --steps 3 --no-eval --trace t.json --quiet \
    >/dev/null 2>t.err || { fail "traced run failed"; cat t.err; }
  python3 - <<'EOF' && pass "trace: valid trace events, both devices' tracks with the all-to-alls" || fail "trace"
import json
d = json.load(open("t.json"))
ev = d["traceEvents"]
cats = {}
for e in ev:
    assert isinstance(e["name"], str) and e["ph"] in ("X", "M"), e
    assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
    if e["ph"] == "X":
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        cats.setdefault(e["tid"], set()).add(e["cat"])
assert sorted(cats) == [0, 1], cats
for tid, c in cats.items():
    for want in ("forward", "backward", "optimizer", "data", "all-to-all", "all-reduce"):
        assert want in c, (tid, want, c)
names = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
assert names == {"device 0", "device 1"}, names
EOF
  ;;
tokenize)
  TS=${MOEC_DATA_DIR:-/work/shared/data}/tinyshakespeare.txt
  [ -f "$TS" ] || { echo "SKIP: $TS not found (real data)"; exit 77; }
  for tok in "words:12000" "words(lower=true, split_punct=true):12000" "bpe(vocab=1000):1000" "chars:100" \
    "words(lower=true, split_punct=true, vocab=4000, spell=chars):4000"; do
    sed -e "s|data = .*|data = text(\"$TS\", tokenizer=${tok%:*})|" -e "s/let V = 32/let V = ${tok#*:}/" \
      -e 's/dim=16/dim=4/' moe.moe >k.moe
    "$MOEC" run k.moe --steps 1 --no-eval --batch 2 --json --quiet >k.out 2>k.err ||
      { fail "$tok: run failed"; cat k.err; continue; }
    u=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["data"]["unknown"][2])' k.out)
    echo "  ${tok%:*}: test unknown rate $u"
    case $tok in
    words:*) check "$u > 0.1" && pass "words: $u unknown on test" || fail "words: $u" ;;
    *spell=chars*) check "$u < 0.02" && pass "spell=chars: $u unknown on test" || fail "spell=chars: $u" ;;
    words*) check "$u < 0.05" && pass "lower + split_punct: $u unknown on test" || fail "split_punct: $u" ;;
    *) check "$u == 0" && pass "${tok%:*}: no unknown tokens" || fail "${tok%:*}: $u unknown" ;;
    esac
  done
  # spelled words through a checkpoint: score's text and sample join the pieces back
  "$MOEC" run k.moe --steps 5 --no-eval --batch 4 --save sp.safetensors --quiet >/dev/null 2>k.err ||
    { fail "spell=chars: run --save failed"; cat k.err; }
  printf 'Miranda and ZORBLAX!\n' >one.txt
  "$MOEC" score k.moe --load sp.safetensors --data one.txt --json >o.out 2>o.err || { fail "score"; cat o.err; }
  python3 - o.out <<'EOF' && pass "spell=chars: score's text of a spelled line" || { fail "spelled line"; cat o.out; }
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
line, total = rows[0], rows[-1]
assert line["text"] == "miranda and zorblax !", line
assert line["tokens"] >= 4 + 7 and total["unknown"] == 0, (line, total)  # zorblax: 7 pieces
EOF
  "$MOEC" sample k.moe --load sp.safetensors --tokens 30 --seed 3 --prompt "zorblax" >s1.txt 2>s.err &&
    "$MOEC" sample k.moe --load sp.safetensors --tokens 30 --seed 3 --prompt "zorblax" >s2.txt 2>/dev/null &&
    cmp -s s1.txt s2.txt && head -c 8 s1.txt | grep -q "^zorblax " && ! grep -q "<[BME]>" s1.txt &&
    pass "spell=chars: sample streams joined words, one text per seed" || { fail "sample"; cat s.err s1.txt; }
  # per-word perplexity is per word: exp(-logprob / words), the test split's words (90/5/5
  # by lines) counted here, whatever the tokenizer
  "$MOEC" score k.moe --load sp.safetensors --json --quiet >w.out 2>w.err || { fail "score test"; cat w.err; }
  python3 - "$TS" w.out <<'EOF' && pass "per-word ppl = exp(-logprob / words)" || fail "per-word ppl"
import json, math, sys
lines = open(sys.argv[1], "rb").read().split(b"\n")
if lines[-1] == b"": lines.pop()
l1 = len(lines) * 90 // 100; l2 = l1 + len(lines) * 5 // 100
words = sum(len(l.split()) + 1 for l in lines[l2:])
r = json.loads(open(sys.argv[2]).readlines()[-1])
print("  test split: %d words, %d tokens, word ppl %.3f" % (words, r["tokens"], r["word_ppl"]))
assert r["words"] == words, (r["words"], words)
assert abs(r["word_ppl"] / math.exp(-r["logprob"] / words) - 1) < 1e-6, r  # logprob: 9 digits
assert r["tokens"] > words  # pieces are more tokens than words
EOF
  # separate files: valid = and test = (and .bin files, nanoGPT style)
  head -n 3000 "$TS" >tr.txt; sed -n 3001,3300p "$TS" >va.txt; sed -n 3301,3600p "$TS" >te.txt
  sed -e 's|data = .*|data = text("tr.txt", valid="va.txt", test="te.txt", tokenizer=chars)|' \
    -e 's/let V = 32/let V = 100/' moe.moe >f.moe
  "$MOEC" run f.moe --steps 1 --no-eval --json --quiet >f.out 2>f.err || { fail "valid=/test= files"; cat f.err; }
  check "$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["data"]["tokens"])' f.out) == [$(wc -m <tr.txt), $(wc -m <va.txt), $(wc -m <te.txt)]" &&
    pass "text(valid=, test=): each file a split" || { fail "split sizes"; cat f.out | tail -1 | head -c 400; }
  python3 -c "
import struct
for n, k in (('a.bin', 3000), ('b.bin', 200), ('c.bin', 300)):
    open(n, 'wb').write(struct.pack('<%dH' % k, *[(i * 7) % 32 for i in range(k)]))"
  sed 's|data = .*|data = bin("a.bin", valid="b.bin", test="c.bin")|' moe.moe >n.moe
  "$MOEC" run n.moe --steps 2 --batch 4 --json --quiet >n.out 2>n.err && pass "bin(valid=, test=) files" ||
    { fail "bin files"; cat n.err; }
  ;;
max_time)
  # --max-time ends a run of 10^6 steps like a normal end: exit 0, final evaluation, the
  # checkpoint of the last step; on 2 in-process devices and 2 MPI ranks every device stops
  # after the same step (else the next step's all-reduce would hang)
  for dev in 1 2 mpi; do
    rm -f t.jsonl t.safetensors
    if [ $dev = mpi ]; then # one device per rank
      command -v mpirun >/dev/null 2>&1 || { echo "note: no mpirun: the MPI run skipped"; continue; }
      set -- env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 --oversubscribe "$MOEC" run moe.moe
    else
      set -- "$MOEC" run moe.moe --devices $dev
    fi
    t0=$(date +%s)
    timeout 120 "$@" --steps 1000000 --max-time 2s --save t.safetensors --metrics t.jsonl --json \
      >t.out 2>t.err
    rc=$?
    t1=$(date +%s)
    [ $rc -eq 0 ] && pass "$dev: exit 0 after $((t1 - t0)) s" || { fail "$dev: exit $rc"; cat t.err; continue; }
    n=$(json t.out steps)
    last=$(steps t.jsonl | tail -1 | sed 's/.*"step":\([0-9]*\).*/\1/')
    check "0 < $n < 1000000 and $n == ${last:-0}" && pass "$dev: stopped after step $n, the last in the metrics" ||
      fail "$dev: steps $n, metrics' last step ${last:-none}"
    grep -q "max_time 2s reached after step $n of 1000000" t.out t.err && pass "$dev: says why it stopped" ||
      { fail "$dev: no max_time line"; cat t.out t.err; }
    check "$(json t.out valid_ppl) > 0 and $(json t.out test_ppl) > 0" && pass "$dev: valid and test evaluated" ||
      fail "$dev: no final evaluation"
    [ $((t1 - t0)) -lt 60 ] || fail "$dev: $((t1 - t0)) s for a 2 s budget"
    "$MOEC" eval moe.moe --load t.safetensors --json >e.out 2>e.err &&
      check "abs($(json e.out test_ppl) - $(json t.out test_ppl)) <= 1e-4 * $(json t.out test_ppl)" &&
      pass "$dev: the checkpoint is the last step's (eval == the run's test ppl)" ||
      { fail "$dev: checkpoint"; cat e.err; }
  done
  # a translation model (its own loop)
  timeout 120 "$MOEC" run "$SRC/tests/nmt/nmt_small.moe" --steps 1000000 --max-time 1s --json \
    >n.out 2>n.err && check "0 < $(json n.out steps) < 1000000 and $(json n.out valid_ppl) > 0" &&
    pass "translation model: stopped after step $(json n.out steps), valid evaluated" ||
    { fail "translation model"; cat n.err; }
  # the flag's durations and its errors
  for d in "600:10m" "5400:1h30m" "45:0.75m"; do
    "$MOEC" check moe.moe --max-time "${d#*:}" >c.out 2>&1 && grep -q "max_time ${d%%:*}s" c.out &&
      pass "--max-time ${d#*:} = ${d%%:*} s" || { fail "--max-time ${d#*:}"; cat c.out; }
  done
  "$MOEC" check moe.moe --set train.max_time=120 >c.out 2>&1 && grep -q "max_time 120s" c.out &&
    pass "--set train.max_time=120" || fail "--set train.max_time"
  for bad in abc 1m1h 10ms; do
    expect_error "--max-time needs a duration" "$MOEC" check moe.moe --max-time "$bad"
  done
  expect_error "'max_time' must be in [0, 1e+09], got -1" "$MOEC" check moe.moe --set train.max_time=-1
  expect_error "'max_time' is not a size in bytes" "$MOEC" check moe.moe --set train.max_time=1GiB
  ;;
*)
  echo "unknown case '$CASE'"
  exit 2
  ;;
esac
finish
