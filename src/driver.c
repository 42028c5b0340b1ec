/* driver.c: the front half every subcommand shares: read, parse, check. */
#include <errno.h>
#include <string.h>

#include "cli.h"

AstFile *drv_load(const char *path, Config *cfg) {
  size_t len = 0;
  char *text = mc_read_file(path, &len);
  if (!text) {
    fprintf(stderr, "moec: error: cannot read '%s': %s\n", path, mc_read_error());
    return NULL;
  }
  Source src = {.path = path, .text = text, .len = len};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  f->owned_text = text; /* diagnostics may quote the source as long as f lives */
  fe_config_defaults(cfg);
  if (d.errors == 0) fe_sema(f, cfg, &d);
  if (d.errors > 0) {
    if (d.errors > d.max_errors)
      fprintf(stderr, "moec: %d errors in total (%d not shown)\n", d.errors, d.errors - d.max_errors);
    fe_ast_free(f);
    return NULL;
  }
  return f;
}

bool drv_wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
  return false;
}
