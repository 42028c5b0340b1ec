/* test_gradcheck_dense.c: every differentiable dense op's gradient (its rule in
 * ir/grads_dense.c, passes/autodiff.c and the backward kernels) against central
 * finite differences in float64, and the same graphs' float32 kernels against
 * float64, through tests/gradcheck.h. Also the structure autodiff builds:
 * params that do not reach the loss get zero gradients, gradients of data are
 * not computed, every param has its own gradient tensor. */
#include <string.h>

#include "gradcheck.h"
#include "test.h"

#define B_ dim_sym('B')
#define T_ dim_sym('T')
#define I_(n) dim_int(n)

static double worst_fd, worst_f32;
static int nchecked;

static Type ty(int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_type(DT_F32, rank, d);
}
static Type ty_i32(int rank, Dim d0, Dim d1) {
  Dim d[2] = {d0, d1};
  return ir_type(DT_I32, rank, d);
}

static Tensor *param(Graph *g, const char *name, Type t) {
  return ir_param(g, name, t, INIT_ZERO, 0, (Loc){0});
}

static Tensor *node(Graph *g, OpKind op, Tensor *a, Tensor *b, int64_t i0, int64_t i1, double f0,
                    double f1) {
  Tensor *in[2] = {a, b};
  int64_t ia[IR_MAX_ATTR] = {i0, i1};
  double fa[IR_MAX_ATTR] = {f0, f1};
  return ir_node(g, op, b ? 2 : 1, in, ia, fa)->out[0];
}

/* Runs the check on outs[0..nouts) and records the result. */
static GcResult run(Graph *g, int nouts, Tensor **outs, const GcOpts *o) {
  GcResult r = gc_check(g, nouts, outs, o);
  CHECK(r.ok);
  CHECK(r.nparams == g->nparams);
  worst_fd = fmax(worst_fd, r.worst_rel);
  worst_f32 = fmax(worst_f32, r.worst_f32);
  nchecked++;
  return r;
}

static void check1(Graph *g, Tensor *y, const GcOpts *o) {
  run(g, 1, &y, o);
  ir_graph_free(g);
}

/* ids: ((i * 7) % V') with V' = min(V, 3): repeated ids on purpose; targets: i % V */
typedef struct Ids {
  int64_t v;
  bool repeat;
} Ids;
static void fill_ids(const Tensor *t, int32_t *buf, void *user) {
  const Ids *ids = user;
  int64_t m = ids->repeat ? MC_MIN(ids->v, 3) : ids->v;
  for (int64_t i = 0; i < t->numel; i++)
    buf[i] = (int32_t)((i * 7 + 1) % m);
}

/* ---------------------------------------------------------------- elementwise */

static void test_binary(void) {
  static const OpKind ops[] = {OP_ADD, OP_SUB, OP_MUL};
  static const char *const names[] = {"add", "sub", "mul"};
  GcOpts o = gc_opts();
  for (int k = 0; k < 3; k++) {
    for (int scalar = 0; scalar < 2; scalar++) {
      char nm[32];
      snprintf(nm, sizeof nm, "%s%s", names[k], scalar ? "_scalar" : "");
      Graph *g = ir_graph_new(nm);
      Tensor *a = param(g, "a", ty(2, I_(3), I_(4), I_(0)));
      Tensor *b = param(g, "b", scalar ? ty(0, I_(0), I_(0), I_(0)) : a->ty);
      check1(g, ir_op2(g, ops[k], a, b), &o);
    }
  }
  /* both scalars; x * x (one tensor, two uses: accumulation) */
  Graph *g = ir_graph_new("mul_scalars");
  Tensor *a = param(g, "a", ty(0, I_(0), I_(0), I_(0)));
  Tensor *b = param(g, "b", ty(0, I_(0), I_(0), I_(0)));
  check1(g, ir_op2(g, OP_MUL, a, b), &o);
  g = ir_graph_new("square");
  a = param(g, "x", ty(2, I_(2), I_(5), I_(0)));
  check1(g, ir_op2(g, OP_MUL, a, a), &o);
}

static void test_unary(void) {
  GcOpts o = gc_opts();
  o.scale = 3; /* reach the flat parts of tanh, sigmoid, softplus */
  static const OpKind ops[] = {OP_RELU, OP_TANH, OP_SIGMOID, OP_SOFTPLUS, OP_SOFTMAX};
  static const char *const names[] = {"relu", "tanh", "sigmoid", "softplus", "softmax"};
  for (int k = 0; k < 5; k++) {
    Graph *g = ir_graph_new(names[k]);
    Tensor *x = param(g, "x", ty(3, I_(2), I_(3), I_(5)));
    check1(g, ir_op1(g, ops[k], x), &o);
  }
  Graph *g = ir_graph_new("scale");
  Tensor *x = param(g, "x", ty(2, I_(3), I_(4), I_(0)));
  check1(g, node(g, OP_SCALE, x, NULL, 0, 0, -2.5, 0.75), &o);
  /* softplus far out: no overflow, gradient still exact */
  o.scale = 40;
  g = ir_graph_new("softplus_wide");
  x = param(g, "x", ty(1, I_(16), I_(0), I_(0)));
  check1(g, ir_op1(g, OP_SOFTPLUS, x), &o);
}

static void test_dropout(void) {
  for (int training = 0; training < 2; training++) {
    GcOpts o = gc_opts();
    o.training = training;
    o.seed = 7;
    o.B = 3;
    Graph *g = ir_graph_new(training ? "dropout_train" : "dropout_eval");
    Tensor *x = param(g, "x", ty(2, B_, I_(8), I_(0)));
    Tensor *in[1] = {x};
    int64_t ia[IR_MAX_ATTR] = {ir_next_rng_stream(g)};
    double fa[IR_MAX_ATTR] = {0.4};
    Node *n = ir_node(g, OP_DROPOUT, 1, in, ia, fa);
    /* the mask enters the loss too: no gradient may flow into it */
    Tensor *y = ir_op2(g, OP_ADD, n->out[0], n->out[1]);
    check1(g, y, &o);
  }
}

/* ---------------------------------------------------------------- matmul family */

static void test_matmul(void) {
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 3;
  for (int ta = 0; ta < 2; ta++) {
    for (int tb = 0; tb < 2; tb++) {
      for (int rank3 = 0; rank3 < 2; rank3++) {
        char nm[48];
        snprintf(nm, sizeof nm, "matmul_t%d%d%s", ta, tb, rank3 ? "_rank3" : "");
        Graph *g = ir_graph_new(nm);
        Tensor *a, *b;
        /* R = B*T = 6 rows; K or M = 4; N = 5 */
        Type tr = rank3 ? ty(3, B_, T_, I_(4)) : ty(2, dim_mul(B_, T_), I_(4), I_(0));
        a = param(g, "a", tr);
        if (!ta)
          b = param(g, "b", tb ? ty(2, I_(5), I_(4), I_(0)) : ty(2, I_(4), I_(5), I_(0)));
        else if (!tb)
          b = param(g, "b", rank3 ? ty(3, B_, T_, I_(5)) : ty(2, dim_mul(B_, T_), I_(5), I_(0)));
        else
          b = param(g, "b", ty(2, I_(5), dim_mul(B_, T_), I_(0)));
        check1(g, node(g, OP_MATMUL, a, b, ta, tb, 0, 0), &o);
      }
    }
  }
  /* transA with differently shaped rows: a[B,T,M], b[B*T,N] */
  Graph *g = ir_graph_new("matmul_t10_mixed");
  Tensor *a = param(g, "a", ty(3, B_, T_, I_(3)));
  Tensor *b = param(g, "b", ty(2, dim_mul(B_, T_), I_(2), I_(0)));
  check1(g, node(g, OP_MATMUL, a, b, 1, 0, 0, 0), &o);
}

static void test_rows(void) {
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 3;
  Graph *g = ir_graph_new("bias_add");
  Tensor *x = param(g, "x", ty(3, B_, T_, I_(4)));
  Tensor *b = param(g, "b", ty(1, I_(4), I_(0), I_(0)));
  check1(g, ir_op2(g, OP_BIAS_ADD, x, b), &o);

  g = ir_graph_new("sum_rows");
  x = param(g, "x", ty(3, B_, T_, I_(4)));
  check1(g, ir_op1(g, OP_SUM_ROWS, x), &o);

  g = ir_graph_new("sum");
  x = param(g, "x", ty(3, B_, T_, I_(4)));
  check1(g, ir_op1(g, OP_SUM, x), &o);

  g = ir_graph_new("reshape");
  x = param(g, "x", ty(3, B_, T_, I_(4)));
  Tensor *r = ir_reshape(g, x, ty(2, dim_mul(B_, T_), I_(4), I_(0)));
  check1(g, ir_op1(g, OP_TANH, r), &o);
}

/* ---------------------------------------------------------------- embedding, lstm */

static void test_embedding(void) {
  GcOpts o = gc_opts();
  o.B = 3;
  o.T = 4;
  Ids ids = {5, true}; /* 12 ids over 3 distinct rows of a 5-row table */
  o.fill_i32 = fill_ids;
  o.user = &ids;
  Graph *g = ir_graph_new("embedding");
  Tensor *id = ir_input(g, "ids", ty_i32(2, B_, T_), (Loc){0});
  Tensor *w = param(g, "W", ty(2, I_(5), I_(6), I_(0)));
  check1(g, ir_op2(g, OP_EMBEDDING, id, w), &o);
}

static void test_lstm(void) {
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 5;
  o.scale = 0.8;
  /* lstm alone: dxproj, dW_hh, dh0, dc0 (h0, c0 as params, nonzero) */
  Graph *g = ir_graph_new("lstm");
  int64_t U = 3;
  Tensor *xp = param(g, "xproj", ty(3, B_, T_, I_(4 * U)));
  Tensor *whh = param(g, "W_hh", ty(2, I_(4 * U), I_(U), I_(0)));
  Tensor *h0 = param(g, "h0", ty(2, B_, I_(U), I_(0)));
  Tensor *c0 = param(g, "c0", ty(2, B_, I_(U), I_(0)));
  Tensor *in4[4] = {xp, whh, h0, c0};
  Node *n = ir_node(g, OP_LSTM, 4, in4, NULL, NULL);
  check1(g, n->out[0], &o);

  /* the lstm layer as the builder expands it: x . W_ih^T + bias, state h0/c0 */
  g = ir_graph_new("lstm_layer");
  Tensor *x = param(g, "x", ty(3, B_, T_, I_(2)));
  Tensor *wih = param(g, "W_ih", ty(2, I_(4 * U), I_(2), I_(0)));
  whh = param(g, "W_hh", ty(2, I_(4 * U), I_(U), I_(0)));
  Tensor *bias = param(g, "bias", ty(1, I_(4 * U), I_(0), I_(0)));
  h0 = ir_state(g, "h", ty(2, B_, I_(U), I_(0)), (Loc){0});
  c0 = ir_state(g, "c", ty(2, B_, I_(U), I_(0)), (Loc){0});
  Tensor *xw = node(g, OP_MATMUL, x, wih, 0, 1, 0, 0);
  Tensor *in[4] = {ir_op2(g, OP_BIAS_ADD, xw, bias), whh, h0, c0};
  n = ir_node(g, OP_LSTM, 4, in, NULL, NULL);
  ir_add_state(g, h0, n->out[3]);
  ir_add_state(g, c0, n->out[4]);
  check1(g, n->out[0], &o);

  /* LSTMP: a projection W_p[P,U] (P != U both ways) fed back; every input a param */
  for (int P = 2; P <= 4; P += 2) {
    g = ir_graph_new(P == 2 ? "lstmp_narrow" : "lstmp_wide");
    xp = param(g, "xproj", ty(3, B_, T_, I_(4 * U)));
    whh = param(g, "W_hh", ty(2, I_(4 * U), I_(P), I_(0)));
    h0 = param(g, "h0", ty(2, B_, I_(P), I_(0)));
    c0 = param(g, "c0", ty(2, B_, I_(U), I_(0)));
    Tensor *wp = param(g, "W_p", ty(2, I_(P), I_(U), I_(0)));
    Tensor *in5[5] = {xp, whh, h0, c0, wp};
    n = ir_node(g, OP_LSTM, 5, in5, NULL, NULL);
    check1(g, n->out[0], &o);
  }
}

/* ---------------------------------------------------------------- cross-entropy */

static void test_xent(void) {
  for (int variant = 0; variant < 3; variant++) {
    GcOpts o = gc_opts();
    o.B = 2;
    o.T = 3;
    o.scale = 2;
    Ids ids = {7, false};
    o.fill_i32 = fill_ids;
    o.user = &ids;
    static const char *const names[] = {"xent_mean", "xent_fa", "xent_probs"};
    Graph *g = ir_graph_new(names[variant]);
    Tensor *lg = param(g, "logits", ty(2, dim_mul(B_, T_), I_(7), I_(0)));
    Tensor *tg = ir_input(g, "targets", ty_i32(1, dim_mul(B_, T_), I_(0)), (Loc){0});
    Tensor *in[2] = {lg, tg};
    double fa[IR_MAX_ATTR] = {variant == 1 ? 0.125 : 0};
    Node *n = ir_node(g, OP_XENT, 2, in, NULL, fa);
    if (variant < 2) {
      g->loss = n->out[0]; /* the loss as the builder makes it */
      run(g, 0, NULL, &o);
    } else {
      Tensor *outs[2] = {n->out[0], n->out[1]}; /* the probs reach the loss too */
      run(g, 2, outs, &o);
    }
    ir_graph_free(g);
  }
}

/* ---------------------------------------------------------------- whole models */

static bool same_shape(const Tensor *a, const Tensor *b) {
  if (a->ty.rank != b->ty.rank || a->numel != b->numel) return false;
  for (int i = 0; i < a->ty.rank; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

/* embedding -> lstm -> dropout -> dense relu -> softmax_xent, shaped like the builder's */
static void test_small_lm(void) {
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 3;
  o.training = true;
  o.seed = 3;
  o.scale = 0.5;
  Ids ids = {6, false};
  o.fill_i32 = fill_ids;
  o.user = &ids;
  int64_t V = 6, D = 4, U = 3;
  Graph *g = ir_graph_new("small_lm");
  Tensor *tok = ir_input(g, "tokens", ty_i32(2, B_, T_), (Loc){0});
  Tensor *tgt = ir_input(g, "targets", ty_i32(2, B_, T_), (Loc){0});
  ir_set_context(g, "emb", NULL, (Loc){0});
  Tensor *emb = param(g, "emb.weight", ty(2, I_(V), I_(D), I_(0)));
  Tensor *x = ir_op2(g, OP_EMBEDDING, tok, emb);
  ir_set_context(g, "lstm", NULL, (Loc){0});
  Tensor *wih = param(g, "lstm.weight_ih", ty(2, I_(4 * U), I_(D), I_(0)));
  Tensor *whh = param(g, "lstm.weight_hh", ty(2, I_(4 * U), I_(U), I_(0)));
  Tensor *bias = param(g, "lstm.bias", ty(1, I_(4 * U), I_(0), I_(0)));
  Tensor *h0 = ir_state(g, "lstm.h", ty(2, B_, I_(U), I_(0)), (Loc){0});
  Tensor *c0 = ir_state(g, "lstm.c", ty(2, B_, I_(U), I_(0)), (Loc){0});
  Tensor *in4[4] = {ir_op2(g, OP_BIAS_ADD, node(g, OP_MATMUL, x, wih, 0, 1, 0, 0), bias), whh, h0,
                    c0};
  Node *ln = ir_node(g, OP_LSTM, 4, in4, NULL, NULL);
  ir_set_context(g, "drop", NULL, (Loc){0});
  Tensor *in1[1] = {ln->out[0]};
  int64_t ia[IR_MAX_ATTR] = {ir_next_rng_stream(g)};
  double fp[IR_MAX_ATTR] = {0.25};
  Tensor *h = ir_node(g, OP_DROPOUT, 1, in1, ia, fp)->out[0];
  ir_set_context(g, "dense", NULL, (Loc){0});
  Tensor *w1 = param(g, "dense.weight", ty(2, I_(5), I_(U), I_(0)));
  Tensor *b1 = param(g, "dense.bias", ty(1, I_(5), I_(0), I_(0)));
  Tensor *d = ir_op1(g, OP_RELU, ir_op2(g, OP_BIAS_ADD, node(g, OP_MATMUL, h, w1, 0, 1, 0, 0), b1));
  ir_set_context(g, "out", NULL, (Loc){0});
  Tensor *w2 = param(g, "out.weight", ty(2, I_(V), I_(5), I_(0)));
  Tensor *b2 = param(g, "out.bias", ty(1, I_(V), I_(0), I_(0)));
  Tensor *rows = ir_reshape(g, d, ty(2, dim_mul(B_, T_), I_(5), I_(0)));
  Tensor *logits = ir_op2(g, OP_BIAS_ADD, node(g, OP_MATMUL, rows, w2, 0, 1, 0, 0), b2);
  Tensor *tg = ir_reshape(g, tgt, ty_i32(1, dim_mul(B_, T_), I_(0)));
  Tensor *in2[2] = {logits, tg};
  double fx[IR_MAX_ATTR] = {0};
  g->loss = ir_node(g, OP_XENT, 2, in2, NULL, fx)->out[0];
  /* an unused param: its gradient must be zeros */
  Tensor *unused = param(g, "unused", ty(1, I_(3), I_(0), I_(0)));
  run(g, 0, NULL, &o);

  /* structure: every param has its own TK_GRAD tensor; unused -> zeros; no
   * backward node computes a gradient of data (embedding ids, targets) */
  for (int i = 0; i < g->nparams; i++) {
    Tensor *gr = g->params[i]->grad;
    CHECK(gr && gr->kind == TK_GRAD && gr->producer && gr->producer->backward);
    CHECK(same_shape(gr, g->params[i]));
    for (int j = 0; j < i; j++)
      CHECK(g->params[j]->grad != gr);
  }
  CHECK(unused->grad->producer->op == OP_ZEROS);
  int nlstm_bwd = 0, nemb_bwd = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    nlstm_bwd += n->op == OP_LSTM_BWD;
    nemb_bwd += n->op == OP_EMBEDDING_BWD;
    if (n->op == OP_LSTM_BWD) CHECK(n->layer && !strcmp(n->layer, "lstm"));
    for (int j = 0; j < n->nout; j++)
      CHECK(n->out[j]->kind == (n->backward ? TK_GRAD : TK_ACT));
  }
  CHECK(nlstm_bwd == 1 && nemb_bwd == 1);
  CHECK(g->has_backward);
  ir_graph_free(g);
}

int main(void) {
  test_binary();
  test_unary();
  test_dropout();
  test_matmul();
  test_rows();
  test_embedding();
  test_lstm();
  test_xent();
  test_small_lm();
  printf("%d graphs checked; worst finite-difference rel err %.2e, worst f32/f64 rel diff %.2e\n",
         nchecked, worst_fd, worst_f32);
  TEST_DONE();
}
