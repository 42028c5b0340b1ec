/* cmd_run.c: `moec run` (train, evaluate), `moec eval` (perplexity of a checkpoint) and
 * `moec grad` (loss and gradients of one batch). Every train/plan setting can be given
 * as a flag (driver/options.c); the driver compiles, the runtime runs. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void run_usage(FILE *out) {
  fprintf(out,
          "usage: moec run FILE [options]\n\n"
          "Compiles FILE and trains its model as the train block says, on the devices its\n"
          "plan block says (in-process, one thread each; under mpirun one per rank),\n"
          "evaluating on the valid split every eval_every steps and on valid and test at\n"
          "the end. Shows a progress line (step, loss, perplexity, tokens/s, each MoE's\n"
          "importance CV and max/mean load) and ends with test perplexity (and, on the\n"
          "synthetic corpus, its entropy floor), a timing and a memory summary.\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS | DRV_LOADS);
  fprintf(out, "\nrun:\n");
  drv_options_help(out, DRV_RUN);
  fprintf(out, "\ndebugging:\n");
  drv_options_help(out, DRV_DEBUG);
}

static void eval_usage(FILE *out) {
  fprintf(out,
          "usage: moec eval FILE --load CKPT [--data D] [--batch B] [--unroll T] [--json]\n"
          "                 [settings]\n\n"
          "Test perplexity of the checkpoint CKPT for the model in FILE: on the test split\n"
          "of the train block's data, or on the whole of D (a text file, read with the\n"
          "checkpoint's tokenizer, or a .bin file of uint16 ids), in batches of B streams x\n"
          "T steps (the train block's batch and unroll, made smaller when the data is), LSTM\n"
          "state carried from zero. The last partial batch is evaluated too; the first\n"
          "token of each stream is context (a text's first is predicted from a line end):\n"
          "with --batch 1 every token is predicted.\n\n"
          "A translation model: perplexity per target token and corpus BLEU-4 (beam search,\n"
          "as moec translate; tokenized as docs/training.md says) on the valid pairs, or\n"
          "on the pairs of D (source<TAB>target lines); --beam K (default 4), --alpha A\n"
          "(0.6), --max-len L and --rows R as moec translate's.\n\n"
          "options:\n"
          "  --load CKPT   the weights (safetensors; optimizer state is ignored)\n"
          "  --data D      evaluate on all of D instead of the test split\n"
          "  --batch B     streams (default: the train block's batch)\n"
          "  --unroll T    steps per batch (default: the train block's unroll)\n"
          "  --json        print {\"tokens\", \"test_loss\", \"test_ppl\", \"word_ppl\", ...}\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS);
}

static void grad_usage(FILE *out) {
  fprintf(out,
          "usage: moec grad FILE --load W.safetensors --tokens F.bin [--out G.safetensors]\n"
          "                 [--json] [--f64] [settings]\n\n"
          "Loss and gradients for one batch: the hook independent references (PyTorch)\n"
          "compare against. F.bin holds B*(T+1) little-endian uint16 ids (B, T: the train\n"
          "block's batch and unroll); row b is ids [b*(T+1), (b+1)*(T+1)): inputs its first\n"
          "T ids, targets its last T. For a translation model F is a safetensors file with an\n"
          "I32 tensor per model input, by its name (src [B, S], tgt_in and tgt_out [B, T]),\n"
          "which sets B, S and T. LSTM state starts at zero; no dropout, no gate noise.\n\n"
          "options:\n"
          "  --load W      the weights: every parameter, under its own name\n"
          "  --tokens F    the batch\n"
          "  --out G       write d loss / d param for every parameter, under its own name\n"
          "  --json        print {\"loss\", \"xent\", \"aux\"}\n"
          "  --f64         compute in double precision (gradients written as F64)\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS);
}

/* An argument as a shell reads it back: in single quotes unless it is plain. */
static void shell_word(McBuf *b, const char *a) {
  if (*a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=,:+@%") ==
                strlen(a)) {
    mc_buf_printf(b, " %s", a);
    return;
  }
  mc_buf_printf(b, " '");
  for (; *a; a++)
    if (*a == '\'')
      mc_buf_printf(b, "'\\''");
    else
      mc_buf_putc(b, *a);
  mc_buf_putc(b, '\'');
}

/* The command line that resumes this run from its --save checkpoint: the same, with
 * --load CKPT instead of any --load (an interrupted run prints it). */
static char *resume_command(int argc, char **argv, const char *save) {
  McBuf b = {0};
  mc_buf_printf(&b, "moec run");
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--load")) {
      i++;
      continue;
    }
    if (!strncmp(argv[i], "--load=", 7)) continue;
    shell_word(&b, argv[i]);
  }
  mc_buf_printf(&b, " --load");
  shell_word(&b, save);
  return b.data;
}

int cmd_run(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "run");
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_LOADS | DRV_RUN | DRV_DEBUG, NULL, NULL,
                     run_usage);
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  if (o.save_every && !o.save) {
    fprintf(stderr, "moec run: error: --save-every needs --save CKPT (where to write)\n");
    drv_options_free(&o);
    return 2;
  }
  char *resume = o.save ? resume_command(argc, argv, o.save) : NULL;
  o.resume_cmd = resume;
  if (drv_mpi_launched() && !o.devices_given) { /* one device per rank */
    char n[32];
    snprintf(n, sizeof n, "%d", drv_mpi_size());
    drv_add_setting(&o, "plan", "devices", n, "mpirun -np");
  }
  Config cfg;
  AstFile *f = drv_load(&o, &cfg, &rc);
  if (f) rc = drv_train(f, &cfg, &o);
  fe_ast_free(f);
  drv_options_free(&o);
  mc_free(resume);
  return rc;
}

/* ---------------------------------------------------------------- eval, grad */

typedef struct OneBatch {
  const char *cmd, *data, *tokens, *out;
  DecodeFlags dec; /* eval of a translation model */
  int batch, unroll; /* eval: 0 = the train block's */
} OneBatch;

/* --batch N, --unroll N as eval's own (not settings: any size, whatever the plan) */
static int positive(const char *v, const char *flag, const char *cmd, int *out) {
  char *end;
  long n = strtol(v, &end, 10);
  if (*end || n < 1 || n > (1 << 20)) {
    fprintf(stderr, "moec %s: error: %s needs a number from 1 to 1048576, not '%s'\n", cmd, flag,
            v);
    return -1;
  }
  *out = (int)n;
  return 1;
}

static int eval_flags(int argc, char **argv, int *i, void *ctx) {
  OneBatch *b = ctx;
  bool bad = false;
  const char *v;
  int t = b->dec.cmd ? cli_decode_flags(argc, argv, i, &b->dec) : 0;
  if (t) return t;
  if ((v = cli_value(argc, argv, i, "--data", b->cmd, &bad)))
    b->data = v;
  else if ((v = cli_value(argc, argv, i, "--tokens", b->cmd, &bad)))
    b->tokens = v;
  else if ((v = cli_value(argc, argv, i, "--out", b->cmd, &bad)))
    b->out = v;
  else if (!strcmp(b->cmd, "eval") && (v = cli_value(argc, argv, i, "--batch", b->cmd, &bad)))
    return positive(v, "--batch", b->cmd, &b->batch);
  else if (!strcmp(b->cmd, "eval") && (v = cli_value(argc, argv, i, "--unroll", b->cmd, &bad)))
    return positive(v, "--unroll", b->cmd, &b->unroll);
  else
    return bad ? -1 : 0;
  return 1;
}

/* One device's program of FILE: forward only (eval) or forward + backward (grad); shape:
 * the one batch shape it runs (NULL: the train block's). */
static Program *compile_one(AstFile *f, const Config *cfg, const Options *o, bool training,
                            const BatchShape *shape) {
  const Backend *be = drv_backend(cfg, o);
  if (!be) return NULL;
  Target t = {.devices = 1,
              .rank = 0,
              .training = training,
              .prec = o->f64 ? PREC_F64 : PREC_F32,
              .be = be,
              .shapes = shape,
              .nshapes = shape ? 1 : 0};
  return drv_compile(f, cfg, o, &t);
}

/* A translation model's batch for moec grad: B, S and T from the tensors of a safetensors
 * file named as the model's inputs. Returns 1 (a translation model, *bs set), 0 (not one)
 * or -1 after an error. */
static int pairs_batch_shape(const AstFile *f, const char *path, BatchShape *bs) {
  bool translation = false;
  for (Stmt *s = f->model->stmts; s; s = s->next)
    for (Arg *a = s->kind == ST_INPUT ? s->dims : NULL; a; a = a->next)
      translation |= a->value->kind == EX_NAME && !strcmp(a->value->str, "S");
  if (!translation) return 0;
  StFile *st = rt_st_open(path);
  int64_t v[3] = {0, 0, 0}; /* B, T, S */
  int rc = 1;
  for (Stmt *s = f->model->stmts; s && rc > 0; s = s->next) {
    if (s->kind != ST_INPUT) continue;
    const StEntry *e = rt_st_find(st, s->name);
    int d = 0;
    for (Arg *a = s->dims; a && e && rc > 0; a = a->next, d++) {
      const char *sym = a->value->kind == EX_NAME ? a->value->str : "";
      int k = !strcmp(sym, "B") ? 0 : !strcmp(sym, "T") ? 1 : !strcmp(sym, "S") ? 2 : -1;
      if (k < 0) continue;
      if (d >= e->rank || (v[k] && v[k] != e->shape[d]) || e->shape[d] < 1) {
        fprintf(stderr,
                "moec grad: error: %s: tensor '%s' does not match the model's input "
                "'%s' (dimension %d, %s)\n",
                path, s->name, s->name, d, sym);
        rc = -1;
      }
      if (d < e->rank) v[k] = e->shape[d];
    }
    if (!e) {
      fprintf(stderr, "moec grad: error: %s has no tensor '%s' (a model input)\n", path, s->name);
      rc = -1;
    }
  }
  rt_st_close(st);
  *bs = (BatchShape){v[0], v[1], v[2]};
  return rc;
}

int cmd_eval(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "eval");
  OneBatch b = {.cmd = "eval", .dec = {.cmd = "eval", .o = &o, .alpha = -1}};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_RUN | DRV_DEBUG, eval_flags, &b,
                     eval_usage);
  if (!rc && (b.tokens || b.out || o.save || o.metrics || o.f64 || o.trace || o.save_every)) {
    fprintf(stderr, "moec eval: error: --tokens, --out, --save, --save-every, --trace, --metrics "
                    "and --f64 are not options of eval\n");
    rc = 2;
  }
  Config cfg;
  AstFile *f = cli_load_trained(&o, &cfg, &rc, eval_usage);
  if (!f) return rc;
  if (cli_is_translation(f)) {
    Program *p = NULL;
    if (b.batch || b.unroll) {
      fprintf(stderr, "moec eval: error: --batch and --unroll are for language models; a "
                      "translation model's batches are its data's batch_tokens\n");
      rc = 2;
    } else {
      p = compile_one(f, &cfg, &o, false, NULL);
      rc = p ? cli_eval_pairs(f, &cfg, &o, p, &b.dec, b.data) : 1;
    }
    drv_program_free(p);
    fe_ast_free(f);
    drv_options_free(&o);
    return rc;
  }
  if (b.dec.given) {
    fprintf(stderr, "moec eval: error: --beam, --alpha, --max-len and --rows decode a "
                    "translation model; '%s' is a language model\n",
            f->model->name);
    fe_ast_free(f);
    drv_options_free(&o);
    return 2;
  }
  Corpus *c = rt_eval_corpus(&cfg, drv_model_vocab(f), o.load, b.data);
  int B = b.batch ? b.batch : cfg.batch, T = b.unroll ? b.unroll : cfg.unroll;
  if (!c->syn) { /* batches that fit the data: fewer streams (of T + 1 tokens, or one), T
                    within them */
    int64_t n;
    rt_corpus_stream(c, SPLIT_TEST, &n);
    int B0 = B, T0 = T;
    B = (int)MC_MAX(1, MC_MIN((int64_t)B, n / (T + 1)));
    T = (int)MC_MAX(1, MC_MIN((int64_t)T, n / B - 1));
    if ((B != B0 || T != T0) && !o.json)
      fprintf(stderr, "moec eval: note: %lld tokens: batches of %d x %d instead of %d x %d\n",
              (long long)n, B, T, B0, T0);
  }
  Program *p = drv_compile_forward(f, &cfg, &o, B, T);
  char what[4096];
  snprintf(what, sizeof what, "%s", b.data ? b.data : "the test split");
  rc = p ? rt_eval(p, c, o.load, what, o.json) : 1;
  drv_program_free(p);
  rt_corpus_free(c);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}

int cmd_grad(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "grad");
  OneBatch b = {.cmd = "grad"};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_RUN | DRV_DEBUG, eval_flags, &b,
                     grad_usage);
  if (!rc && (b.data || o.save || o.metrics)) {
    fprintf(stderr, "moec grad: error: --data, --save and --metrics are not options of grad\n");
    rc = 2;
  }
  if (!rc && (!o.load || !b.tokens)) {
    fprintf(stderr, "moec grad: error: %s\n",
            !o.load ? "--load W.safetensors is required" : "--tokens F.bin is required");
    grad_usage(stderr);
    rc = 2;
  }
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  Config cfg;
  AstFile *f = drv_load(&o, &cfg, &rc);
  BatchShape shape;
  int pairs = f ? pairs_batch_shape(f, b.tokens, &shape) : 0;
  Program *p = f && pairs >= 0 ? compile_one(f, &cfg, &o, true, pairs ? &shape : NULL) : NULL;
  if (f) rc = p ? rt_grad(p, &cfg, o.load, b.tokens, b.out, o.json) : 1;
  drv_program_free(p);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}
