# comm.cmake: the communicator (runtime/comm*.c). test_comm:
# in-process threads, n = 1..4, and the failure cases (abort, hang, early return,
# mismatches). comm_mpi_*: the MPI backend under `mpirun -np 2` and `-np 4
# --oversubscribe` (test_comm_mpi --driver starts mpirun and checks exit status,
# messages and time; exit 77 = skipped without mpirun or MPI). comm_bench: the
# bandwidth benchmark (bench/comm_bench.c), built into build/bench, not a test.
add_executable(test_comm ${CMAKE_CURRENT_SOURCE_DIR}/test_comm.c)
add_executable(test_comm_mpi ${CMAKE_CURRENT_SOURCE_DIR}/test_comm_mpi.c)
foreach(t test_comm test_comm_mpi)
  target_include_directories(${t} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
  target_link_libraries(${t} PRIVATE moeccore)
endforeach()
if(MPIEXEC_EXECUTABLE)
  target_compile_definitions(test_comm_mpi PRIVATE MOEC_MPIEXEC="${MPIEXEC_EXECUTABLE}")
endif()
add_test(NAME comm_inproc COMMAND test_comm)
set_tests_properties(comm_inproc PROPERTIES TIMEOUT 30 LABELS comm)
# (case, ranks): the normal checks on 2 and 4 ranks; the failures once each
foreach(cn basic:2 basic:4 chunk:3 badcount:3 die:2 die_nokill:4 hang:2 mismatch:4)
  string(REPLACE ":" ";" cn ${cn})
  list(GET cn 0 case)
  list(GET cn 1 np)
  add_test(NAME comm_mpi_${case}_np${np} COMMAND test_comm_mpi --driver ${np} ${case})
  set_tests_properties(comm_mpi_${case}_np${np} PROPERTIES TIMEOUT 40 SKIP_RETURN_CODE 77
                       LABELS comm)
endforeach()

add_executable(comm_bench ${CMAKE_SOURCE_DIR}/bench/comm_bench.c)
target_compile_options(comm_bench PRIVATE ${MOEC_WARN})
target_link_libraries(comm_bench PRIVATE moeccore)
set_target_properties(comm_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
