# fuzz.cmake: the libFuzzer targets (clang only): fuzz_frontend, fuzz_safetensors,
# fuzz_text, fuzz_bin. The frontend sources, the runtime's readers, common.c and a
# private flex/bison run are compiled straight into them with the sanitizers, so
# the main library's flags stay as they are. Used by
# the main build (-DMOEC_FUZZ=ON) and by the standalone tests/fuzz project
# that scripts/fuzz.sh configures (so a broken file elsewhere in the tree does
# not stop fuzzing the frontend).
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "MOEC_FUZZ needs clang: configure with -DCMAKE_C_COMPILER=clang")
endif()
find_package(FLEX REQUIRED)
find_package(BISON 3.7 REQUIRED)
set(MOEC_FUZZ_GEN ${CMAKE_CURRENT_BINARY_DIR}/fuzzgen)
file(MAKE_DIRECTORY ${MOEC_FUZZ_GEN})
flex_target(fuzz_lexer ${MOEC_ROOT}/frontend/lexer.l ${MOEC_FUZZ_GEN}/lexer.c
            DEFINES_FILE ${MOEC_FUZZ_GEN}/lexer.h)
bison_target(fuzz_parser ${MOEC_ROOT}/frontend/parser.y ${MOEC_FUZZ_GEN}/parser.c
             DEFINES_FILE ${MOEC_FUZZ_GEN}/parser.h)
add_flex_bison_dependency(fuzz_lexer fuzz_parser)
# A static library, so that only the objects the frontend needs are linked
# (sema uses the Dim/Type helpers of ir/graph.c; ir/ops.c names every shape rule).
file(GLOB MOEC_FUZZ_SOURCES CONFIGURE_DEPENDS ${MOEC_ROOT}/frontend/*.c ${MOEC_ROOT}/ir/*.c
     ${MOEC_ROOT}/passes/*.c) # the op table names shape rules of passes (fused, collectives)
# the runtime's readers: checkpoints (safetensors.c) and corpora (data.c, with its
# tokenizers: tokenize.c, bpe.c, bleu.c's word split; the worker threads, which set up
# OpenBLAS) need only common
add_library(moec_fuzzlib STATIC ${MOEC_FUZZ_SOURCES} ${MOEC_ROOT}/common/common.c
            ${MOEC_ROOT}/runtime/safetensors.c ${MOEC_ROOT}/runtime/data.c
            ${MOEC_ROOT}/runtime/tokenize.c ${MOEC_ROOT}/runtime/bpe.c ${MOEC_ROOT}/runtime/bleu.c
            ${MOEC_ROOT}/runtime/split.c # the task counts the cost model (passes/) reads
            ${MOEC_ROOT}/runtime/threads.c # data.c splits a synthetic batch over the threads
            ${FLEX_fuzz_lexer_OUTPUTS} ${BISON_fuzz_parser_OUTPUTS})
# the targets: the frontend (fuzz_frontend), the checkpoint reader (fuzz_safetensors),
# the text and .bin corpus readers (fuzz_text, fuzz_bin: fuzz_data.c built twice)
add_executable(fuzz_frontend ${MOEC_ROOT}/tests/fuzz/fuzz_frontend.c)
add_executable(fuzz_safetensors ${MOEC_ROOT}/tests/fuzz/fuzz_safetensors.c)
add_executable(fuzz_text ${MOEC_ROOT}/tests/fuzz/fuzz_data.c)
add_executable(fuzz_bin ${MOEC_ROOT}/tests/fuzz/fuzz_data.c)
target_compile_definitions(fuzz_bin PRIVATE FUZZ_BIN)
set(MOEC_FUZZ_TARGETS fuzz_frontend fuzz_safetensors fuzz_text fuzz_bin)
foreach(t moec_fuzzlib ${MOEC_FUZZ_TARGETS})
  target_include_directories(${t} PRIVATE ${MOEC_ROOT} ${MOEC_FUZZ_GEN})
  target_compile_definitions(${t} PRIVATE _GNU_SOURCE)
  target_compile_options(${t} PRIVATE -g -O1 -fno-omit-frame-pointer
                         -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  set_target_properties(${t} PROPERTIES C_STANDARD 11 C_EXTENSIONS OFF)
endforeach()
foreach(t ${MOEC_FUZZ_TARGETS})
  target_link_options(${t} PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(${t} PRIVATE moec_fuzzlib openblas pthread m)
endforeach()
# Seeds made at build time by moec's own writers (rt_st_save) and from the
# repository's text: fuzz_seeds writes them to seeds/{safetensors,bin,text}.
add_executable(fuzz_seeds ${MOEC_ROOT}/tests/fuzz/fuzz_seeds.c)
target_include_directories(fuzz_seeds PRIVATE ${MOEC_ROOT} ${MOEC_FUZZ_GEN})
target_compile_definitions(fuzz_seeds PRIVATE _GNU_SOURCE)
target_compile_options(fuzz_seeds PRIVATE -g -O1 -fsanitize=address,undefined)
set_target_properties(fuzz_seeds PROPERTIES C_STANDARD 11 C_EXTENSIONS OFF)
target_link_options(fuzz_seeds PRIVATE -fsanitize=fuzzer-no-link,address,undefined)
target_link_libraries(fuzz_seeds PRIVATE moec_fuzzlib openblas pthread m)
add_custom_command(OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/seeds/safetensors/ckpt.safetensors
                   COMMAND fuzz_seeds ${MOEC_ROOT} ${CMAKE_CURRENT_BINARY_DIR}/seeds
                   DEPENDS fuzz_seeds VERBATIM)
add_custom_target(fuzz_seed_files ALL
                  DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/seeds/safetensors/ckpt.safetensors)
