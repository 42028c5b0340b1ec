# nmt.cmake: translation models end to end (tests/test_nmt.sh on tests/nmt/): 1 device =
# 2 in-process devices = 2 MPI ranks in training; moec translate (determinism, order, bad
# input); moec eval (perplexity and BLEU).
foreach(case devices translate eval)
  add_test(NAME nmt_${case} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_nmt.sh
                                    $<TARGET_FILE:moec> ${case})
  set_tests_properties(nmt_${case} PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 LABELS "train;nmt")
endforeach()
