#!/bin/sh
# test_multidev.sh MOEC CASE: the multi-device invariant: the same file and
# seed give the same losses (relative 1e-5 over 20 steps) on 1, 2, 3 and 4 in-process
# devices and on 2 and 4 MPI ranks, under the paper strategy (contiguous and
# round_robin experts) and data_parallel; hmoe layers (also under strategy hmoe) and
# batchwise gating with their aux losses; checkpoints saved on 4 devices load on 1
# and 2 with the same eval loss; in double precision (--f64) 1..4 devices agree to
# double rounding; place ... : on(...) device subsets; the error cases. Exit 77
# (skipped) without mpirun.
# CASE: paper | round_robin | data_parallel | hmoe | batchwise | balanced | mpi | reshard |
# f64 | errors | subsets | subsets_mpi | factored | memory | hmoe_factored | hmoe_memory |
# sampled | capacity | tables
set -u
MOEC=$1
CASE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

model() { # model STRATEGY EXPERTS [FILE [PLAN LINE]] -> $W/m.moe
  cp "$HERE/multidev/${3:-md_small}.moe" "$W/m.moe"
  printf 'plan {\n  strategy = %s\n  experts = %s\n%b}\n' "$1" "$2" "${4:-}" >>"$W/m.moe"
}
losses() { # losses TAG CMD... -> $W/TAG.loss (one loss per step)
  tag=$1
  shift
  "$@" --quiet --metrics "$W/$tag.metrics" >"$W/$tag.out" 2>&1
  rc=$?
  [ $rc -eq 0 ] || { cat "$W/$tag.out"; fail "$tag: exit status $rc"; }
  grep '"event":"step"' "$W/$tag.metrics" | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\2/' >"$W/$tag.loss"
  grep '"event":"step"' "$W/$tag.metrics" | sed 's/.*"aux":\([^,]*\),.*/\1/' >"$W/$tag.aux"
  [ "$(wc -l <"$W/$tag.loss")" -eq 20 ] || fail "$tag: expected 20 step losses"
}
same() { # same REF TAG [TOL [STEPS]]: relative difference at most TOL (1e-5) at every
  # step (the first STEPS steps)
  paste "$W/$1.loss" "$W/$2.loss" | head -n "${4:-20}" | awk -v a="$1" -v b="$2" -v t="${3:-1e-5}" '
    { d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r; n++ }
    END { printf "%s vs %s: max relative difference %.3g over %d steps\n", a, b, m, n
          exit !(m <= t + 0) }' ||
    fail "$2 differs from $1"
}
same_aux() { # same_aux REF TAG [TOL]: the aux losses too (they pass near 0: relative to
  # max(|aux|, 0.01)); TOL default 1e-5
  paste "$W/$1.aux" "$W/$2.aux" | awk -v a="$1" -v b="$2" -v t="${3:-1e-5}" '
    { d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1; if (s < 0.01) s = 0.01; r = d / s; if (r > m) m = r }
    END { printf "%s vs %s: aux max relative difference %.3g\n", a, b, m; exit !(m <= t) }' ||
    fail "$2's aux loss differs from $1's"
}
mpi_env() {
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
    timeout 120 mpirun --oversubscribe -np "$@"
}

same_1_234() { # same_1_234: $W/m.moe's losses and aux losses on 2, 3 and 4 devices are
  # one device's ($W/d1 ... d4)
  losses d1 "$MOEC" run "$W/m.moe"
  for p in 2 3 4; do
    losses d$p "$MOEC" run "$W/m.moe" --devices $p
    same d1 d$p
    same_aux d1 d$p
  done
}
same_eval() { # same_eval MODEL REF.safetensors CK.safetensors WHAT: moec eval of both
  # checkpoints gives the same test loss (relative 1e-5)
  er=$("$MOEC" eval "$1" --load "$2" --json | sed 's/.*"test_loss":\([^,}]*\).*/\1/')
  ec=$("$MOEC" eval "$1" --load "$3" --json | sed 's/.*"test_loss":\([^,}]*\).*/\1/')
  echo "$4: eval loss $ec, reference $er"
  awk -v a="$er" -v b="$ec" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d / a <= 1e-5) }' ||
    fail "$4: evaluates differently ($ec vs $er)"
}
ck_4_eq_1() { # ck_4_eq_1 TAG: $W/m.moe saved on 4 devices ($W/TAG4.safetensors) evaluates
  # as trained on 1 ($W/TAG1.safetensors), to 1e-5
  "$MOEC" run "$W/m.moe" --devices 4 --quiet --save "$W/${1}4.safetensors" >"$W/s4.out" 2>&1 ||
    { cat "$W/s4.out"; fail "$1: save on 4 devices"; }
  "$MOEC" run "$W/m.moe" --quiet --save "$W/${1}1.safetensors" >"$W/s1.out" 2>&1 || fail "$1: save on 1"
  same_eval "$W/m.moe" "$W/${1}1.safetensors" "$W/${1}4.safetensors" "$1: a checkpoint saved on 4 devices"
}

mem_falls() { # mem_falls TAG [factored]: $W/m.moe's memory per device on 1, 2, 4 devices
  # (`moec run --json`) = the plan's, falling with P; its eval losses = one device's
  [ "${2:-}" = factored ] && sed -i 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/m.moe"
  for p in 1 2 4; do
    "$MOEC" run "$W/m.moe" --devices $p --json --quiet >"$W/run$p.json" 2>"$W/run$p.err" ||
      { cat "$W/run$p.err"; fail "$1: run on $p devices"; }
    "$MOEC" plan "$W/m.moe" --devices $p --format json >"$W/plan$p.json" ||
      fail "$1: plan on $p devices"
  done
  /usr/bin/python3 - "$W" "$1" <<'PY' || fail "$1: memory per device"
import json, sys
w, opt = sys.argv[1], sys.argv[2]
prev = None
for p in (1, 2, 4):
    run = json.load(open(f"{w}/run{p}.json"))
    plan = json.load(open(f"{w}/plan{p}.json"))
    mem, dev = run["memory"], plan["per_device"]
    assert len(mem) == p and len(dev) == p, (len(mem), len(dev))
    for m, d in zip(mem, dev):
        for a, b in (("param_bytes", "param_allocated_bytes"),
                     ("optimizer_bytes", "optimizer_allocated_bytes"),
                     ("persist_bytes", "persist_bytes"), ("arena_bytes", "arena_bytes")):
            assert m[a] == d[b], (opt, p, m["device"], a, m[a], b, d[b])
    top = max(m["param_bytes"] for m in mem)
    print(f"{opt} {p} devices: params {top} bytes, params+grads+optimizer "
          f"{max(m['model_bytes'] for m in mem)} bytes per device (= the plan's)")
    assert prev is None or top < prev, (opt, p, top, prev)
    prev = top
    if p == 1:
        ppl1 = run["test_ppl"], run["valid_ppl"]
    else:
        for a, b in zip(ppl1, (run["test_ppl"], run["valid_ppl"])):
            assert abs(a - b) <= 1e-5 * a, (opt, p, "eval", a, b)
PY
}

case $CASE in
paper | round_robin | data_parallel)
  if [ "$CASE" = round_robin ]; then model paper round_robin; else model "$CASE" contiguous; fi
  losses d1 "$MOEC" run "$W/m.moe"
  for p in 2 3 4; do
    losses d$p "$MOEC" run "$W/m.moe" --devices $p
    same d1 d$p
  done
  if [ "$CASE" != data_parallel ]; then # the dispatch really crossed devices
    "$MOEC" ir "$W/m.moe" --after comm --devices 2 | grep -q 'all_to_all(' ||
      fail "no all_to_all in the placed graph"
  fi
  ;;
hmoe)
  # hierarchical MoE (4 groups of 3 experts): aux over the global batch, group experts
  # sharded by every strategy that applies, groups whole under hmoe (mesh: within a node)
  model paper contiguous md_hmoe
  losses d1 "$MOEC" run "$W/m.moe"
  for s in paper:contiguous:234 hmoe:round_robin:234 data_parallel:contiguous:24; do
    set -- $(echo "$s" | tr : ' ')
    model "$1" "$2" md_hmoe
    for p in $(echo "$3" | sed 's/./& /g'); do
      losses "h$p" "$MOEC" run "$W/m.moe" --devices $p
      same d1 "h$p"
      same_aux d1 "h$p"
    done
  done
  model hmoe contiguous md_hmoe '  mesh = [2, 2]\n'
  "$MOEC" ir "$W/m.moe" --after comm --devices 4 >"$W/mesh.ir"
  grep -q "m experts on devices: 0 0 0 1 1 1 2 2 2 3 3 3" "$W/mesh.ir" ||
    fail "hmoe on a 2x2 mesh: 4 groups, 2 a node, not one whole group a device"
  # the two-level exchange: each group row once to its group's device (groups=1) with its
  # secondary expert ids and gates in the same exchange, the secondary dispatch and combine
  # there; the expert rows never leave that device
  grep -q 'm.xg@groups, .* = all_to_all(m.xg, m.offsets_g, m.s_gidx, m.s_gates) {.*groups=1' "$W/mesh.ir" &&
    grep -q 'm.yg@batch = all_to_all_back(m.yg, m.offsets_g) {.*groups=1' "$W/mesh.ir" &&
    grep -q 'm.xs@experts, .* = all_to_all(m.xs, m.offsets) {.*}  :.*@m/experts' "$W/mesh.ir" &&
    grep -q 'dispatch(m.xg@groups, m.s_gidx@groups) .*@m/group' "$W/mesh.ir" ||
    fail "hmoe on a 2x2 mesh: no two-level exchange"
  losses mesh "$MOEC" run "$W/m.moe" --devices 4
  same d1 mesh
  same_aux d1 mesh
  # fewer groups than devices (2 groups of 6 on a 2x2 mesh): a group's experts over its
  # node's 2 devices, the expert rows exchanged inside the node; on 1, 2 (groups whole
  # a device) and 4 devices (mesh) the same losses
  cp "$HERE/multidev/md_hmoe2.moe" "$W/g2.moe"
  cp "$W/g2.moe" "$W/m.moe"
  losses g1 "$MOEC" run "$W/m.moe"
  printf 'plan {\n  strategy = hmoe\n  mesh = [2, 2]\n}\n' >>"$W/m.moe"
  "$MOEC" ir "$W/m.moe" --after comm --devices 4 | grep -q "m experts on devices: 0 0 0 1 1 1 2 2 2 3 3 3" ||
    fail "hmoe, 2 groups on a 2x2 mesh: a group not spread over its node"
  "$MOEC" ir "$W/m.moe" --after comm --devices 4 | grep -q "m groups' rows on devices: 0 2" ||
    fail "hmoe, 2 groups on a 2x2 mesh: the group rows not on a device of the group's node"
  losses g4 "$MOEC" run "$W/m.moe" --devices 4
  same g1 g4
  same_aux g1 g4
  cp "$W/g2.moe" "$W/m.moe"
  printf 'plan {\n  strategy = hmoe\n}\n' >>"$W/m.moe"
  losses g2 "$MOEC" run "$W/m.moe" --devices 2
  same g1 g2
  same_aux g1 g2
  model paper contiguous md_hmoe
  "$MOEC" ir "$W/m.moe" --after comm --devices 2 | grep -q 'm.load_groups@sum = all_reduce' ||
    fail "no all_reduce of the group loads"
  # a checkpoint saved on 4 devices (group experts gathered) evaluates as on 1
  ck_4_eq_1 h
  ;;
batchwise)
  # batchwise gating: every expert takes the top m rows of the global batch
  model paper contiguous md_batchwise
  losses d1 "$MOEC" run "$W/m.moe"
  for s in paper:contiguous:234 paper:round_robin:3 data_parallel:contiguous:24; do
    set -- $(echo "$s" | tr : ' ')
    model "$1" "$2" md_batchwise
    for p in $(echo "$3" | sed 's/./& /g'); do
      losses "b$p" "$MOEC" run "$W/m.moe" --devices $p
      same d1 "b$p"
      # data_parallel sums the expert gradients per device first: the global clipping
      # scale differs in the last bits, and Adam turns that into a visible step of the
      # thresholds once their gradient alternates in sign (docs/multidev.md); the
      # threshold loss in aux shows it first (measured 3.4e-5 on 4 devices)
      if [ "$1" = data_parallel ]; then same_aux d1 "b$p" 1e-4; else same_aux d1 "b$p"; fi
    done
  done
  model paper contiguous md_batchwise
  "$MOEC" ir "$W/m.moe" --after comm --devices 2 | grep -q 'all_gather_topm(m.scores, m.thresholds)' ||
    fail "no all_gather_topm in the placed graph"
  # the inference thresholds trained on 4 devices are those of 1: the same eval loss
  # (evaluation routes by the thresholds)
  ck_4_eq_1 b
  ;;
balanced)
  # experts = balanced from a previous run's per-expert loads (--metrics "load": [...])
  model paper balanced
  losses d1 "$MOEC" run "$W/m.moe"
  grep -q '"load":\[' "$W/d1.metrics" || fail "no per-expert loads in the metrics"
  for p in 2 4; do
    losses b$p "$MOEC" run "$W/m.moe" --devices $p --loads "$W/d1.metrics"
    same d1 b$p
  done
  "$MOEC" plan "$W/m.moe" --devices 4 --loads "$W/d1.metrics" | grep -q "no measured loads" &&
    fail "moec plan did not take the loads of the metrics file"
  ;;
sampled)
  # a sampled softmax and an embedding over 2048 words: their gradients' touched rows are
  # exchanged (sparse_all_reduce), not the dense [V, D] gradients; the same losses, and
  # the same exact evaluation, on 1..4 devices (and 2 MPI ranks when mpirun is there)
  model paper contiguous md_sampled
  "$MOEC" ir "$W/m.moe" --after comm --devices 2 >"$W/ir.txt" || fail "sampled: moec ir"
  for p in emb.weight loss.weight loss.bias; do
    grep -q "all_reduce.*$p\.grad" "$W/ir.txt" && fail "sampled: $p's gradient all-reduced dense"
  done
  [ "$(grep -c '= sparse_all_reduce(' "$W/ir.txt")" -eq 3 ] ||
    fail "sampled: expected 3 sparse_all_reduce nodes (emb.weight, loss.weight, loss.bias)"
  same_1_234
  if command -v mpirun >/dev/null 2>&1; then
    losses mpi2 mpi_env 2 "$MOEC" run "$W/m.moe"
    same d1 mpi2
  fi
  mem_falls sampled
  ;;
capacity)
  # moe(capacity=0.8): the drop decision is the global batch's (every device's routes
  # gathered), so the losses on 1..4 devices (and 2 MPI ranks) are one device's; routes
  # are dropped and reported; the expert-row buffers shrink to the capacity (run = plan)
  model paper contiguous
  sed -i 's/hidden=32)/hidden=32, capacity=0.8)/' "$W/m.moe"
  grep -q 'capacity=0.8' "$W/m.moe" || fail "capacity: the model has no capacity"
  "$MOEC" ir "$W/m.moe" --after comm --devices 2 | grep -q 'capacity(m.idx, m.idx@all)' ||
    fail "capacity: no all_gather_rows before the capacity op"
  losses d1 "$MOEC" run "$W/m.moe"
  grep '"event":"step"' "$W/d1.metrics" | tail -1 | grep -q '"dropped":0\.[0-9]*[1-9]' ||
    fail "capacity: no dropped routes reported"
  for p in 2 3 4; do
    losses d$p "$MOEC" run "$W/m.moe" --devices $p
    same d1 d$p
    same_aux d1 d$p
  done
  if command -v mpirun >/dev/null 2>&1; then
    losses mpi2 mpi_env 2 "$MOEC" run "$W/m.moe"
    same d1 mpi2
  fi
  "$MOEC" run "$W/m.moe" --devices 4 --json --quiet >"$W/cap.json" 2>&1 || fail "capacity: run"
  model paper contiguous
  "$MOEC" run "$W/m.moe" --devices 4 --expert-headroom 4 --json --quiet >"$W/nocap.json" 2>&1 || fail "no capacity"
  /usr/bin/python3 - "$W" <<'PY' || fail "capacity: expert rows not sized by the capacity"
import json, sys
w = sys.argv[1]
cap, nocap = (json.loads(open(f"{w}/{f}.json").read().strip().splitlines()[-1])["memory"]
              for f in ("cap", "nocap"))
a, b = max(m["arena_bytes"] for m in cap), max(m["arena_bytes"] for m in nocap)
print(f"arena per device on 4 devices: {a} bytes with capacity=0.8, {b} without")
assert a < b, (a, b)
PY
  mem_falls capacity
  ;;
mpi)
  command -v mpirun >/dev/null 2>&1 || { echo "SKIP: mpirun not found"; exit 77; }
  for s in paper:contiguous paper:round_robin data_parallel:contiguous; do
    model "${s%%:*}" "${s##*:}"
    losses d1 "$MOEC" run "$W/m.moe"
    for p in 2 4; do
      losses mpi$p mpi_env $p "$MOEC" run "$W/m.moe"
      same d1 mpi$p
    done
  done
  # hmoe (groups whole) and batchwise gating on 2 MPI ranks
  for s in hmoe:md_hmoe paper:md_batchwise; do
    model "${s%%:*}" contiguous "${s##*:}"
    losses d1 "$MOEC" run "$W/m.moe"
    losses mpi2 mpi_env 2 "$MOEC" run "$W/m.moe"
    same d1 mpi2
    same_aux d1 mpi2
  done
  model paper contiguous
  # a checkpoint saved by 2 ranks (factored optimizer: experts and moments gathered from
  # their owners through the MPI communicator) evaluates like one device's
  model paper round_robin
  sed -i 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/m.moe"
  mpi_env 2 "$MOEC" run "$W/m.moe" --quiet --save "$W/ckm.safetensors" >"$W/sm.out" 2>&1 ||
    { cat "$W/sm.out"; fail "save on 2 MPI ranks"; }
  "$MOEC" run "$W/m.moe" --quiet --save "$W/ck1.safetensors" >"$W/s1.out" 2>&1 || fail "save on 1"
  same_eval "$W/m.moe" "$W/ck1.safetensors" "$W/ckm.safetensors" "a checkpoint saved by 2 MPI ranks"
  model paper contiguous
  # inconsistent files across ranks: one rank trains another seed
  sed 's/seed = 3/seed = 4/' "$W/m.moe" >"$W/other.moe"
  out=$(mpi_env 1 "$MOEC" run "$W/m.moe" --quiet : -np 1 "$MOEC" run "$W/other.moe" --quiet 2>&1) &&
    fail "ranks with different files ran"
  echo "$out" | grep -q "inconsistent model file and settings hash across ranks" ||
    fail "different files: $out"
  # a rank killed mid-training: the job ends (non-zero) within a bounded time
  t0=$(date +%s)
  mpi_env 1 "$MOEC" run "$W/m.moe" --steps 1000000 --quiet : -np 1 \
    timeout -s KILL 2 "$MOEC" run "$W/m.moe" --steps 1000000 --quiet >"$W/dead.out" 2>&1 &&
    fail "a job with a killed rank exited 0"
  t=$(($(date +%s) - t0))
  echo "killed rank: the job ended after ${t}s"
  [ "$t" -lt 60 ] || fail "a killed rank: the job took ${t}s to end"
  # ... and when mpirun is told not to end the job (OpenMPI 4.1's mpirun then never ends
  # a job with a rank killed by a signal): the survivors' watchdogs end it, MPI_Abort
  t0=$(date +%s)
  MOEC_COMM_TIMEOUT=2 mpi_env 2 --mca orte_abort_on_non_zero_status 0 \
    "$MOEC" run "$W/m.moe" --steps 1000000 --quiet : -np 1 \
    timeout -s KILL 6 "$MOEC" run "$W/m.moe" --steps 1000000 --quiet >"$W/dead0.out" 2>&1
  rc=$?
  t=$(($(date +%s) - t0))
  echo "killed rank, orte_abort_on_non_zero_status 0: exit $rc after ${t}s"
  [ $rc -ne 0 ] || { cat "$W/dead0.out"; fail "a job with a killed rank exited 0"; }
  [ $rc -ne 124 ] || fail "a killed rank, mpirun told not to end the job: still running after 120 s"
  [ "$t" -lt 40 ] || fail "a killed rank, abort_on_non_zero_status 0: the job took ${t}s to end"
  # (on a loaded machine the kill may land while the ranks still start: then the
  # start-up watchdog, at least 30 s, ends the job)
  grep -Eq "timed out after 2 s \(a peer rank probably died\)|MPI start-up: .* timed out after" \
    "$W/dead0.out" || { cat "$W/dead0.out"; fail "no watchdog error from the survivors"; }
  ;;
reshard)
  model paper contiguous
  ck_4_eq_1 ck
  # resume the 4-device checkpoint on 1 and 2 devices: the same next losses
  sed -i 's/steps = 20/steps = 40/' "$W/m.moe"
  losses r1 "$MOEC" run "$W/m.moe" --load "$W/ck4.safetensors"
  losses r2 "$MOEC" run "$W/m.moe" --load "$W/ck4.safetensors" --devices 2
  same r1 r2
  losses r4 "$MOEC" run "$W/m.moe" --load "$W/ck1.safetensors" --devices 4
  same r1 r4
  ;;
f64)
  # --f64: the same computation in double. 1..4 devices then agree to double rounding,
  # so what separates float32 runs on different device counts is summation order
  # (docs/multidev.md, "Equivalence in practice")
  model paper contiguous
  losses d1 "$MOEC" run "$W/m.moe"
  losses x1 "$MOEC" run "$W/m.moe" --f64
  same d1 x1 # float32 and float64: the same training (measured 8e-8)
  for p in 2 3 4; do
    losses x$p "$MOEC" run "$W/m.moe" --f64 --devices $p
    same x1 x$p 1e-10
  done
  # the paper's example (adam lr 1e-2, ReLU experts, 20 steps): double to 1e-10 on 1, 2
  # and 4 devices; float32 1 vs 2 within 1e-5 over 20 steps, 1 vs 4 over the first 10
  # (later a near-zero ReLU input lands on the other side of 0: measured 1.6e-5)
  ex="$HERE/../examples/lm_moe32.moe"
  losses l1 "$MOEC" run "$ex" --steps 20 --f64
  for p in 2 4; do
    losses l$p "$MOEC" run "$ex" --steps 20 --f64 --devices $p
    same l1 l$p 1e-10
  done
  losses f1 "$MOEC" run "$ex" --steps 20
  losses f2 "$MOEC" run "$ex" --steps 20 --devices 2
  same f1 f2
  losses f4 "$MOEC" run "$ex" --steps 20 --devices 4
  same f1 f4 1e-5 10
  out=$("$MOEC" run "$W/m.moe" --f64 --save "$W/x.safetensors" 2>&1) && fail "--f64 --save ran"
  echo "$out" | grep -q "cannot --save or --load" || fail "--f64 --save: $out"
  ;;
errors)
  model paper contiguous
  out=$("$MOEC" run "$W/m.moe" --devices 5 2>&1) && fail "batch 12 on 5 devices ran"
  echo "$out" | grep -q "batch 12 does not split evenly over 5 devices" || fail "5 devices: $out"
  sed 's/batch = 12/batch = 2/' "$W/m.moe" >"$W/b2.moe"
  out=$("$MOEC" run "$W/b2.moe" --devices 4 2>&1) && fail "batch 2 on 4 devices ran"
  echo "$out" | grep -q "each device needs at least one row" || fail "4 devices, batch 2: $out"
  sed 's/experts=8/experts=2/' "$W/m.moe" >"$W/e2.moe"
  out=$("$MOEC" run "$W/e2.moe" --devices 4 2>&1) && fail "2 experts on 4 devices ran"
  echo "$out" | grep -q "has 2 experts for 4 devices" || fail "2 experts on 4 devices: $out"
  sed 's/m = moe(h1, experts=8, k=2/m = hmoe(h1, groups=2, experts=4, k_group=1, k=2, gating=batchwise/' \
    "$W/m.moe" >"$W/hbw.moe"
  out=$("$MOEC" run "$W/hbw.moe" --devices 2 2>&1) && fail "hmoe with batchwise gating ran"
  echo "$out" | grep -q "hbw.moe:[0-9]*:[0-9]*: error: hmoe does not support gating = batchwise" ||
    fail "hmoe batchwise: $out"
  "$MOEC" check "$W/hbw.moe" >/dev/null 2>&1 && fail "check accepts hmoe with batchwise gating"
  ;;
factored)
  # the factored optimizer (appendix D) with sharded experts: [E, a, b] weights are E
  # matrices (moments sharded with them), [E, H] biases factored over all experts (kept
  # whole); the losses of one device, under data_parallel too; and a factored checkpoint
  # saved on 4 devices resumes on 1 and 2
  model paper round_robin
  sed -i 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/m.moe"
  losses fa1 "$MOEC" run "$W/m.moe"
  for p in 2 3 4; do
    losses fa$p "$MOEC" run "$W/m.moe" --devices $p
    same fa1 fa$p
  done
  sed 's/strategy = paper/strategy = data_parallel/' "$W/m.moe" >"$W/fadp.moe"
  losses dp2 "$MOEC" run "$W/fadp.moe" --devices 2
  same fa1 dp2
  "$MOEC" run "$W/m.moe" --devices 4 --quiet --save "$W/fa4.safetensors" >"$W/s4.out" 2>&1 ||
    { cat "$W/s4.out"; fail "factored: save on 4 devices"; }
  sed -i 's/steps = 20/steps = 40/' "$W/m.moe"
  losses fr1 "$MOEC" run "$W/m.moe" --load "$W/fa4.safetensors"
  losses fr2 "$MOEC" run "$W/m.moe" --load "$W/fa4.safetensors" --devices 2
  same fr1 fr2
  ;;
memory)
  # each device allocates only its experts' parameters, gradients and optimizer state:
  # the memory `moec run --json` reports per device falls from 1 to 2 to 4 devices and
  # equals what `moec plan` prints for each device (parameters, optimizer, persistent,
  # arena); the eval losses (on the N-device program) are one device's
  for opt in adam factored; do
    model paper round_robin
    mem_falls $opt $opt
  done
  ;;
hmoe_factored)
  # the factored optimizer with hmoe groups sharded (each device its experts' rows of
  # every group; [Eg, H] biases factored over the group's experts, kept whole): one
  # device's losses under paper and hmoe; a checkpoint saved on 4 devices (rows and
  # moments gathered) resumes on 1 and 2 (sliced) with the same losses
  for s in paper:contiguous:234 hmoe:round_robin:4; do
    set -- $(echo "$s" | tr : ' ')
    model "$1" "$2" md_hmoe
    sed -i 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/m.moe"
    losses hf1 "$MOEC" run "$W/m.moe"
    for p in $(echo "$3" | sed 's/./& /g'); do
      losses "hf$p" "$MOEC" run "$W/m.moe" --devices $p
      same hf1 "hf$p"
      same_aux hf1 "hf$p"
    done
  done
  model paper round_robin md_hmoe
  sed -i 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/m.moe"
  "$MOEC" run "$W/m.moe" --devices 4 --quiet --save "$W/hf4.safetensors" >"$W/s4.out" 2>&1 ||
    { cat "$W/s4.out"; fail "hmoe factored: save on 4 devices"; }
  sed -i 's/steps = 20/steps = 40/' "$W/m.moe"
  losses hr1 "$MOEC" run "$W/m.moe" --load "$W/hf4.safetensors"
  losses hr2 "$MOEC" run "$W/m.moe" --load "$W/hf4.safetensors" --devices 2
  same hr1 hr2
  ;;
hmoe_memory)
  # the same for hmoe groups: each device allocates only its experts' rows of
  # every group (paper) or only its groups (strategy hmoe); the plan says so
  for s in paper:contiguous:adam hmoe:round_robin:adam hmoe:contiguous:factored; do
    set -- $(echo "$s" | tr : ' ')
    model "$1" "$2" md_hmoe
    mem_falls "$1 $3" $3
  done
  ;;
subsets | subsets_mpi)
  # place ... : on(...) device subsets: experts on part of the devices (the all_to_all
  # reaches only theirs), dense layers on part of them (reshard of rows in batch order,
  # and of their gradients back; their parameters' all_reduce over those devices only),
  # a whole moe layer on two devices, mixed rules on 3 devices, single-device sets on 2.
  # The rules do nothing on 1 device, so 1 device is the reference. MPI: ex, dense,
  # layer on 4 ranks (ex: ranks 2, 3 hold none of the experts, E_r = 0), one2 on 2.
  sub() { # sub TAG DEVICES RULE... -> $W/TAG.moe
    tag=$1
    nd=$2
    shift 2
    cp "$HERE/multidev/md_small.moe" "$W/$tag.moe"
    { printf 'plan {\n  devices = %s\n' "$nd"; for r in "$@"; do printf '  place %s\n' "$r"; done; printf '}\n'; } >>"$W/$tag.moe"
  }
  sub ex 4 'm.experts : on(0, 1)'
  sub dense 4 'loss : on(1, 2)'
  sub layer 4 'm : on(2, 3)'
  sub mix3 3 'm.experts : on(1, 2)' 'loss : on(0, 2)'
  sub one2 2 'm.experts : on(0)' 'loss : on(1)'
  losses d1 "$MOEC" run "$W/ex.moe"
  if [ "$CASE" = subsets_mpi ]; then
    command -v mpirun >/dev/null 2>&1 || { echo "SKIP: mpirun not found"; exit 77; }
    for t in ex dense layer; do
      losses mpi_$t mpi_env 4 "$MOEC" run "$W/$t.moe"
      same d1 mpi_$t
    done
    losses mpi_one2 mpi_env 2 "$MOEC" run "$W/one2.moe"
    same d1 mpi_one2
    echo "ok: $CASE"
    exit 0
  fi
  for t in ex dense layer; do
    losses $t "$MOEC" run "$W/$t.moe" --devices 4
    same d1 $t
  done
  losses mix3 "$MOEC" run "$W/mix3.moe" --devices 3
  same d1 mix3
  losses one2 "$MOEC" run "$W/one2.moe" --devices 2
  same d1 one2
  # the plan: m's experts only on devices 0 and 1; no reshard when only experts move
  "$MOEC" plan "$W/ex.moe" --devices 4 --format json | grep -q '"m": \[0, 0, 0, 0, 1, 1, 1, 1\]' ||
    fail "ex: the experts are not on devices 0 and 1"
  "$MOEC" plan "$W/ex.moe" --devices 4 | grep -q ' reshard ' && fail "ex: a reshard"
  # reshard bytes: the runtime moves exactly the plan's expected bytes, and they are the
  # closed form. dense: rows from all 4 devices (3 each) to {1, 2} (6 each): device 1 takes
  # rows 0-5 (0-2 from device 0), device 2 rows 6-11 (9-11 from device 3): half of the
  # B*T rows of r1 (D = 16 floats), of its gradient and of the targets (1 int32) move:
  # per step B*T*(16*4 + 16*4 + 4)/2 = 12*5*132/2 = 3960 bytes
  plan=$("$MOEC" plan "$W/dense.moe" --devices 4 --format json | tr -d ' \n' |
    grep -o '"op":"reshard"[^}]*"expected":[0-9]*' | sed 's/.*"expected"://' | awk '{ s += $1 } END { print s }')
  [ "$plan" = 3960 ] || fail "dense: the plan's reshard bytes per step are $plan, not 3960"
  ran=$("$MOEC" run "$W/dense.moe" --devices 4 --json --quiet 2>/dev/null |
    sed 's/.*"reshard":{[^}]*"sent_bytes":\([0-9.]*\).*/\1/')
  [ "$ran" = 3960 ] || fail "dense: the runtime moved $ran reshard bytes a step, not 3960"
  echo "reshard bytes: plan 3960 per step, runtime $ran per step"
  # checkpoints: the softmax trained on devices 1 and 2 is saved by rank 0 (its values and
  # Adam moments from device 1) and evaluates as one device's; resumed on 4, the same losses
  "$MOEC" run "$W/dense.moe" --devices 4 --quiet --save "$W/ck4.safetensors" >"$W/s4.out" 2>&1 ||
    { cat "$W/s4.out"; fail "dense: save on 4 devices"; }
  "$MOEC" run "$W/dense.moe" --quiet --save "$W/ck1.safetensors" >"$W/s1.out" 2>&1 || fail "save on 1"
  same_eval "$W/dense.moe" "$W/ck1.safetensors" "$W/ck4.safetensors" "dense: a checkpoint from 4 devices"
  sed -i 's/steps = 20/steps = 40/' "$W/dense.moe"
  losses r1 "$MOEC" run "$W/dense.moe" --load "$W/ck1.safetensors"
  losses r4 "$MOEC" run "$W/dense.moe" --load "$W/ck4.safetensors" --devices 4
  same r1 r4
  # experts on(0, 1) of 4 under the factored optimizer: devices 2 and 3 hold none of m's
  # experts (E_r = 0); the losses of one device, and a checkpoint saved on 4 evaluates as
  # one device's
  sed 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/ex.moe" >"$W/exf.moe"
  losses exf1 "$MOEC" run "$W/exf.moe"
  losses exf4 "$MOEC" run "$W/exf.moe" --devices 4 --save "$W/exf4.safetensors"
  same exf1 exf4
  "$MOEC" run "$W/exf.moe" --quiet --save "$W/exf1.safetensors" >"$W/sf1.out" 2>&1 || fail "exf: save on 1"
  same_eval "$W/exf.moe" "$W/exf1.safetensors" "$W/exf4.safetensors" "exf: a checkpoint from 4 devices"
  # errors: what device subsets do not support yet
  sub lstm 4 'h1 : on(0, 1)'
  out=$("$MOEC" run "$W/lstm.moe" --devices 4 2>&1) && fail "an LSTM on a device subset ran"
  echo "$out" | grep -q "lstm.moe:[0-9]*:[0-9]*: error: layer 'h1' keeps state from step to step ('h1" ||
    fail "lstm on(0, 1): $out"
  "$MOEC" check "$W/lstm.moe" >/dev/null 2>&1 && fail "check accepts an LSTM on a device subset"
  sub odd 4 'loss : on(0, 1, 2)'
  sed -i 's/batch = 12/batch = 8/' "$W/odd.moe"
  out=$("$MOEC" run "$W/odd.moe" --devices 4 2>&1) && fail "batch 8 over 3 devices ran"
  echo "$out" | grep -q "odd.moe:[0-9]*:[0-9]*: error: .*batch 8 does not split evenly over its 3" ||
    fail "batch 8 on(0, 1, 2): $out"
  "$MOEC" check "$W/odd.moe" >/dev/null 2>&1 && fail "check accepts batch 8 over 3 devices"
  sub twice 4 'loss : on(1, 1)'
  out=$("$MOEC" run "$W/twice.moe" --devices 4 2>&1) && fail "on(1, 1) ran"
  echo "$out" | grep -q "device 1 is listed twice" || fail "on(1, 1): $out"
  ;;
tables)
  # plan.tables = sharded: the embedding's [V, D] table split by rows over the devices
  # (table_gather: ids to their owners, rows back; table_scatter: the rows' gradients to
  # their owners); the same losses on 1..4 devices and 2 MPI ranks, a device holding its
  # rows only (memory = plan, falling with P), checkpoints whole (saved on 4, loaded on 1)
  model paper contiguous md_sampled '  tables = sharded\n'
  "$MOEC" ir "$W/m.moe" --after comm --devices 2 >"$W/ir.txt" || fail "tables: moec ir"
  grep -q '= table_gather(tokens, emb.weight)' "$W/ir.txt" || fail "tables: no table_gather"
  grep -q 'emb.weight.grad@rows = table_scatter(' "$W/ir.txt" || fail "tables: no table_scatter"
  grep -q 'all_reduce.*emb\.weight\.grad' "$W/ir.txt" && fail "tables: emb.weight all-reduced"
  "$MOEC" ir "$W/m.moe" --after shard --devices 3 --device 1 >"$W/ir3.txt" || fail "tables: moec ir --device 1"
  grep -q 'emb.weight.*f32\[683, 16\]' "$W/ir3.txt" ||
    fail "tables: device 1 of 3 does not hold rows [682, 1365) of emb.weight"
  # the sampled softmax's weight too: the sampler, its rows gathered, the loss over them,
  # the gradient rows scattered to their owners; its bias stays replicated (rows exchanged)
  grep -q 'loss.weight.*f32\[683, 16\]' "$W/ir3.txt" ||
    fail "tables: device 1 of 3 does not hold rows [682, 1365) of loss.weight"
  for op in '= sample_log_uniform(' '= table_gather(.*, loss.weight)' '= sampled_xent_rows(' \
    '= sampled_xent_rows_bwd(' 'loss.weight.grad@rows = table_scatter(' 'loss.bias.grad@rows = sparse_all_reduce('; do
    grep -q "$op" "$W/ir.txt" || fail "tables: no '$op' in the placed graph"
  done
  grep -q '= sampled_xent(' "$W/ir.txt" && fail "tables: sampled_xent reads the sharded table"
  grep -q 'all_reduce.*loss\.weight\.grad' "$W/ir.txt" && fail "tables: loss.weight all-reduced"
  cp "$HERE/multidev/md_sampled.moe" "$W/r.moe" # the setting as a flag, checked like the file's
  "$MOEC" ir "$W/r.moe" --after comm --devices 2 --set plan.tables=sharded | grep -q table_scatter ||
    fail "tables: --set plan.tables=sharded"
  out=$("$MOEC" check "$W/r.moe" --tables rows 2>&1) && fail "tables: --tables rows accepted"
  echo "$out" | grep -q "error: 'tables' must be replicated or sharded, got 'rows'" ||
    fail "tables: --tables rows: $out"
  same_1_234
  losses t2 "$MOEC" run "$W/m.moe" --devices 2 --tables replicated
  same d1 t2
  losses f1 "$MOEC" run "$W/m.moe" --f64 # double: the gather and scatter at 8 bytes an element
  losses f3 "$MOEC" run "$W/m.moe" --f64 --devices 3
  same f1 f3 1e-12
  if command -v mpirun >/dev/null 2>&1; then
    losses mpi2 mpi_env 2 "$MOEC" run "$W/m.moe"
    same d1 mpi2
  fi
  ck_4_eq_1 t
  # the exact evaluation with the tables sharded: each device its range of the vocabulary,
  # combined (docs/placement.md): one device's loss to 1e-6 (f32) and 1e-12 (f64), not the
  # same bits (other chunks of V); the checkpoint from 1 device on 2, 3, 4 and 2 MPI ranks
  evals() { # evals TAG CMD...: the valid and test losses of a 0-step run from t1 -> $W/TAG.eval
    t=$1
    shift
    rm -f "$W/$t.metrics" # appended to
    "$@" --load "$W/t1.safetensors" --steps 0 --quiet --metrics "$W/$t.metrics" >"$W/$t.out" 2>&1 ||
      { cat "$W/$t.out"; fail "tables: evaluation $t"; }
    grep '"event":"eval"' "$W/$t.metrics" | sed 's/.*"loss":\([^,]*\),.*/\1/' >"$W/$t.eval"
    [ "$(wc -l <"$W/$t.eval")" -eq 2 ] || fail "tables: $t: expected a valid and a test loss"
  }
  same_evals() { # same_evals REF TAG TOL: relative difference at most TOL
    paste "$W/$1.eval" "$W/$2.eval" | awk -v a="$1" -v b="$2" -v t="$3" '
      { d = $1 - $2; if (d < 0) d = -d; r = d / $1; if (r > m) m = r }
      END { printf "exact loss %s vs %s: max relative difference %.3g\n", a, b, m; exit !(m <= t + 0) }' ||
      fail "tables: the exact loss of $2 differs from $1's"
  }
  evals e1 "$MOEC" run "$W/m.moe"
  for p in 2 3 4; do
    evals e$p "$MOEC" run "$W/m.moe" --devices $p
    same_evals e1 e$p 1e-6
  done
  # f64 (no checkpoints): the final evaluations of the f1 and f3 runs above
  for f in f1 f3; do
    grep '"event":"eval"' "$W/$f.metrics" | sed 's/.*"loss":\([^,]*\),.*/\1/' >"$W/$f.eval"
  done
  same_evals f1 f3 1e-12
  if command -v mpirun >/dev/null 2>&1; then
    evals em2 mpi_env 2 "$MOEC" run "$W/m.moe"
    same_evals e1 em2 1e-6
  fi
  # the factored optimizer over both sharded tables (their column moments from the
  # all-gathered rows): one device's losses on 3
  sed 's/adam(lr=1e-2)/factored(lr=1e-2)/' "$W/m.moe" >"$W/fm.moe"
  losses fa1 "$MOEC" run "$W/fm.moe"
  losses fa3 "$MOEC" run "$W/fm.moe" --devices 3
  same fa1 fa3
  # resumed on 2 devices from the 4-device checkpoint: each device takes its rows
  "$MOEC" run "$W/m.moe" --devices 2 --steps 1 --quiet --load "$W/t4.safetensors" >"$W/l2.out" 2>&1 ||
    { cat "$W/l2.out"; fail "tables: load on 2 devices"; }
  mem_falls tables
  ;;
*) fail "unknown case $CASE" ;;
esac
echo "ok: $CASE"
