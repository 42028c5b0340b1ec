# kernels.cmake: dense CPU kernels (forward values against reference loops, f32
# vs f64, dropout, determinism) and every dense op's gradient against finite
# differences in float64 (tests/gradcheck.h, shared with the MoE ops' tests).
foreach(t test_kernels_dense test_gradcheck_dense)
  add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c)
  target_link_libraries(${t} PRIVATE moeccore)
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
endforeach()
add_test(NAME kernels_dense COMMAND test_kernels_dense)
add_test(NAME gradcheck_dense COMMAND test_gradcheck_dense)
# one BLAS thread: timings and results independent of the machine's core count
set_tests_properties(kernels_dense gradcheck_dense PROPERTIES TIMEOUT 60 LABELS kernels
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
# the packed-weight float32 GEMM of the LSTM's recurrence (runtime/gemm_pack.c): every
# path this CPU has against a double reference, the same bits on each
add_executable(test_gemm_pack ${CMAKE_CURRENT_SOURCE_DIR}/test_gemm_pack.c)
target_link_libraries(test_gemm_pack PRIVATE moeccore)
target_compile_options(test_gemm_pack PRIVATE ${MOEC_WARN})
add_test(NAME gemm_pack COMMAND test_gemm_pack)
set_tests_properties(gemm_pack PROPERTIES TIMEOUT 30 LABELS "kernels;fast")
