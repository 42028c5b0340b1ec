/* cmd_later.c: commands whose issues have not landed yet. Each says so and
 * exits non-zero, so no script mistakes them for working. */
#include <string.h>

#include "cli.h"

static int later(int argc, char **argv, const char *usage, const char *issue) {
  if (drv_wants_help(argc, argv)) {
    printf("usage: moec %s\n\nNot available yet: %s.\n", usage, issue);
    return 0;
  }
  fprintf(stderr, "moec: error: 'moec %s' is not available yet (%s)\n", argv[0], issue);
  return 3;
}

int cmd_simulate(int argc, char **argv) {
  return later(argc, argv, "simulate FILE --cluster SPEC", "the cluster cost model comes with placement, issue 4");
}
