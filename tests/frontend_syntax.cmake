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

# End to end through the driver: `moec check` prints the syntax error with its
# caret and exits non-zero.
add_test(NAME syntax_moec_check
         COMMAND sh -c "out=$(\"$0\" check \"$1\" 2>&1); rc=$?; printf '%s\\n' \"$out\"; \
test $rc -ne 0 && printf '%s' \"$out\" | grep -q \"missing_equals.moe:2:5: error: expected '=' after 'x'\""
                 $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/syntax/missing_equals.moe)
set_tests_properties(syntax_moec_check PROPERTIES TIMEOUT 30 LABELS "frontend;syntax")
