#!/bin/sh
# test_plan_search.sh MOEC EXAMPLES: `moec plan --search` on lm_moe256h for 8 devices in
# 2 nodes lists every strategy, both meshes hmoe can use and every recompute choice that
# fits, ranked by predicted step time; the winner it writes as a plan { } block runs; over
# several device counts (--search-devices) too.
# Then the cost model's choices on the command line: a skew makes contiguous slower than
# balanced, --cluster and --profile reach the constants, bad values are refused.
set -eu
MOEC=$1
EX=$2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$MOEC" plan "$EX/lm_moe256h.moe" --search --devices 8 --mesh 2x4 --write-plan "$W/win.moe" \
  >"$W/out" || fail "search"
cat "$W/out"
rows() { grep -E '^ +[0-9]+  ' "$W/out"; }
for s in paper data_parallel hmoe; do
  rows | grep -q "  $s " || fail "no $s row"
done
for r in none auto all; do
  rows | grep -q " $r " || fail "no recompute $r row"
done
rows | grep -q 'hmoe .* 1x8 ' && rows | grep -q 'hmoe .* 2x4 ' || fail "hmoe on both meshes"
rows | awk '{ if (NR > 1 && $6 + 0 < prev) bad = 1; prev = $6 + 0 } END { exit bad }' ||
  fail "not ranked by step time"
[ "$(rows | wc -l)" -ge 18 ] || fail "fewer rows than strategies x policies x recompute"
grep -q '^  strategy = ' "$W/win.moe" && grep -q '^  devices = 8' "$W/win.moe" || fail "plan block"
cat "$EX/lm_moe256h.moe" "$W/win.moe" >"$W/m.moe"
"$MOEC" run "$W/m.moe" --steps 2 --no-eval --quiet >/dev/null || fail "the winner does not run"
# device counts (--search-devices): every count of the list in the table, ranked across
# counts, a line per count under it; the winner's count in its plan block; a budget that
# only the larger counts meet drops the smaller ones by name; counts that are neither a
# node's worth nor whole nodes, or above the plan's devices, are refused
"$MOEC" plan "$EX/lm_moe256h.moe" --search --devices 8 --mesh 2x4 --search-devices 1,2,4,8 \
  --write-plan "$W/wind.moe" >"$W/dev" || fail "search devices"
sed -n '1,/dropped/p' "$W/dev"
drows() { sed -n '/^  rank/,/^$/p' "$W/dev" | grep -E '^ +[0-9]+ +[0-9]+ '; }
for p in 1 2 4 8; do
  drows | awk -v p=$p '$2 == p' | grep -q . || fail "no row on $p devices"
  sed -n '/by device count/,/^$/p' "$W/dev" | grep -qE "^ +$p +[0-9.]+ " || fail "no count line for $p"
done
drows | awk '{ if (NR > 1 && $7 + 0 < prev) bad = 1; prev = $7 + 0 } END { exit bad }' ||
  fail "not ranked by step time across counts"
drows | awk '$2 == 1 && $3 != "paper" { bad = 1 } END { exit bad }' || fail "1 device: one strategy"
drows | awk '$2 == 4 && $5 != "1x4" && $3 != "hmoe" { bad = 1 } END { exit bad }' ||
  fail "4 of a 2x4 mesh: one node"
top=$(drows | head -1 | awk '{ print $2 }')
grep -q "^  devices = $top\$" "$W/wind.moe" || fail "the winner's plan block: devices = $top"
# a budget between the smallest 8-device and the smallest 1-device plan
lo=$(drows | awk '$2 == 8 { if (m == "" || $9 + 0 < m) m = $9 + 0 } END { print m }')
hi=$(drows | awk '$2 == 1 { if (m == "" || $9 + 0 < m) m = $9 + 0 } END { print m }')
awk -v lo="$lo" -v hi="$hi" 'BEGIN { exit !(hi > 1.1 * lo) }' || fail "1 device ($hi MiB) not above 8 ($lo MiB)"
budget=$(awk -v lo="$lo" -v hi="$hi" 'BEGIN { printf "%dMiB", (lo + hi) / 2 }')
"$MOEC" plan "$EX/lm_moe256h.moe" --search --devices 8 --mesh 2x4 --search-devices 1,8 \
  --memory-budget "$budget" >"$W/bud" || fail "search devices with a budget"
sed -n '/by device count/,/^$/p' "$W/bud" | grep -qE '^ +1 .* no candidate fits' ||
  fail "1 device under $budget: no 'no candidate fits' line"
grep -qE '^    1: paper .*budget' "$W/bud" || fail "1 device dropped without the budget named"
for bad in 6 9 0 2,x; do
  if "$MOEC" plan "$EX/lm_moe256h.moe" --search --devices 8 --mesh 2x4 --search-devices $bad \
    >/dev/null 2>"$W/err"; then fail "--search-devices $bad accepted"; fi
  grep -q 'search-devices' "$W/err" || fail "--search-devices $bad: no message"
done
if "$MOEC" plan "$EX/lm_moe256h.moe" --search-devices 2 2>"$W/err"; then fail "without --search"; fi
"$MOEC" plan "$EX/lm_moe32.moe" --search --cluster 2x2xH100:ib --search-devices all >"$W/cl" ||
  fail "cluster, all counts"
grep -q 'on 1, 2 or 4 devices' "$W/cl" || fail "all: 1, 2 and 4 of a 2x2 cluster"
# the top candidates side by side: 3 without --top, one cluster each, titled with rank,
# strategy, policy, mesh, recompute, step time and memory; the table's order; the table
# still printed with -o FILE; json refused
"$MOEC" plan "$EX/lm_moe32.moe" --search --devices 2 --format dot >"$W/s.gv" || fail "search dot"
[ "$(grep -c '^  subgraph cluster_c[0-9]* {' "$W/s.gv")" = 3 ] || fail "3 candidates drawn"
"$MOEC" plan "$EX/lm_moe32.moe" --search --devices 2 >"$W/s.txt"
for r in 1 2 3; do
  want=$(grep -E "^ +$r  " "$W/s.txt" | awk '{ printf "#%s  %s, experts %s, mesh %s, recompute %s\\n%s ms", $1, $2, $3, $4, $5, $6 }')
  grep -qF "label=\"$want a step" "$W/s.gv" || fail "candidate $r: no cluster titled '$want'"
done
grep -q ' MiB a device' "$W/s.gv" || fail "memory in the title"
"$MOEC" plan "$EX/lm_moe32.moe" --search --devices 2 --top 2 --format svg -o "$W/s.svg" >"$W/s2.txt" ||
  fail "search svg"
grep -q '<svg' "$W/s.svg" && [ "$(grep -cE '^ +[0-9]+  ' "$W/s2.txt")" = 2 ] || fail "svg and the table"
if "$MOEC" plan "$EX/lm_moe32.moe" --search --format json 2>"$W/err"; then fail "search json"; fi
grep -q 'not json' "$W/err" || fail "search json message"
# --top and a budget nothing fits
"$MOEC" plan "$EX/lm_moe32.moe" --search --devices 2 --top 2 >"$W/top" || fail "top"
[ "$(grep -cE '^ +[0-9]+  ' "$W/top")" = 2 ] || fail "--top 2"
if "$MOEC" plan "$EX/lm_moe32.moe" --search --devices 2 --memory-budget 1KiB >"$W/none" 2>&1; then
  fail "a budget nothing fits"
fi
grep -q 'no candidate fits' "$W/none" && grep -q 'memory_budget' "$W/none" || fail "why dropped"
# a skew: balanced predicted faster than contiguous, the busiest device named
step() {
  "$MOEC" plan "$EX/lm_moe32.moe" --devices 4 --skew zipf:1.2 --experts "$1" --format json |
    sed -n 's/.*"step_s": \([0-9.e+-]*\).*/\1/p'
}
c=$(step contiguous)
b=$(step balanced)
awk -v c="$c" -v b="$b" 'BEGIN { exit !(b < c) }' || fail "balanced $b not faster than contiguous $c"
"$MOEC" plan "$EX/lm_moe32.moe" --devices 4 --skew zipf:1.2 | grep -q 'busiest: device 0' ||
  fail "busiest device"
"$MOEC" plan "$EX/lm_moe32.moe" --cluster 2x2xH100:ib | grep -q 'nodes of 2' || fail "cluster"
if "$MOEC" plan "$EX/lm_moe32.moe" --skew zipf:x 2>"$W/err"; then fail "bad skew"; fi
grep -q 'zipf:S' "$W/err" || fail "skew message"
echo '{"nothing": 1}' >"$W/bad.json"
if "$MOEC" plan "$EX/lm_moe32.moe" --profile "$W/bad.json" 2>"$W/err"; then fail "bad profile"; fi
grep -q 'not a moec calibrate profile' "$W/err" || fail "profile message"
echo ok
