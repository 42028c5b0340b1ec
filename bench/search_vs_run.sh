#!/bin/sh
# search_vs_run.sh MOEC MODEL.moe DEVICES [MESH] [PROFILE.json]: `moec plan --search`'s
# ranking against runs. Every candidate the search ranks whose predicted step differs from
# the one above it (ties are one entry) down to the TOP (default 3)rd distinct prediction,
# and the last-ranked candidate, run STEPS steps (default 8; the median step, the first left out) with --devices DEVICES
# in-process; prints predicted and measured ms per step and whether the measured order
# agrees with the predicted one pair by pair. ROUNDS (default 1) repeats each run (the
# best of them is taken).
set -eu
MOEC=$1
MODEL=$2
P=$3
MESH=${4:-}
PROFILE=${5:-}
TOP=${TOP:-3}
STEPS=${STEPS:-8}
ROUNDS=${ROUNDS:-1}
W=$(mktemp -d "${TMPDIR:-/tmp}/moec_search.XXXXXX")
trap 'rm -rf "$W"' EXIT
set -- --devices "$P"
[ -n "$MESH" ] && set -- "$@" --mesh "$MESH"
[ -n "$PROFILE" ] && set -- "$@" --profile "$PROFILE"
"$MOEC" plan "$MODEL" --search "$@" --top 100 >"$W/search"
# the ranked rows: rank strategy experts mesh recompute step_ms ...
awk '$1 ~ /^[0-9]+$/ && NF >= 6 { print $1, $2, $3, $4, $5, $6 }' "$W/search" >"$W/rows"
awk -v top="$TOP" '
  { if ($6 != last) { n++; last = $6; if (n <= top) print } ; final = $0 }
  END { print final }' "$W/rows" | sort -u -n -k1,1 >"$W/pick"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-14s %-12s %-5s %-10s %10s %10s\n' rank strategy experts mesh recompute \
  "pred ms" "meas ms"
: >"$W/table"
while read -r rank strategy experts mesh recompute pred; do
  best=""
  r=0
  while [ "$r" -lt "$ROUNDS" ]; do
    "$MOEC" run "$MODEL" --devices "$P" --mesh "$mesh" --strategy "$strategy" \
      --experts "$experts" --recompute "$recompute" --steps "$STEPS" --no-eval --quiet \
      --json >"$W/run.json" 2>"$W/err" || { cat "$W/err"; exit 1; }
    ms=$(python3 -c "
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(r['step_ms_median'])" "$W/run.json")
    best=$(python3 -c "import sys; a=sys.argv[1]; print(min(float(a), float(sys.argv[2])) if a else sys.argv[2])" "$best" "$ms")
    r=$((r + 1))
  done
  printf '%-5s %-14s %-12s %-5s %-10s %10s %10.2f\n' "$rank" "$strategy" "$experts" "$mesh" \
    "$recompute" "$pred" "$best" | tee -a "$W/table"
done <"$W/pick"
python3 - "$W/table" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
pred = [float(r[5]) for r in rows]
meas = [float(r[6]) for r in rows]
pairs = agree = 0
for i in range(len(rows)):
    for j in range(i + 1, len(rows)):
        if pred[i] == pred[j]:
            continue
        pairs += 1
        agree += (pred[i] < pred[j]) == (meas[i] < meas[j])
print("pairs ordered as predicted: %d of %d" % (agree, pairs))
PY
