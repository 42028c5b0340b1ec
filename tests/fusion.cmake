# fusion.cmake: elementwise fusion and the LLVM JIT (docs/fusion.md).
#   test_jit    : fused kernels bit-identical to the unfused ones (f32, f64), the
#                 kernel cache, host JIT = interpreter, host overhead per call
#   test_fusion : legality (device and recompute boundaries, materialised
#                 intermediates, no cycles)
#   fusion_equiv: moec run --steps 20 --json: fused = unfused and JIT = interpreter,
#                 the same losses bit for bit (lm_moe32 and a dense model)
# All skip (77) without LLVM.
foreach(t test_jit test_fusion)
  add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c)
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
  target_link_libraries(${t} PRIVATE moeccore)
  add_test(NAME ${t} COMMAND ${t})
  set_tests_properties(${t} PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77 LABELS "fusion"
                       ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
endforeach()
add_test(NAME fusion_equiv
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_fusion_equiv.sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/..)
set_tests_properties(fusion_equiv PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS "fusion"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
# test_nvrtc: the CUDA half without a GPU (codegen/nvrtc.c): every fused group of the
# example models, tests/fusion_dense.moe and bench/fusion_dense_big.moe compiles with
# NVRTC to PTX; the same source compiled as host C equals the CPU kernels bit for bit;
# the kernel cache (memory, disk, damaged file).
add_executable(test_nvrtc ${CMAKE_CURRENT_SOURCE_DIR}/test_nvrtc.c)
target_compile_options(test_nvrtc PRIVATE ${MOEC_WARN})
target_link_libraries(test_nvrtc PRIVATE moeccore ${CMAKE_DL_LIBS})
file(GLOB MOEC_NVRTC_MODELS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/../examples/*.moe)
add_test(NAME test_nvrtc
         COMMAND test_nvrtc ${CMAKE_C_COMPILER} ${CMAKE_CURRENT_SOURCE_DIR}/.. ${MOEC_NVRTC_MODELS}
                 ${CMAKE_CURRENT_SOURCE_DIR}/fusion_dense.moe
                 ${CMAKE_CURRENT_SOURCE_DIR}/../bench/fusion_dense_big.moe)
set_tests_properties(test_nvrtc PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS "fusion"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
# fold_dw: the few-row experts' weight gradient folded into the optimizer trains bit for
# bit as unfused: Adam and factored, 1 and 2 threads, clipping on and off, 2 devices,
# resumed (tests/test_fold_dw.sh on tests/fold_dw.moe). Skips (77) without LLVM.
add_test(NAME fold_dw
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_fold_dw.sh $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/..)
set_tests_properties(fold_dw PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 LABELS "fusion;optim")
