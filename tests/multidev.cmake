# multidev.cmake: the runtime over N devices (runtime/multidev.c,
# runtime/kernels_comm.c, docs/multidev.md). tests/test_multidev.sh: the same losses on
# 1, 2, 3, 4 in-process devices and 2, 4 MPI ranks (paper contiguous / round_robin,
# data_parallel), hmoe layers (strategies paper, hmoe, data_parallel) and batchwise gating,
# experts = balanced from measured loads, checkpoints across device counts,
# --f64 runs equal to double rounding (md_small and examples/lm_moe32.moe), the error cases,
# place ... : on(...) device subsets in-process (subsets) and on MPI ranks (subsets_mpi),
# the factored optimizer with sharded experts (factored), memory per device = plan (memory),
# both with sharded hmoe groups (hmoe_factored, hmoe_memory); a sampled softmax and an
# embedding whose gradients' touched rows travel (sparse_all_reduce) (sampled); moe
# capacity: the global drop decision and expert rows sized by it (capacity); an embedding
# table sharded by rows over the devices (tables).
foreach(case paper round_robin data_parallel hmoe batchwise balanced mpi reshard f64 errors subsets subsets_mpi factored memory hmoe_factored hmoe_memory sampled capacity tables)
  add_test(NAME multidev_${case}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_multidev.sh $<TARGET_FILE:moec> ${case})
  set_tests_properties(multidev_${case} PROPERTIES TIMEOUT 150 SKIP_RETURN_CODE 77 LABELS "multidev")
endforeach()
# tables: 24 runs (1..4 devices, MPI, checkpoints, evaluations, memory on 1, 2, 4): ~2 min here,
# more under the sanitizers on a loaded machine
set_tests_properties(multidev_tables PROPERTIES TIMEOUT 600)
# MPI jobs: ~40 s here alone; a rank waits on the others, so a loaded machine (a build
# beside the suite) stretches them past 150 s
set_tests_properties(multidev_mpi multidev_subsets_mpi PROPERTIES TIMEOUT 300)
