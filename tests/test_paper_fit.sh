#!/bin/sh
# test_paper_fit.sh MOEC PAPER_DIR: what the paper's largest models allocate per K40
# (docs/memory.md, "Expert-row buffers"; bench/README.md, the paper table). With the expert
# rows sized per step in their slots in the arena (and the LSTM's gate gradients over its
# gates), Table 8's MoE-16384-h on 32 K40s and MoE-65536-h on 64 fit 12 GiB, with nothing
# apart from the arena, and Table 7's MoE-143M on the 32 K40s of the paper's Table 1 (on 16
# it needs 14.02 GiB: docs/placement.md).
set -u
MOEC=$1
DIR=$2
. "$(dirname "$0")/lib.sh"
t_tmpdir paper_fit
for row in "100b_moe16384h 32 12" "100b_moe65536h 64 12" "1b_moe143m 32 12"; do
  set -- $row
  if ! "$MOEC" simulate "$DIR/$1.moe" --cluster "$2xK40" --format json > "$1.json"; then
    fail "$1: simulate failed"
    continue
  fi
  if "$PY" - "$1.json" "$3" <<'PY'; then pass "$1 on $2 K40s: at most $3 GiB a device"; else fail "$1 on $2 K40s"; fi
import json, sys
m = json.load(open(sys.argv[1]))["memory"]
gib, limit = m["planned_bytes"] / 2**30, float(sys.argv[2])
print("%s: %.3f GiB = persistent %.3f + arena %.3f + optimizer %.3f + rows apart %.3f" % (
    sys.argv[1], gib, m["persist_bytes"] / 2**30, m["arena_bytes"] / 2**30,
    m["optimizer_bytes"] / 2**30, m["rows_apart_bytes"] / 2**30))
assert gib <= limit and m["rows_apart_bytes"] == 0 and m["rows_margin_bytes"] > 0, m
assert m["fits"] == (gib <= 12), m
PY
done
finish
