#!/bin/sh
# test_cuda_train.sh: `moec run/eval/grad --backend cuda` against the cpu backend, on
# a small LSTM-MoE LM with gate noise, dropout and clipping (needs a GPU).
#
#   usage: test_cuda_train.sh MOEC
#
#   - 20 steps on cuda vs cpu, adam and factored: every step's loss within 1e-4
#     relative (float32, TF32 off), and the test perplexity
#   - moec grad --f64: loss within 1e-10 relative, every gradient within 1e-10 of
#     the tensor's largest element; moec eval --backend cuda = cpu to 1e-5
#   - resume across backends: 10 steps on cuda + --save, then steps 11..20 on cpu
#     (and cpu -> cuda): losses equal the uninterrupted run's to 1e-4
#   - resume on cuda: 10 + save + load + 10 == 20 uninterrupted, bit for bit (every
#     step's metrics line, and the final checkpoints byte for byte)
#   - device out of memory (--cuda-alloc-limit): a clear error, no crash, and the
#     checkpoint named by --save/--load is left as it was
#   - several devices: 2 and 4 cuda devices (NCCL, and staged: --no-nccl) = as many
#     cpu devices to 1e-4; their checkpoint; a device subset; factored; expert rows
#     that outgrow their slots and move apart mid-run; 2 MPI ranks
# Without a GPU (or built without CUDA) it prints "SKIP: <reason>" and exits 77.
# (`check && pass ... || fail ...`: pass always succeeds, so fail runs only on a failed check)
# shellcheck disable=SC2015
set -u
MOEC=$1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "SKIP: $PY not found (reads the JSON output)"; exit 77; }
. "$(dirname "$0")/../lib.sh"
t_tmpdir test_cuda_train

cat >small.moe <<'EOF'
model small {
  let V = 32
  input ids : i32[B, T]
  input targets : i32[B, T]
  emb = embedding(ids, vocab=V, dim=16)
  h = lstm(emb, units=32)
  d = dropout(h, p=0.1)
  m = moe(d, experts=4, k=2, hidden=16)
  r = h + m
  h2 = lstm(r, units=32)
  loss = softmax_xent(h2, targets, vocab=V)
  output loss
}
train {
  data = synthetic(topics=4, vocab=32, seed=3)
  batch = 16
  unroll = 10
  steps = 20
  optimizer = adam(lr=0.01)
  clip = 1.0
}
EOF

# ---- skip without a GPU: the error moec gives says why
skip_without_cuda "$MOEC" small.moe

# close A B WHAT RTOL: the metrics files' step losses (and eval losses) agree to RTOL
close() {
  "$PY" - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
a, b, what, rtol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def rows(p):
    return [(r["event"], r["step"], r.get("split"), r["loss"]) for r in map(json.loads, open(p))]
ra, rb = rows(a), rows(b)
assert [r[:3] for r in ra] == [r[:3] for r in rb], (what, "different steps", ra, rb)
worst = max(abs(x[3] - y[3]) / abs(y[3]) for x, y in zip(ra, rb))
print(f"{what}: {len(ra)} losses, worst relative difference {worst:.2e}")
sys.exit(0 if worst <= rtol else 1)
PY
}
# steps FILE FIRST LAST: the step lines FIRST..LAST of a metrics file
steps() { "$PY" -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["event"] == "step" and int(sys.argv[2]) <= r["step"] <= int(sys.argv[3]): print(l, end="")' "$1" "$2" "$3"; }

# ---- 1. cuda vs cpu, 20 steps
for opt in "adam(lr=0.01)" "factored(lr=0.01)"; do
  sed "s/optimizer = .*/optimizer = $opt/" small.moe >o.moe
  "$MOEC" run o.moe --backend cpu --metrics cpu.jsonl --json --quiet --save cpu.safetensors >cpu.out 2>cpu.err ||
    { fail "$opt: cpu run"; cat cpu.err; continue; }
  "$MOEC" run o.moe --backend cuda --metrics cuda.jsonl --json --quiet --save cuda.safetensors >cuda.out 2>cuda.err ||
    { fail "$opt: cuda run"; cat cuda.err; continue; }
  close cuda.jsonl cpu.jsonl "$opt: cuda vs cpu" 1e-4 && pass "$opt: cuda losses = cpu losses (1e-4)" ||
    fail "$opt: cuda losses differ from cpu"
  "$PY" -c "import sys; a, b = $(json cuda.out test_ppl), $(json cpu.out test_ppl); sys.exit(0 if abs(a - b) <= 1e-4 * b else 1)" &&
    pass "$opt: test ppl $(json cuda.out test_ppl) ~ $(json cpu.out test_ppl)" || fail "$opt: test ppl differs"
done

# ---- 2. grad --f64 and eval on the device
"$PY" -c 'import struct; open("F.bin","wb").write(struct.pack("<33H", *[(7*i) % 32 for i in range(33)]))'
sed 's/batch = 16/batch = 3/' small.moe >g.moe
"$MOEC" grad g.moe --load cpu.safetensors --tokens F.bin --out gcpu.safetensors --f64 --json >gcpu.out 2>&1 &&
  "$MOEC" grad g.moe --backend cuda --load cpu.safetensors --tokens F.bin --out gcuda.safetensors --f64 --json \
    >gcuda.out 2>gcuda.err || { fail "grad --f64 --backend cuda"; cat gcuda.err; }
"$PY" - <<'PY' && pass "grad --f64: cuda = cpu to 1e-10" || fail "grad --f64: cuda differs from cpu"
import json, struct
def st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]
        fmt = {"F64": "d", "F32": "f"}[v["dtype"]]
        raw = b[8 + n + s:8 + n + e]
        out[k] = struct.unpack("<%d%s" % (len(raw) // struct.calcsize(fmt), fmt), raw)
    return out
a, b = st("gcuda.safetensors"), st("gcpu.safetensors")
la = json.loads(open("gcuda.out").read().strip().splitlines()[-1])["loss"]
lb = json.loads(open("gcpu.out").read().strip().splitlines()[-1])["loss"]
ok = abs(la - lb) <= 1e-10 * abs(lb) and sorted(a) == sorted(b)
for k in b:
    m = max(abs(x) for x in b[k]) or 1.0
    d = max(abs(x - y) for x, y in zip(a[k], b[k]))
    if d > 1e-10 * m:
        print(f"{k}: max difference {d:.3g} (largest element {m:.3g})"); ok = False
print(f"grad --f64: loss {la!r} vs {lb!r}, {len(b)} gradients")
raise SystemExit(0 if ok else 1)
PY
"$MOEC" eval small.moe --load cpu.safetensors --json >ecpu.out 2>&1
"$MOEC" eval small.moe --backend cuda --load cpu.safetensors --json >ecuda.out 2>ecuda.err ||
  { fail "eval --backend cuda"; cat ecuda.err; }
"$PY" -c "import sys; a, b = $(json ecuda.out test_loss), $(json ecpu.out test_loss); sys.exit(0 if abs(a - b) <= 1e-5 * b else 1)" &&
  pass "eval: cuda test loss $(json ecuda.out test_loss) ~ cpu $(json ecpu.out test_loss)" || fail "eval on cuda differs"

# ---- 3. resume across backends (small.moe: adam)
"$MOEC" run small.moe --backend cuda --metrics full_cuda.jsonl --save full_cuda.safetensors --quiet >/dev/null 2>&1 ||
  fail "uninterrupted cuda run"
"$MOEC" run small.moe --backend cpu --metrics full_cpu.jsonl --quiet >/dev/null 2>&1 || fail "uninterrupted cpu run"
"$MOEC" run small.moe --backend cuda --steps 10 --save half_cuda.safetensors --quiet >/dev/null 2>&1 ||
  fail "cuda first half"
"$MOEC" run small.moe --backend cpu --steps 10 --save half_cpu.safetensors --quiet >/dev/null 2>&1 ||
  fail "cpu first half"
"$MOEC" run small.moe --backend cpu --load half_cuda.safetensors --metrics x1.jsonl --quiet >/dev/null 2>x1.err ||
  { fail "cuda checkpoint -> cpu"; cat x1.err; }
"$MOEC" run small.moe --backend cuda --load half_cpu.safetensors --metrics x2.jsonl --quiet >/dev/null 2>x2.err ||
  { fail "cpu checkpoint -> cuda"; cat x2.err; }
steps full_cuda.jsonl 11 20 >ref_cuda.jsonl
steps full_cpu.jsonl 11 20 >ref_cpu.jsonl
steps x1.jsonl 11 20 >x1s.jsonl
steps x2.jsonl 11 20 >x2s.jsonl
close x1s.jsonl ref_cuda.jsonl "saved on cuda, resumed on cpu" 1e-4 && pass "cuda checkpoint resumes on cpu" ||
  fail "cuda -> cpu resume differs"
close x2s.jsonl ref_cpu.jsonl "saved on cpu, resumed on cuda" 1e-4 && pass "cpu checkpoint resumes on cuda" ||
  fail "cpu -> cuda resume differs"

# ---- 4. resume on cuda: bit for bit
"$MOEC" run small.moe --backend cuda --load half_cuda.safetensors --metrics res.jsonl --save res_cuda.safetensors \
  --quiet >/dev/null 2>res.err || { fail "cuda resume"; cat res.err; }
steps res.jsonl 11 20 | sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//' >a.txt
sed 's/,"tokens_per_s":[^,}]*//; s/,"elapsed":[^,}]*//' ref_cuda.jsonl >b.txt
if [ "$(wc -l <a.txt)" -eq 10 ] && cmp -s a.txt b.txt; then
  pass "cuda: resumed run == uninterrupted run (10 step lines, as printed)"
else
  fail "cuda: resumed run differs"; diff a.txt b.txt | head
fi
cmp -s res_cuda.safetensors full_cuda.safetensors && pass "cuda: final checkpoints byte-identical" ||
  fail "cuda: resumed checkpoint differs from the uninterrupted one"

# ---- 5. device out of memory: clear error, checkpoint kept
cp half_cuda.safetensors keep.safetensors
"$MOEC" run small.moe --backend cuda --cuda-alloc-limit 4096 --load keep.safetensors \
  --save keep.safetensors --quiet >oom.out 2>oom.err
rc=$?
if [ $rc -eq 0 ] || [ $rc -gt 100 ]; then
  fail "out of memory: exit $rc"; cat oom.err
elif grep -q "out of memory on the cuda device" oom.err && grep -q "MiB" oom.err; then
  pass "out of memory: $(head -1 oom.err)"
else
  fail "out of memory: unclear message"; cat oom.err
fi
cmp -s keep.safetensors half_cuda.safetensors && pass "out of memory: checkpoint kept" ||
  fail "out of memory: the checkpoint changed"

# ---- 6. several devices (docs/multidev.md, "Several GPUs"): N cuda devices (one thread
# each; NCCL when each has a GPU of its own, else staged through host memory, several
# virtual devices on a GPU) against N cpu devices: every step's loss within 1e-4; the
# checkpoint they save (one device's names) evaluates like the cpu one's; a device subset
# (reshard); the factored optimizer's whole [E, H] moments; MPI ranks when mpirun exists
md() { # md TAG ND FILE [FLAGS...]: cpu and cuda (with FLAGS) on ND devices, losses compared
  tag=$1 nd=$2 f=$3
  shift 3
  "$MOEC" run "$f" --backend cpu --devices "$nd" --metrics "md_cpu_$tag.jsonl" --quiet \
    --save "md_cpu_$tag.safetensors" >/dev/null 2>"md_cpu_$tag.err" ||
    { fail "$tag: cpu on $nd devices"; cat "md_cpu_$tag.err"; return; }
  "$MOEC" run "$f" --backend cuda "$@" --devices "$nd" --metrics "md_cuda_$tag.jsonl" --quiet \
    --save "md_cuda_$tag.safetensors" >/dev/null 2>"md_cuda_$tag.err" ||
    { fail "$tag: cuda on $nd devices"; cat "md_cuda_$tag.err"; return; }
  close "md_cuda_$tag.jsonl" "md_cpu_$tag.jsonl" "$tag: cuda vs cpu, $nd devices" 1e-4 &&
    pass "$tag: $nd cuda devices = $nd cpu devices (1e-4)" || fail "$tag: $nd cuda devices differ"
}
md auto2 2 small.moe
md staged2 2 small.moe --no-nccl
md staged4 4 small.moe --no-nccl
md auto4 4 small.moe
"$MOEC" eval small.moe --load md_cuda_auto4.safetensors --json >e4cuda.out 2>&1 &&
  "$MOEC" eval small.moe --load md_cpu_auto4.safetensors --json >e4cpu.out 2>&1 &&
  "$PY" -c "import sys; a, b = $(json e4cuda.out test_loss), $(json e4cpu.out test_loss); sys.exit(0 if abs(a - b) <= 1e-4 * b else 1)" &&
  pass "a checkpoint saved by 4 cuda devices evaluates on 1 cpu device like the 4 cpu devices' one" ||
  fail "the 4-device cuda checkpoint"
{ cat small.moe; printf 'plan {\n  devices = 4\n  place loss : on(1, 2)\n}\n'; } >sub.moe
md subset4 4 sub.moe
sed 's/optimizer = .*/optimizer = factored(lr=0.01)/' small.moe >fact.moe
md factored2 2 fact.moe
# expert rows sized per step (docs/memory.md, "Expert-row buffers"): at one row a device
# the routing outgrows some device's slots and its rows move to a region apart mid-run
sed 's/batch = 16/batch = 4/' small.moe >rows.moe
md rows4 4 rows.moe
if grep -q "apart from the arena" md_cuda_rows4.err; then
  pass "rows4: the cuda devices' expert rows moved apart mid-run ($(grep -m1 'apart from' md_cuda_rows4.err))"
else
  fail "rows4: the cuda devices' expert rows never moved apart (cpu: $(grep -c 'apart from' md_cpu_rows4.err) moves)"
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "skip: mpirun not found (MPI ranks on cuda not run)"
elif ! ldd "$MOEC" 2>/dev/null | grep -q libmpi; then
  echo "skip: moec was built without MPI (MPI ranks on cuda not run)"
else
  "$MOEC" run small.moe --backend cpu --devices 2 --metrics mpi_cpu.jsonl --quiet >/dev/null 2>&1
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 --oversubscribe \
    "$MOEC" run small.moe --backend cuda --metrics mpi_cuda.jsonl --quiet >/dev/null 2>mpi.err ||
    { fail "mpirun -np 2 moec run --backend cuda"; cat mpi.err; }
  close mpi_cuda.jsonl mpi_cpu.jsonl "2 MPI ranks on cuda vs 2 cpu devices" 1e-4 &&
    pass "mpirun -np 2 --backend cuda = 2 cpu devices (1e-4)" || fail "MPI ranks on cuda differ"
fi

finish
