/* fuzz_frontend.c: libFuzzer target for the frontend: fe_parse on any bytes,
 * then, when the parse is clean, fe_sema and fe_summarize. Diagnostics go to
 * /dev/null. Built by tests/fuzz/fuzz.cmake (MOEC_FUZZ=ON, clang) with the
 * frontend compiled in directly under -fsanitize=fuzzer,address,undefined;
 * run by scripts/fuzz.sh. */
#include <stdint.h>
#include <string.h>

#include "frontend/frontend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static FILE *devnull;
  if (!devnull) devnull = fopen("/dev/null", "w");
  /* Source.text is NUL-terminated by contract (mc_read_file does it) */
  char *text = mc_malloc(size + 1);
  memcpy(text, data, size);
  text[size] = 0;
  Source src = {.path = "fuzz.moe", .text = text, .len = size};
  Diag d;
  fe_diag_init(&d, &src);
  d.out = devnull;
  AstFile *f = fe_parse(&src, &d);
  if (d.errors == 0) {
    Config cfg;
    fe_config_defaults(&cfg);
    if (fe_sema(f, &cfg, &d)) {
      McArena a = {0};
      fe_summarize(f, &a);
      mc_arena_free(&a);
    }
  }
  fe_ast_free(f);
  mc_free(text);
  return 0;
}
