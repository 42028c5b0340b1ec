# nmt.cmake: translation models end to end (tests/test_nmt.sh on tests/nmt/): 1 device =
# 2 in-process devices = 2 MPI ranks in training; moec translate (determinism, order, bad
# input); moec eval (perplexity and BLEU).
foreach(case devices translate eval)
  add_test(NAME nmt_${case} COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_nmt.sh
                                    $<TARGET_FILE:moec> ${case})
  set_tests_properties(nmt_${case} PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 LABELS "train;nmt")
endforeach()
# bench/nmt_torch.py (the PyTorch model of bench/nmt_compare.sh): moec eval of its
# checkpoint gives its own perplexity, so it is the same model on the same data.
set(MOEC_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with torch and numpy")
add_test(NAME nmt_torch_bench COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_nmt_torch.sh
                                      $<TARGET_FILE:moec> ${MOEC_TORCH_PYTHON} ${PROJECT_SOURCE_DIR})
set_tests_properties(nmt_torch_bench PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
                                                LABELS "nmt;torch")
