#!/bin/sh
# test_plan_memory.sh MOEC MODEL: `moec plan --memory N` (docs/memory.md, "What fills the
# arena"): on 1 and 4 devices, the listing's peak is the plan's lower bound (the most bytes
# alive at once), its N tensors come largest first, each alive at the peak node, none
# larger than the arena, and their sum at most the bytes alive there; a bad count is a
# user error.
set -u
MOEC=$1
MODEL=$2
. "$(dirname "$0")/lib.sh"
t_tmpdir plan_memory
for p in 1 4; do
  if ! "$MOEC" plan "$MODEL" --devices $p --memory 6 > m$p.txt 2> m$p.err; then
    fail "moec plan --devices $p --memory failed: $(head -3 m$p.err)"
    continue
  fi
  if "$PY" - m$p.txt <<'PY'; then pass "$p device(s): the listing is the arena's peak, largest first"; else fail "$p device(s): listing wrong"; cat m$p.txt; fi
import re, sys
t = open(sys.argv[1]).read()
bound = float(re.search(r"arena lower bound \(most bytes alive at once\): ([\d.]+) MiB", t).group(1))
head = re.search(r"the arena of device \d+: ([\d.]+) MiB \(lower bound ([\d.]+) MiB\)", t)
arena, lb = float(head.group(1)), float(head.group(2))
peak = re.search(r"at node (\d+) \([^)]*\) ([\d.]+) MiB are alive in (\d+) tensors; the largest (\d+):", t)
node, alive, n, top = int(peak.group(1)), float(peak.group(2)), int(peak.group(3)), int(peak.group(4))
rows = re.findall(r"^    (\S+)\s+(\S+)\s+(\[[\d,]+\](?: rows)?)\s+([\d.]+)\s+(\d+)\.\.(\d+)$", t, re.M)
assert top == min(6, n) and len(rows) == top, (top, n, rows)
assert abs(alive - lb) < 1e-3 and abs(lb - bound) < 1e-3, (alive, lb, bound)
assert lb <= arena + 1e-3, (lb, arena)
sizes = [float(r[3]) for r in rows]
assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0, sizes
assert sum(sizes) <= alive + 1e-3, (sum(sizes), alive)
for r in rows:
    assert int(r[4]) <= node <= int(r[5]), ("not alive at the peak", r, node)
print("device arena %.3f MiB, peak %.3f MiB at node %d: %s" % (arena, alive, node, rows[0]))
PY
done
expect_error "--memory takes a count" "$MOEC" plan "$MODEL" --memory 0
expect_error "--memory goes with the text format" "$MOEC" plan "$MODEL" --memory --format json
finish
