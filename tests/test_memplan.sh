#!/bin/sh
# test_memplan.sh MOEC MODEL CASE: `moec run MODEL --steps 20` gives the same losses bit
# for bit (every per-step metric but the speed, and the valid and test perplexity):
#   plan      : one buffer per tensor (MOEC_NO_MEMPLAN=1) = the memory plan = the plan
#               with its arena filled with NaN before every step (MOEC_POISON_ARENA=1)
#   recompute : recompute = none = [m] = all (the MoE layer of MODEL is named m), with
#               poisoned arenas
set -u
MOEC=$1 MODEL=$2 CASE=$3
export OPENBLAS_NUM_THREADS=1 # the same either way; one thread is quicker on a busy machine
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

run() { # NAME MODEL [VAR=VALUE...]
  name=$1 model=$2
  shift 2
  if ! env "$@" "$MOEC" run "$model" --steps 20 --eval-every 0 --quiet --json \
    --metrics "$T/$name.jsonl" >"$T/$name.json" 2>"$T/$name.err"; then
    echo "FAIL: moec run ($name) failed:"
    cat "$T/$name.err"
    exit 1
  fi
  grep '"event":"step"' "$T/$name.jsonl" | sed 's/,"tokens_per_s":[^,}]*//' >"$T/$name.steps"
  tail -n 1 "$T/$name.json" | sed 's/.*"valid_ppl":\([^,]*\),"test_ppl":\([^,]*\),.*/\1 \2/' \
    >>"$T/$name.steps"
  [ "$(grep -c '"event":"step"' "$T/$name.jsonl")" = 20 ] || {
    echo "FAIL: $name: expected 20 steps"
    exit 1
  }
}

same() { # A B
  if cmp -s "$T/$1.steps" "$T/$2.steps"; then
    echo "ok: $2 = $1 ($(sed -n '20s/.*"loss":\([^,]*\).*/loss at step 20: \1/p' "$T/$2.steps"))"
  else
    echo "FAIL: $2 differs from $1:"
    diff "$T/$1.steps" "$T/$2.steps" | head -6
    exit 1
  fi
}

with_plan() { # NAME SETTING: MODEL with a plan block appended
  sed '/^plan *{/,/^}/d' "$MODEL" >"$T/$1.moe"
  printf 'plan {\n  recompute = %s\n}\n' "$2" >>"$T/$1.moe"
}

case $CASE in
plan)
  run unplanned "$MODEL" MOEC_NO_MEMPLAN=1
  run planned "$MODEL"
  run poisoned "$MODEL" MOEC_POISON_ARENA=1
  same unplanned planned
  same unplanned poisoned
  ;;
recompute)
  with_plan moe '[m]'
  with_plan all all
  run none "$MODEL"
  run moe "$T/moe.moe" MOEC_POISON_ARENA=1
  run all "$T/all.moe" MOEC_POISON_ARENA=1
  same none moe
  same none all
  ;;
*)
  echo "unknown case $CASE"
  exit 2
  ;;
esac
