/* options.c: the options every compiling command shares, as data. A train/plan setting
 * given by a flag becomes a line of a settings text that load.c merges into the file
 * before sema, so it is checked as the file's own settings are and its errors point at
 * the flag. Environment variables are read here only, once (docs/cli.md lists them). */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

/* MOEC_THREADS, else OPENBLAS_NUM_THREADS or OMP_NUM_THREADS (what a user sets to bound
 * a BLAS program's threads): the kernels' threads; 0: not set. */
static int threads_from_env(void) {
  const char *names[] = {"MOEC_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"};
  for (size_t i = 0; i < MC_ARRAY_LEN(names); i++) {
    const char *s = getenv(names[i]);
    char *end;
    long v = s ? strtol(s, &end, 10) : 0;
    if (s && *s && !*end && v >= 1) return (int)MC_MIN(v, RT_MAX_THREADS);
    if (s && *s && i == 0) mc_die("MOEC_THREADS='%s': expected a whole number >= 1", s);
  }
  return 0;
}

void drv_options_init(Options *o, const char *cmd) {
  *o = (Options){.cmd = cmd};
  o->comm = comm_opts_from_env();
  int threads = threads_from_env();
  if (threads) rt_threads_set(threads);
  const char *m = getenv("MOEC_MEMORY_LIMIT"); /* bytes; for tests and shared machines */
  if (m && *m) {
    char *end;
    o->memory_limit = strtod(m, &end);
    if (*end || !(o->memory_limit > 0)) mc_die("MOEC_MEMORY_LIMIT='%s' is not a number of bytes", m);
  }
}

void drv_options_free(Options *o) {
  mc_buf_free(&o->train);
  mc_buf_free(&o->plan);
}

/* ---------------------------------------------------------------- settings */

/* A flag's value as a .moe expression: one line, no comment. */
static bool value_ok(const char *v) {
  return *v && !strpbrk(v, "\n\r#{}");
}

static bool ident(const char *s, size_t n) {
  if (!n || !(isalpha((unsigned char)s[0]) || s[0] == '_')) return false;
  for (size_t i = 1; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return false;
  return true;
}

void drv_add_setting(Options *o, const char *block, const char *key, const char *value,
                     const char *flag) {
  McBuf *b = !strcmp(block, "train") ? &o->train : &o->plan;
  const char *dot = strchr(key, '.');
  if (dot) /* an argument of a call setting: NAME = _(ARG = VALUE) */
    mc_buf_printf(b, "  %.*s = _(%s = %s)  # %s\n", (int)(dot - key), key, dot + 1, value, flag);
  else
    mc_buf_printf(b, "  %s = %s  # %s\n", key, value, flag);
  o->nsettings++;
  if (!strcmp(block, "plan") && (!strcmp(key, "devices") || !strcmp(key, "mesh")))
    o->devices_given = true;
}

/* --data PATH: a path in quotes; a call (synthetic(...), text(...), ...) or an already
 * quoted value as it is. */
static void add_data(Options *o, const char *v, const char *flag) {
  size_t id = strspn(v, "abcdefghijklmnopqrstuvwxyz_");
  if (v[0] == '"' || (id && v[id] == '(')) { /* synthetic(...), text(...), bin(...), ... */
    drv_add_setting(o, "train", "data", v, flag);
    return;
  }
  McBuf q = {0};
  mc_buf_json_string(&q, v); /* the .moe string syntax is JSON's for these characters */
  drv_add_setting(o, "train", "data", q.data, flag);
  mc_buf_free(&q);
}

/* --mesh 2x4 (or 2,4) -> [2, 4] */
static bool add_mesh(Options *o, const char *v, const char *flag) {
  char *end;
  long n = strtol(v, &end, 10);
  if (end == v || (*end != 'x' && *end != 'X' && *end != ',')) return false;
  const char *s = end + 1;
  long m = strtol(s, &end, 10);
  if (end == s || *end) return false;
  char buf[64];
  snprintf(buf, sizeof buf, "[%ld, %ld]", n, m);
  drv_add_setting(o, "plan", "mesh", buf, flag);
  return true;
}

/* --recompute none|all|auto|LAYER[,LAYER...] */
static void add_recompute(Options *o, const char *v, const char *flag) {
  if (!strcmp(v, "none") || !strcmp(v, "all") || !strcmp(v, "auto")) {
    drv_add_setting(o, "plan", "recompute", v, flag);
    return;
  }
  McBuf b = {0};
  mc_buf_printf(&b, "[%s]", v);
  drv_add_setting(o, "plan", "recompute", b.data, flag);
  mc_buf_free(&b);
}

/* A duration: seconds (600, 2.5), or numbers with units s, m, h in turn (90s, 10m, 1h30m);
 * -1 when it is none of these. */
static double parse_duration(const char *v) {
  char *end;
  double x = strtod(v, &end);
  if (end == v || x < 0 || !(x < 1e9)) return -1;
  if (!*end) return x;
  double total = 0;
  const char *units = "hms";
  for (const char *p = v;;) {
    x = strtod(p, &end);
    if (end == p || x < 0 || !*end) return -1;
    const char *u = strchr(units, *end);
    if (!u || !*u) return -1;
    total += x * (*u == 'h' ? 3600 : *u == 'm' ? 60 : 1);
    units = u + 1; /* h before m before s, each at most once */
    p = end + 1;
    if (!*p) break;
    if (!(*p >= '0' && *p <= '9') && *p != '.') return -1;
  }
  return total < 1e9 ? total : -1;
}

/* --set block.key=value, block.key.arg=value */
static int add_set(Options *o, const char *v, const char *flag) {
  const char *eq = strchr(v, '=');
  const char *dot = eq ? memchr(v, '.', (size_t)(eq - v)) : NULL;
  size_t bl = dot ? (size_t)(dot - v) : 0;
  bool block_ok = dot && ((bl == 5 && !strncmp(v, "train", 5)) || (bl == 4 && !strncmp(v, "plan", 4)));
  const char *key = dot ? dot + 1 : NULL;
  const char *kdot = key ? memchr(key, '.', (size_t)(eq - key)) : NULL;
  bool key_ok = key && (kdot ? ident(key, (size_t)(kdot - key)) && ident(kdot + 1, (size_t)(eq - kdot - 1))
                             : ident(key, (size_t)(eq - key)));
  if (!eq || !block_ok || !key_ok || !value_ok(eq + 1)) {
    fprintf(stderr,
            "moec %s: error: --set needs train.KEY=VALUE or plan.KEY=VALUE (KEY may be "
            "SETTING.ARG, e.g. train.optimizer.lr=3e-3), not '%s'\n",
            o->cmd, v);
    return -1;
  }
  char block[8], k[256];
  snprintf(block, sizeof block, "%.*s", (int)bl, v);
  snprintf(k, sizeof k, "%.*s", (int)(eq - key), key);
  drv_add_setting(o, block, k, eq + 1, flag);
  return 1;
}

/* ---------------------------------------------------------------- the flag table */


typedef struct Flag {
  const char *name;
  int group;                /* DRV_* */
  const char *block, *key; /* a setting: block.key (NULL: handled below) */
  const char *help;
} Flag;

static const Flag flags[] = {
    {"--data", DRV_SETTINGS, NULL, NULL,
     "PATH|synthetic(...)|parallel(...)  the corpus (train.data)"},
    {"--batch", DRV_SETTINGS, "train", "batch", "N     global batch rows (train.batch)"},
    {"--unroll", DRV_SETTINGS, "train", "unroll", "N    timesteps per batch (train.unroll)"},
    {"--steps", DRV_SETTINGS, "train", "steps", "N     train until step N (train.steps)"},
    {"--eval-every", DRV_SETTINGS, "train", "eval_every",
     "N  evaluate on valid every N steps; 0: at the end"},
    {"--lr", DRV_SETTINGS, "train", "optimizer.lr", "X        the optimizer's learning rate"},
    {"--optimizer", DRV_SETTINGS, "train", "optimizer",
     "O adam, factored, adam(lr=, beta1=, ...) (train.optimizer)"},
    {"--clip", DRV_SETTINGS, "train", "clip", "X      gradient-norm clipping; none (train.clip)"},
    {"--accumulate", DRV_SETTINGS, "train", "accumulate",
     "K  K micro-batches of --batch rows per optimizer step (train.accumulate)"},
    {"--seed", DRV_SETTINGS, "train", "seed", "S      every random draw (train.seed)"},
    {"--max-time", DRV_SETTINGS, NULL, NULL,
     "T  stop after the step that ends past T of training: 600, 90s, 10m, 1h30m (train.max_time)"},
    {"--devices", DRV_SETTINGS, "plan", "devices",
     "N   devices (plan.devices; run: in-process devices, one thread each)"},
    {"--mesh", DRV_SETTINGS, NULL, NULL, "NxM      N nodes of M devices (plan.mesh)"},
    {"--strategy", DRV_SETTINGS, "plan", "strategy", "S  paper, data_parallel, hmoe"},
    {"--experts", DRV_SETTINGS, "plan", "experts", "P   contiguous, round_robin, balanced"},
    {"--recompute", DRV_SETTINGS, NULL, NULL, "R none, all, auto, or layers: m,h1"},
    {"--memory-budget", DRV_SETTINGS, "plan", "memory_budget",
     "SIZE  per device, for recompute = auto (8GiB)"},
    {"--expert-headroom", DRV_SETTINGS, "plan", "expert_headroom",
     "H  expert-row buffers at H x a device's fair share of the routes (default: sized per step)"},
    {"--tables", DRV_SETTINGS, "plan", "tables",
     "T  replicated, sharded: embedding tables split by rows over the devices"},
    {"--expert-bwd", DRV_SETTINGS, "plan", "expert_bwd",
     "F  fused, split: the experts' hidden gradient and relu's backward as one op "
     "(plan.expert_bwd)"},
    {"--fuse", DRV_SETTINGS, "plan", "fuse", "true|false  elementwise fusion (plan.fuse)"},
    {"--no-fuse", DRV_SETTINGS, NULL, NULL, "       the same as --fuse false"},
    {"--backend", DRV_SETTINGS, "plan", "backend", "B   cpu, cuda or auto (plan.backend)"},
    {"--tf32", DRV_SETTINGS, "plan", "tf32",
     "true|false  cuda: float32 GEMMs on TF32 tensor cores"},
    {"--set", DRV_SETTINGS, NULL, NULL,
     "K=V     any setting: train.batch=64, plan.strategy=hmoe, train.optimizer.beta2=0.98"},
    {"--loads", DRV_LOADS, NULL, NULL,
     "F     measured expert loads for experts = balanced (a --metrics file)"},
    {"--skew", DRV_LOADS, NULL, NULL,
     "zipf:S expert loads without --loads: expert e gets 1/(e+1)^S of the rows"},
    {"--save", DRV_RUN, NULL, NULL,
     "CKPT   write a checkpoint at every evaluation, at the end and "
     "when interrupted (Ctrl-C, SIGTERM)"},
    {"--save-every", DRV_RUN, NULL, NULL, "N  also write it every N steps"},
    {"--trace", DRV_RUN, NULL, NULL,
     "FILE  a Chrome / Perfetto trace of 3 steps (every kernel and "
     "collective)"},
    {"--load", DRV_RUN, NULL, NULL, "CKPT   resume from CKPT (or start from its weights)"},
    {"--metrics", DRV_RUN, NULL, NULL, "F   JSON lines: one per step and one per evaluation"},
    {"--json", DRV_RUN, NULL, NULL, "       one JSON object as the last line of stdout"},
    {"--quiet", DRV_RUN, NULL, NULL, "      no progress lines"},
    {"--f64", DRV_RUN, NULL, NULL, "        compute in double (cpu; no checkpoints)"},
    {"--no-eval", DRV_RUN, NULL, NULL, "    no evaluation, not even at the end (timing runs)"},
    {"--no-jit", DRV_DEBUG, NULL, NULL, "     the interpreter loop, not the compiled host program"},
    {"--no-memplan", DRV_DEBUG, NULL, NULL, " one buffer per tensor, every value kept"},
    {"--poison-arena", DRV_DEBUG, NULL, NULL, "fill the arena with NaN before every step"},
    {"--no-nvrtc", DRV_DEBUG, NULL, NULL, "   cuda: fused groups interpreted, not NVRTC-compiled"},
    {"--no-nccl", DRV_DEBUG, NULL, NULL,
     "    cuda, several GPUs: collectives staged through host memory"},
    {"--cuda-alloc-limit", DRV_DEBUG, NULL, NULL,
     "BYTES  cuda: larger device allocations fail as out of memory (tests)"},
};

static bool takes_value(const Flag *f) {
  static const char *const bare[] = {"--no-fuse",  "--json",   "--quiet",      "--f64",
                                     "--no-eval",  "--no-jit", "--no-memplan", "--poison-arena",
                                     "--no-nvrtc", "--no-nccl"};
  for (size_t i = 0; i < MC_ARRAY_LEN(bare); i++)
    if (!strcmp(f->name, bare[i])) return false;
  return true;
}

void drv_options_help(FILE *out, int which) {
  for (size_t i = 0; i < MC_ARRAY_LEN(flags); i++)
    if (flags[i].group & which) fprintf(out, "  %s %s\n", flags[i].name, flags[i].help);
}

int drv_take_option(Options *o, int which, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  for (size_t k = 0; k < MC_ARRAY_LEN(flags); k++) {
    const Flag *f = &flags[k];
    size_t n = strlen(f->name);
    if (strncmp(a, f->name, n) || (a[n] && a[n] != '=')) continue;
    if (!(f->group & which)) return 0;
    const char *v = NULL;
    if (takes_value(f)) {
      if (a[n] == '=')
        v = a + n + 1;
      else if (*i + 1 < argc)
        v = argv[++*i];
      else {
        fprintf(stderr, "moec %s: error: %s needs a value\n", o->cmd, f->name);
        return -1;
      }
      if (f->group == DRV_SETTINGS && !value_ok(v)) {
        fprintf(stderr, "moec %s: error: %s '%s': not a value\n", o->cmd, f->name, v);
        return -1;
      }
    } else if (a[n]) {
      fprintf(stderr, "moec %s: error: %s takes no value\n", o->cmd, f->name);
      return -1;
    }
    char flag[512];
    snprintf(flag, sizeof flag, "%s%s%s", f->name, v ? " " : "", v ? v : "");
    if (f->block) {
      drv_add_setting(o, f->block, f->key, v, flag);
    } else if (!strcmp(f->name, "--data")) {
      add_data(o, v, flag);
    } else if (!strcmp(f->name, "--mesh")) {
      if (!add_mesh(o, v, flag)) {
        fprintf(stderr, "moec %s: error: --mesh needs NODESxPER_NODE (2x4), not '%s'\n", o->cmd,
                v);
        return -1;
      }
    } else if (!strcmp(f->name, "--max-time")) {
      double secs = parse_duration(v);
      if (secs < 0) {
        fprintf(stderr,
                "moec %s: error: --max-time needs a duration: seconds (600) or with units "
                "s, m, h (90s, 10m, 1h30m), not '%s'\n",
                o->cmd, v);
        return -1;
      }
      char buf[64];
      snprintf(buf, sizeof buf, "%.17g", secs);
      drv_add_setting(o, "train", "max_time", buf, flag);
    } else if (!strcmp(f->name, "--recompute")) {
      add_recompute(o, v, flag);
    } else if (!strcmp(f->name, "--no-fuse")) {
      drv_add_setting(o, "plan", "fuse", "false", flag);
    } else if (!strcmp(f->name, "--set")) {
      return add_set(o, v, flag);
    } else if (!strcmp(f->name, "--loads")) {
      o->loads_path = v;
    } else if (!strcmp(f->name, "--skew")) {
      char *end = NULL;
      double sk = strncmp(v, "zipf:", 5) ? -1 : strtod(v + 5, &end);
      if (sk < 0 || !end || *end || end == v + 5 || sk > 16) {
        fprintf(stderr, "moec %s: error: --skew needs zipf:S with S in [0, 16], not '%s'\n", o->cmd,
                v);
        return -1;
      }
      o->zipf = sk;
    } else if (!strcmp(f->name, "--save")) {
      o->save = v;
    } else if (!strcmp(f->name, "--save-every")) {
      char *end;
      long long n = strtoll(v, &end, 10);
      if (*end || n < 1) {
        fprintf(stderr,
                "moec %s: error: --save-every needs a number of steps (1 or more), not "
                "'%s'\n",
                o->cmd, v);
        return -1;
      }
      o->save_every = n;
    } else if (!strcmp(f->name, "--trace")) {
      o->trace = v;
    } else if (!strcmp(f->name, "--load")) {
      o->load = v;
    } else if (!strcmp(f->name, "--metrics")) {
      o->metrics = v;
    } else if (!strcmp(f->name, "--json")) {
      o->json = true;
    } else if (!strcmp(f->name, "--quiet")) {
      o->quiet = true;
    } else if (!strcmp(f->name, "--f64")) {
      o->f64 = true;
    } else if (!strcmp(f->name, "--no-eval")) {
      o->no_eval = true;
    } else if (!strcmp(f->name, "--no-jit")) {
      o->cg.no_jit = true;
    } else if (!strcmp(f->name, "--no-memplan")) {
      o->cg.no_memplan = true;
    } else if (!strcmp(f->name, "--poison-arena")) {
      o->cg.poison = true;
    } else if (!strcmp(f->name, "--no-nvrtc")) {
      o->cg.no_nvrtc = true;
    } else if (!strcmp(f->name, "--no-nccl")) {
      o->dev.no_nccl = true;
    } else if (!strcmp(f->name, "--cuda-alloc-limit")) {
      char *end;
      double b = strtod(v, &end);
      if (*end || !(b >= 1)) {
        fprintf(stderr, "moec %s: error: --cuda-alloc-limit '%s': not a number of bytes\n", o->cmd,
                v);
        return -1;
      }
      o->dev.alloc_limit = b;
    }
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------- the effective settings */

static const char *const backend_names[] = {"auto", "cpu", "cuda"};
static const char *const decay_names[] = {"none", "rsqrt", "cosine", "linear"};
static const char *const place_names[] = {"replicate", "shard(experts)", "on"};

static void recompute_json(McBuf *b, const Config *c) {
  switch (c->recompute) {
  case RC_ALL:
    mc_buf_printf(b, "\"all\"");
    return;
  case RC_AUTO:
    mc_buf_printf(b, "\"auto\"");
    return;
  case RC_LIST:
    mc_buf_putc(b, '[');
    for (int i = 0; i < c->n_recompute; i++) {
      if (i) mc_buf_printf(b, ", ");
      mc_buf_json_string(b, c->recompute_names[i]);
    }
    mc_buf_putc(b, ']');
    return;
  default:
    mc_buf_printf(b, "\"none\"");
  }
}

char *drv_settings_json(const Config *c, const Options *o) {
  McBuf b = {0};
  mc_buf_printf(&b, "{\"train\": {\"data\": ");
  if (c->data == DATA_SYNTHETIC) {
    mc_buf_printf(&b, "{\"kind\": \"synthetic\", \"topics\": %d, \"vocab\": %d, \"seed\": %llu}",
                  c->topics, c->vocab, (unsigned long long)c->data_seed);
  } else if (c->data == DATA_PARALLEL) {
    mc_buf_printf(&b, "{\"kind\": \"parallel\", \"path\": ");
    mc_buf_json_string(&b, c->data_path ? c->data_path : "");
    mc_buf_printf(&b, ", \"valid\": ");
    if (c->data_valid_path)
      mc_buf_json_string(&b, c->data_valid_path);
    else
      mc_buf_printf(&b, "null");
    mc_buf_printf(&b, ", \"max_len\": %d, \"batch_tokens\": %d}", c->max_len, c->batch_tokens);
  } else {
    char tk[128];
    mc_buf_printf(&b, "{\"kind\": \"%s\", \"path\": ", c->data == DATA_BIN ? "bin" : "text");
    mc_buf_json_string(&b, c->data_path ? c->data_path : "");
    const char *vt[2] = {c->data_valid_path, c->data_test_path};
    for (int i = 0; i < 2; i++) {
      mc_buf_printf(&b, ", \"%s\": ", i ? "test" : "valid");
      if (vt[i])
        mc_buf_json_string(&b, vt[i]);
      else
        mc_buf_printf(&b, "null");
    }
    if (c->data == DATA_TEXT)
      mc_buf_printf(&b, ", \"tokenizer\": \"%s\"", fe_tokenizer_str(c, tk, sizeof tk));
    mc_buf_printf(&b, "}");
  }
  mc_buf_printf(&b,
                ", \"batch\": %d, \"unroll\": %d, \"steps\": %d, \"eval_every\": %d, "
                "\"optimizer\": {\"kind\": \"%s\", \"lr\": %.17g, \"beta1\": %.17g, \"beta2\": "
                "%.17g, \"eps\": %.17g, \"warmup\": %d, \"hold\": %d, \"decay\": \"%s\", "
                "\"min_lr\": %.17g, \"weight_decay\": %.17g}, \"clip\": %.17g, \"seed\": %llu, "
                "\"accumulate\": %d, \"max_time\": %.17g}",
                c->batch, c->unroll, c->steps, c->eval_every,
                c->optimizer == OPT_ADAM ? "adam" : "factored", c->lr, c->beta1, c->beta2, c->eps,
                c->warmup, c->hold, decay_names[c->decay], c->min_lr, c->weight_decay, c->clip,
                (unsigned long long)c->seed, c->accumulate, c->max_time);
  mc_buf_printf(&b,
                ", \"plan\": {\"devices\": %d, \"mesh\": [%d, %d], \"strategy\": \"%s\", "
                "\"experts\": \"%s\", \"recompute\": ",
                c->devices, c->mesh_nodes, c->mesh_per_node, c->strategy, c->expert_policy);
  recompute_json(&b, c);
  mc_buf_printf(&b,
                ", \"memory_budget\": %.17g, \"tables\": \"%s\", \"fuse\": %s, "
                "\"backend\": \"%s\", \"tf32\": %s, \"place\": [",
                c->memory_budget, c->tables_sharded ? "sharded" : "replicated",
                c->fuse ? "true" : "false", backend_names[c->backend], c->tf32 ? "true" : "false");
  int i = 0;
  for (PlaceRule *p = c->rules; p; p = p->next, i++) {
    mc_buf_printf(&b, "%s{\"pattern\": ", i ? ", " : "");
    mc_buf_json_string(&b, p->pattern);
    mc_buf_printf(&b, ", \"rule\": \"%s\"", place_names[p->kind]);
    if (p->kind == PK_ON) {
      mc_buf_printf(&b, ", \"devices\": [");
      for (int j = 0; j < p->ndevices; j++)
        mc_buf_printf(&b, "%s%d", j ? ", " : "", p->devices[j]);
      mc_buf_printf(&b, "]");
    }
    mc_buf_printf(&b, "}");
  }
  mc_buf_printf(&b, "]}");
  if (o) {
    mc_buf_printf(&b, ", \"run\": {\"save\": ");
    mc_buf_json_string(&b, o->save ? o->save : "");
    mc_buf_printf(&b, ", \"load\": ");
    mc_buf_json_string(&b, o->load ? o->load : "");
    mc_buf_printf(&b, ", \"f64\": %s, \"jit\": %s, \"memplan\": %s}", o->f64 ? "true" : "false",
                  o->cg.no_jit ? "false" : "true", o->cg.no_memplan ? "false" : "true");
  }
  mc_buf_printf(&b, "}");
  return b.data;
}

uint64_t drv_settings_hash(const Config *cfg, const Options *o) {
  char *s = drv_settings_json(cfg, o);
  uint64_t h = comm_hash_bytes(s, strlen(s), 0);
  mc_free(s);
  size_t len = 0;
  char *text = o->path ? mc_read_file(o->path, &len) : NULL;
  if (text) h = comm_hash_bytes(text, len, h);
  mc_free(text);
  return h;
}
