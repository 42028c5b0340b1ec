# frontend_syntax.cmake: tests of the frontend's syntax half (lexer, parser,
# diagnostics). run_syntax calls fe_parse directly, so these run without the
# moec binary. Golden files: tests/syntax/*.moe, each with its expected
# diagnostics as "# expect: L:C: error: ..." lines; valid files: tests/syntax/ok.
add_executable(run_syntax ${CMAKE_CURRENT_SOURCE_DIR}/syntax/run_syntax.c)
target_link_libraries(run_syntax PRIVATE moeccore)
target_compile_options(run_syntax PRIVATE ${MOEC_WARN})
add_test(NAME syntax_golden COMMAND run_syntax golden ${CMAKE_CURRENT_SOURCE_DIR}/syntax)
add_test(NAME syntax_ok COMMAND run_syntax ok ${CMAKE_CURRENT_SOURCE_DIR}/syntax/ok)
add_test(NAME syntax_ast COMMAND run_syntax ast)
add_test(NAME syntax_display COMMAND run_syntax display)
add_test(NAME syntax_stress COMMAND run_syntax stress)
set_tests_properties(syntax_golden syntax_ok syntax_ast syntax_display syntax_stress
                     PROPERTIES TIMEOUT 60 LABELS "frontend;syntax")

# The libFuzzer target (clang): cmake -DMOEC_FUZZ=ON -DCMAKE_C_COMPILER=clang;
# scripts/fuzz.sh builds and runs it on its own.
if(MOEC_FUZZ)
  set(MOEC_ROOT ${PROJECT_SOURCE_DIR})
  include(${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz.cmake)
endif()
