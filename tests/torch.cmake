# torch.cmake: the independent PyTorch reference. tests/torch_ref.py
# rebuilds a small model in PyTorch from its .moe file, loads the same safetensors
# weights and checks `moec grad`'s loss and every gradient (tolerances in its
# header): the paper's LM (noisy top-k), the other gatings and dense layers, the
# hierarchical MoE, the sampled softmax with appendix C's MoE (no expert biases, a
# sigmoid on its output; `moec grad` writes the samples it drew), and a translation
# model (padding, attention, batchwise and noisy top-k MoE layers in encoder and
# decoder), and LSTMP layers (lstm with proj=, against nn.LSTM(proj_size=)). Skipped
# (exit 77) when the python has no torch (Debian: python3-torch) or when `moec grad`
# says it is not available yet.
# torch_ref_f64_*: the same with `moec grad --f64`, both in double precision (1e-9).
# torch_ref_self_*: a float32 PyTorch run stands in for moec: checks the script
# itself and that a float32 implementation meets the tolerances.
set(MOEC_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Python with torch and numpy for the PyTorch reference tests (Debian's python3-torch)")
foreach(case torch_ref torch_ref_dense torch_ref_hmoe torch_ref_sampled torch_ref_nmt
             torch_ref_lstmp)
  set(moe ${CMAKE_CURRENT_SOURCE_DIR}/${case}.moe)
  string(REPLACE "torch_ref" "torch_ref_self" self ${case})
  string(REPLACE "torch_ref" "torch_ref_f64" f64 ${case})
  if(EXISTS ${MOEC_TORCH_PYTHON})
    add_test(NAME ${case} COMMAND ${MOEC_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref.py
                                  --moec $<TARGET_FILE:moec> --moe ${moe})
    add_test(NAME ${f64} COMMAND ${MOEC_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref.py
                                 --moec $<TARGET_FILE:moec> --moe ${moe} --f64)
    add_test(NAME ${self} COMMAND ${MOEC_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref.py
                                  --moec self --moe ${moe})
  else()
    foreach(t ${case} ${f64} ${self})
      add_test(NAME ${t} COMMAND sh -c "echo 'SKIP: ${MOEC_TORCH_PYTHON} not found (apt-get install python3-torch)'; exit 77")
    endforeach()
  endif()
  set_tests_properties(${case} ${f64} ${self} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                       LABELS "torch;reference")
endforeach()
