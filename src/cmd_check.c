/* cmd_check.c: `moec check FILE [--json] [settings]`: parse and check a .moe file and
 * compile it as a run would (every pass, on the plan's devices), then print its layers
 * (kind, output type, parameters, multiply-adds per timestep), the totals the paper
 * reports (params_core, ops_per_timestep) and the train and plan settings in effect.
 * Errors (anything `moec run` would refuse): the diagnostics, exit 1. */
#include <string.h>

#include "cli.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: moec check FILE [--json] [settings]\n"
          "\n"
          "Parses and checks FILE and compiles its training step on the plan's devices as\n"
          "`moec run` would, then prints the model's layers with their output types,\n"
          "parameter counts and forward multiply-adds per timestep, and the totals: params,\n"
          "params_core (without embedding and softmax, as the paper counts) and\n"
          "ops_per_timestep. Errors (whatever `moec run` would refuse) are printed as\n"
          "file:line:col with the source line and a caret; the exit status is then 1.\n"
          "\n"
          "options:\n"
          "  --json     print one JSON object instead of the table\n"
          "  -h, --help this text\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS | DRV_LOADS);
}

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
  char tk[128];
  if (c->data == DATA_SYNTHETIC)
    snprintf(buf, n, "synthetic(topics=%d, vocab=%d, seed=%llu)", c->topics, c->vocab,
             (unsigned long long)c->data_seed);
  else if (c->data == DATA_PARALLEL)
    snprintf(buf, n, "parallel(\"%s\"%s%s%s, max_len=%d, batch_tokens=%d)",
             c->data_path ? c->data_path : "", c->data_valid_path ? ", valid=\"" : "",
             c->data_valid_path ? c->data_valid_path : "", c->data_valid_path ? "\"" : "",
             c->max_len, c->batch_tokens);
  else {
    size_t k = (size_t)snprintf(buf, n, "\"%s\" (%s%s", c->data_path ? c->data_path : "",
                                c->data == DATA_BIN ? "uint16 token ids" : "text, tokenizer ",
                                c->data == DATA_BIN ? "" : fe_tokenizer_str(c, tk, sizeof tk));
    if (k < n && c->data_valid_path)
      k += (size_t)snprintf(buf + k, n - k, "; valid \"%s\"; test %s%s%s", c->data_valid_path,
                            c->data_test_path ? "\"" : "the valid file",
                            c->data_test_path ? c->data_test_path : "",
                            c->data_test_path ? "\"" : "");
    if (k < n) snprintf(buf + k, n - k, ")");
  }
  return buf;
}

static const char *opt_str(const Config *c, char *buf, size_t n) {
  return fe_optimizer_str(c, buf, n);
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

/* ", no bias, act sigmoid" of a moe / hmoe call, after the k characters in buf. */
static void moe_extras(const Expr *e, char *buf, size_t n, size_t k) {
  static const char *const acts[] = {"none", "relu", "tanh", "sigmoid"};
  if (e->argv[LA_BIAS] == 0 && k < n) k += (size_t)snprintf(buf + k, n - k, ", no bias");
  if (e->argv[LA_ACT] > 0 && k < n)
    snprintf(buf + k, n - k, ", act %s", acts[(int)e->argv[LA_ACT] & 3]);
}

/* The input width of a layer call (its first tensor's last dim). */
static int64_t x_width(const Expr *e) {
  const Expr *x = e->targ[0];
  return x && x->ty.rank > 0 ? x->ty.dim[x->ty.rank - 1].c : 0;
}

/* The arguments that define a layer's size, for the table: "32 experts, top-4, hidden 128". */
static const char *layer_args(const Expr *e, char *buf, size_t n) {
  static const char *const acts[] = {"none", "relu", "tanh", "sigmoid"};
  static const char *const gates[] = {"noisy_topk", "softmax", "batchwise"};
  const double *av = e->argv;
  int g = (int)av[LA_GATING] & 3;
  char big[48];
  size_t k;
  switch ((LayerId)e->layer) {
  case L_EMBEDDING:
    snprintf(buf, n, "vocab %.0f, dim %.0f", av[LA_VOCAB], av[LA_DIM]);
    break;
  case L_LSTM:
    if (av[LA_PROJ] >= 1)
      snprintf(buf, n, "units %.0f, proj %.0f", av[LA_UNITS], av[LA_PROJ]);
    else
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
      k = (size_t)snprintf(buf, n, "%.0f experts, all (softmax), hidden %.0f", av[LA_EXPERTS],
                           av[LA_HIDDEN]);
    else
      k = (size_t)snprintf(buf, n, "%.0f experts, top-%.0f %s, hidden %.0f", av[LA_EXPERTS],
                           av[LA_K], gates[g < 3 ? g : 0], av[LA_HIDDEN]);
    if (av[LA_CAPACITY] > 0 && k < n)
      k += (size_t)snprintf(buf + k, n - k, ", capacity %g", av[LA_CAPACITY]);
    moe_extras(e, buf, n, k);
    break;
  case L_HMOE:
    if (g == LAE_SOFTMAX)
      k = (size_t)snprintf(buf, n, "%.0f groups x %.0f experts, all (softmax), hidden %.0f",
                           av[LA_GROUPS], av[LA_EXPERTS], av[LA_HIDDEN]);
    else
      k = (size_t)snprintf(
          buf, n, "%.0f groups x %.0f experts, top-%.0f x top-%.0f %s, hidden %.0f", av[LA_GROUPS],
          av[LA_EXPERTS], av[LA_K_GROUP], av[LA_K], gates[g < 3 ? g : 0], av[LA_HIDDEN]);
    moe_extras(e, buf, n, k);
    break;
  case L_ATTENTION:
    snprintf(buf, n, "units %.0f, %s%s%s", av[LA_UNITS],
             av[LA_SCORE] == LAE_PRODUCT ? "product" : "additive",
             e->mask_input ? ", padding of " : "", e->mask_input ? e->mask_input : "");
    break;
  case L_SOFTMAX_XENT:
    snprintf(buf, n, "vocab %.0f", av[LA_VOCAB]);
    break;
  case L_SAMPLED_SOFTMAX_XENT: /* training multiplies x by samples + 1 rows of the weight */
    snprintf(buf, n, "vocab %.0f, samples %.0f (training ops %s)", av[LA_VOCAB], av[LA_SAMPLES],
             commas((int64_t)((av[LA_SAMPLES] + 1) * x_width(e)), big, sizeof big));
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
  if (s->translation)
    printf("                  a timestep is one source and one target position%s\n",
           s->ops_per_pair ? "" : " (no attention)");
  if (s->ops_per_pair)
    printf("ops_per_pair      %s  attention scores and context, per target step and source "
           "position (not in ops_per_timestep)\n",
           both(s->ops_per_pair, big, sizeof big));
  char d[2048], o[320], r[512];
  printf("\ntrain: data %s, batch %d (B), unroll %d (T), steps %d, eval_every %d, %s, clip %g, "
         "seed %llu",
         data_str(c, d, sizeof d), c->batch, c->unroll, c->steps, c->eval_every,
         opt_str(c, o, sizeof o), c->clip, (unsigned long long)c->seed);
  if (c->accumulate > 1)
    printf(", accumulate %d (%d rows per optimizer step)", c->accumulate, c->accumulate * c->batch);
  if (c->max_time > 0) printf(", max_time %gs", c->max_time);
  printf("\n");
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
    mc_buf_printf(&b, ", \"line\": %d, \"params\": %lld, \"ops_per_timestep\": %lld, \"core\": %s",
                  l->loc.line, (long long)l->params, (long long)l->ops_per_token,
                  l->core ? "true" : "false");
    if (l->ops_per_pair) mc_buf_printf(&b, ", \"ops_per_pair\": %lld", (long long)l->ops_per_pair);
    mc_buf_printf(&b, "}");
  }
  mc_buf_printf(&b, "], \"translation\": %s, \"ops_per_pair\": %lld",
                s->translation ? "true" : "false", (long long)s->ops_per_pair);
  char *settings = drv_settings_json(c, NULL);
  mc_buf_printf(&b, ", %s\n", settings + 1); /* the settings object's train and plan members */
  mc_free(settings);
  fputs(b.data, stdout);
  mc_buf_free(&b);
}

static int check_flags(int argc, char **argv, int *i, void *ctx) {
  if (strcmp(argv[*i], "--json")) return 0;
  *(bool *)ctx = true;
  return 1;
}

int cmd_check(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "check");
  bool json = false;
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_LOADS, check_flags, &json, usage);
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  Config cfg;
  AstFile *f = drv_load(&o, &cfg, &rc);
  /* what a run would refuse: the training step compiled on the plan's devices */
  Target t = {.devices = cfg.devices, .rank = -1, .training = true, .prec = PREC_F32};
  Graph *g = f ? drv_compile_graph(f, &cfg, &o, &t, NULL) : NULL;
  if (!g) {
    fe_ast_free(f);
    drv_options_free(&o);
    return f ? 1 : rc;
  }
  ir_graph_free(g);
  McArena a = {0};
  ModelSummary s = fe_summarize(f, &a);
  if (json)
    print_json(o.path, &s, &cfg);
  else
    print_text(o.path, &s, &cfg, layer_calls(f, &a, s.nlayers));
  mc_arena_free(&a);
  fe_ast_free(f);
  drv_options_free(&o);
  return 0;
}
