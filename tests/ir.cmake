# ir.cmake: tests of the IR (shape rules, builder, printer, pass
# manager) and the golden `moec ir` outputs in tests/ir_golden.
add_executable(test_ir ${CMAKE_CURRENT_SOURCE_DIR}/test_ir.c)
target_link_libraries(test_ir PRIVATE moeccore)
target_compile_options(test_ir PRIVATE ${MOEC_WARN})
add_test(NAME ir_unit COMMAND test_ir)
set_tests_properties(ir_unit PROPERTIES TIMEOUT 30 LABELS ir)

# Golden tests: `moec ir FILE ARGS` must print FILE's .expected exactly. ARGS come
# from a line `# moec-ir-args: ...` in the .moe file. Regenerate with
#   UPDATE=1 ctest -R ir_golden     (then read every changed .expected by eye)
file(GLOB MOEC_IR_GOLDEN CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/*.moe)
foreach(moe ${MOEC_IR_GOLDEN})
  get_filename_component(stem ${moe} NAME_WE)
  add_test(NAME ir_golden_${stem}
           COMMAND ${CMAKE_COMMAND} -DMOEC=$<TARGET_FILE:moec> -DMOE=${moe}
                   -P ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/golden.cmake)
  set_tests_properties(ir_golden_${stem} PROPERTIES TIMEOUT 30 LABELS "ir;golden")
endforeach()

# The command line: --help lists the passes; an unknown pass is exit 2 naming the
# valid ones; --eval skips autodiff.
add_test(NAME ir_cli_help COMMAND moec ir --help)
set_tests_properties(ir_cli_help PROPERTIES LABELS ir
                     PASS_REGULAR_EXPRESSION "passes, in order:.*build.*verify.*autodiff")
add_test(NAME ir_cli_unknown_pass
         COMMAND sh -c "\"$1\" ir \"$2\" --after nope 2>&1; echo rc=$?" sh
                 $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/dense_lm.moe)
set_tests_properties(ir_cli_unknown_pass PROPERTIES LABELS ir
                     PASS_REGULAR_EXPRESSION "unknown pass 'nope'.*valid passes: build, verify.*rc=2")
add_test(NAME ir_cli_eval
         COMMAND sh -c "\"$1\" ir \"$2\" --eval --after autodiff | grep -c '^  bwd'; exit 0" sh
                 $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/dense_lm.moe)
set_tests_properties(ir_cli_eval PROPERTIES LABELS ir PASS_REGULAR_EXPRESSION "^0\n$")
add_test(NAME ir_cli_no_file COMMAND sh -c "\"$1\" ir; test $? -eq 2" sh $<TARGET_FILE:moec>)
set_tests_properties(ir_cli_no_file PROPERTIES LABELS ir)

# Every example builds, verifies and differentiates (`moec ir --after autodiff`).
file(GLOB MOEC_IR_EXAMPLES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/../examples/*.moe)
foreach(moe ${MOEC_IR_EXAMPLES})
  get_filename_component(stem ${moe} NAME_WE)
  add_test(NAME ir_example_${stem} COMMAND moec ir ${moe} --after autodiff)
  set_tests_properties(ir_example_${stem} PROPERTIES TIMEOUT 30 LABELS ir
                       PASS_REGULAR_EXPRESSION "grads \\(d loss / d param\\)")
endforeach()

# docs/ir.md's op tables follow ir/ops.def's comments (fix: python3 tests/ir_golden/ops_doc.py).
find_program(MOEC_PYTHON3 python3)
if(MOEC_PYTHON3)
  add_test(NAME ir_docs_ops COMMAND ${MOEC_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/ir_golden/ops_doc.py --check)
  set_tests_properties(ir_docs_ops PROPERTIES LABELS ir)
endif()
