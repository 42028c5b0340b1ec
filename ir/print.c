/* print.c: the graph as stable, readable text (moec ir, golden tests).
 *
 *   graph NAME
 *   inputs / params (with init) / states (state <- next value)
 *   nodes: one line each, in execution order:
 *     [bwd] nID  OUT[, OUT...] = op(IN, ...) {attrs}  : TYPE[, TYPE...]  @layer[/role]  ; line:col
 *   loss: the xent, aux and total loss tensors; after autodiff each param's gradient.
 *
 * Nothing printed depends on addresses or run-time state, so the text is the
 * same on every run and every machine. */
#include <string.h>

#include "ir.h"

/* Names of the int / float attributes that ops.def documents; other non-zero
 * attributes print as ia0=.. / fa0=.. so nothing set is ever hidden. */
typedef struct AttrNames {
  const char *ia[IR_MAX_ATTR], *fa[IR_MAX_ATTR];
} AttrNames;

static const AttrNames attr_names[OP_COUNT] = {
    [OP_SCALE] = {.fa = {"s", "plus"}},
    [OP_DROPOUT] = {.ia = {"rng"}, .fa = {"p"}},
    [OP_MATMUL] = {.ia = {"transA", "transB"}},
    [OP_EMBEDDING_BWD] = {.ia = {"V"}},
    [OP_XENT] = {.fa = {"scale"}},
    [OP_XENT_BWD] = {.fa = {"scale"}},
    [OP_XENT_BIAS_BWD] = {.fa = {"scale"}},
    [OP_SAMPLED_XENT] = {.ia = {"rng", "samples"}, .fa = {"scale"}},
    [OP_SAMPLED_XENT_BWD] = {.fa = {"scale"}},
    [OP_SAMPLE_LOG_UNIFORM] = {.ia = {"rng", "samples", "V"}},
    [OP_SAMPLED_XENT_ROWS] = {.ia = {"rng", "samples", "V", "devices"}, .fa = {"scale"}},
    [OP_SAMPLED_XENT_ROWS_BWD] = {.ia = {NULL, NULL, "V"}, .fa = {"scale"}},
    [OP_SPARSE_ALL_REDUCE] = {.ia = {"V", "devices"}},
    [OP_NOISE] = {.ia = {"rng"}},
    [OP_TOPK] = {.ia = {"k"}},
    [OP_TOPK_BWD] = {.ia = {"E"}},
    [OP_LOAD_COUNT] = {.ia = {"E"}},
    [OP_IMPORTANCE] = {.ia = {"E"}},
    [OP_DISPATCH] = {.ia = {"E"}},
    [OP_CAPACITY] = {.ia = {"E"}, .fa = {"capacity"}},
    [OP_ALL_GATHER_ROWS] = {.ia = {"devices"}},
    [OP_TABLE_GATHER] = {.ia = {"V", "devices"}, .fa = {"remote"}},
    [OP_TABLE_SCATTER] = {.ia = {"V", "devices"}, .fa = {"remote"}},
    [OP_GROUPED_MATMUL] = {.ia = {"transW"}},
    [OP_GROUPED_MATMUL_DW] = {.ia = {"fold"}},
    [OP_SLICE0] = {.ia = {"start", "len"}},
    [OP_GLOBAL_IDX] = {.ia = {"E"}},
    [OP_BATCHWISE_ROUTE] = {.ia = {"k", "devices"}},
    [OP_THRESHOLD_LOSS] = {.ia = {"devices"}},
    [OP_THRESHOLD_LOSS_BWD] = {.ia = {"devices"}},
    [OP_ALL_GATHER_TOPM] = {.ia = {"k", "devices"}},
    [OP_FUSED] = {.ia = {"ops"}},
    [OP_ALL_TO_ALL] = {.ia = {"moe", "devices", NULL, "groups"}, .fa = {"remote"}},
    [OP_ALL_TO_ALL_BACK] = {.ia = {"moe", "devices", NULL, "groups"}, .fa = {"remote"}},
    [OP_ALL_REDUCE] = {.ia = {"devices"}},
    [OP_RESHARD] = {.ia = {"from", "to"}, .fa = {"moved"}},
    [OP_PAD_MASK] = {.ia = {"pad"}},
    [OP_COUNT_NONPAD] = {.ia = {"pad"}},
    [OP_XENT_PAD] = {.ia = {"pad"}},
    [OP_XENT_PAD_BWD] = {.ia = {"pad"}},
    [OP_BMM] = {.ia = {"transA", "transB"}},
    [OP_SLICE_LAST] = {.ia = {"start", "len"}},
};

static void print_attrs(const Node *n, FILE *out) {
  const AttrNames *an = &attr_names[n->op];
  int shown = 0;
  if (n->op == OP_RESHAPE) return; /* ia packs the target type, printed as the output type */
  for (int i = 0; i < IR_MAX_ATTR; i++) {
    bool named = an->ia[i] != NULL;
    /* rng streams print even when 0: they tell random ops apart */
    if (n->ia[i] == 0 && !(named && !strcmp(an->ia[i], "rng"))) continue;
    fprintf(out, "%s", shown++ ? ", " : " {");
    if (named)
      fprintf(out, "%s=%lld", an->ia[i], (long long)n->ia[i]);
    else
      fprintf(out, "ia%d=%lld", i, (long long)n->ia[i]);
  }
  for (int i = 0; i < IR_MAX_ATTR; i++) {
    bool named = an->fa[i] != NULL;
    bool xent = (n->op == OP_XENT || n->op == OP_XENT_BWD || n->op == OP_XENT_BIAS_BWD ||
                 n->op == OP_SAMPLED_XENT ||
                 n->op == OP_SAMPLED_XENT_BWD) &&
                i == 0;
    if (n->fa[i] == 0 && !xent) continue;
    fprintf(out, "%s", shown++ ? ", " : " {");
    if (xent && n->fa[i] == 0)
      fprintf(out, "scale=1/N_global");
    else if (named)
      fprintf(out, "%s=%g", an->fa[i], n->fa[i]);
    else
      fprintf(out, "fa%d=%g", i, n->fa[i]);
  }
  if (shown) fprintf(out, "}");
}

static void print_node(const Node *n, FILE *out) {
  char buf[192];
  fprintf(out, "  %s n%-3d ", n->backward ? "bwd" : "   ", n->id);
  for (int j = 0; j < n->nout; j++)
    fprintf(out, "%s%s", j ? ", " : "", n->out[j]->name);
  fprintf(out, " = %s(", ir_ops[n->op].name);
  for (int i = 0; i < n->nin; i++)
    fprintf(out, "%s%s", i ? ", " : "", n->in[i]->name);
  fprintf(out, ")");
  print_attrs(n, out);
  fprintf(out, "  : ");
  for (int j = 0; j < n->nout; j++)
    fprintf(out, "%s%s", j ? ", " : "", type_str(&n->out[j]->ty, buf, sizeof buf));
  if (n->layer) fprintf(out, "  @%s%s%s", n->layer, n->role ? "/" : "", n->role ? n->role : "");
  if (n->device >= 0) fprintf(out, "  dev=%d", n->device);
  for (int d = 0; d < n->ndevices; d++) /* placement: an on(...) device set */
    fprintf(out, "%s%d%s", d ? "," : "  dev={", n->devices[d], d + 1 == n->ndevices ? "}" : "");
  static const char *parts[] = {"", "replicated", "batch", "experts", "partial", "rows"};
  if (n->nout > 0 && n->out[0]->part != PART_NONE)
    fprintf(out, "  part=%s", parts[n->out[0]->part]);
  if (n->fused_group >= 0) fprintf(out, "  fuse=%d", n->fused_group);
  if (n->recompute_seg >= 0) fprintf(out, "  recompute=%d", n->recompute_seg);
  if (n->loc.line > 0) fprintf(out, "  ; %d:%d", n->loc.line, n->loc.col);
  fprintf(out, "\n");
}

static void print_init(const Tensor *t, FILE *out) {
  switch (t->init) {
  case INIT_ZERO:
    fprintf(out, "zero");
    break;
  case INIT_UNIFORM:
    fprintf(out, "uniform(%g)", t->init_scale);
    break;
  case INIT_NORMAL:
    fprintf(out, "normal(%g)", t->init_scale);
    break;
  }
}

void ir_print(const Graph *g, FILE *out) {
  char buf[192];
  int nstate = 0;
  for (int i = 0; i < g->ntensors; i++)
    nstate += g->tensors[i]->kind == TK_STATE;
  fprintf(out, "graph %s%s\n", g->name, g->has_backward ? "  (with backward)" : "");
  fprintf(out, "inputs (%d)\n", g->ninputs);
  static const char *const roles[] = {"", "tokens", "source", "target", "labels", "memory"};
  for (int i = 0; i < g->ninputs; i++) {
    const Tensor *t = g->inputs[i];
    fprintf(out, "  %s : %s", t->name, type_str(&t->ty, buf, sizeof buf));
    if (t->pad >= 0) fprintf(out, "  pad %d", (int)t->pad);
    if (t->role != IN_NONE) fprintf(out, "  (%s)", roles[t->role]);
    fprintf(out, "\n");
  }
  fprintf(out, "params (%d)\n", g->nparams);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    fprintf(out, "  %s : %s  ", t->name, type_str(&t->ty, buf, sizeof buf));
    print_init(t, out);
    fprintf(out, "\n");
  }
  fprintf(out, "states (%d)\n", nstate);
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    if (t->kind != TK_STATE) continue;
    fprintf(out, "  %s : %s", t->name, type_str(&t->ty, buf, sizeof buf));
    bool paired = false;
    for (int k = 0; k < g->nstates; k++)
      if (g->states[k].state == t) {
        fprintf(out, "  <- %s", g->states[k].next->name);
        paired = true;
      }
    if (!paired) fprintf(out, "  (zero each batch)");
    fprintf(out, "\n");
  }
  fprintf(out, "nodes (%d)\n", g->nnodes);
  for (int k = 0; k < g->nnodes; k++)
    print_node(g->nodes[k], out);
  fprintf(out, "loss\n");
  fprintf(out, "  xent = %s\n", g->xent ? g->xent->name : "(none)");
  fprintf(out, "  aux  = %s\n", g->aux ? g->aux->name : "(none)");
  if (g->xent_count) fprintf(out, "  count = %s\n", g->xent_count->name);
  fprintf(out, "  loss = %s\n", g->loss ? g->loss->name : "(none)");
  if (g->nmoe > 0) {
    fprintf(out, "moe (%d)\n", g->nmoe);
    for (int i = 0; i < g->nmoe; i++)
      fprintf(out, "  %s: importance = %s, load = %s\n", g->moe_names ? g->moe_names[i] : "?",
              g->moe_importance && g->moe_importance[i] ? g->moe_importance[i]->name : "-",
              g->moe_load && g->moe_load[i] ? g->moe_load[i]->name : "-");
    for (int i = 0; i < g->nmoe && g->moe_expert_dev; i++) { /* placement: expert -> device */
      fprintf(out, "  %s experts on devices:", g->moe_names[i]);
      for (int e = 0; e < g->moe_nexperts[i]; e++)
        fprintf(out, " %d", g->moe_expert_dev[i][e]);
      fprintf(out, "\n");
      if (!g->moe_group_dev || !g->moe_group_dev[i]) continue;
      fprintf(out, "  %s groups' rows on devices:", g->moe_names[i]); /* hmoe's two levels */
      for (int u = 0; u < g->moe_ngroups[i]; u++)
        fprintf(out, " %d", g->moe_group_dev[i][u]);
      fprintf(out, "\n");
    }
  }
  bool any_grad = false;
  for (int i = 0; i < g->nparams; i++)
    any_grad |= g->params[i]->grad != NULL;
  if (any_grad) {
    fprintf(out, "grads (d loss / d param)\n");
    for (int i = 0; i < g->nparams; i++)
      fprintf(out, "  %s = %s%s\n", g->params[i]->name,
              g->params[i]->grad ? g->params[i]->grad->name : "(none)",
              g->params[i]->grad ? "" : "  (no gradient reaches it)");
  }
  if (g->mem.B > 0) { /* the memplan pass's figures; offsets within the program's block */
    const MemFigures *m = &g->mem;
    fprintf(out,
            "memory (B=%lld, T=%lld, %s): persistent %lld bytes, arena %lld bytes (most "
            "alive at once %lld)\n",
            (long long)m->B, (long long)m->T, m->elem == 8 ? "f64" : "f32", (long long)m->persist,
            (long long)m->arena, (long long)m->live_max);
    for (int i = 0; i < g->ntensors; i++) {
      const Tensor *t = g->tensors[i];
      int64_t n = t->ty.dtype == DT_I32 ? 4 : m->elem;
      for (int d = 0; d < t->ty.rank; d++)
        n *= dim_eval(t->ty.dim[d], m->B, m->T);
      if (t->mem_offset >= 0)
        fprintf(
            out, "  %-28s %s+%-10lld %lld bytes\n", t->name,
            t->mem_offset < m->persist ? "persistent" : "arena     ",
            (long long)(t->mem_offset < m->persist ? t->mem_offset : t->mem_offset - m->persist),
            (long long)n);
    }
  }
}
