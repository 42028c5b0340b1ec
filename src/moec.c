/* moec.c: the command line: dispatch to a subcommand. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const Command commands[] = {
    {"check", "parse and check a .moe file; print layers, parameters, ops per timestep", cmd_check},
    {"ir", "print the IR graph, as built or after a pass", cmd_ir},
    {"plan", "print the placement plan over N devices", cmd_plan},
    {"run", "compile and train (or evaluate) a model", cmd_run},
    {"eval", "perplexity of a checkpoint (and BLEU of a translation model's)", cmd_eval},
    {"score", "log-likelihood of every line of a text under a checkpoint", cmd_score},
    {"sample", "generate text from a language model checkpoint", cmd_sample},
    {"plot", "draw a run's metrics (loss, lr, expert load) with gnuplot", cmd_plot},
    {"grad", "loss and gradients for one batch (for independent references)", cmd_grad},
    {"translate", "translate sentences with a translation model's checkpoint", cmd_translate},
    {"simulate", "the plan's cost model on a cluster that is not here", cmd_simulate},
    {"calibrate", "measure this machine for the cost model (a profile)", cmd_calibrate},
};

static void usage(FILE *out) {
  fprintf(out, "usage: moec <command> [options]\n       moec --version\n\n"
               "moec compiles and runs sparsely-gated Mixture-of-Experts models.\n\ncommands:\n");
  for (size_t i = 0; i < MC_ARRAY_LEN(commands); i++)
    fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\n'moec <command> --help' describes a command.\n");
}

/* At exit: what stdio still holds for stdout (a report, a plan, --json) written, or
 * an error and exit status 1 (a full disk would otherwise lose it silently). */
static void stdout_check(void) {
  errno = 0;
  if (fflush(stdout) == 0 && !ferror(stdout)) return;
  fprintf(stderr, "moec: error: cannot write the standard output: %s\n",
          strerror(errno ? errno : EIO));
  _exit(1);
}

int main(int argc, char **argv) {
  atexit(stdout_check);
  mc_debug_from_env(); /* MOEC_DEBUG: developer diagnostics, read once */
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
    printf("moec %s\nfeatures: %s\n", mc_version(), mc_features());
    return 0;
  }
  for (size_t i = 0; i < MC_ARRAY_LEN(commands); i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "moec: error: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
