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
  fprintf(out, "usage: moec eval FILE --load CKPT [--data D] [--json] [settings]\n\n"
               "Test perplexity of the checkpoint CKPT for the model in FILE: on the test split\n"
               "of the train block's data, or on the whole of D (a text file, read with the\n"
               "checkpoint's vocabulary, or a .bin file of uint16 ids), in batches of the\n"
               "train block's batch x unroll, LSTM state carried from zero.\n\n"
               "options:\n"
               "  --load CKPT   the weights (safetensors; optimizer state is ignored)\n"
               "  --data D      evaluate on all of D instead of the test split\n"
               "  --json        print {\"tokens\", \"test_loss\", \"test_ppl\", ...}\n\n"
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
          "T ids, targets its last T. LSTM state starts at zero; no dropout, no gate noise.\n\n"
          "options:\n"
          "  --load W      the weights: every parameter, under its own name\n"
          "  --tokens F    the batch\n"
          "  --out G       write d loss / d param for every parameter, under its own name\n"
          "  --json        print {\"loss\", \"xent\", \"aux\"}\n"
          "  --f64         compute in double precision (gradients written as F64)\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS);
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
  return rc;
}

/* ---------------------------------------------------------------- eval, grad */

typedef struct OneBatch {
  const char *cmd, *data, *tokens, *out;
} OneBatch;

static int eval_flags(int argc, char **argv, int *i, void *ctx) {
  OneBatch *b = ctx;
  bool bad = false;
  const char *v;
  if ((v = cli_value(argc, argv, i, "--data", b->cmd, &bad)))
    b->data = v;
  else if ((v = cli_value(argc, argv, i, "--tokens", b->cmd, &bad)))
    b->tokens = v;
  else if ((v = cli_value(argc, argv, i, "--out", b->cmd, &bad)))
    b->out = v;
  else
    return bad ? -1 : 0;
  return 1;
}

/* One device's program of FILE: forward only (eval) or forward + backward (grad). */
static Program *compile_one(AstFile *f, const Config *cfg, const Options *o, bool training) {
  const Backend *be = drv_backend(cfg, o->cmd);
  if (!be) return NULL;
  Target t = {.devices = 1,
              .rank = 0,
              .training = training,
              .prec = o->f64 ? PREC_F64 : PREC_F32,
              .be = be};
  return drv_compile(f, cfg, o, &t);
}

int cmd_eval(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "eval");
  OneBatch b = {.cmd = "eval"};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_RUN | DRV_DEBUG, eval_flags, &b,
                     eval_usage);
  if (!rc && (b.tokens || b.out || o.save || o.metrics || o.f64)) {
    fprintf(stderr, "moec eval: error: --tokens, --out, --save, --metrics and --f64 are not "
                    "options of eval\n");
    rc = 2;
  }
  if (!rc && !o.load) {
    fprintf(stderr, "moec eval: error: --load CKPT is required\n");
    eval_usage(stderr);
    rc = 2;
  }
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  Config cfg;
  AstFile *f = drv_load(&o, &cfg, &rc);
  Program *p = f ? compile_one(f, &cfg, &o, false) : NULL;
  if (f) rc = p ? rt_eval(p, &cfg, o.load, b.data, o.json) : 1;
  drv_program_free(p);
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
  if (f && cfg.backend == BK_CUDA && o.f64) {
    fprintf(stderr, "moec grad: error: --f64 runs on the cpu backend only\n");
    fe_ast_free(f);
    drv_options_free(&o);
    return 1;
  }
  Program *p = f ? compile_one(f, &cfg, &o, true) : NULL;
  if (f) rc = p ? rt_grad(p, &cfg, o.load, b.tokens, b.out, o.json) : 1;
  drv_program_free(p);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}
