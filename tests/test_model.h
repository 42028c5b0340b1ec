/* test_model.h: loading a .moe file (or text) in a C test (parse + sema with the
 * defaults); any error ends the test. The AST keeps pointers into the source text, so the text
 * is handed back (*textp) for the caller to free after the AST. */
#ifndef MOEC_TEST_MODEL_H
#define MOEC_TEST_MODEL_H

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "../frontend/frontend.h"

/* Parses and checks text (named path in messages); the text must outlive the AST. */
static inline AstFile *test_parse_model(const char *path, const char *text, size_t len,
                                        Config *cfg) {
  Source src = {.path = path, .text = text, .len = len};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  fe_config_defaults(cfg);
  if (d.errors == 0) fe_sema(f, cfg, &d);
  if (d.errors) {
    fprintf(stderr, "%s has errors\n", path);
    exit(1);
  }
  return f;
}

static inline AstFile *test_load_model(const char *path, Config *cfg, char **textp) {
  size_t len = 0;
  char *text = mc_read_file(path, &len);
  *textp = text;
  if (!text) {
    fprintf(stderr, "cannot read %s\n", path);
    exit(1);
  }
  return test_parse_model(path, text, len, cfg);
}

#endif
