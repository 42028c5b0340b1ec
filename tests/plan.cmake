# plan.cmake: placement, communication and the cost model (the compile-time half;
# docs/placement.md). test_plan.c: collective bytes against their closed forms, expert
# gradients never all-reduced, policies, memory per device, one device unchanged,
# place rules, hmoe groups. The CLI: json parses, dot renders, user errors are clear.
add_executable(test_plan ${CMAKE_CURRENT_SOURCE_DIR}/test_plan.c)
target_link_libraries(test_plan PRIVATE moeccore)
target_compile_options(test_plan PRIVATE ${MOEC_WARN})
add_test(NAME plan_unit COMMAND test_plan)
set_tests_properties(plan_unit PROPERTIES TIMEOUT 30 LABELS plan)

set(MOEC_PLAN_EX ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe)
add_test(NAME plan_cli_help COMMAND moec plan --help)
set_tests_properties(plan_cli_help PROPERTIES LABELS plan
                     PASS_REGULAR_EXPRESSION "usage: moec plan FILE.*--format.*--strategy")
add_test(NAME plan_cli_text COMMAND moec plan ${MOEC_PLAN_EX} --devices 4)
set_tests_properties(plan_cli_text PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION
  "all_to_all +m.xs .*expected +0.469 MiB +upper +0.625 MiB.*per device.*step time")
add_test(NAME plan_cli_json
         COMMAND sh -c "\"$1\" plan \"$2\" --devices 4 --format json | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"devices\"]==4 and len(d[\"per_device\"])==4 and sorted(d[\"expert_devices\"][\"m\"])==sorted(d[\"expert_devices\"][\"m\"]) and any(o.get(\"collective\") for o in d[\"ops\"]); print(\"ok\")'"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_cli_json PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^ok")
add_test(NAME plan_cli_json_1dev
         COMMAND sh -c "\"$1\" plan \"$2\" --devices 1 --format json | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert not any(o.get(\"collective\") for o in d[\"ops\"]); print(\"ok\")'"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_cli_json_1dev PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^ok")
add_test(NAME plan_cli_dot
         COMMAND sh -c "command -v dot >/dev/null || { echo 'SKIP: graphviz dot is not installed'; exit 77; }; \"$1\" plan \"$2\" --devices 4 --format dot > plan_dot.gv && dot -Tsvg plan_dot.gv -o plan_dot.svg && grep -q '<svg' plan_dot.svg"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_cli_dot PROPERTIES LABELS plan SKIP_RETURN_CODE 77)
# user errors: a clear message and a non-zero exit
add_test(NAME plan_err_devices
         COMMAND sh -c "\"$1\" plan \"$2\" --devices 64 2>&1; echo rc=$?" sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_err_devices PROPERTIES LABELS plan
                     PASS_REGULAR_EXPRESSION "command line:2:[0-9]+: error: 64 devices but a batch has 32 rows.*--devices 64.*rc=2")
add_test(NAME plan_err_experts
         COMMAND sh -c "\"$1\" plan \"$2\" --devices 4 2>&1; echo rc=$?" sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/moe_lm.moe)
set_tests_properties(plan_err_experts PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "rc=0")
add_test(NAME plan_err_few_experts
         COMMAND sh -c "\"$1\" plan \"$2\" --devices 8 2>&1; echo rc=$?" sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/moe_lm.moe)
set_tests_properties(plan_err_few_experts PROPERTIES LABELS plan
                     PASS_REGULAR_EXPRESSION "has 4 experts for 8 devices.*rc=1")
add_test(NAME plan_err_strategy
         COMMAND sh -c "\"$1\" plan \"$2\" --strategy nope 2>&1; echo rc=$?" sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_err_strategy PROPERTIES LABELS plan
                     PASS_REGULAR_EXPRESSION "command line:2:[0-9]+: error: 'strategy' must be paper, data_parallel or hmoe, got 'nope'.*rc=2")
# data_parallel with experts over memory_budget: a clear error naming the sizes
add_test(NAME plan_err_budget
         COMMAND sh -c "sed 's/^train {/plan {\\n  memory_budget = 1MiB\\n}\\ntrain {/' \"$2\" > plan_budget.moe && \"$1\" plan plan_budget.moe --devices 2 --strategy data_parallel 2>&1; echo rc=$?; \"$1\" plan plan_budget.moe --devices 2 >/dev/null 2>&1; echo paper_rc=$?"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_err_budget PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION
  "need [0-9.]+ MiB per device.*over memory_budget = 1.0 MiB: the experts do not fit.*rc=1")
# balanced from measured loads: hot experts 0..7 are spread, one to each device in turn
add_test(NAME plan_cli_balanced
         COMMAND sh -c "printf '{\"moe\":[{\"name\":\"m\",\"load\":[100,100,100,100,100,100,100,100,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}\\n' > plan_loads.jsonl && \"$1\" plan \"$2\" --devices 4 --experts balanced --loads plan_loads.jsonl --format json | /usr/bin/python3 -c 'import json,sys; m=json.load(sys.stdin)[\"expert_devices\"][\"m\"]; hot=sorted(m[:8]); assert hot==[0,0,1,1,2,2,3,3], hot; assert all(m.count(d)==8 for d in range(4)); print(\"ok\")'"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_cli_balanced PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^ok")
# the placement is in the IR: `moec ir --after comm` shows parts, the expert map, collectives
add_test(NAME plan_ir_after_comm
         COMMAND sh -c "\"$1\" ir \"$2\" --after comm --devices 2 | grep -E 'all_to_all\\(m.xs|m/experts  part=experts|m experts on devices: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1|emb.weight.grad@sum = all_reduce' | wc -l"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_ir_after_comm PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^1[0-9]\n")
# the recompute, fusion and memory-plan sections of the plan: the planned arena
# with recompute = all is below none's by exactly the bytes the recompute report prints
add_test(NAME plan_recompute_arena
         COMMAND sh -c "set -e; \"$1\" plan \"$2\" --recompute none --format json > plan_rc_none.json; \"$1\" plan \"$2\" --recompute all --format json > plan_rc_all.json; \"$1\" plan \"$2\" --recompute all > plan_rc_all.txt; saved=$(sed -n 's/.*(saves \\([0-9]*\\) bytes.*/\\1/p' plan_rc_all.txt); /usr/bin/python3 -c 'import json,sys; n=json.load(open(\"plan_rc_none.json\")); a=json.load(open(\"plan_rc_all.json\")); s=int(sys.argv[1]); na=n[\"per_device\"][0][\"arena_bytes\"]; aa=a[\"per_device\"][0][\"arena_bytes\"]; assert n[\"recompute\"][\"segments\"]==0 and a[\"recompute\"][\"segments\"]>0; assert aa < na and na-aa == s == a[\"recompute\"][\"saved_bytes\"], (na, aa, s); assert a[\"recompute\"][\"arena_without_bytes\"] == na; assert a[\"recompute\"][\"flops\"] > 0 and all(x[\"flops\"] > 0 for x in a[\"recompute\"][\"segs\"]); print(\"ok\", na, aa, s)' \"$saved\""
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_recompute_arena PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^ok")
# recompute = auto under --memory-budget (16.5 MiB: between the plan with every layer
# recomputed, 16.1, and without, 16.7): something is recomputed and the plan fits
add_test(NAME plan_recompute_auto
         COMMAND sh -c "\"$1\" plan \"$2\" --recompute auto --memory-budget 17039360 --format json | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); r=d[\"recompute\"]; p=d[\"per_device\"][0][\"planned_bytes\"]; assert r[\"segments\"] > 0 and p <= 17039360, (r[\"segments\"], p); print(\"ok\")'"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_recompute_auto PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^ok")
# fused groups: > 0 for a model of elementwise chains, 0 with --no-fuse (needs LLVM)
if(MOEC_LLVM AND LLVM_CONFIG)
  set(MOEC_PLAN_FUSE_SKIP "")
else()
  set(MOEC_PLAN_FUSE_SKIP "echo 'SKIP: built without LLVM: no fusion'; exit 77;")
endif()
add_test(NAME plan_fusion_groups
         COMMAND sh -c "${MOEC_PLAN_FUSE_SKIP} set -e; \"$1\" plan \"$2\" --format json > plan_fuse.json; \"$1\" plan \"$2\" --no-fuse --format json > plan_nofuse.json; \"$1\" plan \"$2\" | grep -E '^fused groups: [1-9][0-9]* .*kernel calls per step [0-9]+ -> [0-9]+'; /usr/bin/python3 -c 'import json; f=json.load(open(\"plan_fuse.json\"))[\"fusion\"]; n=json.load(open(\"plan_nofuse.json\"))[\"fusion\"]; assert f[\"groups\"] > 0 and f[\"groups\"] == len(f[\"fused\"]) and all(len(x[\"ops\"]) >= 2 for x in f[\"fused\"]); assert f[\"kernel_calls_after\"] < f[\"kernel_calls_before\"] == n[\"kernel_calls_before\"] == n[\"kernel_calls_after\"]; assert f[\"kernel_calls_before\"] - f[\"kernel_calls_after\"] == f[\"ops_fused\"] - f[\"groups\"]; assert n[\"groups\"] == 0 and n[\"fused\"] == []; print(\"ok\")'"
                 sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/fusion_dense.moe)
set_tests_properties(plan_fusion_groups PROPERTIES LABELS plan SKIP_RETURN_CODE 77
                     PASS_REGULAR_EXPRESSION "ok")
# the new JSON keys, on 4 devices; the memory plan with one device is what memplan assigns
add_test(NAME plan_json_memory
         COMMAND sh -c "\"$1\" plan \"$2\" --devices 4 --format json | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert {\"recompute\",\"fusion\",\"memory\"} <= set(d); m=d[\"memory\"]; assert m[\"rows_per_device\"] == 8 and m[\"max_planned_bytes\"] > 0; assert all(abs(p[\"planned_bytes\"] - p[\"persist_bytes\"] - p[\"arena_bytes\"] - p[\"optimizer_allocated_bytes\"] - p[\"rows_apart_bytes\"]) <= 2 and p[\"param_allocated_bytes\"] < p[\"planned_bytes\"] and p[\"arena_bytes\"] > 0 and p[\"estimate_bytes\"] > 0 for p in d[\"per_device\"]); assert {\"segments\",\"segs\",\"saved_bytes\",\"flops\",\"arena_bytes\",\"arena_without_bytes\"} <= set(d[\"recompute\"]); assert {\"groups\",\"fused\",\"kernel_calls_before\",\"kernel_calls_after\"} <= set(d[\"fusion\"]); print(\"ok\")'"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_json_memory PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "^ok")
add_test(NAME plan_cli_text_sections
         COMMAND moec plan ${MOEC_PLAN_EX} --devices 4 --recompute m)
set_tests_properties(plan_cli_text_sections PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION
  "device 0, as allocated \\(8 of the 32 rows, its experts, expert rows x 4\\): recompute \\(B=8, T=20, f32\\): 1 segments.*segment 0  m: repeats grouped_matmul.*fused groups: .*allocated: the memory plan at 8 rows.*persistent +arena +optimizer +allocated [|] +grads")
add_test(NAME plan_dot_fused
         COMMAND sh -c "command -v dot >/dev/null || { echo 'SKIP: graphviz dot is not installed'; exit 77; }; ${MOEC_PLAN_FUSE_SKIP} \"$1\" plan \"$2\" --format dot --expand all > plan_fused.gv && grep -q 'fused' plan_fused.gv && dot -Tsvg plan_fused.gv -o plan_fused.svg && grep -q '<svg' plan_fused.svg && echo ok"
                 sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/fusion_dense.moe)
set_tests_properties(plan_dot_fused PROPERTIES LABELS plan SKIP_RETURN_CODE 77 PASS_REGULAR_EXPRESSION "ok")
add_test(NAME plan_err_recompute
         COMMAND sh -c "\"$1\" plan \"$2\" --recompute nosuch 2>&1; echo rc=$?; \"$1\" plan \"$2\" --memory-budget 12XB 2>&1; echo rc=$?; \"$1\" plan \"$2\" --recompute m,,h1 2>&1; echo rc=$?"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_err_recompute PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION
  "recompute: 'nosuch' is not a layer of the model.*--recompute nosuch.*rc=2\n.*error: invalid suffix 'XB' on number.*--memory-budget 12XB.*rc=2\n.*--recompute m,,h1.*rc=2")

# The plan is what runs: for every example (but the paper's full-size model, never run
# here), every strategy on 1, 2 and 4 devices, the plan's memory per device and the bytes
# of every collective equal what the run allocates and moves (tests/test_plan_run.sh).
foreach(ex lm_4xlstm lm_moe4 lm_moe32 lm_moe256 lm_moe256h)
  add_test(NAME plan_run_${ex}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_plan_run.sh $<TARGET_FILE:moec>
                   ${CMAKE_CURRENT_SOURCE_DIR}/../examples/${ex}.moe)
  set_tests_properties(plan_run_${ex} PROPERTIES TIMEOUT 300 LABELS "plan;multidev")
endforeach()
# hmoe with fewer groups than devices (2 groups of 6): on the 2x2 mesh a group's experts
# span its node's two devices, so the expert rows cross devices inside the node.
add_test(NAME plan_run_md_hmoe2
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_plan_run.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/multidev/md_hmoe2.moe)
set_tests_properties(plan_run_md_hmoe2 PROPERTIES TIMEOUT 120 LABELS "plan;multidev")
# an embedding table sharded by rows (plan.tables = sharded): its table_gather and
# table_scatter move the rows the plan says, and a device holds its rows only.
add_test(NAME plan_run_md_tables
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_plan_run.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/multidev/md_sampled.moe --tables sharded)
set_tests_properties(plan_run_md_tables PROPERTIES TIMEOUT 120 LABELS "plan;multidev")

# hmoe's two-level exchange on 2 nodes x 4 devices: ~1/k of paper's all-to-all bytes,
# fewer bytes between nodes, a shorter predicted step (plan and simulate; tests/test_plan_hmoe.sh).
add_test(NAME plan_hmoe_mesh
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_plan_hmoe.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples)
set_tests_properties(plan_hmoe_mesh PROPERTIES TIMEOUT 60 LABELS "plan;fast")

# Every train/plan setting from the command line: flags and --set reach the run and its JSON
# echoes them, a file's plan { devices } is what runs, check/plan refuse what run refuses,
# --version, moec ir --after shard --device R (tests/test_options.sh).
add_test(NAME cli_options
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_options.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples)
set_tests_properties(cli_options PROPERTIES TIMEOUT 120 LABELS "plan;train")

# The plan as a picture: golden DOT for device subsets, replicas, sharded experts, an
# hmoe on a 2x2 mesh, every collective kind and a search's top 4 side by side
# (tests/plan_dot/*.moe; UPDATE=1 rewrites,
# then look at the rendering: moec plan FILE --format png -o x.png); and the rendering
# through Graphviz's library when moec has it.
file(GLOB MOEC_PLAN_DOT CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/plan_dot/*.moe)
foreach(moe ${MOEC_PLAN_DOT})
  get_filename_component(stem ${moe} NAME_WE)
  add_test(NAME plan_dot_${stem}
           COMMAND ${CMAKE_COMMAND} -DMOEC=$<TARGET_FILE:moec> -DMOE=${moe} -DCMD=plan
                   -P ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/golden.cmake)
  set_tests_properties(plan_dot_${stem} PROPERTIES TIMEOUT 30 LABELS "plan;golden")
endforeach()
add_test(NAME plan_render
         COMMAND sh -c "\"$1\" --version | grep -q 'features:' && \"$1\" plan \"$2\" --devices 4 --format svg -o plan_render.svg && grep -q '<svg' plan_render.svg && \"$1\" plan \"$2\" --devices 4 --format png -o plan_render.png && head -c 8 plan_render.png | od -c | grep -q 'P   N   G' && echo rendered"
                 sh $<TARGET_FILE:moec> ${MOEC_PLAN_EX})
set_tests_properties(plan_render PROPERTIES LABELS plan PASS_REGULAR_EXPRESSION "rendered")

# moec plan --search: lm_moe256h on 8 devices in 2 nodes, ranked, the winner runs; the cost
# model's routing (--skew: balanced faster than contiguous), --cluster, --profile refusals
# (tests/test_plan_search.sh).
add_test(NAME plan_search
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_plan_search.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples)
set_tests_properties(plan_search PROPERTIES TIMEOUT 300 LABELS "plan;multidev")

# moec calibrate --quick writes a profile that plan reads (its constants in the cost model).
add_test(NAME calibrate_profile
         COMMAND sh -c "\"$1\" calibrate --quick -o \"$3\" && \"$1\" plan \"$2\" --profile \"$3\""
                 sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe
                 ${CMAKE_CURRENT_BINARY_DIR}/calibrate_profile.json)
set_tests_properties(calibrate_profile PROPERTIES TIMEOUT 120 LABELS "plan;fast"
                     PASS_REGULAR_EXPRESSION "cost model \\(calibrated\\): [0-9.e+]+ GFLOP/s")

# moec calibrate's repeated rounds keep each instruction's least time (tests/test_profile.c).
add_executable(test_profile ${CMAKE_CURRENT_SOURCE_DIR}/test_profile.c)
target_link_libraries(test_profile PRIVATE moeccore)
target_compile_options(test_profile PRIVATE ${MOEC_WARN})
add_test(NAME calibrate_keep_min COMMAND test_profile)
set_tests_properties(calibrate_keep_min PROPERTIES TIMEOUT 30 LABELS "plan;fast")

# The in-situ kernel factors: written, read, applied to every op, a malformed table refused
# (tests/test_calibrate.sh).
add_test(NAME calibrate_kernels
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_calibrate.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples)
set_tests_properties(calibrate_kernels PROPERTIES TIMEOUT 180 LABELS "plan")

# mpirun -np 2 moec calibrate --mpi: the MPI ranks' collectives added to a profile, read by
# moec plan --mpi (tests/test_calibrate_mpi.sh; exit 77 without mpirun).
add_test(NAME calibrate_mpi
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_calibrate_mpi.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples)
set_tests_properties(calibrate_mpi PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77
                     LABELS "plan;multidev")

# moec plan --memory: the arena's peak and its largest tensors (tests/test_plan_memory.sh)
add_test(NAME plan_memory_listing
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_plan_memory.sh $<TARGET_FILE:moec>
                 ${MOEC_PLAN_EX})
set_tests_properties(plan_memory_listing PROPERTIES TIMEOUT 60 LABELS "plan;fast")
