# golden.cmake: runs `moec CMD MOE ARGS` (CMD: ir unless -DCMD=plan, ...) and compares
# stdout with MOE's .expected (same path, .expected for .moe). ARGS: a line
# `# moec-CMD-args: ...` in MOE. With the environment variable UPDATE=1 it rewrites
# .expected instead.
#   cmake -DMOEC=path/to/moec -DMOE=file.moe [-DCMD=plan] -P golden.cmake
if(NOT MOEC OR NOT MOE)
  message(FATAL_ERROR "usage: cmake -DMOEC=moec -DMOE=file.moe -P golden.cmake")
endif()
if(NOT CMD)
  set(CMD ir)
endif()
get_filename_component(dir ${MOE} DIRECTORY)
get_filename_component(stem ${MOE} NAME_WE)
set(expected_file ${dir}/${stem}.expected)

file(STRINGS ${MOE} arg_lines REGEX "^# moec-${CMD}-args:")
set(args "")
if(arg_lines)
  list(GET arg_lines 0 line)
  string(REGEX REPLACE "^# moec-${CMD}-args:[ ]*" "" line "${line}")
  separate_arguments(args UNIX_COMMAND "${line}")
endif()

# run from the file's folder with a relative path: nothing machine-specific in the text
get_filename_component(name ${MOE} NAME)
execute_process(COMMAND ${MOEC} ${CMD} ${name} ${args}
                WORKING_DIRECTORY ${dir}
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "moec ${CMD} ${name} ${args} exited with ${rc}:\n${err}")
endif()

if("$ENV{UPDATE}" STREQUAL "1")
  file(WRITE ${expected_file} "${out}")
  message(STATUS "updated ${expected_file}")
  return()
endif()
if(NOT EXISTS ${expected_file})
  message(FATAL_ERROR "${expected_file} is missing (UPDATE=1 creates it)")
endif()
file(READ ${expected_file} want)
if(NOT out STREQUAL want)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/${stem}.actual "${out}")
  execute_process(COMMAND diff -u ${expected_file} ${CMAKE_CURRENT_BINARY_DIR}/${stem}.actual
                  OUTPUT_VARIABLE d)
  message(FATAL_ERROR "moec ${CMD} ${name} ${args} differs from ${stem}.expected:\n${d}")
endif()
