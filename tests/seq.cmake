# seq.cmake: translation models' pieces.
# Real data: MOEC_DATA_DIR (default ../shared/data beside the checkout); tests that need it
# skip (77) without it.
set(MOEC_DATA_DIR "${CMAKE_CURRENT_SOURCE_DIR}/../../shared/data" CACHE PATH
    "the shared data folder (en-fr, tiny-shakespeare, PTB)")
#   gradcheck_seq : the sequence ops (bmm, attention scores, masked softmax, columns, the
#                   padded cross-entropy), attention layers (additive / product, masked or
#                   not) and a whole small encoder-decoder with MoE layers, against finite
#                   differences in float64; their float32 kernels against float64
foreach(t test_gradcheck_seq)
  add_executable(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c)
  target_link_libraries(${t} PRIVATE moeccore)
  target_compile_options(${t} PRIVATE ${MOEC_WARN})
endforeach()
add_test(NAME gradcheck_seq COMMAND test_gradcheck_seq)
set_tests_properties(gradcheck_seq PROPERTIES TIMEOUT 60 LABELS "kernels;seq;fast"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
#   kernels_seq   : the sequence ops' CPU kernels against reference loops (f32, f64): exact
#                   zeros at padding, the padded mean, a bad target id's message
add_executable(test_kernels_seq ${CMAKE_CURRENT_SOURCE_DIR}/test_kernels_seq.c)
target_link_libraries(test_kernels_seq PRIVATE moeccore)
target_compile_options(test_kernels_seq PRIVATE ${MOEC_WARN})
add_test(NAME kernels_seq COMMAND test_kernels_seq)
set_tests_properties(kernels_seq PROPERTIES TIMEOUT 30 LABELS "kernels;seq;fast"
                     ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
#   bleu          : corpus BLEU-4 (runtime/bleu.c) on hand-worked cases, and its tokenizer
add_executable(test_bleu ${CMAKE_CURRENT_SOURCE_DIR}/test_bleu.c)
target_link_libraries(test_bleu PRIVATE moeccore)
target_compile_options(test_bleu PRIVATE ${MOEC_WARN})
add_test(NAME bleu COMMAND test_bleu)
set_tests_properties(bleu PROPERTIES TIMEOUT 30 LABELS "seq;fast")
#   bpe           : the byte-pair encoder (runtime/bpe.c): hand-worked merges, round trips,
#                   UTF-8 safety, serialisation and its errors
#   bpe_en_fr     : 8000 ids learned from ../shared/data/en-fr in about a second, the
#                   valid set round-tripping (skipped without the data)
add_executable(test_bpe ${CMAKE_CURRENT_SOURCE_DIR}/test_bpe.c)
target_link_libraries(test_bpe PRIVATE moeccore)
target_compile_options(test_bpe PRIVATE ${MOEC_WARN})
add_test(NAME bpe COMMAND test_bpe)
add_test(NAME bpe_en_fr COMMAND test_bpe --corpus ${MOEC_DATA_DIR})
set_tests_properties(bpe PROPERTIES TIMEOUT 30 LABELS "seq;fast")
set_tests_properties(bpe_en_fr PROPERTIES TIMEOUT 60 LABELS "seq" SKIP_RETURN_CODE 77)
#   parallel       : parallel corpora (runtime/parallel.c) on small made-up files: errors with
#                    file:line, pairs left out and reported, buckets within the token budget,
#                    padding and the shifted target, determinism
#   parallel_en_fr : ../shared/data/en-fr read, encoded and batched (skipped without it)
add_executable(test_parallel ${CMAKE_CURRENT_SOURCE_DIR}/test_parallel.c)
target_link_libraries(test_parallel PRIVATE moeccore)
target_compile_options(test_parallel PRIVATE ${MOEC_WARN})
add_test(NAME parallel COMMAND test_parallel)
add_test(NAME parallel_en_fr COMMAND test_parallel --corpus ${MOEC_DATA_DIR})
set_tests_properties(parallel PROPERTIES TIMEOUT 30 LABELS "seq;fast")
set_tests_properties(parallel_en_fr PROPERTIES TIMEOUT 60 LABELS "seq" SKIP_RETURN_CODE 77)
#   bench_attention : bench/attention_cpu.c builds and runs on a tiny shape (the benchmark
#                     itself: its header comment)
add_executable(attention_cpu ${CMAKE_SOURCE_DIR}/bench/attention_cpu.c)
target_link_libraries(attention_cpu PRIVATE moeccore)
target_compile_options(attention_cpu PRIVATE ${MOEC_WARN})
set_target_properties(attention_cpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
add_test(NAME bench_attention COMMAND attention_cpu 2 3 4 8 5 1)
set_tests_properties(bench_attention PROPERTIES TIMEOUT 30 LABELS "bench;seq;fast"
                     PASS_REGULAR_EXPRESSION "additive +forward +[0-9.]+ +forward\\+backward")
