# sampled.cmake: the importance-sampled softmax (tests/test_sampled.c): the log-uniform
# sampler, the loss against the formula, samples = vocab equal to softmax_xent,
# evaluation exact, finite differences in float64, a device split, and the row-sparse
# all-reduce of gradients on in-process devices. The PyTorch reference of a model with a
# sampled softmax is torch_ref_sampled (torch.cmake).
add_executable(test_sampled ${CMAKE_CURRENT_SOURCE_DIR}/test_sampled.c)
target_link_libraries(test_sampled PRIVATE moeccore)
target_compile_options(test_sampled PRIVATE ${MOEC_WARN})
add_test(NAME sampled_softmax COMMAND test_sampled)
set_tests_properties(sampled_softmax PROPERTIES TIMEOUT 60 LABELS "kernels;fast"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
