# fuzz.cmake: the libFuzzer target fuzz_frontend (clang only). The frontend
# sources, common.c and a private flex/bison run are compiled straight into it
# with the sanitizers, so the main library's flags stay as they are. Used by
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
add_library(moec_fuzzlib STATIC ${MOEC_FUZZ_SOURCES} ${MOEC_ROOT}/common/common.c
            ${FLEX_fuzz_lexer_OUTPUTS} ${BISON_fuzz_parser_OUTPUTS})
add_executable(fuzz_frontend ${MOEC_ROOT}/tests/fuzz/fuzz_frontend.c)
foreach(t moec_fuzzlib fuzz_frontend)
  target_include_directories(${t} PRIVATE ${MOEC_ROOT} ${MOEC_FUZZ_GEN})
  target_compile_definitions(${t} PRIVATE _GNU_SOURCE)
  target_compile_options(${t} PRIVATE -g -O1 -fno-omit-frame-pointer
                         -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  set_target_properties(${t} PROPERTIES C_STANDARD 11 C_EXTENSIONS OFF)
endforeach()
target_link_options(fuzz_frontend PRIVATE -fsanitize=fuzzer,address,undefined)
target_link_libraries(fuzz_frontend PRIVATE moec_fuzzlib m)
