# frontend_sema.cmake: tests of the semantic checks, the model summary and
# `moec check`.
#   sema_<name>        tests/sema/<name>.moe must give exactly the diagnostics
#                      its "# expect:" lines list (run_sema: fe_parse + fe_sema)
#   shapes             tests/test_shapes.c: inferred types, resolved arguments,
#                      Config, parameter and op counts (the paper's figures)
#   check_<example>    `moec check --json` succeeds on every examples/*.moe
#   check_paper_text   the paper-sized example prints 37.8M params and 8.4M ops
#   paper_tables       examples/paper/: Tables 7 and 8, parameters and ops per timestep
add_executable(run_sema ${CMAKE_CURRENT_SOURCE_DIR}/sema/run_sema.c)
target_link_libraries(run_sema PRIVATE moeccore)
target_compile_options(run_sema PRIVATE ${MOEC_WARN})

file(GLOB MOEC_SEMA_CASES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/sema/*.moe)
foreach(moe ${MOEC_SEMA_CASES})
  get_filename_component(stem ${moe} NAME_WE)
  add_test(NAME sema_${stem} COMMAND run_sema ${moe})
  set_tests_properties(sema_${stem} PROPERTIES TIMEOUT 10 LABELS "frontend;sema")
endforeach()

add_executable(test_shapes ${CMAKE_CURRENT_SOURCE_DIR}/test_shapes.c)
target_link_libraries(test_shapes PRIVATE moeccore)
target_compile_options(test_shapes PRIVATE ${MOEC_WARN})
target_compile_definitions(test_shapes PRIVATE
  MOEC_EXAMPLES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/../examples")
add_test(NAME shapes COMMAND test_shapes)
set_tests_properties(shapes PROPERTIES TIMEOUT 30 LABELS "frontend;sema")

file(GLOB MOEC_EXAMPLES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/../examples/*.moe)
foreach(moe ${MOEC_EXAMPLES})
  get_filename_component(stem ${moe} NAME_WE)
  add_test(NAME check_${stem} COMMAND moec check --json ${moe})
  set_tests_properties(check_${stem} PROPERTIES TIMEOUT 10 LABELS "frontend;check"
                       PASS_REGULAR_EXPRESSION "\"params_core\": [0-9]+, \"ops_per_timestep\": [0-9]+, \"layers\": \\[")
endforeach()

add_test(NAME check_paper_text COMMAND moec check ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper_moe32_1b.moe)
set_tests_properties(check_paper_text PROPERTIES TIMEOUT 10 LABELS "frontend;check"
  PASS_REGULAR_EXPRESSION "params_core +37,834,752 \\(37\\.8M\\).*ops_per_timestep +8,421,376 \\(8\\.4M\\)")

# paper_tables: every examples/paper/ file's counts (`moec check --json`) against the
# paper's Tables 7 and 8, to the printed digit (tests/paper_tables.py types the tables).
add_test(NAME paper_tables COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/paper_tables.py
                                   $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/../examples/paper)
set_tests_properties(paper_tables PROPERTIES TIMEOUT 60 LABELS "frontend;check")

# Errors: a bad file prints file:line:col diagnostics and exits 1.
add_test(NAME check_error_exit COMMAND moec check ${CMAKE_CURRENT_SOURCE_DIR}/sema/unknown_layer.moe)
set_tests_properties(check_error_exit PROPERTIES TIMEOUT 10 LABELS "frontend;check" WILL_FAIL TRUE)
add_test(NAME check_help COMMAND moec check --help)
set_tests_properties(check_help PROPERTIES TIMEOUT 10 LABELS "frontend;check"
  PASS_REGULAR_EXPRESSION "usage: moec check FILE")
