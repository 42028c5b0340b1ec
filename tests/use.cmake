# use.cmake: using a trained model and watching training, end to end
# (tests/test_use.sh: lr schedules, gradient accumulation, interrupted and time-bounded runs, sample and
# score, plot, trace, tokenizers).
foreach(case schedule accumulate sample_score plot)
  add_test(NAME use_${case} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_use.sh
                                    $<TARGET_FILE:moec> ${PROJECT_SOURCE_DIR} ${case})
  set_tests_properties(use_${case} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 LABELS "train;use")
endforeach()
foreach(case interrupt max_time trace tokenize)
  add_test(NAME use_${case} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_use.sh
                                    $<TARGET_FILE:moec> ${PROJECT_SOURCE_DIR} ${case})
  set_tests_properties(use_${case} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 LABELS "train;use"
                                              ENVIRONMENT "MOEC_DATA_DIR=${MOEC_DATA_DIR}")
endforeach()
# SIGINT to mpirun under `mpirun -np 2 moec run --save` (OpenMPI relays it as SIGTERM)
add_test(NAME use_interrupt_mpi COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_use.sh
                                        $<TARGET_FILE:moec> ${PROJECT_SOURCE_DIR} interrupt_mpi)
set_tests_properties(use_interrupt_mpi PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
                                                  LABELS "train;use;mpi")
