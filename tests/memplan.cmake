# memplan.cmake: memory planning and recomputation (docs/memory.md).
#   memplan_models : the validator on every example model (no two live tensors share a
#                    byte), recompute none and all; arena < sum of tensors
#   memplan_lm     : planned = unplanned = NaN-poisoned = recompute [m] = all, bit for bit;
#                    the drop the report prints is the drop allocated; auto fits its budget
#   memplan_train_*: `moec run` losses over 20 steps, bit for bit, with and without the
#                    plan, with a poisoned arena, with recompute = [m] and all; _hmoe:
#                    the expert gradients' slices as views (planned) = copies (not)
add_executable(test_memplan ${CMAKE_CURRENT_SOURCE_DIR}/test_memplan.c)
target_include_directories(test_memplan PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(test_memplan PRIVATE ${MOEC_WARN})
target_link_libraries(test_memplan PRIVATE moeccore)
file(GLOB MOEC_MEMPLAN_MODELS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/../examples/*.moe
     ${CMAKE_CURRENT_SOURCE_DIR}/../bench/*.moe)
add_test(NAME memplan_models COMMAND test_memplan ${MOEC_MEMPLAN_MODELS})
add_test(NAME memplan_lm COMMAND test_memplan --lm ${CMAKE_CURRENT_SOURCE_DIR}/memplan_lm.moe)
# memplan_expert_bwd: plan.expert_bwd = fused (the experts' hidden gradient GEMM and relu's
# backward in one op, over the hidden activation) against split: the peak drops by at least
# the hidden gradients' bytes, the validator passes, the same bits (tests/expert_bwd.moe)
add_test(NAME memplan_expert_bwd
         COMMAND test_memplan --expert-bwd ${CMAKE_CURRENT_SOURCE_DIR}/expert_bwd.moe)
set_tests_properties(memplan_models memplan_lm memplan_expert_bwd PROPERTIES TIMEOUT 60
                     LABELS "memplan")
add_test(NAME memplan_train_plan
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_memplan.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/memplan_lm.moe plan)
add_test(NAME memplan_train_recompute
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_memplan.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe32.moe recompute)
# the hmoe's expert gradients as views of the grouped dW (planned) against copies (not)
add_test(NAME memplan_train_hmoe
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_memplan.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/../examples/lm_moe256h.moe plan)
set_tests_properties(memplan_train_plan memplan_train_recompute memplan_train_hmoe PROPERTIES TIMEOUT 120
                     LABELS "memplan")
# memplan_auto_devices: recompute = auto decides per device (B/P rows, expert rows x P,
# after fusion): `moec plan --devices 1|2` with budgets between the two needs
add_test(NAME memplan_auto_devices
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_memplan.sh $<TARGET_FILE:moec>
                 ${CMAKE_CURRENT_SOURCE_DIR}/memplan_lm.moe auto_devices)
set_tests_properties(memplan_auto_devices PROPERTIES TIMEOUT 60 LABELS "memplan")
# expert_bwd: `moec run` with plan.expert_bwd = fused = split, losses and checkpoints bit
# for bit: 1 device (1, 2 threads, poisoned, no fold, resumed), hmoe on 2 and 4 devices
# and 2 MPI ranks, recompute = all (tests/test_expert_bwd.sh)
add_test(NAME expert_bwd COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_expert_bwd.sh
                                 $<TARGET_FILE:moec> ${CMAKE_CURRENT_SOURCE_DIR}/..)
set_tests_properties(expert_bwd PROPERTIES TIMEOUT 240 LABELS "memplan;multidev")
