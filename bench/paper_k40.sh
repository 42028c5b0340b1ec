#!/bin/sh
# paper_k40.sh: `moec simulate` of every examples/paper/ file on the paper's K40 cluster
# (16 K40s for Table 7; 32, 64 and 128 for Table 8) beside the TFLOPS/GPU the paper
# measured (Shazeer et al. 2017, Tables 7 and 8), and the pattern it shows:
#   - Table 7: MoE-4 the lowest of the MoE rows (its experts busy 4 of 16 GPUs), MoE-143M
#     (the most ops per timestep) the highest row;
#   - Table 8: TFLOPS/GPU falls from MoE-4096-h to MoE-131072-h, the lowest of the table
#     (per-expert batches shrink as the experts grow at a fixed ~2.5M-word batch).
# The paper's TFLOPS/GPU is the step's FLOPs / step time / GPUs: simulate's mean.
# Exit 0 when the pattern holds, 1 otherwise (the figures themselves are not asserted).
#     sh bench/paper_k40.sh [MOEC [EXAMPLES_PAPER_DIR]]
MOEC=${1:-build/moec}
DIR=${2:-$(dirname "$0")/../examples/paper}
exec /usr/bin/python3 - "$MOEC" "$DIR" <<'PY'
import json, os, subprocess, sys

moec, folder = sys.argv[1], sys.argv[2]
# file: (table, row, GPUs, TFLOPS/GPU the paper measured)
ROWS = [
    ("1b_lstm2048_512.moe", 7, "LSTM-2048-512", 16, 1.21),
    ("1b_4xlstm512.moe", 7, "4xLSTM-512", 16, 1.07),
    ("1b_moe1_wide.moe", 7, "MoE-1-Wide", 16, 1.29),
    ("1b_moe1_deep.moe", 7, "MoE-1-Deep", 16, 1.29),
    ("1b_moe4.moe", 7, "MoE-4", 16, 0.52),
    ("1b_moe32.moe", 7, "MoE-32", 16, 0.87),
    ("1b_moe256.moe", 7, "MoE-256", 16, 0.81),
    ("1b_moe256h.moe", 7, "MoE-256-h", 16, 0.89),
    ("1b_moe1024h.moe", 7, "MoE-1024-h", 16, 0.90),
    ("1b_moe4096h.moe", 7, "MoE-4096-h", 16, 0.74),
    ("1b_moe34m.moe", 7, "MoE-34M", 16, 1.22),
    ("1b_moe143m.moe", 7, "MoE-143M", 16, 1.56),
    ("100b_4xlstm512.moe", 8, "4xLSTM-512", 32, 1.23),
    ("100b_moe32.moe", 8, "MoE-32", 32, 0.83),
    ("100b_moe256h.moe", 8, "MoE-256-h", 32, 1.11),
    ("100b_moe1024h.moe", 8, "MoE-1024-h", 32, 1.14),
    ("100b_moe4096h.moe", 8, "MoE-4096-h", 32, 1.07),
    ("100b_moe16384h.moe", 8, "MoE-16384-h", 32, 0.96),
    ("100b_moe65536h.moe", 8, "MoE-65536-h", 64, 0.72),
    ("100b_moe131072h.moe", 8, "MoE-131072-h", 128, 0.30),
]
got = {}
print(f"{'table':<6}{'row':<15}{'GPUs':>5}{'paper':>7}{'simulate':>10}{'busiest':>9}"
      f"{'comm %':>8}{'GiB/dev':>9}  fits")
for f, tab, row, gpus, paper in ROWS:
    p = subprocess.run([moec, "simulate", os.path.join(folder, f), "--cluster",
                        f"{gpus}xK40", "--format", "json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or ["?"])[0]
        print(f"{tab:<6}{row:<15}{gpus:>5}{paper:>7.2f}   skipped: {why}")
        continue
    d = json.loads(p.stdout)
    t = d["tflops_per_device_mean"]
    got[row, tab] = t
    m = d["memory"]
    print(f"{tab:<6}{row:<15}{gpus:>5}{paper:>7.2f}{t:>10.3f}{d['tflops_per_device']:>9.3f}"
          f"{100 * d['comm_share']:>8.1f}{m['planned_bytes'] / 2**30:>9.2f}  "
          f"{'yes' if m['fits'] else 'NO'}")
fails = []
moe7 = {r: t for (r, tab), t in got.items() if tab == 7 and r.startswith("MoE-")}
if ("MoE-4", 7) in got and min(moe7, key=moe7.get) != "MoE-4":
    fails.append("Table 7: MoE-4 is not the lowest MoE row")
t7 = {r: t for (r, tab), t in got.items() if tab == 7}
if ("MoE-143M", 7) in got and max(t7, key=t7.get) != "MoE-143M":
    fails.append("Table 7: MoE-143M (the most ops per timestep) is not the highest row")
decl = [got.get((r, 8)) for r in ("MoE-4096-h", "MoE-16384-h", "MoE-65536-h", "MoE-131072-h")]
if None in decl or not all(a > b for a, b in zip(decl, decl[1:])):
    fails.append(f"Table 8: no decline from MoE-4096-h to MoE-131072-h: {decl}")
t8 = {r: t for (r, tab), t in got.items() if tab == 8}
if t8 and min(t8, key=t8.get) != "MoE-131072-h":
    fails.append("Table 8: MoE-131072-h is not the lowest")
for x in fails:
    print("FAIL", x)
print(f"paper_k40: {len(got)} rows simulated, pattern {'holds' if not fails else 'broken'}")
sys.exit(1 if fails else 0)
PY
