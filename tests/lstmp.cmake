# lstmp.cmake: lstm(proj=) trained end to end (tests/test_lstmp.sh): devices, recompute,
# interpreter and resume agree. Its gradients: test_gradcheck_dense, torch_ref*_lstmp.
add_test(NAME train_lstmp COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_lstmp.sh $<TARGET_FILE:moec>)
set_tests_properties(train_lstmp PROPERTIES TIMEOUT 60 LABELS "train")
