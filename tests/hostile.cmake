# hostile.cmake: hostile inputs and failures (tests/test_hostile.sh): sizes that
# overflow, non-regular paths, checkpoint step counters, save paths and strict JSON
# headers, divergence, write errors, incomplete checkpoints, out-of-range flags,
# compile time of huge graphs, a stopped MPI rank, MPI ranks on different inputs. The C halves live in
# test_safetensors, test_data and the sema/syntax golden files.
foreach(case sizes paths steps files diverge writes resume compile)
  add_test(NAME hostile_${case}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_hostile.sh $<TARGET_FILE:moec> ${case})
  set_tests_properties(hostile_${case} PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                       LABELS "hostile")
endforeach()
set_tests_properties(hostile_sizes hostile_compile PROPERTIES LABELS "hostile;fast")
# many runs each (20-60 s on a loaded machine)
set_tests_properties(hostile_diverge hostile_writes hostile_resume PROPERTIES TIMEOUT 300)
add_test(NAME hostile_mpi
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_hostile.sh $<TARGET_FILE:moec> mpi)
set_tests_properties(hostile_mpi PROPERTIES TIMEOUT 240 SKIP_RETURN_CODE 77 LABELS "hostile;mpi")
add_test(NAME hostile_mpi_inputs
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_hostile.sh $<TARGET_FILE:moec> mpi_inputs)
set_tests_properties(hostile_mpi_inputs PROPERTIES TIMEOUT 240 SKIP_RETURN_CODE 77
                     LABELS "hostile;mpi")
