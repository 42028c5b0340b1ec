/* run_sema.c: golden-diagnostic runner for the tests/sema/ files (NAME.moe). Each file lists the
 * diagnostics it must produce, in order, in comment lines
 *
 *   # expect: LINE:COL: error: MESSAGE
 *   # expect: LINE:COL: note: MESSAGE
 *
 * The runner parses and checks the file (fe_parse + fe_sema, the diagnostics
 * captured in memory) and compares every "error"/"note" line, without the
 * path, with those expectations: same count, same text, same order.
 * Usage: run_sema FILE.moe   (exit 0 on a match, 1 otherwise). */
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"

#define MAX_LINES 256

static int split_expect(char *text, char **out) {
  int n = 0;
  for (char *p = text; p && *p && n < MAX_LINES;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    char *e = strstr(p, "# expect: ");
    if (e) out[n++] = e + strlen("# expect: ");
    p = nl ? nl + 1 : NULL;
  }
  return n;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: run_sema FILE.moe\n");
    return 2;
  }
  size_t len = 0;
  char *text = mc_read_file(argv[1], &len);
  if (!text) {
    fprintf(stderr, "run_sema: cannot read %s\n", argv[1]);
    return 2;
  }
  char *copy = mc_malloc(len + 1);
  memcpy(copy, text, len + 1);
  char *want[MAX_LINES];
  int nwant = split_expect(copy, want);

  char *buf = NULL;
  size_t blen = 0;
  FILE *mem = open_memstream(&buf, &blen);
  Source src = {.path = argv[1], .text = text, .len = len};
  Diag d;
  fe_diag_init(&d, &src);
  d.out = mem;
  d.max_errors = 0; /* no cap: every diagnostic is compared */
  AstFile *f = fe_parse(&src, &d);
  Config cfg;
  fe_config_defaults(&cfg);
  bool ok = d.errors == 0 && fe_sema(f, &cfg, &d);
  fclose(mem);

  char *full = mc_malloc(blen + 1);
  memcpy(full, buf ? buf : "", blen + 1);
  /* the diagnostic lines, without "path:" */
  char *got[MAX_LINES];
  int ngot = 0;
  size_t plen = strlen(argv[1]);
  for (char *p = buf; p && *p && ngot < MAX_LINES;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    if (!strncmp(p, argv[1], plen) && p[plen] == ':' &&
        (strstr(p, ": error: ") || strstr(p, ": note: ")))
      got[ngot++] = p + plen + 1;
    p = nl ? nl + 1 : NULL;
  }
  int fail = 0;
  if (ok) {
    fprintf(stderr, "%s: checked without errors, but errors were expected\n", argv[1]);
    fail = 1;
  }
  if (nwant == 0) {
    fprintf(stderr, "%s: no '# expect:' lines\n", argv[1]);
    fail = 1;
  }
  for (int i = 0; i < MC_MAX(nwant, ngot); i++) {
    const char *w = i < nwant ? want[i] : "(nothing)";
    const char *g = i < ngot ? got[i] : "(nothing)";
    if (strcmp(w, g)) {
      fprintf(stderr, "%s: diagnostic %d\n  expected: %s\n  got:      %s\n", argv[1], i + 1, w, g);
      fail = 1;
    }
  }
  if (fail)
    fprintf(stderr, "--- full output ---\n%s", full);
  else
    printf("%s: %d diagnostics as expected\n", argv[1], ngot);
  free(buf);
  mc_free(full);
  mc_free(copy);
  fe_ast_free(f);
  mc_free(text);
  return fail;
}
