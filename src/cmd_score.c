/* cmd_score.c: `moec score FILE --load CKPT [--data D] [--json] [--quiet]`: the
 * log-likelihood and perplexity of every line of a text (any length, every token
 * predicted) under a language model checkpoint, and of the whole. */
#include <string.h>

#include "cli.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: moec score FILE --load CKPT [--data D] [--json] [--quiet] [settings]\n\n"
          "The log-likelihood (nats) and perplexity of every line of D (a text file read with\n"
          "the checkpoint's tokenizer, or a .bin file of uint16 ids), or of the train block's\n"
          "test split, under the model in FILE with the weights of CKPT, and of the whole.\n"
          "The text is one stream, LSTM state carried from line to line from zero, its first\n"
          "token predicted from a line end: every token is counted, each line with its line\n"
          "end. No dropout, no gate noise. Batch 1 and unroll min(tokens, 256).\n\n"
          "options:\n"
          "  --load CKPT  the weights (safetensors)\n"
          "  --data D     score D instead of the test split\n"
          "  --json       one JSON line per line of text, then the total\n"
          "  --quiet      the total only\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS);
}

static int own_flags(int argc, char **argv, int *i, void *ctx) {
  bool bad = false;
  const char *v = cli_value(argc, argv, i, "--data", "score", &bad);
  if (!v) return bad ? -1 : 0;
  *(const char **)ctx = v;
  return 1;
}

int cmd_score(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "score");
  const char *data = NULL;
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_RUN | DRV_DEBUG, own_flags, &data, usage);
  if (!rc && (o.save || o.metrics || o.f64 || o.trace || o.save_every || o.no_eval)) {
    fprintf(stderr, "moec score: error: --save, --save-every, --trace, --metrics, --f64 and "
                    "--no-eval are not options of score\n");
    rc = 2;
  }
  Config cfg;
  AstFile *f = cli_load_trained(&o, &cfg, &rc, usage);
  if (!f) return rc;
  Corpus *c = rt_eval_corpus(&cfg, drv_model_vocab(f), o.load, data);
  if (c->syn) {
    fprintf(stderr, "moec score: error: the synthetic corpus has no lines to score: give --data "
                    "TEXT (or use moec eval)\n");
    rt_corpus_free(c);
    fe_ast_free(f);
    drv_options_free(&o);
    return 1;
  }
  int64_t n;
  rt_corpus_stream(c, SPLIT_TEST, &n);
  int T = (int)MC_MAX(1, MC_MIN(n - 1, 256));
  Program *p = drv_compile_forward(f, &cfg, &o, 1, T);
  rc = p ? rt_score(p, c, o.load, data ? data : "the test split", o.json, o.quiet) : 1;
  drv_program_free(p);
  rt_corpus_free(c);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}
