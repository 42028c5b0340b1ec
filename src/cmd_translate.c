/* cmd_translate.c: `moec translate` (source sentences to translations with a translation
 * model's checkpoint) and what `moec eval` adds for translation models (perplexity and
 * BLEU on pairs): both decode with two programs compiled up front from the model's own
 * layers, its encoder and one decoder step (ir_build_part; runtime/translate.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/text.h"
#include "cli.h"

static void translate_usage(FILE *out) {
  fprintf(out,
          "usage: moec translate MODEL [SOURCES] --load CKPT [--beam K] [--alpha A]\n"
          "                      [--max-len L] [--rows R] [settings]\n\n"
          "Translates SOURCES (one sentence per line; none or '-': the standard input) with\n"
          "the translation model MODEL and the weights and BPE vocabulary of CKPT (written by\n"
          "moec run --save), writing one detokenized translation per line, in order. Beam\n"
          "search scored by log-probability over GNMT's length penalty ((5+|Y|)/6)^A;\n"
          "sentences batched by length; MoE gates without noise (batchwise: their learned\n"
          "thresholds). Deterministic.\n\n"
          "options:\n"
          "  --load CKPT    the checkpoint (required)\n"
          "  --beam K       hypotheses kept per sentence (default 4; 1: greedy)\n"
          "  --alpha A      the length penalty's exponent (default 0.6; 0: none)\n"
          "  --max-len L    output ids per sentence at most, </s> included (default: the\n"
          "                 train block's max_len)\n"
          "  --rows R       decoder rows per step, sentences x K (default 256)\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS);
}

static bool to_int(const char *cmd, const char *flag, const char *v, int lo, int hi, int *out) {
  char *end;
  long n = strtol(v, &end, 10);
  if (*v == 0 || *end || n < lo || n > hi) {
    fprintf(stderr, "moec %s: error: %s wants an integer in [%d, %d], not '%s'\n", cmd, flag, lo,
            hi, v);
    return false;
  }
  *out = (int)n;
  return true;
}

int cli_decode_flags(int argc, char **argv, int *i, void *ctx) {
  DecodeFlags *f = ctx;
  bool bad = false;
  const char *v;
  if ((v = cli_value(argc, argv, i, "--beam", f->cmd, &bad))) {
    if (!to_int(f->cmd, "--beam", v, 1, 64, &f->beam)) return -1;
  } else if ((v = cli_value(argc, argv, i, "--max-len", f->cmd, &bad))) {
    if (!to_int(f->cmd, "--max-len", v, 1, 4096, &f->max_len)) return -1;
  } else if ((v = cli_value(argc, argv, i, "--rows", f->cmd, &bad))) {
    if (!to_int(f->cmd, "--rows", v, 1, 65536, &f->rows)) return -1;
  } else if ((v = cli_value(argc, argv, i, "--alpha", f->cmd, &bad))) {
    char *end;
    f->alpha = strtod(v, &end);
    if (*v == 0 || *end || !isfinite(f->alpha) || f->alpha < 0 || f->alpha > 10) {
      fprintf(stderr, "moec %s: error: --alpha wants a number in [0, 10], not '%s'\n", f->cmd, v);
      return -1;
    }
  } else if (!strcmp(f->cmd, "translate") && f->o->path && !f->sources &&
             (argv[*i][0] != '-' || !strcmp(argv[*i], "-"))) {
    f->sources = argv[*i]; /* the second FILE */
    return 1;
  } else {
    return bad ? -1 : 0;
  }
  f->given = true;
  return 1;
}

bool cli_is_translation(const AstFile *f) {
  for (Stmt *s = f->model->stmts; s; s = s->next)
    for (Arg *a = s->kind == ST_INPUT ? s->dims : NULL; a; a = a->next)
      if (a->value->kind == EX_NAME && !strcmp(a->value->str, "S")) return true;
  return false;
}

/* The encoder and decoder-step programs for d (forward only, one device). */
static bool compile_decoder(AstFile *f, const Config *cfg, const Options *o, const DecodeOpts *d,
                            Program **enc, Program **dec) {
  const Backend *be = drv_backend(cfg, o);
  if (!be) return false;
  int64_t S = (d->max_src + RT_PAR_WIDTH - 1) / RT_PAR_WIDTH * RT_PAR_WIDTH;
  BatchShape es = {d->rows / d->beam, 1, S}, ds = {(d->rows / d->beam) * d->beam, 1, S};
  Target t = {.devices = 1, .rank = 0, .prec = PREC_F32, .be = be, .nshapes = 1};
  t.part = BUILD_ENCODER;
  t.shapes = &es;
  *enc = drv_compile(f, cfg, o, &t);
  t.part = BUILD_DECODER;
  t.shapes = &ds;
  *dec = *enc ? drv_compile(f, cfg, o, &t) : NULL;
  return *enc && *dec;
}

/* Flags to options, with the defaults; false after an error. */
static bool decode_opts(const DecodeFlags *fl, const Config *cfg, DecodeOpts *d) {
  *d = (DecodeOpts){.beam = fl->beam ? fl->beam : 4,
                    .alpha = fl->alpha >= 0 ? fl->alpha : 0.6,
                    .max_len = fl->max_len ? fl->max_len : cfg->max_len,
                    .rows = fl->rows ? fl->rows : 256,
                    .max_src = cfg->max_len};
  if (d->rows < d->beam) {
    fprintf(stderr, "moec %s: error: --rows %d is fewer than the beam's %d hypotheses\n", fl->cmd,
            d->rows, d->beam);
    return false;
  }
  return true;
}

int cmd_translate(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "translate");
  DecodeFlags fl = {.cmd = "translate", .o = &o, .alpha = -1};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_RUN | DRV_DEBUG, cli_decode_flags, &fl,
                     translate_usage);
  if (!rc && (o.save || o.metrics || o.f64 || o.json)) {
    fprintf(stderr, "moec translate: error: --save, --metrics, --f64 and --json are not options "
                    "of translate\n");
    rc = 2;
  }
  Config cfg;
  AstFile *f = cli_load_trained(&o, &cfg, &rc, translate_usage);
  if (!f) return rc;
  if (!cli_is_translation(f)) {
    fprintf(stderr,
            "moec translate: error: model '%s' in %s is not a translation model (no input over "
            "the source length S): it has nothing to translate\n",
            f->model->name, o.path);
    rc = 1;
  } else {
    DecodeOpts d;
    Program *enc = NULL, *dec = NULL;
    rc = decode_opts(&fl, &cfg, &d) && compile_decoder(f, &cfg, &o, &d, &enc, &dec)
             ? rt_translate(enc, dec, o.load, fl.sources, &d)
             : 1;
    drv_program_free(enc);
    drv_program_free(dec);
  }
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}

int cli_eval_pairs(AstFile *f, const Config *cfg, const Options *o, Program *p,
                   const DecodeFlags *fl, const char *data) {
  DecodeOpts d;
  Program *enc = NULL, *dec = NULL;
  int rc = decode_opts(fl, cfg, &d) && compile_decoder(f, cfg, o, &d, &enc, &dec)
               ? rt_eval_pairs(p, enc, dec, cfg, o->load, data, &d, o->json)
               : 1;
  drv_program_free(enc);
  drv_program_free(dec);
  return rc;
}
