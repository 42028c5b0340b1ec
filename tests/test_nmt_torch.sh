#!/bin/sh
# test_nmt_torch.sh MOEC PYTHON SRC: bench/nmt_torch.py is the model it says it is. It
# trains a small dense attention model on tests/nmt with moec's BPE vocabulary and
# writes a moec checkpoint; `moec eval` of that checkpoint must give PyTorch's own valid
# perplexity (1e-4 relative): the same architecture, parameter layout, BPE encoding and
# pairs. Also: its --max-time ends training at a step boundary. Skips (77) without torch.
set -u
MOEC=$1
PY=$2
SRC=$3
"$PY" -c 'import torch, numpy' 2>/dev/null || { echo "SKIP: $PY has no torch/numpy"; exit 77; }
TMP=$(mktemp -d /tmp/moec_nmt_torch.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
D=$SRC/tests/nmt
cat >dense.moe <<EOF
# the dense model of bench/nmt_torch.py at V=320, D=16, hidden 40
model nmt_torch_small {
  let V = 320
  let D = 16
  input src : i32[B, S] pad 0
  input tgt_in : i32[B, T] pad 0
  input tgt_out : i32[B, T] pad 0
  se = embedding(src, vocab=V, dim=D)
  e1 = lstm(dropout(se, 0.1), units=D)
  eh = dense(e1, units=40, act=relu)
  em = dense(eh, units=D)
  r1 = e1 + dropout(em, 0.1)
  e2 = lstm(r1, units=D)
  enc = r1 + dropout(e2, 0.1)
  te = embedding(tgt_in, vocab=V, dim=D)
  d1 = lstm(dropout(te, 0.1), units=D)
  ctx = attention(d1, enc, units=D)
  dh = dense(d1, units=40, act=relu)
  dm = dense(dh, units=D)
  r2 = d1 + dropout(dm, 0.1)
  d2 = lstm(concat(r2, ctx), units=D)
  out = r2 + dropout(d2, 0.1)
  loss = softmax_xent(out, tgt_out, vocab=V)
  output loss
}
train {
  data = parallel("$D/train.tsv", valid="$D/valid.tsv", max_len=16, batch_tokens=128)
}
EOF
"$MOEC" run dense.moe --steps 0 --no-eval --quiet --save bpe.safetensors >bpe.out 2>&1 ||
  fail "moec: the BPE vocabulary: $(cat bpe.out)"
ARGS="--bpe bpe.safetensors --train $D/train.tsv --valid $D/valid.tsv --vocab 320 --dim 16
  --hidden 40 --max-len 16 --batch-tokens 128 --lr 1e-2"
# shellcheck disable=SC2086
"$PY" "$SRC/bench/nmt_torch.py" $ARGS --steps 80 --save t.safetensors --json >t.out 2>&1 ||
  fail "nmt_torch.py: $(tail -5 t.out)"
"$MOEC" eval dense.moe --load t.safetensors --json --beam 2 >e.out 2>&1 ||
  fail "moec eval of PyTorch's checkpoint: $(cat e.out)"
a=$(tail -1 t.out | sed -n 's/.*"valid_ppl": \([-0-9.e+]*\).*/\1/p')
b=$(tail -1 e.out | sed -n 's/.*"valid_ppl":\([-0-9.e+]*\).*/\1/p')
awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && b != "" && a < 300 && d <= 1e-4 * a) }' ||
  fail "valid ppl: PyTorch $a, moec eval of its weights $b"
echo "ok: valid ppl after 80 steps: PyTorch $a, moec eval of its checkpoint $b"
grep -q '"bleu":[0-9]' e.out || fail "no BLEU: $(cat e.out)"
echo "ok: BLEU of PyTorch's checkpoint: $(sed -n 's/.*"bleu":\([0-9.]*\).*/\1/p' e.out)"
# shellcheck disable=SC2086
"$PY" "$SRC/bench/nmt_torch.py" $ARGS --max-time 1s --json >m.out 2>&1 || fail "--max-time: $(tail -3 m.out)"
grep -q "max_time 1s reached after step" m.out || fail "--max-time: no stop line: $(tail -3 m.out)"
echo "ok: $(grep "max_time 1s reached" m.out)"
echo "all passed"
