/* cli.h: the moec command line: one file per subcommand (cmd_*.c) on the driver's
 * one compile path (driver/driver.h); cli.c parses what every command shares. */
#ifndef MOEC_CLI_H
#define MOEC_CLI_H

#include "../driver/driver.h"

typedef struct Command {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
} Command;

int cmd_check(int argc, char **argv);
int cmd_ir(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_grad(int argc, char **argv);
int cmd_simulate(int argc, char **argv);

/* A command's own flags: takes argv[*i] (advancing over its value) and returns 1, or 0
 * if it is not one of them, or -1 after printing an error. */
typedef int (*OwnFlags)(int argc, char **argv, int *i, void *ctx);

/* Parses a command line: the shared options in `which` (driver.h), the command's own
 * (own may be NULL), one FILE into o->path. Returns 0, or the exit status after
 * printing an error (2) or the help (-1: exit 0). */
int cli_parse(int argc, char **argv, Options *o, int which, OwnFlags own, void *ctx,
              void (*usage)(FILE *out));
/* cmd_plan.c, shared with cmd_simulate.c: loads o->path, compiles its training step on
 * the plan's devices (the global graph, bound at the whole batch), and the cost of it
 * under constants k with every device's allocated memory from its own passes. NULL after
 * printing the errors, *rc the exit status. */
Graph *plan_compile(const Options *o, Config *cfg, AstFile **f, McBuf *notes, struct PlanCost *c,
                    const struct CostConsts *k, int *rc);

/* plan_dot.c: the plan as a picture. view: "forward", "backward" or "all"; expand: the
 * layers drawn op by op ("all": every one); loads: measured expert loads (may be NULL). */
typedef struct PlotOpts {
  const char *view;
  const char **expand;
  int nexpand;
  const struct PlanLoads *loads;
} PlotOpts;
void plan_dot(const Graph *g, const struct PlanCost *c, const Config *cfg, const PlotOpts *o,
              McBuf *out);
/* Renders DOT text as format ("svg", "png") into path (NULL: stdout) with Graphviz's
 * library; false with a message in err (moec built without it, a failed layout). */
bool plan_render(const char *dot, const char *format, const char *path, char *err, size_t errlen);

/* The value of --name VALUE or --name=VALUE at argv[*i] (advancing *i), or NULL when
 * argv[*i] is not --name; *bad set when the value is missing (error printed). */
const char *cli_value(int argc, char **argv, int *i, const char *name, const char *cmd, bool *bad);

#endif
