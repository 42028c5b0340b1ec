# train.cmake: tests of training: data, safetensors, optimizers (C unit
# tests, no model needed), and end-to-end runs of the moec binary
# (tests/test_train.sh: resume, convergence, grad/eval, error cases).
foreach(t test_data test_safetensors test_optim)
  add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c)
  target_include_directories(${t} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
  target_link_libraries(${t} PRIVATE moeccore)
  add_test(NAME ${t} COMMAND ${t})
  set_tests_properties(${t} PROPERTIES TIMEOUT 180 LABELS "train")
endforeach()
# test_optim_isa: the factored optimizer's AVX-512 and AVX2 row sums against its portable
# loops, bit for bit (skipped on a CPU without AVX2)
add_executable(test_optim_isa ${CMAKE_CURRENT_SOURCE_DIR}/test_optim_isa.c)
target_include_directories(test_optim_isa PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(test_optim_isa PRIVATE ${MOEC_WARN})
target_link_libraries(test_optim_isa PRIVATE moeccore)
add_test(NAME optim_isa COMMAND test_optim_isa)
set_tests_properties(optim_isa PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS "train;fast")
# tokenize_shakespeare: words(spell=chars) on ../shared/data/tinyshakespeare.txt: the test
# split's unknown rate below 2%, every word of the file decoded back (skipped without it)
add_test(NAME tokenize_shakespeare COMMAND test_data --corpus ${MOEC_DATA_DIR})
set_tests_properties(tokenize_shakespeare PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77
                                                     LABELS "train;fast")
foreach(case resume converge grad_eval errors text)
  add_test(NAME train_${case}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_train.sh $<TARGET_FILE:moec> ${case})
  set_tests_properties(train_${case} PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS "train")
endforeach()
# Choosing the backend where CUDA cannot run (GPUs hidden): clear errors, no crash,
# checkpoints kept, --backend cpu over the plan block, the device settings as options
# (tests/test_backend_cli.sh).
add_test(NAME train_backend_cli
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_backend_cli.sh $<TARGET_FILE:moec>)
set_tests_properties(train_backend_cli PROPERTIES TIMEOUT 300 LABELS "train")
# test_guard: a gradient value that is not finite, planted after a step of
# tests/fold_dw.moe (whole gradients, a folded expert dW), stops the update naming the
# first such parameter, before any parameter changes (the guard's scan split over threads)
add_executable(test_guard ${CMAKE_CURRENT_SOURCE_DIR}/test_guard.c)
target_include_directories(test_guard PRIVATE ${CMAKE_SOURCE_DIR})
target_compile_options(test_guard PRIVATE ${MOEC_WARN})
target_link_libraries(test_guard PRIVATE moeccore)
add_test(NAME guard COMMAND test_guard ${CMAKE_CURRENT_SOURCE_DIR}/fold_dw.moe)
set_tests_properties(guard PROPERTIES TIMEOUT 120 LABELS "train;fast")
