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
} Builder;

static Sym *lookup(Builder *b, const char *name) {
  for (Sym *s = b->syms; s; s = s->next)
    if (!strcmp(s->name, name)) return s;
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
    if (!strcmp(g->params[i]->name, buf))
      mc_die("parameter '%s' is created twice (%d:%d): name each layer call on its own line", buf,
             loc.line, loc.col);
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
  if (!a)
    mc_die("%d:%d: '%s' is missing tensor argument %d", call->loc.line, call->loc.col, call->str,
           i + 1);
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

/* x[B, T, in] -> H[B, T, U]; state NAME.h, NAME.c [B, U] carried across steps */
static Tensor *build_lstm(Graph *g, const char *name, Tensor *x, int64_t units, Loc loc) {
  MOEC_ASSERT(x->ty.rank == 3);
  Dim bdim = x->ty.dim[0], in = x->ty.dim[2], u = dim_int(units), u4 = dim_int(4 * units);
  double s = 1.0 / sqrt((double)units);
  Dim ihd[2] = {u4, in}, hhd[2] = {u4, u}, bd[1] = {u4}, sd[2] = {bdim, u};
  Tensor *w_ih = param(g, name, "weight_ih", 2, ihd, INIT_UNIFORM, s, loc);
  Tensor *w_hh = param(g, name, "weight_hh", 2, hhd, INIT_UNIFORM, s, loc);
  Tensor *bias = param(g, name, "bias", 1, bd, INIT_ZERO, 0, loc);
  char hn[256], cn[256];
  snprintf(hn, sizeof hn, "%s.h", name);
  snprintf(cn, sizeof cn, "%s.c", name);
  Tensor *h0 = ir_state(g, hn, ir_type(DT_F32, 2, sd), loc); // [B, U]
  Tensor *c0 = ir_state(g, cn, ir_type(DT_F32, 2, sd), loc); // [B, U]
  int64_t tb[IR_MAX_ATTR] = {0, 1};
  Tensor *xw = node1(g, OP_MATMUL, x, w_ih, tb, NULL); // [B, T, 4U]
  name_sub(g, xw, name, "xw");
  Tensor *xproj = node1(g, OP_BIAS_ADD, xw, bias, NULL, NULL); // [B, T, 4U]
  name_sub(g, xproj, name, "xproj");
  Tensor *in4[4] = {xproj, w_hh, h0, c0};
  Node *n = ir_node(g, OP_LSTM, 4, in4, NULL, NULL);
  static const char *const outs[] = {NULL, "C", "G", "hT", "cT"};
  for (int j = 1; j < 5; j++)
    name_sub(g, n->out[j], name, outs[j]);
  ir_add_state(g, h0, n->out[3]);
  ir_add_state(g, c0, n->out[4]);
  return n->out[0]; // H [B, T, U]
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

/* (x[B, T, in], targets i32[B, T]) -> mean cross-entropy scalar */
static Tensor *build_softmax_xent(Graph *g, const char *name, Tensor *x, Tensor *targets,
                                  int64_t vocab, Loc loc) {
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
  Tensor *tg = flatten(g, targets, false); // [B*T]
  name_sub(g, tg, name, "targets");
  Tensor *in2[2] = {logits, tg};
  double fa[IR_MAX_ATTR] = {0}; /* 0: mean over the global batch (ops.def) */
  Node *n = ir_node(g, OP_XENT, 2, in2, NULL, fa);
  name_sub(g, n->out[1], name, "probs");
  return n->out[0]; // scalar
}

static Tensor *build_call(Builder *b, Expr *e, const char *stmt_name) {
  Graph *g = b->g;
  const char *name = e->param_name ? e->param_name : stmt_name;
  MOEC_ASSERT(e->layer >= 0 && e->layer < L_COUNT);
  int nt = fe_layers[e->layer].ntensors;
  Tensor *x = tensor_arg(b, e, 0, stmt_name);
  Tensor *x2 = nt > 1 ? tensor_arg(b, e, 1, stmt_name) : NULL;
  ir_set_context(g, name, NULL, e->loc);
  const double *av = e->argv;
  Tensor *y = NULL, *aux = NULL;
  switch ((LayerId)e->layer) {
  case L_EMBEDDING:
    y = build_embedding(g, name, x, (int64_t)av[LA_VOCAB], (int64_t)av[LA_DIM], e->loc);
    break;
  case L_LSTM:
    y = build_lstm(g, name, x, (int64_t)av[LA_UNITS], e->loc);
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
  case L_SOFTMAX_XENT:
    y = build_softmax_xent(g, name, x, x2, (int64_t)av[LA_VOCAB], e->loc);
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
    if (!s || !s->t) mc_die("%d:%d: '%s' is not a tensor value", e->loc.line, e->loc.col, e->str);
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
  mc_die("%d:%d: expected a tensor expression", e->loc.line, e->loc.col);
}

/* ---------------------------------------------------------------- statements */

static Dim input_dim(Builder *b, const Expr *e) {
  if (e->kind == EX_NAME && (!strcmp(e->str, "B") || !strcmp(e->str, "T")) && !lookup(b, e->str))
    return dim_sym(e->str[0]);
  double v;
  if (!const_value(b, e, &v) || v < 1 || v != floor(v))
    mc_die("%d:%d: an input dim must be B, T or a positive integer", e->loc.line, e->loc.col);
  return dim_int((int64_t)v);
}

Graph *ir_build(AstFile *f, const Config *cfg) {
  (void)cfg;
  MOEC_ASSERT(f && f->model);
  Builder b = {0};
  b.f = f;
  Graph *g = b.g = ir_graph_new(f->model->name);
  Tensor *out_loss = NULL;
  Loc out_loc = f->model->loc;
  for (Stmt *s = f->model->stmts; s; s = s->next) {
    switch (s->kind) {
    case ST_LET: {
      double v = 0;
      if (!const_value(&b, s->value, &v))
        mc_die("%d:%d: 'let %s' needs a constant value", s->loc.line, s->loc.col, s->name);
      define(&b, s->name, NULL, v);
      break;
    }
    case ST_INPUT: {
      Dim dims[MAX_RANK];
      int rank = 0;
      for (Arg *a = s->dims; a; a = a->next) {
        if (rank == MAX_RANK)
          mc_die("%d:%d: input '%s' has too many dims", s->loc.line, s->loc.col, s->name);
        dims[rank++] = input_dim(&b, a->value);
      }
      define(&b, s->name, ir_input(g, s->name, ir_type(s->dtype, rank, dims), s->loc), 0);
      break;
    }
    case ST_ASSIGN: {
      double v;
      if (const_value(&b, s->value, &v)) { /* NAME = NUMBER: a constant, like let */
        define(&b, s->name, NULL, v);
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
  /* the loss: the scalar output (or the last softmax_xent) plus every aux loss */
  g->xent = out_loss ? out_loss : b.last_xent;
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
