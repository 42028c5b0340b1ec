# simulate.cmake: `moec simulate FILE --cluster SPEC` (docs/placement.md, "moec simulate"):
# the plan's cost model (passes/costmodel.c, the code moec plan uses) on clusters that are
# not here. The paper-sized example (examples/paper_moe32_1b.moe: 793,471-word vocabulary,
# MoE-32, ~813M parameters) is only compiled and costed, never run.
set(MOEC_SIM_PAPER ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper_moe32_1b.moe)
add_test(NAME simulate_help COMMAND moec simulate --help)
set_tests_properties(simulate_help PROPERTIES LABELS simulate
                     PASS_REGULAR_EXPRESSION "usage: moec simulate FILE --cluster SPEC.*16x8xH100:ib")
# The paper's model on 32 K40s at about the paper's batch (appendix C: ~300,000 words a
# step; 16384 rows x 20 = 327,680 tokens). Bounds:
#  - TFLOPS per device in [0.74, 3.2]: 3.2 TFLOP/s is the K40 preset's sustained GEMM rate
#    (a large GEMM's; smaller ones run slower), so no step can do better; 0.74 is the
#    lowest the paper measured on K40s for its models (Table 7: 0.74-1.56), and at this
#    batch compute is most of the step (the all-reduce of the replicated softmax gradient,
#    ~3 GB a device, and the embedding gradient's rows, ~0.6 GB, are the rest).
#  - parameters per device in [3.0, 3.1] GiB: the replicated embedding and softmax
#    (2 x 793471 x 512 floats = 3.03 GiB) dominate; LSTMs, gate and 1/32 of the experts
#    add ~20 MiB.
#  - the step is mostly compute: communication share in (0, 0.5).
add_test(NAME simulate_paper_k40
         COMMAND sh -c "\"$1\" simulate \"$2\" --cluster 32xK40 --batch 16384 --format json | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); t=d[\"tflops_per_device\"]; m=d[\"memory\"]; gib=2**30; assert d[\"devices\"]==32 and d[\"nodes\"]==8 and d[\"per_node\"]==4; assert 0.74 <= t <= 3.2, t; assert 3.0*gib <= m[\"param_bytes\"] <= 3.1*gib, m; assert abs(m[\"planned_bytes\"] - m[\"persist_bytes\"] - m[\"arena_bytes\"] - m[\"optimizer_bytes\"] - m[\"rows_apart_bytes\"]) <= 2; assert 0 < d[\"comm_share\"] < 0.5 and abs(d[\"step_s\"] - d[\"compute_s\"] - d[\"comm_s\"]) < 1e-6 * d[\"step_s\"]; print(\"ok\", t, m[\"planned_bytes\"]/gib)'"
                 sh $<TARGET_FILE:moec> ${MOEC_SIM_PAPER})
set_tests_properties(simulate_paper_k40 PROPERTIES LABELS simulate PASS_REGULAR_EXPRESSION "^ok")
# At the file's batch (32 rows) the text names per-device memory and TFLOPS, and the model
# does not fit a 12 GiB K40: 812M replicated parameters x (weights, gradients, Adam's two
# moments) = 13 GB (12.1 GiB) before any activation. On 80 GiB H100s it fits.
add_test(NAME simulate_nofit
         COMMAND sh -c "\"$1\" simulate \"$2\" --cluster 32xK40; echo rc=$?; \"$1\" simulate \"$2\" --cluster 32xH100 | grep '^fits'"
                 sh $<TARGET_FILE:moec> ${MOEC_SIM_PAPER})
set_tests_properties(simulate_nofit PROPERTIES LABELS simulate PASS_REGULAR_EXPRESSION
  "step time +[0-9.]+ ms = compute.*TFLOPS/device +[0-9.]+.*memory/device +1[2-4]\\.[0-9]+ GiB allocated.*fits +NO: does not fit: device 0 needs 1[2-4]\\.[0-9]+ GiB, a K40 has 12 GiB.*rc=0\nfits +yes")
# The same global batch (4096 rows) on more devices: a shorter step (8 -> 16 -> 32 K40s;
# 8 -> 16 -> 32 H100s); 8 H100s are one NVLink node by default, and the same 8 over
# Ethernet spend longer communicating. (A model as small as lm_moe32 does not speed up
# with more devices: its step is collective latency, which grows with P.)
add_test(NAME simulate_scaling
         COMMAND sh -c "for c in 8xK40 16xK40 32xK40; do \"$1\" simulate \"$2\" --cluster $c --batch 4096 --format json; done > sim_k40.jsonl && for c in 8xH100 2x8xH100 4x8xH100:ib; do \"$1\" simulate \"$2\" --cluster $c --batch 4096 --format json; done > sim_h100.jsonl && for c in 8xH100 8xH100:nvlink 8xH100:eth; do \"$1\" simulate \"$3\" --cluster $c --format json; done > sim_flat.jsonl && /usr/bin/python3 -c 'import json; k=[json.loads(l) for l in open(\"sim_k40.jsonl\")]; h=[json.loads(l) for l in open(\"sim_h100.jsonl\")]; f=[json.loads(l) for l in open(\"sim_flat.jsonl\")]; s=[x[\"step_s\"] for x in k]; assert s[0] > s[1] > s[2], s; assert h[0][\"step_s\"] > h[1][\"step_s\"] > h[2][\"step_s\"], [x[\"step_s\"] for x in h]; assert f[1][\"comm_s\"] < f[2][\"comm_s\"] and f[0][\"step_s\"] == f[1][\"step_s\"]; print(\"ok\", s)'"
                 sh $<TARGET_FILE:moec> ${MOEC_SIM_PAPER} ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe)
set_tests_properties(simulate_scaling PROPERTIES LABELS simulate PASS_REGULAR_EXPRESSION "^ok")
# bad SPEC, or no --cluster: a clear error and exit 2
add_test(NAME simulate_bad_spec
         COMMAND sh -c "for s in 32xK4 x32 32xK40:foo 0xH100 3x 1x2x3xH100 32; do \"$1\" simulate \"$2\" --cluster \"$s\" 2>&1; echo rc=$?; done; \"$1\" simulate \"$2\" 2>&1 | head -1; \"$1\" simulate \"$2\" --cluster 4xK40 --devices 4 2>&1; echo rc=$?"
                 sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe)
set_tests_properties(simulate_bad_spec PROPERTIES LABELS simulate PASS_REGULAR_EXPRESSION
  "unknown device 'K4' in '32xK4'.*rc=2\n.*'x32' is not a cluster: expected \\[NODES x\\] N x DEVICE.*rc=2\n.*unknown link 'foo'.*rc=2\n.*'0xH100' is not a cluster.*rc=2\n.*unknown device ''.*rc=2\n.*'1x2x3xH100' is not a cluster.*rc=2\n.*'32' is not a cluster.*rc=2\n.*no --cluster given\n.*the cluster gives the devices\nrc=2")
# The 100B-word hmoe models compile and cost in seconds: MoE-16384-h (128 groups x 128
# experts, ~800 parameters) on 32 K40s took over 5 minutes while the expert-shard queries
# rescanned every parameter per parameter and group, the memory plan sorted its spans per
# tensor and the cost model scanned every expert per node and device. Bound: 30 CPU
# seconds (it takes ~1.5 s on one core of the build machine; the sanitizer build ~5x that).
add_test(NAME simulate_paper_100b_time
         COMMAND /usr/bin/python3 -c "import json, resource, subprocess, sys; p = subprocess.run([sys.argv[1], 'simulate', sys.argv[2], '--cluster', '32xK40', '--format', 'json'], stdout=subprocess.PIPE, check=True); d = json.loads(p.stdout); r = resource.getrusage(resource.RUSAGE_CHILDREN); t = r.ru_utime + r.ru_stime; assert d['devices'] == 32 and d['step_s'] > 0, d; assert t < 30, t; print('ok %.2f CPU s' % t)"
                 $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper/100b_moe16384h.moe)
set_tests_properties(simulate_paper_100b_time PROPERTIES LABELS simulate TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "^ok")
# The paper's TFLOPS/GPU beside simulate's on the paper's K40 clusters (bench/paper_k40.sh
# prints the table): Table 7's MoE-4 (experts on 4 of 16 GPUs) the lowest MoE row, Table
# 8's decline from MoE-4096-h to MoE-131072-h. The pattern, not the figures, is asserted.
add_test(NAME simulate_paper_k40_tables
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/../bench/paper_k40.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper)
set_tests_properties(simulate_paper_k40_tables PROPERTIES LABELS "simulate;slow" TIMEOUT 600
                     PASS_REGULAR_EXPRESSION "pattern holds")
# plan.expert_headroom: the expert-row buffers at H x a device's fair share of the routes;
# the plan's memory equals the run's, below the worst case's; too few rows stop the run
# with the reason (tests/test_expert_headroom.sh).
add_test(NAME plan_expert_headroom
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_expert_headroom.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe)
set_tests_properties(plan_expert_headroom PROPERTIES LABELS "simulate;multidev" TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "ok\n")
# The cluster presets carry the GEMM-shape, elementwise and launch terms (docs/placement.md,
# "moec simulate": K40's h fitted, H100/H200's scaled); on 4 K40s the expert GEMMs of
# lm_moe32 run faster per FLOP at a larger batch (more rows per expert) and never above G.
add_test(NAME simulate_presets
         COMMAND sh -c "for c in 4xK40 8xH100 8xH200; do \"$1\" simulate \"$2\" --cluster $c --batch 64 --format json; done > pre.jsonl && \"$1\" simulate \"$2\" --cluster 4xK40 --batch 4096 --format json >> pre.jsonl && /usr/bin/python3 -c 'import json; d=[json.loads(l) for l in open(\"pre.jsonl\")]; k=[x[\"constants\"] for x in d]; assert all(c[\"gemm_half\"] > 0 and c[\"launch_us\"] > 0 and c[\"elem_gbs\"] > 0 for c in k), k; assert d[2][\"device\"] == \"H200\" and d[2][\"memory\"][\"capacity_bytes\"] == 139 * 2**30, d[2]; r=[x[\"expert_gemm_flops\"] / x[\"expert_gemm_s\"] / 1e9 for x in (d[0], d[3])]; assert r[0] < r[1] < k[0][\"gflops\"], r; print(\"ok\", r)'"
                 sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe)
set_tests_properties(simulate_presets PROPERTIES LABELS simulate TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "^ok")
# Expert-row buffers sized per step (runtime/rows.c): the same losses and checkpoint as
# the worst-case buffers on 2 and 4 in-process devices and 2 MPI ranks, the region grown
# mid-run, the plan's per-step estimate against the run's high-water mark, simulate's fits
# at the new sizing (tests/test_rows_per_step.sh).
add_test(NAME rows_per_step
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_rows_per_step.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/multidev/md_small.moe
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper/1b_moe32.moe)
set_tests_properties(rows_per_step PROPERTIES LABELS "simulate;multidev" TIMEOUT 180
                     PASS_REGULAR_EXPRESSION "ok\n")
# ... and an hmoe layer's, both levels of its two-level exchange: the same losses and
# checkpoint on 2, 4 and 8 in-process devices, a 2x2 mesh and 2 MPI ranks, both levels grown
# mid-run, the plan's estimate against the run (tests/test_rows_per_step_hmoe.sh).
add_test(NAME rows_per_step_hmoe
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_rows_per_step_hmoe.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe256h.moe
                 ${CMAKE_CURRENT_SOURCE_DIR}/multidev/md_hmoe2.moe)
set_tests_properties(rows_per_step_hmoe PROPERTIES LABELS "simulate;multidev" TIMEOUT 240
                     PASS_REGULAR_EXPRESSION "ok\n")
# The paper's largest models per K40: Table 8's MoE-16384-h and MoE-65536-h and Table 7's
# MoE-143M fit (tests/test_paper_fit.sh)
add_test(NAME simulate_paper_fit
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_paper_fit.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper)
set_tests_properties(simulate_paper_fit PROPERTIES LABELS simulate TIMEOUT 300)
