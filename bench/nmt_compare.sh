#!/bin/sh
# nmt_compare.sh: the MoE translation model, its dense baseline of equal ops and the same
# dense model in PyTorch, trained side by side for the same wall-clock time on one thread
# each (so they see the same load), then evaluated alike on the en-fr valid pairs by
# `moec eval` (perplexity per target token, BLEU-4 of beam 4): one table.
#
#   bench/nmt_compare.sh [--time 10m] [--batch-tokens 512] [--moec build/moec]
#                        [--out build/bench/nmt] [--set train.KEY=V]... (to both moec runs)
#
# The models: examples/nmt_en_fr_small.moe (16 experts, k = 2, batchwise gating) and
# examples/nmt_en_fr_small_dense.moe; bench/nmt_torch.py (the dense one, on the BPE
# vocabulary moec learns, its checkpoint evaluated by moec). Data: $MOEC_DATA_DIR/en-fr
# (default ../shared/data beside the checkout). Needs /usr/bin/python3 with torch.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIME=10m
MOEC=$ROOT/build/moec
OUT=$ROOT/build/bench/nmt
SETS=""
BUDGET=512
while [ $# -gt 0 ]; do
  case $1 in
  --time) TIME=$2; shift 2 ;;
  --batch-tokens) BUDGET=$2; shift 2 ;;
  --moec) MOEC=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --set) SETS="$SETS --set $2"; shift 2 ;;
  *) echo "usage: $0 [--time 10m] [--batch-tokens N] [--moec MOEC] [--out DIR] [--set train.KEY=V]..." >&2; exit 2 ;;
  esac
done
DATA=${MOEC_DATA_DIR:-$ROOT/../shared/data}/en-fr
[ -f "$DATA/train.tsv" ] && [ -f "$DATA/valid.tsv" ] || {
  echo "nmt_compare: no en-fr data in $DATA (set MOEC_DATA_DIR)" >&2
  exit 77
}
PY=/usr/bin/python3
$PY -c 'import torch' 2>/dev/null || { echo "nmt_compare: $PY has no torch" >&2; exit 77; }
DATA=$(cd "$DATA" && pwd)
MAX_LEN=40
PAR="parallel(\"$DATA/train.tsv\", valid=\"$DATA/valid.tsv\", max_len=$MAX_LEN, batch_tokens=$BUDGET)"
MOE=$ROOT/examples/nmt_en_fr_small.moe
DENSE=$ROOT/examples/nmt_en_fr_small_dense.moe
mkdir -p "$OUT"
cd "$OUT" || exit 1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MOEC_THREADS=1

# the BPE vocabulary PyTorch trains on: the one moec learns from the training pairs
# (both moec runs learn the same one: it is a function of the pairs)
# shellcheck disable=SC2086
"$MOEC" run "$DENSE" --data "$PAR" --steps 0 --no-eval --quiet --save bpe.safetensors $SETS \
  >bpe.out 2>&1 || { cat bpe.out; exit 1; }

echo "nmt_compare: $TIME each, 1 thread each, side by side; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086
"$MOEC" run "$MOE" --data "$PAR" --max-time "$TIME" --save moe.safetensors --metrics moe.jsonl \
  --json $SETS >moe.out 2>&1 &
p1=$!
# shellcheck disable=SC2086
"$MOEC" run "$DENSE" --data "$PAR" --max-time "$TIME" --save dense.safetensors \
  --metrics dense.jsonl --json $SETS >dense.out 2>&1 &
p2=$!
$PY "$ROOT/bench/nmt_torch.py" --bpe bpe.safetensors --train "$DATA/train.tsv" \
  --valid "$DATA/valid.tsv" --max-len $MAX_LEN --batch-tokens $BUDGET --max-time "$TIME" \
  --threads 1 --save torch.safetensors --json >torch.out 2>&1 &
p3=$!
rc=0
for p in $p1 $p2 $p3; do wait $p || rc=1; done
echo "nmt_compare: training done; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ $rc -eq 0 ] || { tail -5 moe.out dense.out torch.out; exit 1; }

# evaluation one after the other, moec's decoder and BLEU for all three
"$MOEC" eval "$MOE" --data "$DATA/valid.tsv" --load moe.safetensors --beam 4 --json >moe.eval 2>&1 &&
  "$MOEC" eval "$DENSE" --data "$DATA/valid.tsv" --load dense.safetensors --beam 4 --json >dense.eval 2>&1 &&
  "$MOEC" eval "$DENSE" --data "$DATA/valid.tsv" --load torch.safetensors --beam 4 --json >torch.eval 2>&1 ||
  { tail -5 ./*.eval; exit 1; }

"$MOEC" check "$MOE" --data "$PAR" --json >moe.check 2>&1 &&
  "$MOEC" check "$DENSE" --data "$PAR" --json >dense.check 2>&1 || { cat ./*.check; exit 1; }

$PY - "$TIME" <<'EOF' | tee table.md
import json, sys
def last(path):
    return json.loads([l for l in open(path) if l.startswith("{")][-1])
def tail_xent(metrics):  # moec: the mean cross-entropy of the last 100 steps (no aux)
    x = [json.loads(l)["xent"] for l in open(metrics) if '"event":"step"' in l][-100:]
    return sum(x) / len(x)
print(f"| model ({sys.argv[1]}, 1 thread) | params | ops/timestep | steps | tokens/s | "
      f"train xent (last 100 steps) | valid ppl | BLEU (beam 4) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, run, ev, ck in (("moec MoE (16 experts, k=2)", "moe.out", "moe.eval", "moe.check"),
                          ("moec dense (equal ops)", "dense.out", "dense.eval", "dense.check"),
                          ("PyTorch dense", "torch.out", "torch.eval", "dense.check")):
    r, e, c = last(run), last(ev), last(ck)
    loss = tail_xent(run.replace(".out", ".jsonl")) if run != "torch.out" else r["train_loss"]
    print(f"| {name} | {c['params']:,} | {c['ops_per_timestep']:,} | {r['steps']} | "
          f"{r['tokens_per_s']:.0f} | {loss:.3f} | {e['valid_ppl']:.2f} | "
          f"{e['bleu']:.2f} |")
EOF
