/* cmd_ir.c: `moec ir FILE [--after PASS] [--train|--eval] [--devices N]`: the
 * graph with symbolic dims (B, T), as built or after any pass. */
#include <stdlib.h>
#include <string.h>

#include "../passes/passes.h"
#include "cli.h"

static void ir_usage(FILE *out) {
  fprintf(out,
          "usage: moec ir FILE [--after PASS] [--train|--eval] [--devices N]\n\n"
          "Prints the IR graph of FILE with symbolic dims (B, T): inputs, parameters\n"
          "with their initialisation, carried state, one line per op (outputs, op,\n"
          "inputs, attributes, types, layer, source line), and the loss.\n\n"
          "options:\n"
          "  --after PASS  print the graph after PASS (default: build, the graph as built)\n"
          "  --train       build the training graph (default): autodiff runs\n"
          "  --eval        forward only: autodiff is skipped\n"
          "  --devices N   devices the plan passes place the graph on (default: the file's)\n\n"
          "passes, in order:\n"
          "  %-10s the graph as built from the file\n",
          "build");
  for (int i = 0; i < pass_count; i++)
    fprintf(out, "  %-10s %s\n", pass_list[i].name, pass_list[i].what);
}

static void list_passes(FILE *out) {
  fprintf(out, "valid passes: build");
  for (int i = 0; i < pass_count; i++)
    fprintf(out, ", %s", pass_list[i].name);
  fprintf(out, "\n");
}

int cmd_ir(int argc, char **argv) {
  if (drv_wants_help(argc, argv)) {
    ir_usage(stdout);
    return 0;
  }
  const char *path = NULL, *after = NULL;
  bool training = true;
  int devices = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--after") || !strncmp(a, "--after=", 8)) {
      if (a[7] == '=')
        after = a + 8;
      else if (i + 1 < argc)
        after = argv[++i];
      else {
        fprintf(stderr, "moec ir: error: --after needs a pass name\n");
        list_passes(stderr);
        return 2;
      }
    } else if (!strcmp(a, "--train")) {
      training = true;
    } else if (!strcmp(a, "--eval")) {
      training = false;
    } else if (!strcmp(a, "--devices") || !strncmp(a, "--devices=", 10)) {
      const char *v = a[9] == '=' ? a + 10 : i + 1 < argc ? argv[++i] : NULL;
      char *end = NULL;
      long n = v ? strtol(v, &end, 10) : 0;
      if (!v || *end || n < 1 || n > 4096) {
        fprintf(stderr, "moec ir: error: --devices needs a positive integer\n");
        return 2;
      }
      devices = (int)n;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "moec ir: error: unknown option '%s'\n", a);
      ir_usage(stderr);
      return 2;
    } else if (!path) {
      path = a;
    } else {
      fprintf(stderr, "moec ir: error: more than one FILE ('%s', '%s')\n", path, a);
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, "moec ir: error: no FILE given\n");
    ir_usage(stderr);
    return 2;
  }
  bool known = after == NULL || !strcmp(after, "build");
  for (int i = 0; i < pass_count && !known; i++)
    known = !strcmp(after, pass_list[i].name);
  if (!known) {
    fprintf(stderr, "moec ir: error: unknown pass '%s'\n", after);
    list_passes(stderr);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(path, &cfg);
  if (!f) return 1;
  Graph *g = ir_build(f, &cfg);
  PassCtx ctx = {.cfg = &cfg,
                 .devices = devices ? devices : (cfg.devices > 0 ? cfg.devices : 1),
                 .training = training};
  /* no --after: the graph as built */
  bool ok = pass_run_all(g, &ctx, after ? after : "build", stdout);
  MOEC_ASSERT(ok);
  ir_graph_free(g);
  fe_ast_free(f);
  return 0;
}
