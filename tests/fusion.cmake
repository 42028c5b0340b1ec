# fusion.cmake: elementwise fusion and the LLVM JIT (issue 6; docs/fusion.md).
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
