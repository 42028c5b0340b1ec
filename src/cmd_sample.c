/* cmd_sample.c: `moec sample FILE --load CKPT [--prompt TEXT] [--tokens N] [--temperature T]
 * [--top-k K] [--seed S]`: text from a language model checkpoint, streamed token by token,
 * with the model's forward program compiled for one stream of one step. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: moec sample FILE --load CKPT [--prompt TEXT] [--tokens N] [--temperature T]\n"
          "                   [--top-k K] [--seed S] [settings]\n\n"
          "Generates text with the model in FILE and the weights and tokenizer of CKPT (a\n"
          "model trained on text): from a line end (zero state), through the prompt, then N\n"
          "tokens, each drawn from the model's distribution (LSTM state carried, no dropout,\n"
          "no gate noise; batchwise gates use their thresholds), printed as it comes. The\n"
          "same seed gives the same text.\n\n"
          "options:\n"
          "  --load CKPT       the weights and tokenizer (safetensors)\n"
          "  --prompt TEXT     text to continue (it is printed first)\n"
          "  --tokens N        tokens to generate (default 100)\n"
          "  --temperature T   p^(1/T), renormalised; 0: the most probable token (default 1)\n"
          "  --top-k K         draw among the K most probable tokens only (default: all)\n"
          "  --seed S          the draws (default: the train block's seed)\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS);
}

typedef struct Flags {
  SampleOpts s;
  bool seed_given;
} Flags;

static int number(const char *v, const char *flag, double lo, double hi, double *out) {
  char *end;
  double x = strtod(v, &end);
  if (end == v || *end || !(x >= lo && x <= hi)) {
    fprintf(stderr, "moec sample: error: %s needs a number from %g to %g, not '%s'\n", flag, lo, hi,
            v);
    return -1;
  }
  *out = x;
  return 1;
}

static int own_flags(int argc, char **argv, int *i, void *ctx) {
  Flags *f = ctx;
  bool bad = false;
  const char *v;
  double x;
  if ((v = cli_value(argc, argv, i, "--prompt", "sample", &bad))) {
    f->s.prompt = v;
    return 1;
  }
  if ((v = cli_value(argc, argv, i, "--tokens", "sample", &bad))) {
    if (number(v, "--tokens", 0, 1e9, &x) < 0 || x != (double)(int64_t)x) return -1;
    f->s.tokens = (int64_t)x;
    return 1;
  }
  if ((v = cli_value(argc, argv, i, "--temperature", "sample", &bad))) {
    if (number(v, "--temperature", 0, 1e6, &x) < 0) return -1;
    f->s.temperature = x;
    return 1;
  }
  if ((v = cli_value(argc, argv, i, "--top-k", "sample", &bad))) {
    if (number(v, "--top-k", 0, 1e9, &x) < 0 || x != (double)(int64_t)x) return -1;
    f->s.top_k = (int64_t)x;
    return 1;
  }
  if ((v = cli_value(argc, argv, i, "--seed", "sample", &bad))) {
    if (number(v, "--seed", 0, 9007199254740992.0, &x) < 0 || x != (double)(int64_t)x) return -1;
    f->s.seed = (uint64_t)x;
    f->seed_given = true;
    return 1;
  }
  return bad ? -1 : 0;
}

int cmd_sample(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "sample");
  Flags fl = {.s = {.tokens = 100, .temperature = 1.0}};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_RUN | DRV_DEBUG, own_flags, &fl, usage);
  if (!rc && (o.save || o.metrics || o.f64 || o.trace || o.save_every || o.json || o.no_eval)) {
    fprintf(stderr, "moec sample: error: --save, --save-every, --trace, --metrics, --json, --f64 "
                    "and --no-eval are not options of sample\n");
    rc = 2;
  }
  Config cfg;
  AstFile *f = cli_load_trained(&o, &cfg, &rc, usage);
  if (!f) return rc;
  Program *p = drv_compile_forward(f, &cfg, &o, 1, 1);
  if (!fl.seed_given) fl.s.seed = cfg.seed;
  fl.s.quiet = o.quiet;
  rc = p ? rt_sample(p, o.load, &fl.s) : 1;
  drv_program_free(p);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}
