#!/bin/sh
# test_options.sh MOEC EXAMPLES_DIR: every train/plan setting can be varied from the command
# line, the run echoes what it used, and check/plan refuse what run refuses.
set -eu
MOEC=$1
EX=$2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PY=${MOEC_PYTHON:-python3}
fail() { echo "FAIL: $*"; exit 1; }

# --version names the version and the build's features
"$MOEC" --version >"$W/v" || fail "--version exits non-zero"
grep -q '^moec [0-9]' "$W/v" || fail "--version: no version line: $(cat "$W/v")"
grep -q '^features: .*cpu' "$W/v" || fail "--version: no features line"

# flags reach the run, and its JSON echoes every effective setting
"$MOEC" run "$EX/lm_moe32.moe" --data "synthetic(topics=4, vocab=512, seed=2)" --batch 16 --unroll 10 \
  --lr 3e-3 --strategy data_parallel --devices 2 --steps 3 --seed 7 --clip 2.5 \
  --set train.eval_every=2 --json >"$W/run.json" 2>"$W/run.err" || fail "run: $(cat "$W/run.err")"
$PY - "$W/run.json" <<'PY' || fail "run --json does not echo the flags"
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
t, p = j["settings"]["train"], j["settings"]["plan"]
want = {("train", "batch"): 16, ("train", "unroll"): 10, ("train", "steps"): 3,
        ("train", "seed"): 7, ("train", "clip"): 2.5, ("train", "eval_every"): 2,
        ("plan", "devices"): 2, ("plan", "strategy"): "data_parallel"}
for (blk, k), v in want.items():
    got = (t if blk == "train" else p)[k]
    assert got == v, f"{blk}.{k} = {got!r}, want {v!r}"
assert abs(t["optimizer"]["lr"] - 3e-3) < 1e-12, t["optimizer"]
assert t["data"]["kind"] == "synthetic", t["data"]
assert j["devices"] == 2 and j["steps"] == 3 and len(j["memory"]) == 2, j
PY

# a file's plan { devices = N } is what run runs, unless --devices says otherwise
{ cat "$EX/lm_moe32.moe"; printf "plan {\n  devices = 2\n}\n"; } >"$W/two.moe"
grep -q 'devices = 2' "$W/two.moe" || fail "could not write a plan { devices = 2 } file"
for want in 2 1; do
  if [ $want = 2 ]; then set --; else set -- --devices 1; fi
  "$MOEC" run "$W/two.moe" --steps 1 --no-eval --json "$@" >"$W/d.json" 2>"$W/d.err" ||
    fail "run of plan { devices = 2 }: $(cat "$W/d.err")"
  tail -n 1 "$W/d.json" | grep -q "\"devices\":$want," || fail "expected $want devices"
done

# unknown settings and bad values are located errors under the flag, from run and check alike
for cmd in run check plan; do
  if "$MOEC" $cmd "$EX/lm_moe32.moe" --set train.bogus=3 >"$W/o" 2>"$W/e"; then
    fail "$cmd accepted --set train.bogus=3"
  fi
  grep -q "unknown train setting 'bogus'" "$W/e" || fail "$cmd: $(cat "$W/e")"
  grep -q '\^' "$W/e" || fail "$cmd: no caret"
done

# an indivisible batch is an error in plan, as in run
for cmd in plan run; do
  if "$MOEC" $cmd "$EX/lm_moe32.moe" --devices 3 --steps 1 >"$W/o" 2>"$W/e"; then
    fail "$cmd accepted 3 devices for batch 32"
  fi
  grep -q 'does not split evenly over 3 devices' "$W/e" || fail "$cmd --devices 3: $(cat "$W/e")"
done

# moec ir --after shard --device R prints that device's graph (its share of the experts)
"$MOEC" ir "$EX/lm_moe32.moe" --after shard --devices 2 --device 1 >"$W/d1" 2>&1 || fail "ir --device 1"
"$MOEC" ir "$EX/lm_moe32.moe" --after shard --devices 2 >"$W/all" 2>&1 || fail "ir global"
grep -q 'm.w1 : f32\[16,' "$W/d1" || fail "device 1 does not hold 16 of 32 experts"
grep -q 'm.w1 : f32\[32,' "$W/all" || fail "the global graph does not hold 32 experts"
echo "options: ok"
