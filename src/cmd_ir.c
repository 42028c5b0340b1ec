/* cmd_ir.c: `moec ir FILE [--after PASS] [--train|--eval] [--device R] [settings]`: the
 * graph with symbolic dims (B, T), as built or after any pass; with --device R the graph
 * device R of the plan's devices runs (its experts after `shard`, its rows after `bind`). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void ir_usage(FILE *out) {
  fprintf(out,
          "usage: moec ir FILE [--after PASS] [--train|--eval] [--device R] [settings]\n\n"
          "Prints the IR graph of FILE with symbolic dims (B, T): inputs, parameters\n"
          "with their initialisation, carried state, one line per op (outputs, op,\n"
          "inputs, attributes, types, layer, source line), and the loss.\n\n"
          "options:\n"
          "  --after PASS  print the graph after PASS (default: build, the graph as built)\n"
          "  --train       build the training graph (default): autodiff runs\n"
          "  --eval        forward only: autodiff is skipped\n"
          "  --device R    the graph of device R of the plan's devices (default: the global\n"
          "                graph: every device's experts, the whole batch)\n\n"
          "passes, in order:\n"
          "  %-10s the graph as built from the file\n",
          "build");
  for (int i = 0; i < pass_count; i++)
    fprintf(out, "  %-10s %s\n", pass_list[i].name, pass_list[i].what);
  fprintf(out, "\nsettings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS | DRV_LOADS);
}

static void list_passes(FILE *out) {
  fprintf(out, "valid passes: build");
  for (int i = 0; i < pass_count; i++)
    fprintf(out, ", %s", pass_list[i].name);
  fprintf(out, "\n");
}

typedef struct IrFlags {
  const char *after;
  bool eval;
  int device; /* -1: the global graph */
} IrFlags;

static int ir_flags(int argc, char **argv, int *i, void *ctx) {
  IrFlags *a = ctx;
  bool bad = false;
  const char *v;
  if ((v = cli_value(argc, argv, i, "--after", "ir", &bad))) {
    a->after = v;
  } else if ((v = cli_value(argc, argv, i, "--device", "ir", &bad))) {
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < 0 || n > 65535) {
      fprintf(stderr, "moec ir: error: --device needs a device number, not '%s'\n", v);
      return -1;
    }
    a->device = (int)n;
  } else if (!strcmp(argv[*i], "--train")) {
    a->eval = false;
  } else if (!strcmp(argv[*i], "--eval")) {
    a->eval = true;
  } else {
    if (bad && !strncmp(argv[*i], "--after", 7)) list_passes(stderr);
    return bad ? -1 : 0;
  }
  return 1;
}

int cmd_ir(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "ir");
  IrFlags a = {.device = -1};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_LOADS, ir_flags, &a, ir_usage);
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  bool known = a.after == NULL || !strcmp(a.after, "build");
  for (int i = 0; i < pass_count && !known; i++)
    known = !strcmp(a.after, pass_list[i].name);
  if (!known) {
    fprintf(stderr, "moec ir: error: unknown pass '%s'\n", a.after);
    list_passes(stderr);
    drv_options_free(&o);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(&o, &cfg, &rc);
  if (f && a.device >= cfg.devices) {
    fprintf(stderr, "moec ir: error: --device %d: the plan has %d device%s\n", a.device,
            cfg.devices, cfg.devices == 1 ? "" : "s");
    fe_ast_free(f);
    drv_options_free(&o);
    return 2;
  }
  Target t = {.devices = cfg.devices,
              .rank = a.device,
              .training = !a.eval,
              .fold_dw = !a.eval, /* as moec run compiles it */
              .prec = PREC_F32,
              .print_after = a.after ? a.after : "build",
              .print_to = stdout};
  Graph *g = f ? drv_compile_graph(f, &cfg, &o, &t, NULL) : NULL;
  rc = g ? 0 : f ? 1 : rc;
  ir_graph_free(g);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}
