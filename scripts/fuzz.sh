#!/bin/sh
# fuzz.sh [SECONDS] [TARGET...]: builds the libFuzzer targets (libFuzzer + ASan +
# UBSan, clang) in build-fuzz/ and runs each for its share of SECONDS (default 75;
# the frontend two shares, the others one each):
#   fuzz_frontend     lexer, parser, sema, summary    seeds: tests/fuzz/corpus
#   fuzz_safetensors  the checkpoint reader            seeds: checkpoints rt_st_save wrote
#   fuzz_text         the text corpus reader, batches  seeds: the repository's docs
#   fuzz_bin          the .bin corpus reader, batches  seeds: generated uint16 ids
# (the seeds other than the frontend's are made at build time by fuzz_seeds in
# build-fuzz/seeds/). Prints executions, exec/s and crashes per target; exits 1 if
# one found a crash, leak or timeout (the input is kept in build-fuzz/artifacts/,
# replay it with build-fuzz/TARGET FILE).
# Environment: MOEC_FUZZ_BUILD (build dir), MOEC_FUZZ_JOBS (parallel workers).
set -eu
SECS=${1:-75}
[ $# -gt 0 ] && shift
TARGETS=${*:-fuzz_frontend fuzz_safetensors fuzz_text fuzz_bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MOEC_FUZZ_BUILD:-$ROOT/build-fuzz}
CC=${CC:-clang}
case "$CC" in *clang*) ;; *) CC=clang ;; esac

# a standalone project: only the frontend, ir/, passes/, the runtime's readers and
# common.c are compiled
mkdir -p "$BUILD"
BLOG="$BUILD/build.log"
cmake -S "$ROOT/tests/fuzz" -B "$BUILD" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BLOG" 2>&1 ||
  { cat "$BLOG"; exit 2; }
cmake --build "$BUILD" -j"$(nproc)" >>"$BLOG" 2>&1 || { cat "$BLOG"; exit 2; }

shares=0
for t in $TARGETS; do
  case $t in fuzz_frontend) shares=$((shares + 2)) ;; *) shares=$((shares + 1)) ;; esac
done
mkdir -p "$BUILD/artifacts"
FAILED=0
for t in $TARGETS; do
  case $t in
  fuzz_frontend) share=2 seeds="$ROOT/tests/fuzz/corpus" extra="-dict=$ROOT/tests/fuzz/moe.dict" ;;
  fuzz_safetensors) share=1 seeds="$BUILD/seeds/safetensors" extra="" ;;
  fuzz_text) share=1 seeds="$BUILD/seeds/text" extra="" ;;
  fuzz_bin) share=1 seeds="$BUILD/seeds/bin" extra="" ;;
  *) echo "fuzz.sh: unknown target '$t'"; exit 2 ;;
  esac
  secs=$((SECS * share / shares))
  [ "$secs" -ge 1 ] || secs=1
  corpus="$BUILD/corpus/$t"
  mkdir -p "$corpus"
  LOG="$BUILD/$t.log"
  before=$(find "$BUILD/artifacts" -type f | wc -l)
  set +e
  # -max_len 4096: long enough for real files; deep nesting and huge inputs are
  # covered by tests/syntax (run_syntax stress) and the C tests. -timeout 5 catches
  # hangs. New inputs go to $corpus (the first directory), never to the seeds.
  # shellcheck disable=SC2086
  "$BUILD/$t" -max_total_time="$secs" -max_len=4096 -timeout=5 -rss_limit_mb=2048 $extra \
    -artifact_prefix="$BUILD/artifacts/$t-" -print_final_stats=1 \
    ${MOEC_FUZZ_JOBS:+-jobs=$MOEC_FUZZ_JOBS -workers=$MOEC_FUZZ_JOBS} \
    "$corpus" "$seeds" >"$LOG" 2>&1
  RC=$?
  set -e
  EXECS=$(grep -h 'stat::number_of_executed_units' "$LOG" | awk '{s += $2} END {print s + 0}')
  RATE=$(grep -h 'stat::average_exec_per_sec' "$LOG" | awk '{s += $2} END {print s + 0}')
  CRASHES=$(($(find "$BUILD/artifacts" -type f | wc -l) - before))
  echo "$t: ${secs} s, ${EXECS} executions, ${RATE} exec/s, $(ls "$corpus" | wc -l) corpus files, ${CRASHES} crashes"
  if [ "$RC" -ne 0 ] || [ "$CRASHES" -ne 0 ]; then
    grep -h -A30 'ERROR: \|SUMMARY\|runtime error' "$LOG" | head -60
    FAILED=1
  fi
done
if [ "$FAILED" -ne 0 ]; then
  echo "artifacts in $BUILD/artifacts/"
  exit 1
fi
