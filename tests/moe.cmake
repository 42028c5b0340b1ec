# moe.cmake: the MoE ops and layers: forward kernels against naive
# reference loops (the moe layer against the formula of language.md), dispatch /
# combine round trips, top-k ties, cv2, load estimators, f32 vs f64, determinism;
# and every differentiable MoE op, the moe layer (noisy top-k with and without
# noise, dense softmax gating) and the hmoe layer against finite differences in
# float64 (tests/gradcheck.h).
foreach(t test_kernels_moe test_gradcheck_moe)
  add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c)
  target_link_libraries(${t} PRIVATE moeccore)
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
endforeach()
add_test(NAME kernels_moe COMMAND test_kernels_moe)
add_test(NAME gradcheck_moe COMMAND test_gradcheck_moe)
set_tests_properties(kernels_moe gradcheck_moe PROPERTIES TIMEOUT 60 LABELS "kernels;moe"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
# fastmath.h's float32 polynomials against libm over the kernels' ranges, and the gate
# noise's draws (distribution, float32 vs float64, determinism)
add_executable(test_fastmath ${CMAKE_CURRENT_SOURCE_DIR}/test_fastmath.c)
target_link_libraries(test_fastmath PRIVATE moeccore)
target_compile_options(test_fastmath PRIVATE ${MOEC_WARN})
add_test(NAME fastmath COMMAND test_fastmath)
set_tests_properties(fastmath PROPERTIES TIMEOUT 60 LABELS "kernels;moe;fast")
