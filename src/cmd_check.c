/* cmd_check.c: `moec check FILE [--json]`: parse and check a .moe file, then
 * print its layers (kind, output type, parameters, multiply-adds per
 * timestep), the totals the paper reports (params_core, ops_per_timestep) and
 * the train and plan settings in effect. Errors: the diagnostics, exit 1. */
#include <string.h>

#include "cli.h"

static const char *const usage_text =
    "usage: moec check FILE [--json]\n"
    "\n"
    "Parses and checks FILE, then prints the model's layers with their output\n"
    "types, parameter counts and forward multiply-adds per timestep, and the\n"
    "totals: params, params_core (without embedding and softmax, as the paper\n"
    "counts) and ops_per_timestep. Errors are printed as file:line:col with the\n"
    "source line and a caret; the exit status is then 1.\n"
    "\n"
    "options:\n"
    "  --json     print one JSON object instead of the table\n"
    "  -h, --help this text\n";

/* 37834752 -> "37,834,752" */
static const char *commas(int64_t v, char *buf, size_t n) {
  char tmp[32]; /* the magnitude as unsigned: -INT64_MIN does not fit int64 */
  snprintf(tmp, sizeof tmp, "%llu", v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v);
  size_t len = strlen(tmp), k = 0;
  if (v < 0 && k + 1 < n) buf[k++] = '-';
  for (size_t i = 0; i < len && k + 2 < n; i++) {
    buf[k++] = tmp[i];
    size_t left = len - i - 1;
    if (left && left % 3 == 0) buf[k++] = ',';
  }
  buf[k] = 0;
  return buf;
}

/* 37834752 -> "37.8M" */
static const char *human(int64_t v, char *buf, size_t n) {
  double x = (double)v;
  if (x >= 1e9)
    snprintf(buf, n, "%.1fB", x / 1e9);
  else if (x >= 1e6)
    snprintf(buf, n, "%.1fM", x / 1e6);
  else if (x >= 1e3)
    snprintf(buf, n, "%.1fK", x / 1e3);
  else
    snprintf(buf, n, "%lld", (long long)v);
  return buf;
}

static const char *both(int64_t v, char *buf, size_t n) {
  char a[40], b[24];
  snprintf(buf, n, "%s (%s)", commas(v, a, sizeof a), human(v, b, sizeof b));
  return buf;
}

static const char *data_str(const Config *c, char *buf, size_t n) {
  if (c->data == DATA_SYNTHETIC)
    snprintf(buf, n, "synthetic(topics=%d, vocab=%d, seed=%llu)", c->topics, c->vocab,
             (unsigned long long)c->data_seed);
  else
    snprintf(buf, n, "\"%s\" (%s)", c->data_path ? c->data_path : "",
             c->data == DATA_BIN ? "uint16 token ids" : "text");
  return buf;
}

static const char *opt_str(const Config *c, char *buf, size_t n) {
  if (c->optimizer == OPT_ADAM)
    snprintf(buf, n, "adam(lr=%g, beta1=%g, beta2=%g, eps=%g)", c->lr, c->beta1, c->beta2, c->eps);
  else
    snprintf(buf, n, "factored(lr=%g, beta2=%g, eps=%g)", c->lr, c->beta2, c->eps);
  return buf;
}

static const char *recompute_str(const Config *c, char *buf, size_t n) {
  switch (c->recompute) {
  case RC_ALL:
    snprintf(buf, n, "all");
    break;
  case RC_AUTO:
    snprintf(buf, n, "auto");
    break;
  case RC_LIST: {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < c->n_recompute && k < n; i++)
      k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? ", " : "", c->recompute_names[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    break;
  }
  default:
    snprintf(buf, n, "none");
  }
  return buf;
}

/* The arguments that define a layer's size, for the table: "32 experts, top-4, hidden 128". */
static const char *layer_args(const Expr *e, char *buf, size_t n) {
  static const char *const acts[] = {"none", "relu", "tanh", "sigmoid"};
  static const char *const gates[] = {"noisy_topk", "softmax", "batchwise"};
  const double *av = e->argv;
  int g = (int)av[LA_GATING] & 3;
  switch ((LayerId)e->layer) {
  case L_EMBEDDING:
    snprintf(buf, n, "vocab %.0f, dim %.0f", av[LA_VOCAB], av[LA_DIM]);
    break;
  case L_LSTM:
    snprintf(buf, n, "units %.0f", av[LA_UNITS]);
    break;
  case L_DENSE:
    snprintf(buf, n, "units %.0f, act %s", av[LA_UNITS], acts[(int)av[LA_ACT] & 3]);
    break;
  case L_DROPOUT:
    snprintf(buf, n, "p %g", av[LA_P]);
    break;
  case L_MOE:
    if (g == LAE_SOFTMAX)
      snprintf(buf, n, "%.0f experts, all (softmax), hidden %.0f", av[LA_EXPERTS], av[LA_HIDDEN]);
    else
      snprintf(buf, n, "%.0f experts, top-%.0f %s, hidden %.0f", av[LA_EXPERTS], av[LA_K],
               gates[g < 3 ? g : 0], av[LA_HIDDEN]);
    break;
  case L_HMOE:
    if (g == LAE_SOFTMAX)
      snprintf(buf, n, "%.0f groups x %.0f experts, all (softmax), hidden %.0f", av[LA_GROUPS],
               av[LA_EXPERTS], av[LA_HIDDEN]);
    else
      snprintf(buf, n, "%.0f groups x %.0f experts, top-%.0f x top-%.0f %s, hidden %.0f",
               av[LA_GROUPS], av[LA_EXPERTS], av[LA_K_GROUP], av[LA_K], gates[g < 3 ? g : 0],
               av[LA_HIDDEN]);
    break;
  case L_SOFTMAX_XENT:
    snprintf(buf, n, "vocab %.0f", av[LA_VOCAB]);
    break;
  default:
    buf[0] = 0;
  }
  return buf;
}

/* The layer calls fe_summarize lists, in the same order. */
static const Expr **layer_calls(AstFile *f, McArena *a, int n) {
  const Expr **out = mc_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *out);
  int i = 0;
  for (Stmt *st = f->model->stmts; st && i < n; st = st->next)
    if (st->kind == ST_ASSIGN && st->value && st->value->kind == EX_CALL && st->value->layer >= 0)
      out[i++] = st->value;
  return out;
}

static const char *const backend_names[] = {"auto", "cpu", "cuda"};
static const char *const place_names[] = {"replicate", "shard(experts)", "on"};

static void print_text(const char *path, const ModelSummary *s, const Config *c,
                       const Expr **calls) {
  char b1[64], b2[64], ty[160];
  printf("model %s (%s): %d layer%s\n\n", s->model, path, s->nlayers, s->nlayers == 1 ? "" : "s");
  int wn = 5, wk = 4, wt = 6;
  for (int i = 0; i < s->nlayers; i++) {
    const LayerSummary *l = &s->layers[i];
    wn = MC_MAX(wn, (int)strlen(l->name));
    wk = MC_MAX(wk, (int)strlen(fe_layers[l->layer].name));
    wt = MC_MAX(wt, (int)strlen(type_str(&l->out, ty, sizeof ty)));
  }
  printf("  %-*s  %-*s  %-*s  %15s  %15s  %s\n", wn, "layer", wk, "kind", wt, "output", "params",
         "ops/timestep", "arguments");
  for (int i = 0; i < s->nlayers; i++) {
    const LayerSummary *l = &s->layers[i];
    char ops[48];
    if (!l->core)
      snprintf(ops, sizeof ops, "(%s)", commas(l->ops_per_token, b2, sizeof b2));
    else
      commas(l->ops_per_token, ops, sizeof ops);
    char args[160];
    printf("  %-*s  %-*s  %-*s  %15s  %15s  %s\n", wn, l->name, wk, fe_layers[l->layer].name, wt,
           type_str(&l->out, ty, sizeof ty), commas(l->params, b1, sizeof b1), ops,
           layer_args(calls[i], args, sizeof args));
  }
  char big[96];
  printf("\nparams            %s\n", both(s->params, big, sizeof big));
  printf("params_core       %s  without embedding and softmax\n",
         both(s->params_core, big, sizeof big));
  printf("ops_per_timestep  %s  forward multiply-adds per position, without embedding and "
         "softmax (in parentheses above)\n",
         both(s->ops_per_timestep, big, sizeof big));
  char d[512], o[160], r[512];
  printf("\ntrain: data %s, batch %d (B), unroll %d (T), steps %d, eval_every %d, %s, clip %g, "
         "seed %llu\n",
         data_str(c, d, sizeof d), c->batch, c->unroll, c->steps, c->eval_every,
         opt_str(c, o, sizeof o), c->clip, (unsigned long long)c->seed);
  printf("plan: devices %d (mesh %d x %d), strategy %s, experts %s, recompute %s, memory_budget "
         "%s, fuse %s, backend %s",
         c->devices, c->mesh_nodes, c->mesh_per_node, c->strategy, c->expert_policy,
         recompute_str(c, r, sizeof r),
         c->memory_budget > 0 ? commas((int64_t)c->memory_budget, b1, sizeof b1) : "device memory",
         c->fuse ? "true" : "false", backend_names[c->backend]);
  int nrules = 0;
  for (PlaceRule *p = c->rules; p; p = p->next)
    nrules++;
  printf(", %d place rule%s\n", nrules, nrules == 1 ? "" : "s");
}

static void print_json(const char *path, const ModelSummary *s, const Config *c) {
  McBuf b = {0};
  char ty[160];
  mc_buf_printf(&b, "{\"model\": ");
  mc_buf_json_string(&b, s->model);
  mc_buf_printf(&b, ", \"file\": ");
  mc_buf_json_string(&b, path);
  mc_buf_printf(&b, ", \"params\": %lld, \"params_core\": %lld, \"ops_per_timestep\": %lld",
                (long long)s->params, (long long)s->params_core, (long long)s->ops_per_timestep);
  mc_buf_printf(&b, ", \"layers\": [");
  for (int i = 0; i < s->nlayers; i++) {
    const LayerSummary *l = &s->layers[i];
    mc_buf_printf(&b, "%s{\"name\": ", i ? ", " : "");
    mc_buf_json_string(&b, l->name);
    mc_buf_printf(&b, ", \"kind\": \"%s\", \"output\": ", fe_layers[l->layer].name);
    mc_buf_json_string(&b, type_str(&l->out, ty, sizeof ty));
    mc_buf_printf(&b, ", \"line\": %d, \"params\": %lld, \"ops_per_timestep\": %lld, \"core\": %s}",
                  l->loc.line, (long long)l->params, (long long)l->ops_per_token,
                  l->core ? "true" : "false");
  }
  mc_buf_printf(&b, "], \"train\": {\"data\": ");
  if (c->data == DATA_SYNTHETIC) {
    mc_buf_printf(&b, "{\"kind\": \"synthetic\", \"topics\": %d, \"vocab\": %d, \"seed\": %llu}",
                  c->topics, c->vocab, (unsigned long long)c->data_seed);
  } else {
    mc_buf_printf(&b, "{\"kind\": \"%s\", \"path\": ", c->data == DATA_BIN ? "bin" : "text");
    mc_buf_json_string(&b, c->data_path ? c->data_path : "");
    mc_buf_printf(&b, "}");
  }
  mc_buf_printf(&b,
                ", \"batch\": %d, \"unroll\": %d, \"steps\": %d, \"eval_every\": %d, "
                "\"optimizer\": {\"kind\": \"%s\", \"lr\": %.17g, \"beta1\": %.17g, \"beta2\": "
                "%.17g, \"eps\": %.17g}, \"clip\": %.17g, \"seed\": %llu}",
                c->batch, c->unroll, c->steps, c->eval_every,
                c->optimizer == OPT_ADAM ? "adam" : "factored", c->lr, c->beta1, c->beta2, c->eps,
                c->clip, (unsigned long long)c->seed);
  char r[512];
  mc_buf_printf(&b,
                ", \"plan\": {\"devices\": %d, \"mesh\": [%d, %d], \"strategy\": \"%s\", "
                "\"experts\": \"%s\", \"recompute\": ",
                c->devices, c->mesh_nodes, c->mesh_per_node, c->strategy, c->expert_policy);
  mc_buf_json_string(&b, recompute_str(c, r, sizeof r));
  mc_buf_printf(&b, ", \"memory_budget\": %.17g, \"fuse\": %s, \"backend\": \"%s\", \"place\": [",
                c->memory_budget, c->fuse ? "true" : "false", backend_names[c->backend]);
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
  mc_buf_printf(&b, "]}}\n");
  fputs(b.data, stdout);
  mc_buf_free(&b);
}

int cmd_check(int argc, char **argv) {
  if (drv_wants_help(argc, argv)) {
    fputs(usage_text, stdout);
    return 0;
  }
  const char *path = NULL;
  bool json = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) {
      json = true;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "moec check: error: unknown option '%s'\n%s", argv[i], usage_text);
      return 2;
    } else if (path) {
      fprintf(stderr, "moec check: error: one FILE only ('%s' and '%s')\n", path, argv[i]);
      return 2;
    } else {
      path = argv[i];
    }
  }
  if (!path) {
    fprintf(stderr, "moec check: error: no FILE given\n%s", usage_text);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(path, &cfg);
  if (!f) return 1;
  McArena a = {0};
  ModelSummary s = fe_summarize(f, &a);
  if (json)
    print_json(path, &s, &cfg);
  else
    print_text(path, &s, &cfg, layer_calls(f, &a, s.nlayers));
  mc_arena_free(&a);
  fe_ast_free(f);
  return 0;
}
