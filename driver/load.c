/* load.c: a .moe file as the command line sees it: read, parsed, the flags' settings
 * merged in (frontend/override.c), checked. Every error is printed as file:line:col with
 * the line and a caret; a flag's as "command line:LINE:COL" under the flag's text. */
#include <errno.h>
#include <string.h>

#include "driver.h"

/* The flags' settings as a text of train and plan blocks, parsed. */
static AstFile *parse_flags(const Options *o, Diag *d) {
  McBuf t = {0};
  if (o->train.len) mc_buf_printf(&t, "train {\n%s}\n", o->train.data);
  if (o->plan.len) mc_buf_printf(&t, "plan {\n%s}\n", o->plan.data);
  Source src = {.path = "command line", .text = t.data, .len = t.len, .cmdline = true};
  Diag fd;
  fe_diag_init(&fd, &src);
  fd.out = d->out;
  AstFile *f = fe_parse_settings(&src, &fd);
  f->owned_text = t.data; /* the diagnostics of sema quote it later */
  d->errors += fd.errors;
  d->cmdline_errors += fd.errors;
  return f;
}

/* text (owned by the AST from here on) as the file `path`, with o's settings merged */
static AstFile *load_text(const Options *o, const char *path, char *text, size_t len, Config *cfg,
                          int *rc) {
  *rc = 1;
  Source src = {.path = path, .text = text, .len = len};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  f->owned_text = text; /* diagnostics may quote the source as long as f lives */
  fe_config_defaults(cfg);
  if (d.errors == 0 && o->nsettings > 0) {
    AstFile *flags = parse_flags(o, &d);
    if (d.errors == 0)
      fe_merge_settings(f, flags, &d);
    else
      fe_ast_free(flags);
  }
  if (d.errors == 0) fe_sema(f, cfg, &d);
  if (d.errors > 0) {
    if (d.errors > d.max_errors)
      fprintf(stderr, "moec: %d errors in total (%d not shown)\n", d.errors,
              d.errors - d.max_errors);
    fe_ast_free(f);
    if (d.cmdline_errors == d.errors) *rc = 2; /* only the flags were wrong: a usage error */
    return NULL;
  }
  *rc = 0;
  return f;
}

AstFile *drv_load(const Options *o, Config *cfg, int *rc) {
  size_t len = 0;
  char *text = mc_read_file(o->path, &len);
  *rc = 1;
  if (!text) {
    fprintf(stderr, "moec: error: cannot read '%s': %s\n", o->path, mc_read_error());
    return NULL;
  }
  return load_text(o, o->path, text, len, cfg, rc);
}

AstFile *drv_load_text(const Options *o, const char *name, const char *text, Config *cfg, int *rc) {
  size_t len = strlen(text);
  char *copy = mc_malloc(len + 1);
  memcpy(copy, text, len + 1);
  return load_text(o, name, copy, len, cfg, rc);
}
