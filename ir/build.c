/* build.c: the checked AST -> the forward graph. Every layer call expands into
 * primitive ops (docs/ir.md lists each expansion); moe and hmoe are expanded by
 * build_moe.c. Also the small graph helpers builders share: rng streams and
 * state pairs.
 *
 * Naming: inputs and params keep their .moe names (params exactly as
 * language.md lists them); the value of `NAME = EXPR` is the tensor "NAME";
 * a layer's intermediates are "NAME.xw", "NAME.logits", ... Initialisation:
 * docs/ir.md ("Parameters"). */
#include <math.h>
#include <string.h>

#include "ir.h"

/* ---------------------------------------------------------------- shared helpers */

int ir_next_rng_stream(Graph *g) {
  return g->nrng++;
}

void ir_add_state(Graph *g, Tensor *state, Tensor *next) {
  MOEC_ASSERT(state && next && state->kind == TK_STATE);
  if (g->nstates == g->scap) {
    g->scap = g->scap ? 2 * g->scap : 8;
    g->states = mc_realloc(g->states, (size_t)g->scap * sizeof *g->states);
  }
  g->states[g->nstates++] = (StatePair){state, next};
}

/* ---------------------------------------------------------------- builder state */

typedef struct Sym {
  const char *name;
  Tensor *t;    /* a tensor value, or NULL for a constant */
  double value; /* let constants */
  const Stmt *memory; /* a decoder step: an encoder statement, an input once read */
  struct Sym *next;
} Sym;

typedef struct Builder {
  Graph *g;
  AstFile *f;
  McArena arena; /* symbols */
  Sym *syms;
  Tensor *last_xent; /* the most recent softmax_xent loss */
  Tensor **aux;
  int naux, auxcap;
  /* decoding (ir_build_part) */
  BuildPart part;
  const char **dec; /* the target side: inputs over T and the statements reading them */
  int ndec;
  Diag *diag;
  bool failed;
} Builder;

static Sym *lookup(Builder *b, const char *name) {
  for (Sym *s = b->syms; s; s = s->next)
    if (!strcmp(s->name, name)) {
      if (s->memory && !s->t) { /* a decoder step reads an encoder value: an input */
        s->t = ir_input(b->g, name, s->memory->value->ty, s->memory->loc);
        s->t->role = IN_MEMORY;
      }
      return s;
    }
  return NULL;
}

static void define(Builder *b, const char *name, Tensor *t, double value) {
  Sym *s = mc_arena_alloc(&b->arena, sizeof(Sym));
  s->name = name;
  s->t = t;
  s->value = value;
  s->next = b->syms;
  b->syms = s;
}

/* Gives an op's output a readable name, unless another tensor has it already. */
static void name_as(Graph *g, Tensor *t, const char *name) {
  if (t->producer && !ir_name_taken(g, name)) ir_rename(g, t, name);
}

static void name_sub(Graph *g, Tensor *t, const char *layer, const char *part) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s.%s", layer, part);
  name_as(g, t, buf);
}

/* Shortens the automatic names of the tensors made since `first` ("r.relu23", from
 * ir_node) to "r.relu" where that name is free: stable and easier to read. */
static void tidy_names(Graph *g, int first) {
  char buf[256];
  for (int i = first; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    const Node *n = t->producer;
    if (!n || !n->layer || n->nout != 1) continue; /* slots of multi-output ops keep ids */
    snprintf(buf, sizeof buf, "%s.%s%d", n->layer, ir_ops[n->op].name, t->id);
    if (strcmp(t->name, buf)) continue; /* named by a builder */
    snprintf(buf, sizeof buf, "%s.%s", n->layer, ir_ops[n->op].name);
    name_as(g, t, buf);
  }
}

static Tensor *param(Graph *g, const char *layer, const char *part, int rank, const Dim *dims,
                     InitKind init, double scale, Loc loc) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s.%s", layer, part);
  for (int i = 0; ir_name_taken(g, buf) && i < g->nparams; i++) /* scan only when it may be */
    MOEC_ASSERT(strcmp(g->params[i]->name, buf) != 0); /* sema: each layer call on its own */
  return ir_param(g, buf, ir_type(DT_F32, rank, dims), init, scale, loc);
}

static Tensor *node1(Graph *g, OpKind op, Tensor *a, Tensor *b, const int64_t *ia,
                     const double *fa) {
  Tensor *in[2] = {a, b};
  return ir_node(g, op, b ? 2 : 1, in, ia, fa)->out[0];
}

static Tensor *scale(Graph *g, Tensor *x, double s, double offset) {
  double fa[IR_MAX_ATTR] = {s, offset};
  return node1(g, OP_SCALE, x, NULL, NULL, fa);
}

/* ---------------------------------------------------------------- constants */

/* A constant expression (numbers, lets, + - *, unary -): true and *v, or false. */
static bool const_value(Builder *b, const Expr *e, double *v) {
  double l, r;
  switch (e->kind) {
  case EX_NUM:
    *v = e->is_int ? (double)e->ival : e->num;
    return true;
  case EX_NAME: {
    Sym *s = lookup(b, e->str);
    if (!s || s->t) return false;
    *v = s->value;
    return true;
  }
  case EX_NEG:
    if (!const_value(b, e->lhs, &l)) return false;
    *v = -l;
    return true;
  case EX_BINOP:
    if (!const_value(b, e->lhs, &l) || !const_value(b, e->rhs, &r)) return false;
    *v = e->op == '+' ? l + r : e->op == '-' ? l - r : l * r;
    return true;
  default:
    return false;
  }
}

/* ---------------------------------------------------------------- layers */

static Tensor *build_expr(Builder *b, Expr *e, const char *name);

static Tensor *tensor_arg(Builder *b, Expr *call, int i, const char *name) {
  Expr *a = call->targ[i];
  if (!a) { /* sema left it: the i-th positional argument */
    int k = 0;
    for (Arg *arg = call->args; arg; arg = arg->next)
      if (!arg->key && k++ == i) {
        a = arg->value;
        break;
      }
  }
  MOEC_ASSERT(a != NULL); /* sema: every tensor argument is given */
  return build_expr(b, a, name);
}

/* x[..., in] -> act(x . W^T + bias): [..., units] */
static Tensor *build_dense(Graph *g, const char *name, Tensor *x, int64_t units, int act, Loc loc) {
  Dim in = x->ty.dim[x->ty.rank - 1];
  MOEC_ASSERT(dim_is_const(in));
  Dim wd[2] = {dim_int(units), in}, bd[1] = {dim_int(units)};
  Tensor *w = param(g, name, "weight", 2, wd, INIT_UNIFORM, 1.0 / sqrt((double)in.c), loc);
  Tensor *bias = param(g, name, "bias", 1, bd, INIT_ZERO, 0, loc);
  int64_t tb[IR_MAX_ATTR] = {0, 1};
  Tensor *xw = node1(g, OP_MATMUL, x, w, tb, NULL); // [..., units]
  name_sub(g, xw, name, "xw");
  Tensor *y = node1(g, OP_BIAS_ADD, xw, bias, NULL, NULL); // [..., units]
  switch (act) {
  case LAE_RELU:
    name_sub(g, y, name, "pre");
    return ir_op1(g, OP_RELU, y);
  case LAE_TANH:
    name_sub(g, y, name, "pre");
    return ir_op1(g, OP_TANH, y);
  case LAE_SIGMOID:
    name_sub(g, y, name, "pre");
    return ir_op1(g, OP_SIGMOID, y);
  default:
    return y;
  }
}

/* ids i32[...] -> [..., D] */
static Tensor *build_embedding(Graph *g, const char *name, Tensor *ids, int64_t vocab, int64_t dim,
                               Loc loc) {
  Dim wd[2] = {dim_int(vocab), dim_int(dim)};
  Tensor *w = param(g, name, "weight", 2, wd, INIT_UNIFORM, 0.1, loc);
  return node1(g, OP_EMBEDDING, ids, w, NULL, NULL);
}

/* x[B, T, in] -> H[B, T, R]; state NAME.h [B, R], NAME.c [B, U] carried across steps, or
 * (!carry) zero at the start of every batch: states without a pair, never written. With
 * proj = P > 0 an LSTMP: NAME.weight_hr [P, U] projects o*tanh(c) to h, R = P; else R = U */
static Tensor *build_lstm(Graph *g, const char *name, Tensor *x, int64_t units, int64_t proj,
                          bool carry, Loc loc) {
  MOEC_ASSERT(x->ty.rank == 3);
  Dim bdim = x->ty.dim[0], in = x->ty.dim[2], u = dim_int(units), u4 = dim_int(4 * units);
  Dim r = proj > 0 ? dim_int(proj) : u;
  double s = 1.0 / sqrt((double)units);
  Dim ihd[2] = {u4, in}, hhd[2] = {u4, r}, bd[1] = {u4}, hd[2] = {bdim, r}, sd[2] = {bdim, u};
  Tensor *w_ih = param(g, name, "weight_ih", 2, ihd, INIT_UNIFORM, s, loc);
  Tensor *w_hh = param(g, name, "weight_hh", 2, hhd, INIT_UNIFORM, s, loc);
  Tensor *bias = param(g, name, "bias", 1, bd, INIT_ZERO, 0, loc);
  Dim pd[2] = {r, u};
  Tensor *w_hr = proj > 0 ? param(g, name, "weight_hr", 2, pd, INIT_UNIFORM, s, loc) : NULL;
  char hn[256], cn[256];
  snprintf(hn, sizeof hn, "%s.h", name);
  snprintf(cn, sizeof cn, "%s.c", name);
  Tensor *h0 = ir_state(g, hn, ir_type(DT_F32, 2, hd), loc); // [B, R]
  Tensor *c0 = ir_state(g, cn, ir_type(DT_F32, 2, sd), loc); // [B, U]
  int64_t tb[IR_MAX_ATTR] = {0, 1};
  Tensor *xw = node1(g, OP_MATMUL, x, w_ih, tb, NULL); // [B, T, 4U]
  name_sub(g, xw, name, "xw");
  Tensor *xproj = node1(g, OP_BIAS_ADD, xw, bias, NULL, NULL); // [B, T, 4U]
  name_sub(g, xproj, name, "xproj");
  Tensor *in5[5] = {xproj, w_hh, h0, c0, w_hr};
  Node *n = ir_node(g, OP_LSTM, w_hr ? 5 : 4, in5, NULL, NULL);
  static const char *const outs[] = {NULL, "C", "G", "hT", "cT"};
  for (int j = 1; j < 5; j++)
    name_sub(g, n->out[j], name, outs[j]);
  if (carry) {
    ir_add_state(g, h0, n->out[3]);
    ir_add_state(g, c0, n->out[4]);
  }
  return n->out[0]; // H [B, T, R]
}

static Tensor *build_dropout(Graph *g, const char *name, Tensor *x, double p) {
  int64_t ia[IR_MAX_ATTR] = {ir_next_rng_stream(g)};
  double fa[IR_MAX_ATTR] = {p};
  Tensor *in[1] = {x};
  Node *n = ir_node(g, OP_DROPOUT, 1, in, ia, fa);
  name_sub(g, n->out[1], name, "mask");
  return n->out[0];
}

/* Flattens x[d0, ..., dk, last] to [d0*...*dk, last] (keep_last) or [d0*...] (!keep_last). */
static Tensor *flatten(Graph *g, Tensor *x, bool keep_last) {
  int lead = keep_last ? x->ty.rank - 1 : x->ty.rank;
  if (lead == 1) return x;
  Dim r = dim_int(1);
  for (int i = 0; i < lead; i++)
    r = dim_mul(r, x->ty.dim[i]);
  Dim d[2] = {r, keep_last ? x->ty.dim[x->ty.rank - 1] : dim_int(1)};
  return ir_reshape(g, x, ir_type(x->ty.dtype, keep_last ? 2 : 1, d));
}

/* (x[B, T, in], targets i32[B, T]) -> mean cross-entropy scalar; targets with a pad id:
 * the mean over the positions that are not padding (*count: their number); targets NULL:
 * the logits [B*T, V] (a decoder step) */
static Tensor *build_softmax_xent(Graph *g, const char *name, Tensor *x, Tensor *targets,
                                  int64_t vocab, Tensor **count, Loc loc) {
  Dim in = x->ty.dim[x->ty.rank - 1];
  MOEC_ASSERT(dim_is_const(in));
  Dim wd[2] = {dim_int(vocab), in}, bd[1] = {dim_int(vocab)};
  Tensor *w = param(g, name, "weight", 2, wd, INIT_UNIFORM, 1.0 / sqrt((double)in.c), loc);
  Tensor *bias = param(g, name, "bias", 1, bd, INIT_ZERO, 0, loc);
  Tensor *x2 = flatten(g, x, true); // [B*T, in]
  name_sub(g, x2, name, "rows");
  int64_t tb[IR_MAX_ATTR] = {0, 1};
  Tensor *xw = node1(g, OP_MATMUL, x2, w, tb, NULL); // [B*T, V]
  name_sub(g, xw, name, "xw");
  Tensor *logits = node1(g, OP_BIAS_ADD, xw, bias, NULL, NULL); // [B*T, V]
  name_sub(g, logits, name, "logits");
  if (!targets) return logits; /* decoding: the logits, no loss */
  Tensor *tg = flatten(g, targets, false); // [B*T]
  name_sub(g, tg, name, "targets");
  if (targets->kind == TK_INPUT && targets->pad >= 0) {
    int64_t ia[IR_MAX_ATTR] = {targets->pad};
    *count = node1(g, OP_COUNT_NONPAD, tg, NULL, ia, NULL); // scalar
    name_sub(g, *count, name, "count");
    Tensor *in3[3] = {logits, tg, *count};
    Node *n = ir_node(g, OP_XENT_PAD, 3, in3, ia, NULL);
    name_sub(g, n->out[1], name, "probs");
    return n->out[0]; // scalar
  }
  Tensor *in2[2] = {logits, tg};
  double fa[IR_MAX_ATTR] = {0}; /* 0: mean over the global batch (ops.def) */
  Node *n = ir_node(g, OP_XENT, 2, in2, NULL, fa);
  name_sub(g, n->out[1], name, "probs");
  return n->out[0]; // scalar
}

/* (query[B, T, Dq], memory[B, S, Dm]) -> context[B, T, Dm] (docs/language.md, "attention"):
 *   additive: s[b,j,i] = v . tanh(m_i U + q_j W)
 *   product:  s[b,j,i] = v . (tanh(m_i U) * tanh(q_j W))   (the paper's appendix G)
 *   a = softmax over i of s, 0 where mask (ids != pad of `mask_ids`) is 0; c_j = sum_i a_ji m_i */
static Tensor *build_attention(Graph *g, const char *name, Tensor *q, Tensor *m, int64_t units,
                               int score, Tensor *mask_ids, Loc loc) {
  Dim dq = q->ty.dim[2], dm = m->ty.dim[2], a = dim_int(units);
  MOEC_ASSERT(dim_is_const(dq) && dim_is_const(dm));
  Dim ud[2] = {dm, a}, wd[2] = {dq, a}, vd[1] = {a};
  Tensor *u = param(g, name, "u", 2, ud, INIT_UNIFORM, 1.0 / sqrt((double)dm.c), loc);
  Tensor *w = param(g, name, "w", 2, wd, INIT_UNIFORM, 1.0 / sqrt((double)dq.c), loc);
  Tensor *v = param(g, name, "v", 1, vd, INIT_UNIFORM, 1.0 / sqrt((double)units), loc);
  Tensor *mu = node1(g, OP_MATMUL, m, u, NULL, NULL); // [B, S, A]
  name_sub(g, mu, name, "mu");
  Tensor *qw = node1(g, OP_MATMUL, q, w, NULL, NULL); // [B, T, A]
  name_sub(g, qw, name, "qw");
  Tensor *s;
  if (score == LAE_PRODUCT) {
    Tensor *mt = ir_op1(g, OP_TANH, mu); // [B, S, A]
    name_sub(g, mt, name, "mu_tanh");
    Tensor *qt = ir_op1(g, OP_TANH, qw); // [B, T, A]
    name_sub(g, qt, name, "qw_tanh");
    Tensor *qv = ir_op2(g, OP_COL_SCALE, qt, v); // [B, T, A]
    name_sub(g, qv, name, "qv");
    int64_t tb[IR_MAX_ATTR] = {0, 1};
    s = node1(g, OP_BMM, qv, mt, tb, NULL); // [B, T, S]
  } else {
    Tensor *in3[3] = {qw, mu, v};
    s = ir_node(g, OP_ATTN_SCORE, 3, in3, NULL, NULL)->out[0]; // [B, T, S]
  }
  name_sub(g, s, name, "scores");
  Tensor *wts;
  if (mask_ids) {
    int64_t ia[IR_MAX_ATTR] = {mask_ids->pad};
    Tensor *mask = node1(g, OP_PAD_MASK, mask_ids, NULL, ia, NULL); // [B, S]
    name_sub(g, mask, name, "mask");
    wts = ir_op2(g, OP_MASKED_SOFTMAX, s, mask); // [B, T, S]
  } else {
    wts = ir_op1(g, OP_SOFTMAX, s); // [B, T, S]
  }
  name_sub(g, wts, name, "weights");
  return node1(g, OP_BMM, wts, m, NULL, NULL); // [B, T, Dm]
}

/* ---------------------------------------------------------------- decoding's two sides */

static bool is_dec(const Builder *b, const char *name) {
  for (int i = 0; i < b->ndec; i++)
    if (!strcmp(b->dec[i], name)) return true;
  return false;
}

/* Whether e reads a value of the target side. */
static bool on_target_side(const Builder *b, const Expr *e) {
  if (!e) return false;
  switch (e->kind) {
  case EX_NAME:
    return is_dec(b, e->str);
  case EX_CALL:
  case EX_LIST:
    for (const Arg *a = e->args; a; a = a->next)
      if (on_target_side(b, a->value)) return true;
    return false;
  case EX_BINOP:
    return on_target_side(b, e->lhs) || on_target_side(b, e->rhs);
  case EX_NEG:
    return on_target_side(b, e->lhs);
  default:
    return false;
  }
}

static bool input_over_t(const Stmt *s) {
  for (const Arg *a = s->dims; a; a = a->next)
    if (a->value->kind == EX_NAME && !strcmp(a->value->str, "T")) return true;
  return false;
}

/* The target side: the inputs over T, then every statement that reads one of them. */
static void target_side(Builder *b) {
  int cap = 8;
  b->dec = mc_arena_alloc(&b->arena, sizeof(char *) * (size_t)cap);
  for (Stmt *s = b->f->model->stmts; s; s = s->next) {
    bool dec = s->kind == ST_INPUT ? input_over_t(s)
                                   : s->kind == ST_ASSIGN && on_target_side(b, s->value);
    if (!dec) continue;
    if (b->ndec == cap) {
      const char **d = mc_arena_alloc(&b->arena, sizeof(char *) * (size_t)(cap *= 2));
      memcpy(d, b->dec, sizeof(char *) * (size_t)b->ndec);
      b->dec = d;
    }
    b->dec[b->ndec++] = s->name;
  }
}

/* Appends to names (no repeats) the encoder statements' names e reads. */
static void read_values(const Builder *b, const Expr *e, const char **names, int *n, int cap) {
  if (!e) return;
  if (e->kind == EX_NAME) {
    if (is_dec(b, e->str)) return;
    bool assigned = false, have = false;
    for (Stmt *s = b->f->model->stmts; s && !assigned; s = s->next)
      assigned = s->kind == ST_ASSIGN && !strcmp(s->name, e->str) && s->value->ty.rank > 0;
    for (int i = 0; i < *n && !have; i++)
      have = !strcmp(names[i], e->str);
    if (assigned && !have && *n < cap) names[(*n)++] = e->str;
    return;
  }
  if (e->kind == EX_CALL || e->kind == EX_LIST)
    for (const Arg *a = e->args; a; a = a->next)
      read_values(b, a->value, names, n, cap);
  read_values(b, e->lhs, names, n, cap);
  read_values(b, e->rhs, names, n, cap);
}

/* The encoder values the decoder reads, in the order the target side first reads them:
 * the graph's bridge (its outputs, or its IN_MEMORY inputs). */
static void set_bridge(Builder *b) {
  int cap = 0;
  for (Stmt *s = b->f->model->stmts; s; s = s->next)
    cap += s->kind == ST_ASSIGN;
  const char **names = mc_arena_alloc(&b->arena, sizeof(char *) * (size_t)(cap + 1));
  int n = 0;
  for (Stmt *s = b->f->model->stmts; s; s = s->next)
    if (s->kind == ST_ASSIGN && is_dec(b, s->name)) read_values(b, s->value, names, &n, cap);
  Graph *g = b->g;
  g->bridge = mc_calloc((size_t)n + 1, sizeof(Tensor *));
  for (int i = 0; i < n; i++) {
    Sym *y = lookup(b, names[i]);
    MOEC_ASSERT(y && y->t); /* built (encoder) or read (decoder: an input now) */
    g->bridge[g->nbridge++] = y->t;
  }
}

/* (x[B, T, in], targets i32[B, T]) -> mean cross-entropy scalar; in training over the
 * target and `samples` sampled classes (importance sampling), in evaluation exact */
static Tensor *build_sampled_softmax_xent(Graph *g, const char *name, Tensor *x, Tensor *targets,
                                          int64_t vocab, int64_t samples, Loc loc) {
  Dim in = x->ty.dim[x->ty.rank - 1];
  MOEC_ASSERT(dim_is_const(in));
  Dim wd[2] = {dim_int(vocab), in}, bd[1] = {dim_int(vocab)};
  Tensor *w = param(g, name, "weight", 2, wd, INIT_UNIFORM, 1.0 / sqrt((double)in.c), loc);
  Tensor *bias = param(g, name, "bias", 1, bd, INIT_ZERO, 0, loc);
  Tensor *x2 = flatten(g, x, true); // [B*T, in]
  name_sub(g, x2, name, "rows");
  Tensor *tg = flatten(g, targets, false); // [B*T]
  name_sub(g, tg, name, "targets");
  Tensor *in4[4] = {x2, w, bias, tg};
  int64_t ia[IR_MAX_ATTR] = {ir_next_rng_stream(g), samples};
  double fa[IR_MAX_ATTR] = {0}; /* 0: mean over the global batch (ops.def) */
  Node *n = ir_node(g, OP_SAMPLED_XENT, 4, in4, ia, fa);
  name_sub(g, n->out[1], name, "probs");   // [B*T, samples + 1]
  name_sub(g, n->out[2], name, "samples"); // i32[samples]
  name_sub(g, n->out[3], name, "tries");   // i32[1]
  return n->out[0];                        // scalar
}

static Tensor *build_call(Builder *b, Expr *e, const char *stmt_name) {
  Graph *g = b->g;
  const char *name = e->param_name ? e->param_name : stmt_name;
  MOEC_ASSERT(e->layer >= 0 && e->layer < L_COUNT);
  int nt = fe_layers[e->layer].ntensors;
  Tensor *x = tensor_arg(b, e, 0, stmt_name);
  Tensor *x2 = nt > 1 && !(e->layer == L_SOFTMAX_XENT && b->part == BUILD_DECODER)
                   ? tensor_arg(b, e, 1, stmt_name)
                   : NULL;
  ir_set_context(g, name, NULL, e->loc);
  const double *av = e->argv;
  Tensor *y = NULL, *aux = NULL;
  switch ((LayerId)e->layer) {
  case L_EMBEDDING:
    y = build_embedding(g, name, x, (int64_t)av[LA_VOCAB], (int64_t)av[LA_DIM], e->loc);
    break;
  case L_LSTM: /* a decoder step carries every LSTM's state to the next step */
    y = build_lstm(g, name, x, (int64_t)av[LA_UNITS], av[LA_PROJ] >= 1 ? (int64_t)av[LA_PROJ] : 0,
                   av[LA_CARRY] != 0 || b->part == BUILD_DECODER, e->loc);
    break;
  case L_DENSE:
    y = build_dense(g, name, x, (int64_t)av[LA_UNITS], (int)av[LA_ACT], e->loc);
    break;
  case L_DROPOUT:
    y = build_dropout(g, name, x, av[LA_P]);
    break;
  case L_RELU:
    y = ir_op1(g, OP_RELU, x);
    break;
  case L_TANH:
    y = ir_op1(g, OP_TANH, x);
    break;
  case L_SIGMOID:
    y = ir_op1(g, OP_SIGMOID, x);
    break;
  case L_MOE:
    y = ir_build_moe(g, e, x, name, &aux);
    break;
  case L_HMOE:
    y = ir_build_hmoe(g, e, x, name, &aux);
    break;
  case L_ATTENTION: {
    Tensor *mask_ids = NULL;
    Expr *mem = e->targ[1];
    if (b->part == BUILD_DECODER && mem && on_target_side(b, mem)) {
      if (b->diag) fe_error(b->diag, e->loc,
               "attention '%s' attends over target positions (its memory is computed from the "
               "target inputs): decoding one target position at a time cannot compute it; "
               "attend over the encoder's values",
               name);
      b->failed = true;
    }
    if (e->mask_input) {
      Sym *s = lookup(b, e->mask_input);
      if (!s || !s->t || s->t->kind != TK_INPUT || s->t->pad < 0)
        mc_die("%d:%d: attention: '%s' is not a padded input", e->loc.line, e->loc.col,
               e->mask_input);
      mask_ids = s->t;
    }
    y = build_attention(g, name, x, x2, (int64_t)av[LA_UNITS], (int)av[LA_SCORE], mask_ids, e->loc);
    break;
  }
  case L_CONCAT:
    y = ir_op2(g, OP_CONCAT_LAST, x, x2);
    break;
  case L_SOFTMAX_XENT: {
    Tensor *count = NULL;
    y = build_softmax_xent(g, name, x, b->part == BUILD_DECODER ? NULL : x2,
                           (int64_t)av[LA_VOCAB], &count, e->loc);
    if (b->part == BUILD_DECODER)
      g->logits = y; /* a decoder step: the logits the search reads */
    else
      b->last_xent = y;
    break;
  }
  case L_SAMPLED_SOFTMAX_XENT:
    y = build_sampled_softmax_xent(g, name, x, x2, (int64_t)av[LA_VOCAB], (int64_t)av[LA_SAMPLES],
                                   e->loc);
    b->last_xent = y;
    break;
  default:
    mc_fatal("ir_build: layer %d has no expansion", e->layer);
  }
  if (aux) {
    name_sub(g, aux, name, "aux");
    if (b->naux == b->auxcap) {
      b->auxcap = b->auxcap ? 2 * b->auxcap : 8;
      b->aux = mc_realloc(b->aux, (size_t)b->auxcap * sizeof *b->aux);
    }
    b->aux[b->naux++] = aux;
  }
  return y;
}

/* ---------------------------------------------------------------- expressions */

static Tensor *binop(Graph *g, int op, Tensor *l, Tensor *r) {
  OpKind k = op == '+' ? OP_ADD : op == '-' ? OP_SUB : OP_MUL;
  /* a rank-0 tensor operand goes second (shape_binary broadcasts b only) */
  if (l->ty.rank == 0 && r->ty.rank != 0) {
    if (op == '-') return ir_op2(g, OP_ADD, scale(g, r, -1, 0), l); /* s - x = -x + s */
    Tensor *t = l;
    l = r;
    r = t;
  }
  return ir_op2(g, k, l, r);
}

static Tensor *build_expr(Builder *b, Expr *e, const char *name) {
  Graph *g = b->g;
  switch (e->kind) {
  case EX_NAME: {
    Sym *s = lookup(b, e->str);
    MOEC_ASSERT(s && s->t); /* sema: names are defined tensor values here */
    return s->t;
  }
  case EX_CALL:
    return build_call(b, e, name);
  case EX_NEG:
    ir_set_context(g, name, NULL, e->loc);
    return scale(g, build_expr(b, e->lhs, name), -1, 0);
  case EX_BINOP: {
    double lc, rc;
    bool lconst = const_value(b, e->lhs, &lc), rconst = const_value(b, e->rhs, &rc);
    if (lconst && rconst) break;
    if (lconst || rconst) {
      Tensor *x = build_expr(b, lconst ? e->rhs : e->lhs, name);
      ir_set_context(g, name, NULL, e->loc);
      double k = lconst ? lc : rc;
      if (e->op == '*') return scale(g, x, k, 0);
      if (e->op == '+') return scale(g, x, 1, k);
      return lconst ? scale(g, x, -1, k) : scale(g, x, 1, -k); /* k - x, x - k */
    }
    Tensor *l = build_expr(b, e->lhs, name);
    Tensor *r = build_expr(b, e->rhs, name);
    ir_set_context(g, name, NULL, e->loc);
    return binop(g, e->op, l, r);
  }
  default:
    break;
  }
  mc_fatal("%d:%d: not a tensor expression (sema checked it)", e->loc.line, e->loc.col);
}

/* ---------------------------------------------------------------- statements */

static Dim input_dim(Builder *b, const Expr *e) {
  if (e->kind == EX_NAME &&
      (!strcmp(e->str, "B") || !strcmp(e->str, "T") || !strcmp(e->str, "S")) && !lookup(b, e->str))
    return dim_sym(e->str[0]);
  double v;
  bool ok = const_value(b, e, &v) && v >= 1 && v == floor(v); /* sema checked the dims */
  MOEC_ASSERT(ok);
  return dim_int((int64_t)v);
}

/* x, or the tensor a chain of reshapes starts from */
static Tensor *unreshape(Tensor *x) {
  while (x->producer && x->producer->op == OP_RESHAPE)
    x = x->producer->in[0];
  return x;
}

/* Each input's role (docs/ir.md "Inputs and their roles"): the loss's targets are the
 * labels; the i32 input over S the source; the one other i32 input an embedding reads
 * is the target input of a translation model or a language model's tokens. */
static void assign_roles(Graph *g) {
  bool translation = false;
  for (int i = 0; i < g->ninputs; i++) {
    Tensor *t = g->inputs[i];
    if (t->ty.dtype != DT_I32) continue;
    for (int d = 0; d < t->ty.rank; d++)
      if (t->ty.dim[d].s) {
        t->role = IN_SOURCE;
        translation = true;
      }
  }
  if (g->xent && g->xent->producer) {
    Tensor *tg = unreshape(g->xent->producer->in[1]);
    if (tg->kind == TK_INPUT && tg->role == IN_NONE) tg->role = IN_LABELS;
  }
  Tensor *fed = NULL;
  int nfed = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op != OP_EMBEDDING) continue;
    Tensor *ids = unreshape(n->in[0]);
    if (ids->kind != TK_INPUT || ids->role != IN_NONE || ids == fed) continue;
    fed = ids;
    nfed++;
  }
  if (nfed == 1) fed->role = translation ? IN_TARGET : IN_TOKENS;
}

Graph *ir_build(AstFile *f, const Config *cfg) {
  return ir_build_part(f, cfg, BUILD_ALL, NULL);
}

Graph *ir_build_part(AstFile *f, const Config *cfg, BuildPart part, Diag *d) {
  (void)cfg;
  MOEC_ASSERT(f && f->model);
  Builder b = {0};
  b.f = f;
  b.part = part;
  b.diag = d;
  Graph *g = b.g = ir_graph_new(f->model->name);
  if (part != BUILD_ALL) target_side(&b);
  Tensor *out_loss = NULL;
  Loc out_loc = f->model->loc;
  for (Stmt *s = f->model->stmts; s; s = s->next) {
    switch (s->kind) {
    case ST_LET: {
      double v = 0;
      bool constant = const_value(&b, s->value, &v); /* sema: lets are constants */
      MOEC_ASSERT(constant);
      define(&b, s->name, NULL, v);
      break;
    }
    case ST_INPUT: {
      Dim dims[MAX_RANK];
      int rank = 0;
      for (Arg *a = s->dims; a; a = a->next) {
        MOEC_ASSERT(rank < MAX_RANK); /* the parser limits an input's dims */
        dims[rank++] = input_dim(&b, a->value);
      }
      Tensor *in = ir_input(g, s->name, ir_type(s->dtype, rank, dims), s->loc);
      double pad;
      if (s->pad) {
        if (!const_value(&b, s->pad, &pad) || pad < 0 || pad != floor(pad) || pad > INT32_MAX)
          mc_die("%d:%d: input '%s': the pad id must be an integer >= 0", s->loc.line, s->loc.col,
                 s->name);
        in->pad = (int32_t)pad;
      }
      define(&b, s->name, in, 0);
      break;
    }
    case ST_ASSIGN: {
      double v;
      if (const_value(&b, s->value, &v)) { /* NAME = NUMBER: a constant, like let */
        define(&b, s->name, NULL, v);
        break;
      }
      if (part != BUILD_ALL && is_dec(&b, s->name) != (part == BUILD_DECODER)) {
        if (part == BUILD_DECODER) { /* an encoder value: an input if the decoder reads it */
          define(&b, s->name, NULL, 0);
          b.syms->memory = s;
        }
        break;
      }
      int first = g->ntensors;
      Tensor *t = build_expr(&b, s->value, s->name);
      if (t->id >= first) name_as(g, t, s->name); /* not for an alias `b = a` */
      tidy_names(g, first);
      define(&b, s->name, t, 0);
      break;
    }
    case ST_OUTPUT:
      out_loc = s->loc;
      for (Arg *a = s->names; a; a = a->next) {
        if (!a->value || a->value->kind != EX_NAME) continue;
        Sym *sym = lookup(&b, a->value->str);
        if (sym && sym->t && sym->t->ty.rank == 0 && sym->t->ty.dtype == DT_F32) out_loss = sym->t;
      }
      break;
    default:
      break;
    }
  }
  if (part != BUILD_ALL && !b.failed) set_bridge(&b);
  if (b.failed) {
    mc_free(b.aux);
    mc_arena_free(&b.arena);
    ir_graph_free(g);
    return NULL;
  }
  /* the loss: the scalar output (or the last softmax_xent) plus every aux loss */
  g->xent = out_loss ? out_loss : b.last_xent;
  if (g->xent && g->xent->producer && g->xent->producer->op == OP_XENT_PAD)
    g->xent_count = g->xent->producer->in[2];
  assign_roles(g);
  ir_set_context(g, NULL, NULL, out_loc); /* no layer: not any user layer's */
  Tensor *aux = NULL;
  for (int i = 0; i < b.naux; i++) {
    aux = aux ? ir_op2(g, OP_ADD, aux, b.aux[i]) : b.aux[i];
    if (i > 0) name_as(g, aux, i + 1 < b.naux ? "aux_partial" : "aux");
  }
  g->aux = aux;
  if (g->xent && aux) {
    g->loss = ir_op2(g, OP_ADD, g->xent, aux);
    name_as(g, g->loss, "total_loss");
  } else {
    g->loss = g->xent;
  }
  ir_set_context(g, NULL, NULL, (Loc){0});
  mc_free(b.aux);
  mc_arena_free(&b.arena);
  return g;
}
