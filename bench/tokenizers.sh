#!/bin/sh
# bench/tokenizers.sh [DATA_DIR]: tiny-shakespeare at equal steps (150 of 16 x 20 tokens;
# embedding 32, LSTM 64, 4 experts; adam lr 0.01, 20 warm-up steps, then 1/sqrt decay) with
# words(lower, split_punct), the same with spelled words (spell=chars) at several vocab=,
# and bpe(vocab=2000): the test split's unknown rate and perplexity per token and per word
# (moec score: every token counted; per word = exp(-log-likelihood / words)). The model's
# vocabulary is the tokenizer's. Deterministic (seed 1): the figures do not depend on load.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MOEC=${MOEC:-$ROOT/build/moec}
TS=${1:-${MOEC_DATA_DIR:-$ROOT/../shared/data}}/tinyshakespeare.txt
[ -f "$TS" ] || { echo "$TS not found: give the data folder" >&2; exit 1; }
TMP=$(mktemp -d /tmp/moec_tokenizers.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
echo "load: $(uptime)"
printf '%-64s %6s %7s %7s %9s %11s\n' tokenizer ids tokens unknown "ppl/token" "ppl/word"
for spec in "words(lower=true, split_punct=true)|12000" \
  "words(lower=true, split_punct=true, spell=chars)|12000" \
  "words(lower=true, split_punct=true, vocab=8000, spell=chars)|8000" \
  "words(lower=true, split_punct=true, vocab=4000, spell=chars)|4000" \
  "words(lower=true, split_punct=true, vocab=2000, spell=chars)|2000" \
  "bpe(vocab=2000)|2000"; do
  tok=${spec%|*}
  cat >"$TMP/m.moe" <<MOE
model ts {
  let V = ${spec#*|}
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=32)
  h = lstm(emb, units=64)
  m = moe(h, experts=4, k=2, hidden=64)
  r = h + m
  loss = softmax_xent(r, targets, vocab=V)
  output loss
}
train {
  data = text("$TS", tokenizer=$tok)
  batch = 16
  unroll = 20
  steps = 150
  eval_every = 0
  optimizer = adam(lr=0.01, warmup=20, decay=rsqrt)
  seed = 1
}
MOE
  "$MOEC" run "$TMP/m.moe" --save "$TMP/m.safetensors" --json --quiet >"$TMP/run.json" 2>/dev/null
  "$MOEC" score "$TMP/m.moe" --load "$TMP/m.safetensors" --json --quiet >"$TMP/score.json"
  python3 - "$tok" "$TMP/run.json" "$TMP/score.json" <<'PY'
import json, sys
run = json.loads(open(sys.argv[2]).readlines()[-1])
s = json.loads(open(sys.argv[3]).readlines()[-1])
print("%-64s %6d %7d %6.2f%% %9.1f %11.1f" % (sys.argv[1], run["data"]["ids"], s["tokens"],
      100.0 * s["unknown"] / s["tokens"], s["ppl"], s["word_ppl"]))
PY
done
