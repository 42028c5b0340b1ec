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

/* True if argv[i] is --help or -h. */
bool drv_wants_help(int argc, char **argv);

#endif
