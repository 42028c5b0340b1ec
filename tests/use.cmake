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
