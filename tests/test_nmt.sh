#!/bin/sh
# test_nmt.sh MOEC CASE: translation models end to end on tests/nmt (a made-up language
# pair). CASE devices: 1 device, 2 in-process devices and 2 MPI ranks train to the same
# losses (experts sharded); translate: a trained checkpoint translates deterministically,
# in order, bad input gets a clear message; eval: perplexity equals the run's valid perplexity, BLEU.
set -u
MOEC=$1
CASE=$2
DIR=$(cd "$(dirname "$0")/nmt" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
cd "$DIR" || exit 1
json_field() { # FILE KEY: a number from the last JSON line
  tail -1 "$1" | sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p"
}

case $CASE in
devices)
  "$MOEC" run nmt_small.moe --steps 40 --json >"$TMP/one" 2>/dev/null || fail "1 device"
  "$MOEC" run nmt_small.moe --steps 40 --devices 2 --json >"$TMP/two" 2>/dev/null ||
    fail "2 devices"
  grep -q '"all_to_all":{"calls":[1-9]' "$TMP/two" || fail "2 devices: no all_to_all (experts not sharded)"
  for k in train_loss last_loss valid_ppl; do
    a=$(json_field "$TMP/one" $k)
    b=$(json_field "$TMP/two" $k)
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-5 * (a < 0 ? -a : a)) }' ||
      fail "$k: 1 device $a, 2 devices $b"
    echo "$k: 1 device $a, 2 in-process devices $b"
  done
  if command -v mpirun >/dev/null 2>&1; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
      mpirun -np 2 --oversubscribe "$MOEC" run nmt_small.moe --steps 40 --json >"$TMP/mpi" 2>"$TMP/mpi.err" ||
      fail "2 MPI ranks: $(tail -3 "$TMP/mpi.err")"
    for k in train_loss last_loss valid_ppl; do
      a=$(json_field "$TMP/one" $k)
      b=$(json_field "$TMP/mpi" $k)
      awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-5 * (a < 0 ? -a : a)) }' ||
        fail "$k: 1 device $a, 2 MPI ranks $b"
      echo "$k: 1 device $a, 2 MPI ranks $b"
    done
  else
    echo "note: no mpirun: the MPI half skipped"
  fi
  ;;
translate | eval)
  CK=$TMP/small.safetensors
  "$MOEC" run nmt_small.moe --steps 600 --save "$CK" --json >"$TMP/run" 2>/dev/null || fail "training"
  cut -f1 valid.tsv >"$TMP/src"
  if [ "$CASE" = eval ]; then
    "$MOEC" eval nmt_small.moe --load "$CK" >"$TMP/eval" 2>&1 || fail "eval: $(cat "$TMP/eval")"
    cat "$TMP/eval"
    grep -q '^BLEU = [0-9.]*, [0-9.]*/[0-9.]*/[0-9.]*/[0-9.]* (BP=' "$TMP/eval" || fail "eval: no BLEU line"
    "$MOEC" eval nmt_small.moe --load "$CK" --json --beam 1 >"$TMP/ej" 2>&1 || fail "eval --json"
    a=$(json_field "$TMP/run" valid_ppl)
    b=$(json_field "$TMP/ej" valid_ppl)
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-6 * a) }' ||
      fail "eval's ppl $b, the run's valid ppl $a"
    # the same valid pairs: the run's (its summary's data.pairs) and eval's
    vp=$(tail -1 "$TMP/run" | sed -n 's/.*"data":{"pairs":\[[0-9]*,\([0-9]*\)\].*/\1/p')
    ep=$(json_field "$TMP/ej" pairs)
    [ -n "$vp" ] && [ "$vp" = "$ep" ] || fail "valid pairs: the run's '$vp', eval's '$ep'"
    u=$(json_field "$TMP/ej" bleu)
    awk -v u="$u" 'BEGIN { exit !(u != "" && u >= 0 && u <= 100) }' || fail "bleu '$u'"
    echo "eval: ppl $b (run: $a), greedy BLEU $u"
    "$MOEC" eval ../torch_ref.moe --load "$CK" --beam 2 >"$TMP/err" 2>&1 && fail "--beam on an LM"
    grep -q "decode a translation model" "$TMP/err" || fail "--beam on an LM: $(cat "$TMP/err")"
    exit 0
  fi
  # determinism, order, one line out per line in
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$CK" >"$TMP/a" 2>"$TMP/a.err" || fail "translate"
  "$MOEC" translate nmt_small.moe --load "$CK" <"$TMP/src" >"$TMP/b" 2>/dev/null || fail "translate stdin"
  cmp -s "$TMP/a" "$TMP/b" || fail "two runs (file, stdin) differ"
  [ "$(wc -l <"$TMP/a")" -eq "$(wc -l <"$TMP/src")" ] || fail "$(wc -l <"$TMP/a") lines out, $(wc -l <"$TMP/src") in"
  # a sentence alone (--rows = the beam: one sentence a batch) translates as in a batch
  # (batchwise MoE layers route each row by its thresholds alone)
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$CK" --rows 4 >"$TMP/a1" 2>/dev/null || fail "one a batch"
  cmp -s "$TMP/a" "$TMP/a1" || fail "alone and in a batch differ: $(diff "$TMP/a" "$TMP/a1" | head -5)"
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$CK" --beam 1 --rows 8 >"$TMP/g" 2>/dev/null || fail "greedy"
  [ "$(wc -l <"$TMP/g")" -eq "$(wc -l <"$TMP/src")" ] || fail "greedy: line count"
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$CK" --beam 1 --rows 1 >"$TMP/g1" 2>/dev/null || fail "greedy alone"
  cmp -s "$TMP/g" "$TMP/g1" || fail "greedy: alone and in a batch differ: $(diff "$TMP/g" "$TMP/g1" | head -5)"
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$CK" --max-len 2 >"$TMP/m" 2>/dev/null || fail "--max-len 2"
  [ "$(wc -l <"$TMP/m")" -eq "$(wc -l <"$TMP/src")" ] || fail "--max-len 2: line count"
  awk 'NF > 2 { exit 1 }' "$TMP/m" || fail "--max-len 2: more than two words: $(cat "$TMP/m")"
  paste "$TMP/src" "$TMP/a" | head -5
  # bad input: an empty line and a line of 10,000 words (warnings), invalid UTF-8, an LM
  printf 'the house\n\nthe dog\n' >"$TMP/empty"
  "$MOEC" translate nmt_small.moe "$TMP/empty" --load "$CK" >"$TMP/o" 2>"$TMP/e" || fail "an empty line: $(cat "$TMP/e")"
  [ "$(wc -l <"$TMP/o")" -eq 3 ] && [ -z "$(sed -n 2p "$TMP/o")" ] || fail "an empty line: output $(cat "$TMP/o")"
  grep -q ":2: an empty line" "$TMP/e" || fail "an empty line: $(cat "$TMP/e")"
  awk 'BEGIN { printf "the house\n"; for (i = 0; i < 10000; i++) printf "dog "; printf "\nthe dog\n" }' >"$TMP/long"
  "$MOEC" translate nmt_small.moe "$TMP/long" --load "$CK" >"$TMP/o" 2>"$TMP/e" || fail "a long line: $(cat "$TMP/e")"
  grep -q ":2: [0-9]* ids after BPE, more than the 16 source ids" "$TMP/e" || fail "a long line: $(cat "$TMP/e")"
  [ "$(wc -l <"$TMP/o")" -eq 3 ] || fail "a long line: output $(cat "$TMP/o")"
  printf 'the house\nthe \377dog\n' >"$TMP/bad"
  "$MOEC" translate nmt_small.moe "$TMP/bad" --load "$CK" >"$TMP/o" 2>"$TMP/e" && fail "invalid UTF-8 accepted"
  grep -q "bad:2:5: invalid UTF-8 (byte 0xff)" "$TMP/e" || fail "invalid UTF-8: $(cat "$TMP/e")"
  "$MOEC" run ../torch_ref.moe --steps 2 --save "$TMP/lm.safetensors" >/dev/null 2>&1 || fail "an LM's run"
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$TMP/lm.safetensors" >"$TMP/o" 2>"$TMP/e" && fail "an LM's checkpoint accepted"
  grep -q "holds no BPE vocabulary.*not the checkpoint of a translation model" "$TMP/e" || fail "an LM's checkpoint: $(cat "$TMP/e")"
  "$MOEC" translate ../torch_ref.moe "$TMP/src" --load "$CK" >"$TMP/o" 2>"$TMP/e" && fail "an LM accepted"
  grep -q "is not a translation model" "$TMP/e" || fail "an LM: $(cat "$TMP/e")"
  "$MOEC" translate nmt_small.moe "$TMP/src" --load "$CK" --beam 0 >"$TMP/o" 2>"$TMP/e" && fail "--beam 0"
  grep -q -- "--beam wants an integer" "$TMP/e" || fail "--beam 0: $(cat "$TMP/e")"
  echo "translate: deterministic, in order, bad input refused or warned"
  ;;
*)
  echo "unknown case $CASE"
  exit 2
  ;;
esac
echo ok
