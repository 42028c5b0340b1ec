# bench.cmake: keeps bench/ building and running (the benchmarks themselves are
# not timed tests: bench/run_lm_bench.sh runs them). op_profile is built with the
# project's warnings, and run for one step on a small model (optim_bench: one update
# of two experts); lm_torch.py runs two
# steps of a tiny configuration (skipped without torch); run_experts_bench.sh its A/B
# mode on 4 experts.
add_executable(op_profile ${CMAKE_SOURCE_DIR}/bench/op_profile.c)
target_link_libraries(op_profile PRIVATE moeccore)
target_compile_options(op_profile PRIVATE ${MOEC_WARN})
set_target_properties(op_profile PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
add_test(NAME bench_op_profile COMMAND op_profile ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref.moe 1)
set_tests_properties(bench_op_profile PROPERTIES TIMEOUT 60 LABELS bench
                     PASS_REGULAR_EXPRESSION "MoE layer 'm': [0-9.]+ ms/step")
add_executable(optim_bench ${CMAKE_SOURCE_DIR}/bench/optim_bench.c)
target_link_libraries(optim_bench PRIVATE moeccore)
target_compile_options(optim_bench PRIVATE ${MOEC_WARN})
set_target_properties(optim_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
add_test(NAME bench_optim COMMAND optim_bench 2 1)
set_tests_properties(bench_optim PROPERTIES TIMEOUT 30 LABELS "bench;fast"
                     PASS_REGULAR_EXPRESSION "factored +[0-9.]+ ms/step")
add_test(NAME bench_optim_fold COMMAND optim_bench --fold 3 2 1)
set_tests_properties(bench_optim_fold PROPERTIES TIMEOUT 30 LABELS "bench;fast"
                     PASS_REGULAR_EXPRESSION "factored, folded +[0-9.]+ ms/step .* floor \\(8 B/param\\)")
set(MOEC_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python with torch and numpy for the PyTorch reference tests (Debian's python3-torch)")
add_test(NAME bench_lm_torch
         COMMAND sh -c "if ! '${MOEC_TORCH_PYTHON}' -c 'import torch' 2>/dev/null; then echo 'SKIP: no torch in ${MOEC_TORCH_PYTHON}'; exit 77; fi; exec '${MOEC_TORCH_PYTHON}' '${CMAKE_SOURCE_DIR}/bench/lm_torch.py' --vocab 100 --dim 16 --experts 4 --hidden 8 --k 2 --batch 4 --unroll 5 --steps 2 --warmup 1 --threads 1 --json")
set_tests_properties(bench_lm_torch PROPERTIES TIMEOUT 60 LABELS bench SKIP_RETURN_CODE 77
                     PASS_REGULAR_EXPRESSION "\"tokens_per_s\"")
# run_experts_bench.sh's A/B mode on 4 experts, one step: a before and an after row
add_test(NAME bench_experts_ab
         COMMAND env OP_PROFILE=${CMAKE_BINARY_DIR}/op_profile
                 bash ${CMAKE_SOURCE_DIR}/bench/run_experts_bench.sh --experts 4 --steps 1
                 --baseline ${CMAKE_BINARY_DIR}/op_profile)
set_tests_properties(bench_experts_ab PROPERTIES TIMEOUT 120 LABELS bench
                     PASS_REGULAR_EXPRESSION "adam +before +4 .*adam +after +4 ")
