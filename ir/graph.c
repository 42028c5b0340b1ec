/* graph.c: tensors, nodes and the graph; binding the symbols B and T. */
#include <string.h>

#include "ir.h"

typedef struct BuildCtx {
  const char *layer, *role;
  Loc loc;
  bool backward;
} BuildCtx;

/* The build context lives beside the graph; one graph is built at a time per
 * thread, so a small side table keyed by graph pointer would be overkill. */
static _Thread_local BuildCtx build_ctx;
static _Thread_local const Graph *build_ctx_owner;

/* ---- dims ---- */

Dim dim_int(int64_t c) { return (Dim){c, 0, 0, 0}; }
Dim dim_sym(char sym) {
  MOEC_ASSERT(sym == 'B' || sym == 'T' || sym == 'S');
  return sym == 'B' ? (Dim){1, 1, 0, 0} : sym == 'T' ? (Dim){1, 0, 1, 0} : (Dim){1, 0, 0, 1};
}
bool dim_eq(Dim a, Dim b) { return a.c == b.c && a.b == b.b && a.t == b.t && a.s == b.s; }
bool dim_is_const(Dim d) { return d.b == 0 && d.t == 0 && d.s == 0; }

/* Products of dims arise only while a graph is built (flattening rows, rows x k);
 * sema has checked every type the user wrote, so one past MOEC_MAX_NUMEL is a
 * layer too large inside, reported at that layer. */
Dim dim_mul(Dim a, Dim b) {
  int64_t c;
  if (!mc_mul_ok(a.c, b.c, &c) || c > MOEC_MAX_NUMEL || a.b + b.b > 32 || a.t + b.t > 32 ||
      a.s + b.s > 32) {
    char da[48], db[48];
    if (build_ctx_owner && build_ctx.layer)
      mc_die("%d:%d: layer '%s' is too large: a dimension %s x %s would exceed %lld (2^48 - 1, "
             "the limit on a tensor's elements)",
             build_ctx.loc.line, build_ctx.loc.col, build_ctx.layer, dim_str(a, da, sizeof da),
             dim_str(b, db, sizeof db), (long long)MOEC_MAX_NUMEL);
    mc_die("the model is too large: a dimension %s x %s would exceed %lld (2^48 - 1, the limit "
           "on a tensor's elements)",
           dim_str(a, da, sizeof da), dim_str(b, db, sizeof db), (long long)MOEC_MAX_NUMEL);
  }
  return (Dim){c, (int8_t)(a.b + b.b), (int8_t)(a.t + b.t), (int8_t)(a.s + b.s)};
}

int64_t dim_eval3(Dim d, int64_t B, int64_t T, int64_t S) {
  int64_t v = d.c;
  for (int i = 0; i < d.b; i++)
    if (!mc_mul_ok(v, B, &v)) return -1;
  for (int i = 0; i < d.t; i++)
    if (!mc_mul_ok(v, T, &v)) return -1;
  for (int i = 0; i < d.s; i++)
    if (!mc_mul_ok(v, S, &v)) return -1;
  return v > MOEC_MAX_NUMEL ? -1 : v;
}

/* Sizes estimated at (B, T) before a graph is bound (plans, cost model) take S = T: a
 * source as long as its target. */
int64_t dim_eval(Dim d, int64_t B, int64_t T) { return dim_eval3(d, B, T, T); }

char *dim_str(Dim d, char *buf, size_t n) {
  McBuf b = {0};
  bool any = false;
  if (d.c != 1 || dim_is_const(d)) {
    mc_buf_printf(&b, "%lld", (long long)d.c);
    any = true;
  }
  for (int i = 0; i < d.b; i++, any = true) mc_buf_printf(&b, "%sB", any ? "*" : "");
  for (int i = 0; i < d.t; i++, any = true) mc_buf_printf(&b, "%sT", any ? "*" : "");
  for (int i = 0; i < d.s; i++, any = true) mc_buf_printf(&b, "%sS", any ? "*" : "");
  snprintf(buf, n, "%s", b.data);
  mc_buf_free(&b);
  return buf;
}

char *type_str(const Type *t, char *buf, size_t n) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s[", t->dtype == DT_I32 ? "i32" : "f32");
  for (int i = 0; i < t->rank; i++) {
    char d[48];
    mc_buf_printf(&b, "%s%s", i ? ", " : "", dim_str(t->dim[i], d, sizeof d));
  }
  mc_buf_printf(&b, "]");
  snprintf(buf, n, "%s", b.data);
  mc_buf_free(&b);
  return buf;
}

Type ir_type(DType dt, int rank, const Dim *dims) {
  MOEC_ASSERT(rank >= 0 && rank <= MAX_RANK);
  Type t = {.dtype = dt, .rank = rank};
  for (int i = 0; i < rank; i++) t.dim[i] = dims[i];
  return t;
}

/* ---- graph ---- */

Graph *ir_graph_new(const char *name) {
  Graph *g = mc_calloc(1, sizeof(Graph));
  g->name = mc_arena_strdup(&g->arena, name ? name : "model");
  build_ctx = (BuildCtx){0};
  build_ctx_owner = g;
  return g;
}

void ir_graph_free(Graph *g) {
  if (!g) return;
  mc_free(g->tensors);
  mc_free(g->nodes);
  mc_free(g->params);
  mc_free(g->inputs);
  mc_free(g->states);
  mc_free(g->moe_importance);
  mc_free(g->moe_load);
  mc_free(g->moe_drop);
  mc_free(g->moe_names);
  mc_free(g->bridge);
  mc_free(g->name_idx);
  mc_arena_free(&g->arena);
  if (build_ctx_owner == g) build_ctx_owner = NULL;
  mc_free(g);
}

#define PUSH(arr, n, cap, x)                                   \
  do {                                                         \
    if ((n) == (cap)) {                                        \
      (cap) = (cap) ? 2 * (cap) : 64;                          \
      (arr) = mc_realloc((arr), (size_t)(cap) * sizeof *(arr)); \
    }                                                          \
    (arr)[(n)++] = (x);                                        \
  } while (0)

/* The slot of name in the index (open addressing, at most half full). */
static int name_slot(const Graph *g, const char *name) {
  int mask = g->name_cap - 1, h = (int)(mc_hash_str(name) & (uint64_t)mask);
  while (g->name_idx[h] && strcmp(g->name_idx[h], name))
    h = (h + 1) & mask;
  return h;
}

static void name_add(Graph *g, const char *name) {
  if (2 * (g->name_n + 1) > g->name_cap) {
    int old = g->name_cap;
    const char **os = g->name_idx;
    g->name_cap = old ? 2 * old : 1024;
    g->name_idx = mc_calloc((size_t)g->name_cap, sizeof(char *));
    for (int i = 0; i < old; i++)
      if (os[i]) g->name_idx[name_slot(g, os[i])] = os[i];
    mc_free(os);
  }
  int h = name_slot(g, name);
  if (!g->name_idx[h]) {
    g->name_idx[h] = name;
    g->name_n++;
  }
}

bool ir_name_taken(const Graph *g, const char *name) {
  return g->name_cap && g->name_idx[name_slot(g, name)];
}

void ir_rename(Graph *g, Tensor *t, const char *name) {
  t->name = mc_arena_strdup(&g->arena, name);
  name_add(g, t->name);
}

Tensor *ir_tensor(Graph *g, TensorKind kind, const char *name, Type ty, Loc loc) {
  Tensor *t = mc_arena_alloc(&g->arena, sizeof(Tensor));
  t->id = g->ntensors;
  t->kind = kind;
  t->name = name ? mc_arena_strdup(&g->arena, name) : mc_arena_printf(&g->arena, "t%d", t->id);
  name_add(g, t->name);
  t->ty = ty;
  t->loc = loc;
  t->mem_offset = -1;
  t->pad = -1;
  PUSH(g->tensors, g->ntensors, g->tcap, t);
  return t;
}

Tensor *ir_param(Graph *g, const char *name, Type ty, InitKind init, double scale, Loc loc) {
  Tensor *t = ir_tensor(g, TK_PARAM, name, ty, loc);
  t->init = init;
  t->init_scale = scale;
  PUSH(g->params, g->nparams, g->pcap, t);
  return t;
}

Tensor *ir_input(Graph *g, const char *name, Type ty, Loc loc) {
  Tensor *t = ir_tensor(g, TK_INPUT, name, ty, loc);
  PUSH(g->inputs, g->ninputs, g->icap, t);
  return t;
}

Tensor *ir_input_role(const Graph *g, InputRole role) {
  for (int i = 0; i < g->ninputs; i++)
    if (g->inputs[i]->role == role) return g->inputs[i];
  return NULL;
}

Tensor *ir_state(Graph *g, const char *name, Type ty, Loc loc) {
  return ir_tensor(g, TK_STATE, name, ty, loc);
}

void ir_set_context(Graph *g, const char *layer, const char *role, Loc loc) {
  build_ctx_owner = g;
  build_ctx.layer = layer ? mc_arena_strdup(&g->arena, layer) : NULL;
  build_ctx.role = role ? mc_arena_strdup(&g->arena, role) : NULL;
  build_ctx.loc = loc;
}

void ir_set_backward(Graph *g, bool backward) {
  build_ctx_owner = g;
  build_ctx.backward = backward;
}

Node *ir_node(Graph *g, OpKind op, int nin, Tensor *const *in, const int64_t *ia, const double *fa) {
  MOEC_ASSERT(op >= 0 && op < OP_COUNT);
  const OpInfo *info = &ir_ops[op];
  MOEC_ASSERT(info->nin < 0 ? nin >= 1 : nin == info->nin);
  Node *n = mc_arena_alloc(&g->arena, sizeof(Node));
  n->id = g->nnodes;
  n->op = op;
  n->nin = nin;
  n->nout = info->nout == -2 ? nin : info->nout == -3 ? nin - 1 : info->nout;
  n->in = mc_arena_alloc(&g->arena, sizeof(Tensor *) * (size_t)nin);
  for (int i = 0; i < nin; i++) {
    MOEC_ASSERT(in[i] != NULL);
    n->in[i] = in[i];
  }
  if (ia) memcpy(n->ia, ia, sizeof n->ia);
  if (fa) memcpy(n->fa, fa, sizeof n->fa);
  if (build_ctx_owner == g) {
    n->layer = build_ctx.layer;
    n->role = build_ctx.role;
    n->loc = build_ctx.loc;
    n->backward = build_ctx.backward;
  }
  n->device = -1;
  n->fused_group = -1;
  n->recompute_seg = -1;
  n->out = mc_arena_alloc(&g->arena, sizeof(Tensor *) * (size_t)n->nout);
  for (int j = 0; j < n->nout; j++) {
    const char *nm = n->layer ? mc_arena_printf(&g->arena, "%s.%s%s%d", n->layer, info->name,
                                                n->backward ? "_g" : "", g->ntensors)
                              : NULL;
    Tensor *t = ir_tensor(g, n->backward ? TK_GRAD : TK_ACT, nm, (Type){0}, n->loc);
    t->producer = n;
    t->producer_slot = j;
    n->out[j] = t;
  }
  const char *err = info->shape(g, n);
  if (err) mc_fatal("shape rule of '%s' failed: %s", info->name, err);
  PUSH(g->nodes, g->nnodes, g->ncap, n);
  return n;
}

Tensor *ir_op1(Graph *g, OpKind op, Tensor *a) {
  Tensor *in[1] = {a};
  return ir_node(g, op, 1, in, NULL, NULL)->out[0];
}

Tensor *ir_op2(Graph *g, OpKind op, Tensor *a, Tensor *b) {
  Tensor *in[2] = {a, b};
  return ir_node(g, op, 2, in, NULL, NULL)->out[0];
}

/* t's elements at (B, T, S); dies naming t past MOEC_MAX_NUMEL. */
static int64_t numel_at3(const Tensor *t, int64_t B, int64_t T, int64_t S) {
  int64_t n = 1;
  for (int d = 0; d < t->ty.rank; d++) {
    int64_t v = dim_eval3(t->ty.dim[d], B, T, S);
    if (v < 0 || !mc_mul_ok(n, v, &n) || n > MOEC_MAX_NUMEL) {
      char ty[160];
      mc_die("%d:%d: tensor '%s' of type %s would hold more than %lld elements (2^48 - 1, the "
             "limit per tensor) with B = %lld, T = %lld",
             t->loc.line, t->loc.col, t->name, type_str(&t->ty, ty, sizeof ty),
             (long long)MOEC_MAX_NUMEL, (long long)B, (long long)T);
    }
  }
  return n;
}

int64_t ir_numel_bt(const Tensor *t, int64_t B, int64_t T) { return numel_at3(t, B, T, T); }

bool ir_has_source_dim(const Graph *g) {
  for (int i = 0; i < g->ntensors; i++)
    for (int d = 0; d < g->tensors[i]->ty.rank; d++)
      if (g->tensors[i]->ty.dim[d].s) return true;
  return false;
}

void ir_bind_seq(Graph *g, int64_t B, int64_t T, int64_t S) {
  if (B < 1 || T < 1 || S < 1 || B > MOEC_MAX_DIM || T > MOEC_MAX_DIM || S > MOEC_MAX_DIM)
    mc_die("cannot bind B = %lld, T = %lld, S = %lld: each must be between 1 and %lld",
           (long long)B, (long long)T, (long long)S, (long long)MOEC_MAX_DIM);
  /* a memory plan made before binding (passes/memplan.c, at (B, T)) took S = T; one over
   * the graph's shapes holds each of them (rt_program_bind) */
  if (g->mem.B > 0 && !g->nshapes && S > g->mem.T && ir_has_source_dim(g))
    mc_fatal("binding S = %lld in a graph whose memory plan took S = T = %lld", (long long)S,
             (long long)g->mem.T);
  g->B = B;
  g->T = T;
  g->S = S;
  for (int i = 0; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    t->numel = numel_at3(t, B, T, S);
    for (int d = 0; d < t->ty.rank; d++) {
      t->shape[d] = dim_eval3(t->ty.dim[d], B, T, S);
      /* 0 only for a device's share of the experts off a layer's on(...) set (shard.c) */
      if (t->shape[d] < 0 ||
          (t->shape[d] == 0 && !(g->experts_local && dim_is_const(t->ty.dim[d]))))
        mc_die("tensor '%s' has a non-positive size in dim %d once B=%lld, T=%lld%s", t->name, d,
               (long long)B, (long long)T,
               t->ty.dim[d].s ? mc_arena_printf(&g->arena, ", S=%lld", (long long)S) : "");
      if (t->shape[d] > MOEC_MAX_DIM) {
        char ty[160];
        mc_die("%d:%d: tensor '%s' of type %s would have a dimension of %lld with B = %lld, "
               "T = %lld: more than %lld (2^31 - 1, the limit per dimension)",
               t->loc.line, t->loc.col, t->name, type_str(&t->ty, ty, sizeof ty),
               (long long)t->shape[d], (long long)B, (long long)T, (long long)MOEC_MAX_DIM);
      }
    }
  }
}

bool ir_shape_fits(const Graph *g, BatchShape s) {
  if (!g->nshapes) return true;
  for (int i = 0; i < g->nshapes; i++)
    if (s.B <= g->shapes[i].B && s.T <= g->shapes[i].T && s.S <= g->shapes[i].S) return true;
  return false;
}

int64_t ir_numel_at(const Graph *g, const Tensor *t, BatchShape s) {
  int64_t P = g->ndev > 0 ? g->ndev : 1;
  return numel_at3(t, s.B / P, s.T, s.S);
}

void ir_bind(Graph *g, int64_t B, int64_t T) {
  ir_bind_seq(g, B, T, T);
}

void ir_verify(const Graph *g) {
  int *made = mc_calloc((size_t)g->ntensors, sizeof(int));
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    MOEC_ASSERT(t->id == i);
    if (t->kind == TK_INPUT || t->kind == TK_PARAM || t->kind == TK_STATE) made[i] = 1;
  }
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    const OpInfo *info = &ir_ops[n->op];
    MOEC_ASSERT(info->nin < 0 || n->nin == info->nin);
    MOEC_ASSERT(info->nout < 0 || n->nout == info->nout); /* -1: fused (n outputs) */
    MOEC_ASSERT(info->nout > -2 || n->nout == n->nin + info->nout + 2);
    for (int i = 0; i < n->nin; i++) {
      if (!made[n->in[i]->id])
        mc_fatal("node %d (%s) reads tensor '%s' before it is produced", n->id, info->name,
                 n->in[i]->name);
      if (made[n->in[i]->id] < 0)
        mc_fatal("node %d (%s) reads tensor '%s' after node %d used it as scratch", n->id,
                 info->name, n->in[i]->name, -made[n->in[i]->id] - 1);
    }
    if (info->flags & OPF_CLOBBER1) {
      const Tensor *s = n->in[1];
      if (!s->producer || s == g->loss || s == g->logits)
        mc_fatal("node %d (%s) would write over '%s', which is not its own temporary", n->id,
                 info->name, s->name);
      made[s->id] = -n->id - 1; /* read no more */
    }
    for (int j = 0; j < n->nout; j++) {
      MOEC_ASSERT(n->out[j]->producer == n && n->out[j]->producer_slot == j);
      made[n->out[j]->id] = 1;
    }
  }
  mc_free(made);
}
