/* cmd_run.c: `moec run` (train, evaluate), `moec eval` (perplexity of a
 * checkpoint) and `moec grad` (loss and gradients of one batch). The work is in
 * runtime/train.c; this file parses flags, which override the train block. */
#include <stdlib.h>
#include <string.h>

#include "../passes/plan.h"
#include "../runtime/multidev.h"
#include "../runtime/train.h"
#include "../runtime/train_dev.h"
#include "cli.h"

static void run_usage(FILE *out) {
  fprintf(out,
          "usage: moec run FILE [options]\n\n"
          "Compiles FILE and trains its model as the train block says, evaluating on the\n"
          "valid split every --eval-every steps and on valid and test at the end. Shows a\n"
          "progress line (step, loss, perplexity, tokens/s, each MoE's importance CV and\n"
          "max/mean load) and ends with test perplexity (and, on the synthetic corpus,\n"
          "its entropy floor) and a timing summary.\n\n"
          "options (each overrides the train/plan setting of the same name):\n"
          "  --steps N        train until step N (a resumed run continues to N)\n"
          "  --eval-every N   evaluate on the valid split every N steps (0: only at the end)\n"
          "  --seed S         the run's seed: init, dropout, gate noise\n"
          "  --save CKPT      write a safetensors checkpoint at every evaluation and at the end\n"
          "                   (params, optimizer state, LSTM state, step; atomic)\n"
          "  --load CKPT      resume from CKPT (or start from its weights if it holds no\n"
          "                   optimizer state); resuming repeats an uninterrupted run exactly\n"
          "  --metrics FILE   JSON lines: one per step and one per evaluation\n"
          "  --json           print one JSON object as the last line of stdout (steps,\n"
          "                   train_loss, valid_ppl, test_ppl, tokens_per_s, floor_ppl, ...);\n"
          "                   progress then goes to stderr\n"
          "  --quiet          no progress lines\n"
          "  --no-jit         run the program with the interpreter loop instead of the\n"
          "                   LLVM-compiled host program (debugging; same results)\n"
          "  --no-fuse        no elementwise fusion (overrides the plan's fuse = true)\n"
          "  --backend B      cpu, cuda (GPUs; docs/cuda.md) or auto (cpu for now);\n"
          "                   overrides the plan block's backend\n"
          "  --devices N      N in-process devices, one thread each (mpirun: one per rank)\n"
          "  --loads F        per-expert loads for experts = balanced (a --metrics file)\n"
          "  --f64            compute and update in double precision (cpu; no --save or\n"
          "                   --load): to check that runs which differ only in summation\n"
          "                   order, e.g. on 1 and N devices, agree to double rounding\n");
}

static void eval_usage(FILE *out) {
  fprintf(out, "usage: moec eval FILE --load CKPT [--data D] [--json]\n\n"
               "Test perplexity of the checkpoint CKPT for the model in FILE: on the test split\n"
               "of the train block's data, or on the whole of D (a text file, read with the\n"
               "checkpoint's vocabulary, or a .bin file of uint16 ids), in batches of the train\n"
               "block's batch x unroll, LSTM state carried from zero.\n\n"
               "options:\n"
               "  --load CKPT   the weights (safetensors; optimizer state is ignored)\n"
               "  --data D      evaluate on all of D instead of the test split\n"
               "  --backend B   cpu, cuda or auto (cpu for now)\n"
               "  --json        print {\"tokens\", \"test_loss\", \"test_ppl\", ...}\n");
}

static void grad_usage(FILE *out) {
  fprintf(out,
          "usage: moec grad FILE --load W.safetensors --tokens F.bin [--out G.safetensors]\n"
          "                 [--json] [--f64]\n\n"
          "Loss and gradients for one batch: the hook independent references (PyTorch)\n"
          "compare against. F.bin holds B*(T+1) little-endian uint16 ids (B, T: the train\n"
          "block's batch and unroll); row b is ids [b*(T+1), (b+1)*(T+1)): inputs its first\n"
          "T ids, targets its last T. LSTM state starts at zero; no dropout, no gate noise.\n\n"
          "options:\n"
          "  --load W      the weights: every parameter, under its own name\n"
          "  --tokens F    the batch\n"
          "  --out G       write d loss / d param for every parameter, under its own name\n"
          "  --json        print {\"loss\", \"xent\", \"aux\"}\n"
          "  --f64         compute in double precision (gradients written as F64)\n"
          "  --backend B   cpu, cuda or auto (cpu for now)\n");
}

/* --name VALUE or --name=VALUE: the value, or NULL if argv[*i] is not --name. */
static const char *flag_value(int argc, char **argv, int *i, const char *name, const char *cmd) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, n)) return NULL;
  if (a[n] == '=') return a + n + 1;
  if (a[n]) return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "moec %s: error: %s needs a value\n", cmd, name);
    exit(2);
  }
  return argv[++*i];
}

static long long int_value(const char *v, const char *name, const char *cmd, long long lo) {
  char *end;
  long long x = strtoll(v, &end, 10);
  if (!*v || *end || x < lo) {
    fprintf(stderr, "moec %s: error: %s needs an integer >= %lld (got '%s')\n", cmd, name, lo, v);
    exit(2);
  }
  return x;
}

/* --backend B: BK_* or -1 (error printed). */
static int backend_kind(const char *b, const char *cmd) {
  if (!strcmp(b, "auto")) return BK_AUTO;
  if (!strcmp(b, "cpu")) return BK_CPU;
  if (!strcmp(b, "cuda")) return BK_CUDA;
  fprintf(stderr, "moec %s: error: unknown backend '%s' (cpu, cuda or auto)\n", cmd, b);
  return -1;
}

/* The flag overrides the plan block; cuda must be able to run here. Returns false
 * (error printed) when it cannot. */
static bool apply_backend(Config *cfg, int flag_kind, const char *cmd) {
  if (flag_kind >= 0) cfg->backend = (BackendKind)flag_kind;
  if (cfg->backend != BK_CUDA) return true;
  const char *why = rt_dev_cuda_unavailable();
  if (!why) return true;
  fprintf(stderr, "moec %s: error: %s: %s\n", cmd,
          flag_kind >= 0 ? "--backend cuda" : "backend = cuda (plan block)", why);
  return false;
}

static bool bad_option(const char *a, const char *cmd, void (*usage)(FILE *)) {
  fprintf(stderr, "moec %s: error: unknown option '%s'\n", cmd, a);
  usage(stderr);
  return false;
}

int cmd_run(int argc, char **argv) {
  if (drv_wants_help(argc, argv)) {
    run_usage(stdout);
    return 0;
  }
  const char *path = NULL, *v;
  TrainOpts o = {0};
  long long steps = -1, eval_every = -1, seed = -1, devices = 0;
  const char *backend = NULL;
  const char *loads = NULL; /* measured expert loads for experts = balanced */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((v = flag_value(argc, argv, &i, "--steps", "run")))
      steps = int_value(v, "--steps", "run", 0);
    else if ((v = flag_value(argc, argv, &i, "--eval-every", "run")))
      eval_every = int_value(v, "--eval-every", "run", 0);
    else if ((v = flag_value(argc, argv, &i, "--seed", "run")))
      seed = int_value(v, "--seed", "run", 0);
    else if ((v = flag_value(argc, argv, &i, "--devices", "run")))
      devices = int_value(v, "--devices", "run", 1);
    else if ((v = flag_value(argc, argv, &i, "--backend", "run")))
      backend = v;
    else if ((v = flag_value(argc, argv, &i, "--save", "run")))
      o.save = v;
    else if ((v = flag_value(argc, argv, &i, "--load", "run")))
      o.load = v;
    else if ((v = flag_value(argc, argv, &i, "--loads", "run")))
      loads = v;
    else if ((v = flag_value(argc, argv, &i, "--metrics", "run")))
      o.metrics = v;
    else if (!strcmp(a, "--json"))
      o.json = true;
    else if (!strcmp(a, "--quiet"))
      o.quiet = true;
    else if (!strcmp(a, "--f64"))
      o.f64 = true;
    else if (!strcmp(a, "--no-jit"))
      setenv("MOEC_JIT", "0", 1); /* read by rt_exec (codegen/hostjit.c) */
    else if (!strcmp(a, "--no-fuse"))
      setenv("MOEC_FUSE", "0", 1); /* read by the fusion pass */
    else if (a[0] == '-' && a[1])
      return bad_option(a, "run", run_usage) ? 0 : 2;
    else if (!path)
      path = a;
    else {
      fprintf(stderr, "moec run: error: more than one FILE ('%s', '%s')\n", path, a);
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, "moec run: error: no FILE given\n");
    run_usage(stderr);
    return 2;
  }
  int bkind = backend ? backend_kind(backend, "run") : -1;
  if (backend && bkind < 0) return 2;
  if (o.f64 && (o.save || o.load)) {
    fprintf(stderr, "moec run: error: --f64 runs cannot --save or --load checkpoints (they are "
                    "float32)\n");
    return 2;
  }
  if (devices > RT_INPROC_MAX && !rt_comm_mpi_launched()) {
    fprintf(stderr, "moec run: error: --devices %lld: at most %d in-process devices\n", devices,
            RT_INPROC_MAX);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(path, &cfg);
  if (!f) return 1;
  if (steps >= 0) cfg.steps = (int)MC_MIN(steps, 2000000000LL);
  if (eval_every >= 0) cfg.eval_every = (int)MC_MIN(eval_every, 2000000000LL);
  if (seed >= 0) cfg.seed = (uint64_t)seed;
  if (!apply_backend(&cfg, bkind, "run")) {
    fe_ast_free(f);
    return 1;
  }
  if (cfg.backend == BK_CUDA && o.f64) {
    fprintf(stderr, "moec run: error: --f64 trains on the cpu backend only (an equivalence "
                    "check): drop --f64 or use --backend cpu\n");
    fe_ast_free(f);
    return 1;
  }
  if (!devices && cfg.devices > 1 && !rt_md_mpi_launched())
    fprintf(stderr,
            "moec: note: the plan asks for %d devices: running on 1 (the same losses); "
            "--devices N or mpirun -np N runs on N\n",
            cfg.devices);
  if (loads) { /* read by the placement pass (experts = balanced) */
    const char *err = NULL;
    plan_loads = plan_read_loads(loads, &err);
    if (!plan_loads) {
      fprintf(stderr, "moec run: error: --loads %s: %s\n", loads, err ? err : "no loads");
      fe_ast_free(f);
      return 1;
    }
  }
  o.model_path = path;
  /* N in-process devices, or one device per MPI rank (runtime/multidev.c) */
  int rc = devices > 1 || rt_md_mpi_launched() ? rt_md_train(f, &cfg, &o, (int)devices)
                                               : rt_train(f, &cfg, &o);
  plan_free_loads((PlanLoads *)plan_loads);
  plan_loads = NULL;
  fe_ast_free(f);
  return rc;
}

int cmd_eval(int argc, char **argv) {
  if (drv_wants_help(argc, argv)) {
    eval_usage(stdout);
    return 0;
  }
  const char *path = NULL, *load = NULL, *data = NULL, *v;
  bool json = false;
  int bkind = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((v = flag_value(argc, argv, &i, "--load", "eval")))
      load = v;
    else if ((v = flag_value(argc, argv, &i, "--data", "eval")))
      data = v;
    else if ((v = flag_value(argc, argv, &i, "--backend", "eval"))) {
      if ((bkind = backend_kind(v, "eval")) < 0) return 2;
    } else if (!strcmp(a, "--json"))
      json = true;
    else if (a[0] == '-' && a[1])
      return bad_option(a, "eval", eval_usage) ? 0 : 2;
    else if (!path)
      path = a;
    else {
      fprintf(stderr, "moec eval: error: more than one FILE ('%s', '%s')\n", path, a);
      return 2;
    }
  }
  if (!path || !load) {
    fprintf(stderr, "moec eval: error: %s\n", !path ? "no FILE given" : "--load CKPT is required");
    eval_usage(stderr);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(path, &cfg);
  if (!f) return 1;
  if (!apply_backend(&cfg, bkind, "eval")) {
    fe_ast_free(f);
    return 1;
  }
  int rc = rt_eval_checkpoint(f, &cfg, load, data, json);
  fe_ast_free(f);
  return rc;
}

int cmd_grad(int argc, char **argv) {
  if (drv_wants_help(argc, argv)) {
    grad_usage(stdout);
    return 0;
  }
  const char *path = NULL, *load = NULL, *tokens = NULL, *out = NULL, *v;
  bool json = false, f64 = false;
  int bkind = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((v = flag_value(argc, argv, &i, "--load", "grad")))
      load = v;
    else if ((v = flag_value(argc, argv, &i, "--tokens", "grad")))
      tokens = v;
    else if ((v = flag_value(argc, argv, &i, "--out", "grad")))
      out = v;
    else if ((v = flag_value(argc, argv, &i, "--backend", "grad"))) {
      if ((bkind = backend_kind(v, "grad")) < 0) return 2;
    } else if (!strcmp(a, "--json"))
      json = true;
    else if (!strcmp(a, "--f64"))
      f64 = true;
    else if (a[0] == '-' && a[1])
      return bad_option(a, "grad", grad_usage) ? 0 : 2;
    else if (!path)
      path = a;
    else {
      fprintf(stderr, "moec grad: error: more than one FILE ('%s', '%s')\n", path, a);
      return 2;
    }
  }
  if (!path || !load || !tokens) {
    fprintf(stderr, "moec grad: error: %s\n",
            !path   ? "no FILE given"
            : !load ? "--load W.safetensors is required"
                    : "--tokens F.bin is required");
    grad_usage(stderr);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(path, &cfg);
  if (!f) return 1;
  if (!apply_backend(&cfg, bkind, "grad")) {
    fe_ast_free(f);
    return 1;
  }
  int rc = rt_grad(f, &cfg, load, tokens, out, json, f64);
  fe_ast_free(f);
  return rc;
}
