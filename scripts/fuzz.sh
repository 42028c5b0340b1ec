#!/bin/sh
# fuzz.sh [SECONDS]: builds the frontend fuzzer (libFuzzer + ASan + UBSan,
# clang) in build-fuzz/ and runs it for SECONDS (default 60) on the seed
# corpus tests/fuzz/corpus. Prints executions, exec/s and crashes; exits 1
# if it found a crash, leak or timeout (the input is kept in
# build-fuzz/artifacts/, replay it with build-fuzz/fuzz_frontend FILE).
# Environment: MOEC_FUZZ_BUILD (build dir), MOEC_FUZZ_JOBS (parallel workers).
set -eu
SECS=${1:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MOEC_FUZZ_BUILD:-$ROOT/build-fuzz}
CC=${CC:-clang}
case "$CC" in *clang*) ;; *) CC=clang ;; esac

# a standalone project: only the frontend, ir/ and common.c are compiled
mkdir -p "$BUILD"
BLOG="$BUILD/build.log"
cmake -S "$ROOT/tests/fuzz" -B "$BUILD" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BLOG" 2>&1 ||
  { cat "$BLOG"; exit 2; }
cmake --build "$BUILD" -j"$(nproc)" >>"$BLOG" 2>&1 || { cat "$BLOG"; exit 2; }

mkdir -p "$BUILD/corpus" "$BUILD/artifacts"
LOG="$BUILD/fuzz.log"
set +e
# -max_len 4096: long enough for real files; deep nesting and huge inputs are
# covered by tests/syntax (run_syntax stress). -timeout 5 catches hangs. New
# inputs go to $BUILD/corpus (the first directory), never to the seeds.
"$BUILD/fuzz_frontend" -max_total_time="$SECS" -max_len=4096 -timeout=5 -rss_limit_mb=2048 \
  -dict="$ROOT/tests/fuzz/moe.dict" -artifact_prefix="$BUILD/artifacts/" \
  -print_final_stats=1 ${MOEC_FUZZ_JOBS:+-jobs=$MOEC_FUZZ_JOBS -workers=$MOEC_FUZZ_JOBS} \
  "$BUILD/corpus" "$ROOT/tests/fuzz/corpus" >"$LOG" 2>&1
RC=$?
set -e
EXECS=$(grep -h 'stat::number_of_executed_units' "$LOG" | awk '{s += $2} END {print s + 0}')
RATE=$(grep -h 'stat::average_exec_per_sec' "$LOG" | awk '{s += $2} END {print s + 0}')
CRASHES=$(find "$BUILD/artifacts" -type f | wc -l)
echo "fuzz_frontend: ${SECS} s, ${EXECS} executions, ${RATE} exec/s, $(ls "$BUILD/corpus" | wc -l) corpus files, ${CRASHES} crashes"
if [ "$RC" -ne 0 ] || [ "$CRASHES" -ne 0 ]; then
  grep -h -A30 'ERROR: \|SUMMARY\|runtime error' "$LOG" | head -60
  echo "artifacts in $BUILD/artifacts/"
  exit 1
fi
