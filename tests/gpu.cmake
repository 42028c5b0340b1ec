# gpu.cmake: the CUDA backend's tests (tests/gpu/). Always built; without a GPU, or
# with moec built without CUDA (MOEC_CUDA=OFF), they print "SKIP: ..." and exit 77,
# which ctest reports as skipped. On a GPU machine: bench/gpu.sh runs them, then
# compute-sanitizer and the benchmarks.
foreach(t test_cuda_ops test_cuda_model test_cuda_nccl)
  add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/gpu/${t}.c)
  target_link_libraries(${t} PRIVATE moeccore)
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
endforeach()
add_test(NAME cuda_ops COMMAND test_cuda_ops)
add_test(NAME cuda_model COMMAND test_cuda_model)
add_test(NAME cuda_nccl COMMAND test_cuda_nccl)
set_tests_properties(cuda_ops cuda_model cuda_nccl PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600 LABELS gpu
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")

# Training on the GPU (docs/cuda.md, "Training on a GPU"): the device optimizer against
# optim.c bit for bit, and moec run/eval/grad --backend cuda against the cpu backend.
add_executable(test_cuda_optim ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_cuda_optim.c)
target_link_libraries(test_cuda_optim PRIVATE moeccore)
target_compile_options(test_cuda_optim PRIVATE ${MOEC_WARN})
add_test(NAME cuda_optim COMMAND test_cuda_optim)
add_test(NAME cuda_train COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_cuda_train.sh $<TARGET_FILE:moec>)
# test_cuda_examples.sh: every example model, 8 steps cuda = cpu (and 4 / 2 devices)
add_test(NAME cuda_examples COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_cuda_examples.sh
                                    $<TARGET_FILE:moec>)
set_tests_properties(cuda_optim cuda_train cuda_examples PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600 LABELS gpu
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")

# test_cuda_fused: fused elementwise groups on the GPU (codegen/nvrtc.c): unfused = fused
# (NVRTC) = fused (interpreter kernel) bit for bit over 5 training steps, and the kernel
# cache (memory, then disk after dropping it). Without a GPU: SKIP, 77.
add_executable(test_cuda_fused ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_cuda_fused.c)
target_link_libraries(test_cuda_fused PRIVATE moeccore)
target_compile_options(test_cuda_fused PRIVATE ${MOEC_WARN})
add_test(NAME cuda_fused COMMAND test_cuda_fused ${CMAKE_CURRENT_SOURCE_DIR}/fusion_dense.moe
                                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe
                                 ${CMAKE_CURRENT_SOURCE_DIR}/../bench/fusion_dense_big.moe)
set_tests_properties(cuda_fused PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600 LABELS "gpu;fusion"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")

# test_cuda_link.sh (no GPU needed): a probe linked with --no-as-needed does not need the
# link-only libcuda.so (the toolkit's lib64/stubs); moec needs neither libcuda nor two CUDA runtimes, and calls NCCL.
if(MOEC_CUDA_ENABLED)
  add_executable(cuda_link_probe ${CMAKE_CURRENT_SOURCE_DIR}/gpu/cuda_link_probe.c)
  target_link_libraries(cuda_link_probe PRIVATE moeccore)
  target_compile_options(cuda_link_probe PRIVATE ${MOEC_WARN})
  target_link_options(cuda_link_probe PRIVATE LINKER:--no-as-needed)
  add_test(NAME cuda_link COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_cuda_link.sh
                                  $<TARGET_FILE:moec> $<TARGET_FILE:cuda_link_probe>)
  set_tests_properties(cuda_link PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 30 LABELS "gpu;fast"
                       WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endif()
