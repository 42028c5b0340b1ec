# threads.cmake: the worker threads (runtime/threads.c): the same training bits with 1,
# 2 and 3 threads, float32 and --f64 (tests/test_threads.sh); the optimizer's
# threaded update against the element-by-element one is in test_optim (train.cmake).
add_test(NAME threads_equiv COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_threads.sh $<TARGET_FILE:moec>)
set_tests_properties(threads_equiv PROPERTIES TIMEOUT 120 LABELS "train")
