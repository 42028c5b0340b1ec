#!/usr/bin/python3
"""moec_rate.py METRICS TOKENS_PER_STEP WARMUP [DIGITS]: moec's training rate from a
`moec run --metrics` file: tokens a second over the steps after the first WARMUP, from
the step lines' `elapsed` (seconds from the first step's start to the end of that step).
Prints the rate with DIGITS decimals (default 1), or nan with too few steps."""
import json
import sys

path, per_step, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
digits = int(sys.argv[4]) if len(sys.argv) > 4 else 1
rows = [r for r in map(json.loads, open(path)) if r.get("event") == "step"]
if len(rows) <= warmup + 1:
    print("nan")
else:
    a, b = rows[warmup - 1], rows[-1]
    print(f"{(b['step'] - a['step']) * per_step / (b['elapsed'] - a['elapsed']):.{digits}f}")
