/* cli.h: the moec command line: one file per subcommand (cmd_*.c), a shared
 * front half (driver.c) that reads, parses and checks a .moe file. */
#ifndef MOEC_CLI_H
#define MOEC_CLI_H

#include "../frontend/frontend.h"

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

/* Reads and checks FILE; prints diagnostics to stderr. Returns NULL (after
 * printing) when the file cannot be read or has errors. */
AstFile *drv_load(const char *path, Config *cfg);

/* cmd_plan.c, shared with cmd_simulate.c: the options both take and the compile they
 * share (one implementation: the full pass list, bound at the train block's B and T). */
typedef struct PlanArgs {
  const char *cmd; /* "plan" or "simulate": for messages */
  const char *path, *strategy, *policy, *loads, *recompute;
  double memory_budget; /* bytes; 0 = the file's */
  bool no_fuse;
  int devices; /* 0 = the file's */
  int batch;   /* 0 = the file's */
} PlanArgs;
/* Takes argv[*i] if it is one of the shared options (advancing *i over its value).
 * Returns 1 if taken, 0 if not one of them, -1 after printing an error (exit 2). */
int plan_take_arg(int argc, char **argv, int *i, PlanArgs *a);
/* Loads a->path, applies the options, builds the training graph, runs every pass on *P
 * devices (*P <= 0: --devices, else the file's) and binds it at the train block's B, T.
 * Returns NULL after printing the error; *rc is the exit code. */
struct Graph *plan_compile(const PlanArgs *a, int *P, Config *cfg, AstFile **f, int *rc);
/* Parses "8GiB", "512MiB", "2GB", "1e9" (bytes). False if malformed. */
bool plan_parse_size(const char *s, double *bytes);

/* True if argv[i] is --help or -h. */
bool drv_wants_help(int argc, char **argv);

#endif
