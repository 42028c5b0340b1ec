/* cli.c: what every command's parsing shares: --help, the driver's options, a
 * command's own flags, one FILE. */
#include <string.h>

#include "cli.h"

const char *cli_value(int argc, char **argv, int *i, const char *name, const char *cmd,
                      bool *bad) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, n) || (a[n] && a[n] != '=')) return NULL;
  if (a[n] == '=') return a + n + 1;
  if (*i + 1 >= argc) {
    fprintf(stderr, "moec %s: error: %s needs a value\n", cmd, name);
    *bad = true;
    return NULL;
  }
  return argv[++*i];
}

int cli_parse(int argc, char **argv, Options *o, int which, OwnFlags own, void *ctx,
              void (*usage)(FILE *out)) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return -1;
    }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int t = own ? own(argc, argv, &i, ctx) : 0; /* a command's own meaning first */
    if (t == 0) t = drv_take_option(o, which, argc, argv, &i);
    if (t < 0) return 2;
    if (t > 0) continue;
    if (a[0] == '-' && a[1]) {
      fprintf(stderr, "moec %s: error: unknown option '%s'\n", o->cmd, a);
      usage(stderr);
      return 2;
    }
    if (o->path) {
      fprintf(stderr, "moec %s: error: more than one FILE ('%s', '%s')\n", o->cmd, o->path, a);
      return 2;
    }
    o->path = a;
  }
  if (!o->path) {
    fprintf(stderr, "moec %s: error: no FILE given\n", o->cmd);
    usage(stderr);
    return 2;
  }
  return 0;
}

AstFile *cli_load_trained(Options *o, Config *cfg, int *rc, void (*usage)(FILE *out)) {
  if (!*rc && !o->load) {
    fprintf(stderr, "moec %s: error: --load CKPT is required\n", o->cmd);
    usage(stderr);
    *rc = 2;
  }
  AstFile *f = *rc ? NULL : drv_load(o, cfg, rc);
  if (!f) {
    drv_options_free(o);
    if (*rc < 0) *rc = 0; /* --help */
  }
  return f;
}
