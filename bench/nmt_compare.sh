#!/bin/sh
# nmt_compare.sh: the MoE translation model, its dense baseline of equal ops and the same
# dense model in PyTorch, trained side by side for the same wall-clock time (so they see
# the same load), then evaluated alike on the en-fr valid pairs by `moec eval` (perplexity
# per target token, BLEU-4 of beam 4): one table, a row per model and round.
#
#   bench/nmt_compare.sh [--time 10m] [--rounds 1] [--probe 20] [--torch-threads N]
#                        [--batch-tokens 512] [--moec build/moec] [--out build/bench/nmt]
#                        [--set train.KEY=V]... (to both moec runs)
#
# moec runs on one thread. PyTorch runs in its best configuration here: a probe trains it
# alone for --probe seconds at 1 and at 2 threads (OMP_WAIT_POLICY=PASSIVE, so idle
# OpenMP threads do not spin against the other runs), and the faster by tokens/s past its
# first 5 steps trains (--torch-threads N: no probe). Each round prints the load average
# before and after.
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
ROUNDS=1
PROBE=20
TT=""
usage() {
  echo "usage: $0 [--time 10m] [--rounds N] [--probe SECONDS] [--torch-threads N] [--batch-tokens N] [--moec MOEC] [--out DIR] [--set train.KEY=V]..." >&2
  exit 2
}
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case $1 in
  --time) TIME=$2; shift 2 ;;
  --rounds) ROUNDS=$2; shift 2 ;;
  --probe) PROBE=$2; shift 2 ;;
  --torch-threads) TT=$2; shift 2 ;;
  --batch-tokens) BUDGET=$2; shift 2 ;;
  --moec) MOEC=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --set) SETS="$SETS --set $2"; shift 2 ;;
  *) usage ;;
  esac
done
case $ROUNDS in '' | *[!0-9]* | 0) usage ;; esac
case $PROBE in '' | *[!0-9]* | 0) usage ;; esac
case $TT in *[!0-9]* | 0) usage ;; esac
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
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MOEC_THREADS=1 # PyTorch: OMP_NUM_THREADS per run

# the BPE vocabulary PyTorch trains on: the one moec learns from the training pairs
# (both moec runs learn the same one: it is a function of the pairs)
# shellcheck disable=SC2086
"$MOEC" run "$DENSE" --data "$PAR" --steps 0 --no-eval --quiet --save bpe.safetensors $SETS \
  >bpe.out 2>&1 || { cat bpe.out; exit 1; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
export OMP_WAIT_POLICY=PASSIVE # PyTorch's idle OpenMP threads sleep rather than spin

# PyTorch's threads: the faster of 1 and 2 in a short probe, alone (every probe reported)
if [ -z "$TT" ]; then
  best=0
  for th in 1 2; do
    OMP_NUM_THREADS=$th $PY "$ROOT/bench/nmt_torch.py" --bpe bpe.safetensors --train "$DATA/train.tsv" \
      --valid "$DATA/valid.tsv" --max-len $MAX_LEN --batch-tokens $BUDGET --max-time "$PROBE" \
      --threads $th --no-eval --json >probe$th.out 2>&1 || { cat probe$th.out; exit 1; }
    tps=$($PY -c 'import json, sys; print("%.0f" % json.loads(open(sys.argv[1]).read().splitlines()[-1])["steady_tokens_per_s"])' probe$th.out)
    echo "nmt_compare: probe: PyTorch, $th thread(s), OMP_WAIT_POLICY=PASSIVE, ${PROBE}s alone: $tps tokens/s past its first 5 steps (load average $(load))"
    if [ "$tps" -gt "$best" ]; then best=$tps; TT=$th; fi
  done
  echo "nmt_compare: PyTorch trains on $TT thread(s)"
fi

r=1
while [ $r -le "$ROUNDS" ]; do
  D=round$r
  mkdir -p $D
  echo "nmt_compare: round $r of $ROUNDS: $TIME each side by side (moec 1 thread each, PyTorch $TT); load average before: $(load)"
  # shellcheck disable=SC2086
  "$MOEC" run "$MOE" --data "$PAR" --max-time "$TIME" --save $D/moe.safetensors \
    --metrics $D/moe.jsonl --json $SETS >$D/moe.out 2>&1 &
  p1=$!
  # shellcheck disable=SC2086
  "$MOEC" run "$DENSE" --data "$PAR" --max-time "$TIME" --save $D/dense.safetensors \
    --metrics $D/dense.jsonl --json $SETS >$D/dense.out 2>&1 &
  p2=$!
  OMP_NUM_THREADS=$TT $PY "$ROOT/bench/nmt_torch.py" --bpe bpe.safetensors --train "$DATA/train.tsv" \
    --valid "$DATA/valid.tsv" --max-len $MAX_LEN --batch-tokens $BUDGET --max-time "$TIME" \
    --threads "$TT" --save $D/torch.safetensors --json >$D/torch.out 2>&1 &
  p3=$!
  rc=0
  for p in $p1 $p2 $p3; do wait $p || rc=1; done
  after=$(load)
  echo "nmt_compare: round $r: training done; load average after: $after"
  echo "$after" >$D/load_after
  [ $rc -eq 0 ] || { tail -5 $D/moe.out $D/dense.out $D/torch.out; exit 1; }

  # evaluation one after the other, moec's decoder and BLEU for all three
  "$MOEC" eval "$MOE" --data "$DATA/valid.tsv" --load $D/moe.safetensors --beam 4 --json >$D/moe.eval 2>&1 &&
    "$MOEC" eval "$DENSE" --data "$DATA/valid.tsv" --load $D/dense.safetensors --beam 4 --json >$D/dense.eval 2>&1 &&
    "$MOEC" eval "$DENSE" --data "$DATA/valid.tsv" --load $D/torch.safetensors --beam 4 --json >$D/torch.eval 2>&1 ||
    { tail -5 $D/*.eval; exit 1; }
  r=$((r + 1))
done

"$MOEC" check "$MOE" --data "$PAR" --json >moe.check 2>&1 &&
  "$MOEC" check "$DENSE" --data "$PAR" --json >dense.check 2>&1 || { cat ./*.check; exit 1; }

$PY - "$TIME" "$ROUNDS" <<'EOF' | tee table.md
import json, sys
def last(path):
    return json.loads([l for l in open(path) if l.startswith("{")][-1])
def tail_xent(metrics):  # moec: the mean cross-entropy of the last 100 steps (no aux)
    x = [json.loads(l)["xent"] for l in open(metrics) if '"event":"step"' in l][-100:]
    return sum(x) / len(x)
print(f"| round | model ({sys.argv[1]}) | threads | params | ops/timestep | steps | tokens/s | "
      f"train xent (last 100 steps) | valid pairs | valid ppl | BLEU (beam 4) | load after |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for r in range(1, int(sys.argv[2]) + 1):
    d = f"round{r}/"
    load = open(d + "load_after").read().strip()
    for name, run, ck in (("moec MoE (16 experts, k=2)", "moe", "moe.check"),
                          ("moec dense (equal ops)", "dense", "dense.check"),
                          ("PyTorch dense", "torch", "dense.check")):
        res, e, c = last(d + run + ".out"), last(d + run + ".eval"), last(ck)
        loss = tail_xent(d + run + ".jsonl") if run != "torch" else res["train_loss"]
        th = res.get("threads", 1)
        print(f"| {r} | {name} | {th} | {c['params']:,} | {c['ops_per_timestep']:,} | "
              f"{res['steps']} | {res['tokens_per_s']:.0f} | {loss:.3f} | {e['pairs']} | "
              f"{e['valid_ppl']:.2f} | {e['bleu']:.2f} | {load} |")
EOF
