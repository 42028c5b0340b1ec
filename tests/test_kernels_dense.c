/* test_kernels_dense.c: the dense CPU kernels' forward values against simple
 * reference loops written here (naive matmul in every transpose form, an LSTM
 * step by hand and over several steps, softmax, cross-entropy, embedding), in
 * float32 and float64; dropout's keep rate, scaling, eval identity and device
 * split; cross-entropy of zero logits = log V; bad ids -> a clear error naming
 * the layer; two runs bit-identical; the GEMMs split over threads = one BLAS call. */
#include <cblas.h>
#include <string.h>

#include "../codegen/codegen.h"
#include "../passes/fusion.h"
#include "../passes/passes.h"
#include "kernel_test.h"
#include "test.h"

#define B_ dim_sym('B')
#define T_ dim_sym('T')
#define I_(n) dim_int(n)

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
static Node *node(Graph *g, OpKind op, int nin, Tensor *a, Tensor *b, int64_t i0, int64_t i1,
                  double f0) {
  Tensor *in[2] = {a, b};
  int64_t ia[IR_MAX_ATTR] = {i0, i1};
  double fa[IR_MAX_ATTR] = {f0};
  return ir_node(g, op, nin, in, ia, fa);
}

static KernelCtx kctx(int64_t B, bool training) {
  return (KernelCtx){.training = training, .seed = 5, .step = 0, .batch_local = B, .ndevices = 1};
}
static void run(Program *p, const KernelCtx *kc) {
  rt_exec(p, kc, 0, p->ninstrs);
}

/* ---------------------------------------------------------------- matmul */

static void test_matmul(void) {
  const int64_t R = 7, K = 5, N = 6; /* y = op(a) . op(b) */
  for (int pr = 0; pr < 2; pr++) {
    for (int ta = 0; ta < 2; ta++) {
      for (int tb = 0; tb < 2; tb++) {
        Graph *g = ir_graph_new("mm");
        /* !ta: a[R,K] (as [R/?] rank 3 when possible), out [R,N]; ta: a[K,R]^T... */
        Tensor *a = ta ? param(g, "a", ty(2, I_(K), I_(R), I_(0)))  /* rows K, M = R */
                       : param(g, "a", ty(3, I_(1), I_(R), I_(K))); /* rank 3 rows */
        Tensor *b = tb ? param(g, "b", ty(2, I_(N), I_(K), I_(0)))
                       : param(g, "b", ty(2, I_(K), I_(N), I_(0)));
        Tensor *y = node(g, OP_MATMUL, 2, a, b, ta, tb, 0)->out[0];
        ir_bind(g, 1, 1);
        CHECK(y->numel == R * N);
        Program *p = cg_lower(g, (Precision)pr);
        double *av = randv(a->numel, 1, 1), *bv = randv(b->numel, 2, 1);
        set(p, a, av);
        set(p, b, bv);
        KernelCtx kc = kctx(1, false);
        run(p, &kc);
        double *ref = mc_calloc((size_t)(R * N), sizeof(double));
        for (int64_t r = 0; r < R; r++)
          for (int64_t j = 0; j < N; j++)
            for (int64_t k = 0; k < K; k++) {
              double x = ta ? av[k * R + r] : av[r * K + k];
              double w = tb ? bv[j * K + k] : bv[k * N + j];
              ref[r * N + j] += x * w;
            }
        double e = rel_err(p, y, ref);
        if (!(e < tol(pr)))
          fprintf(stderr, "matmul ta=%d tb=%d prec %d: rel err %g\n", ta, tb, pr, e);
        CHECK(e < tol(pr));
        mc_free(av);
        mc_free(bv);
        mc_free(ref);
        cg_program_free(p);
        ir_graph_free(g);
      }
    }
  }
}

/* ---------------------------------------------------------------- lstm */

static double sigm(double x) {
  return 1 / (1 + exp(-x));
}

/* One step by hand: B = 1, U = 1: gates = xproj + W_hh * h0. */
static void test_lstm_step(void) {
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("lstm1");
    Tensor *xp = param(g, "xp", ty(3, I_(1), I_(1), I_(4)));
    Tensor *w = param(g, "w", ty(2, I_(4), I_(1), I_(0)));
    Tensor *h0 = param(g, "h0", ty(2, I_(1), I_(1), I_(0)));
    Tensor *c0 = param(g, "c0", ty(2, I_(1), I_(1), I_(0)));
    Tensor *in[4] = {xp, w, h0, c0};
    Node *n = ir_node(g, OP_LSTM, 4, in, NULL, NULL);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double xv[4] = {0.5, -1.0, 0.25, 2.0}, wv[4] = {0.1, 0.2, -0.3, 0.4}, hv = 0.7, cv = -0.6;
    set(p, xp, xv);
    set(p, w, wv);
    set(p, h0, &hv);
    set(p, c0, &cv);
    KernelCtx kc = kctx(1, false);
    run(p, &kc);
    double i = sigm(0.5 + 0.07), f = sigm(-1.0 + 0.14), gg = tanh(0.25 - 0.21),
           o = sigm(2.0 + 0.28);
    double c = f * cv + i * gg, h = o * tanh(c);
    double t = tol(pr) * 10;
    CHECK_CLOSE(get(p, n->out[0], 0), h, t, 0);
    CHECK_CLOSE(get(p, n->out[1], 0), c, t, 0);
    double gates[4] = {i, f, gg, o};
    for (int k = 0; k < 4; k++)
      CHECK_CLOSE(get(p, n->out[2], k), gates[k], t, 0);
    CHECK_CLOSE(get(p, n->out[3], 0), h, t, 0);
    CHECK_CLOSE(get(p, n->out[4], 0), c, t, 0);
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* Several steps, B = 3, U = 4, against a straightforward loop in double. */
static void test_lstm_steps(void) {
  const int64_t B = 3, T = 5, U = 4, U4 = 16;
  double *xv = randv(B * T * U4, 3, 1), *wv = randv(U4 * U, 4, 0.5), *hv = randv(B * U, 5, 1),
         *cv = randv(B * U, 6, 1);
  double *H = mc_calloc((size_t)(B * T * U), sizeof(double)),
         *C = mc_calloc((size_t)(B * T * U), sizeof(double));
  double *G = mc_calloc((size_t)(B * T * U4), sizeof(double));
  for (int64_t b = 0; b < B; b++) {
    double h[4], c[4];
    for (int64_t j = 0; j < U; j++)
      h[j] = hv[b * U + j], c[j] = cv[b * U + j];
    for (int64_t t = 0; t < T; t++) {
      double pre[16];
      for (int64_t r = 0; r < U4; r++) {
        pre[r] = xv[(b * T + t) * U4 + r];
        for (int64_t k = 0; k < U; k++)
          pre[r] += wv[r * U + k] * h[k];
      }
      for (int64_t j = 0; j < U; j++) {
        double i = sigm(pre[j]), f = sigm(pre[U + j]), gg = tanh(pre[2 * U + j]),
               o = sigm(pre[3 * U + j]);
        c[j] = f * c[j] + i * gg;
        double *gt = G + (b * T + t) * U4;
        gt[j] = i, gt[U + j] = f, gt[2 * U + j] = gg, gt[3 * U + j] = o;
      }
      for (int64_t j = 0; j < U; j++) {
        h[j] = G[(b * T + t) * U4 + 3 * U + j] * tanh(c[j]);
        H[(b * T + t) * U + j] = h[j];
        C[(b * T + t) * U + j] = c[j];
      }
    }
  }
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("lstmT");
    Tensor *xp = param(g, "xp", ty(3, B_, T_, I_(U4)));
    Tensor *w = param(g, "w", ty(2, I_(U4), I_(U), I_(0)));
    Tensor *h0 = param(g, "h0", ty(2, B_, I_(U), I_(0)));
    Tensor *c0 = param(g, "c0", ty(2, B_, I_(U), I_(0)));
    Tensor *in[4] = {xp, w, h0, c0};
    Node *n = ir_node(g, OP_LSTM, 4, in, NULL, NULL);
    ir_bind(g, B, T);
    Program *p = cg_lower(g, (Precision)pr);
    set(p, xp, xv);
    set(p, w, wv);
    set(p, h0, hv);
    set(p, c0, cv);
    KernelCtx kc = kctx(B, false);
    run(p, &kc);
    CHECK(rel_err(p, n->out[0], H) < tol(pr) * 10);
    CHECK(rel_err(p, n->out[1], C) < tol(pr) * 10);
    CHECK(rel_err(p, n->out[2], G) < tol(pr) * 10);
    double hT[12], cT[12];
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < U; j++) {
        hT[b * U + j] = H[(b * T + T - 1) * U + j];
        cT[b * U + j] = C[(b * T + T - 1) * U + j];
      }
    CHECK(rel_err(p, n->out[3], hT) < tol(pr) * 10);
    CHECK(rel_err(p, n->out[4], cT) < tol(pr) * 10);
    cg_program_free(p);
    ir_graph_free(g);
  }
  mc_free(xv), mc_free(wv), mc_free(hv), mc_free(cv), mc_free(H), mc_free(C), mc_free(G);
}

/* ---------------------------------------------------------------- elementwise, rows */

static void test_elementwise(void) {
  const int64_t N = 40;
  static const OpKind ops[] = {OP_RELU, OP_TANH, OP_SIGMOID, OP_SOFTPLUS};
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("ew");
    Tensor *x = param(g, "x", ty(2, I_(4), I_(10), I_(0)));
    Tensor *s = param(g, "s", ty(0, I_(0), I_(0), I_(0)));
    Tensor *y[4];
    for (int k = 0; k < 4; k++)
      y[k] = ir_op1(g, ops[k], x);
    Tensor *add = ir_op2(g, OP_ADD, x, s), *sub = ir_op2(g, OP_SUB, x, x),
           *mul = ir_op2(g, OP_MUL, x, s);
    double fa[IR_MAX_ATTR] = {-2, 0.5};
    Tensor *in1[1] = {x};
    Tensor *sc = ir_node(g, OP_SCALE, 1, in1, NULL, fa)->out[0];
    Tensor *bias = param(g, "bias", ty(1, I_(10), I_(0), I_(0)));
    Tensor *ba = ir_op2(g, OP_BIAS_ADD, x, bias), *sr = ir_op1(g, OP_SUM_ROWS, x);
    Tensor *sm = ir_op1(g, OP_SUM, x), *bc = ir_op2(g, OP_BROADCAST, s, x),
           *z = ir_op1(g, OP_ZEROS, x);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double *xv = randv(N, 8, 30); /* wide: saturating activations, softplus overflow */
    double sv = 1.5, *bv = randv(10, 9, 1);
    xv[0] = 800, xv[1] = -800;
    set(p, x, xv);
    set(p, s, &sv);
    set(p, bias, bv);
    KernelCtx kc = kctx(1, false);
    run(p, &kc);
    double t = tol(pr);
    double tot = 0, rows[10] = {0};
    for (int64_t i = 0; i < N; i++) {
      double v = xv[i];
      if (pr == PREC_F32) v = (float)v;
      CHECK_CLOSE(get(p, y[0], i), v > 0 ? v : 0, t, 0);
      CHECK_CLOSE(get(p, y[1], i), tanh(v), t, t);
      CHECK_CLOSE(get(p, y[2], i), sigm(v), t, t);
      CHECK_CLOSE(get(p, y[3], i), v > 0 ? v + log1p(exp(-v)) : log1p(exp(v)), t, 1e-30);
      CHECK_CLOSE(get(p, add, i), v + 1.5, t, 0);
      CHECK(get(p, sub, i) == 0);
      CHECK_CLOSE(get(p, mul, i), v * 1.5, t, 0);
      CHECK_CLOSE(get(p, sc, i), -2 * v + 0.5, t, 0);
      CHECK_CLOSE(get(p, ba, i), v + bv[i % 10], t, t);
      CHECK(get(p, bc, i) == 1.5);
      CHECK(get(p, z, i) == 0);
      tot += v;
      rows[i % 10] += v;
    }
    CHECK_CLOSE(get(p, sm, 0), tot, t, t);
    for (int j = 0; j < 10; j++)
      CHECK_CLOSE(get(p, sr, j), rows[j], t, t * 100);
    mc_free(xv);
    mc_free(bv);
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* The float32 kernels' own exp/tanh/sigmoid (vectorised, kernels_dense.c) against
 * double libm on a dense grid over [-100, 100]: within 1e-6 relative (tanh, sigmoid)
 * and exp through a softmax of rows [x, 0] (= sigmoid(x)). */
static void test_f32_math(void) {
  const int64_t N = 20001;
  Graph *g = ir_graph_new("math");
  Tensor *x = param(g, "x", ty(1, I_(N), I_(0), I_(0)));
  Tensor *th = ir_op1(g, OP_TANH, x), *sg = ir_op1(g, OP_SIGMOID, x);
  Tensor *x2 = param(g, "x2", ty(2, I_(N), I_(2), I_(0)));
  Tensor *sm = ir_op1(g, OP_SOFTMAX, x2);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F32);
  double wt = 0, ws = 0, wm = 0;
  for (int64_t i = 0; i < N; i++) {
    float v = (float)(-100.0 + 0.01 * (double)i);
    rt_f32(p, x)[i] = v;
    rt_f32(p, x2)[2 * i] = v;
    rt_f32(p, x2)[2 * i + 1] = 0;
  }
  KernelCtx kc = kctx(1, false);
  run(p, &kc);
  for (int64_t i = 0; i < N; i++) {
    double v = (double)rt_f32(p, x)[i];
    double t = tanh(v), s = 1 / (1 + exp(-v));
    wt = fmax(wt, fabs(rt_f32(p, th)[i] - t) / fmax(fabs(t), 1e-30));
    if (s > 1e-30) ws = fmax(ws, fabs(rt_f32(p, sg)[i] - s) / s);
    if (s > 1e-30) wm = fmax(wm, fabs(rt_f32(p, sm)[2 * i] - s) / s);
    CHECK(rt_f32(p, sg)[i] >= 0 && rt_f32(p, sg)[i] <= 1 && fabs(rt_f32(p, th)[i]) <= 1);
  }
  printf("f32 math vs double: tanh %.2e, sigmoid %.2e, softmax(exp) %.2e max rel err\n", wt, ws,
         wm);
  CHECK(wt < 1e-6 && ws < 1e-6 && wm < 1e-6);
  cg_program_free(p);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- softmax, xent, embedding */

static void test_softmax_xent(void) {
  const int64_t N = 6, V = 9;
  for (int pr = 0; pr < 2; pr++) {
    for (int zero = 0; zero < 2; zero++) {
      Graph *g = ir_graph_new("xent");
      Tensor *lg = param(g, "logits", ty(2, I_(N), I_(V), I_(0)));
      Tensor *tg = ir_input(g, "targets", ty_i32(1, I_(N), I_(0)), (Loc){0});
      Tensor *sm = ir_op1(g, OP_SOFTMAX, lg);
      Node *x = node(g, OP_XENT, 2, lg, tg, 0, 0, 0);
      Tensor *one = param(g, "one", ty(0, I_(0), I_(0), I_(0)));
      Tensor *in3[3] = {one, x->out[1], tg};
      Tensor *dl = ir_node(g, OP_XENT_BWD, 3, in3, NULL, NULL)->out[0];
      ir_bind(g, 1, 1);
      Program *p = cg_lower(g, (Precision)pr);
      double *lv = randv(N * V, 10, 50); /* large logits: max-subtraction needed */
      if (zero) memset(lv, 0, (size_t)(N * V) * sizeof(double));
      double ov = 1;
      set(p, lg, lv);
      set(p, one, &ov);
      for (int64_t i = 0; i < N; i++)
        rt_i32(p, tg)[i] = (int32_t)((3 * i) % V);
      KernelCtx kc = kctx(1, false);
      run(p, &kc);
      double loss = 0, t = tol(pr) * 10;
      for (int64_t r = 0; r < N; r++) {
        double mx = -INFINITY, s = 0;
        for (int64_t j = 0; j < V; j++)
          mx = fmax(mx, lv[r * V + j]);
        for (int64_t j = 0; j < V; j++)
          s += exp(lv[r * V + j] - mx);
        for (int64_t j = 0; j < V; j++) {
          double pj = exp(lv[r * V + j] - mx) / s;
          CHECK_CLOSE(get(p, sm, r * V + j), pj, t, 1e-36); /* f32 denormals */
          CHECK_CLOSE(get(p, x->out[1], r * V + j), pj, t, 1e-36);
          double want = (pj - (j == (3 * r) % V)) / (double)N;
          CHECK_CLOSE(get(p, dl, r * V + j), want, t, t / N);
        }
        loss += -(lv[r * V + (3 * r) % V] - mx - log(s));
      }
      loss /= (double)N; /* fa[0] = 0: the mean over the rows */
      CHECK_CLOSE(get(p, x->out[0], 0), loss, t, 0);
      if (zero) CHECK_CLOSE(get(p, x->out[0], 0), log((double)V), t, 0);
      mc_free(lv);
      cg_program_free(p);
      ir_graph_free(g);
    }
  }
}

static void test_embedding(void) {
  const int64_t V = 5, D = 3, R = 8;
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("emb");
    Tensor *ids = ir_input(g, "ids", ty_i32(2, I_(2), I_(4)), (Loc){0});
    Tensor *w = param(g, "W", ty(2, I_(V), I_(D), I_(0)));
    Tensor *y = ir_op2(g, OP_EMBEDDING, ids, w);
    Tensor *gy = param(g, "gy", ty(3, I_(2), I_(4), I_(D)));
    Tensor *dw = node(g, OP_EMBEDDING_BWD, 2, ids, gy, V, 0, 0)->out[0];
    Dim d8 = I_(8);
    Tensor *flat = ir_reshape(g, ids, ir_type(DT_I32, 1, &d8));
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double *wv = randv(V * D, 11, 1), *gv = randv(R * D, 12, 1);
    set(p, w, wv);
    set(p, gy, gv);
    int32_t idv[8] = {4, 0, 4, 2, 2, 4, 1, 0};
    memcpy(rt_i32(p, ids), idv, sizeof idv);
    KernelCtx kc = kctx(1, false);
    run(p, &kc);
    double ref[15] = {0};
    for (int64_t r = 0; r < R; r++)
      for (int64_t j = 0; j < D; j++) {
        CHECK(get(p, y, r * D + j) == get(p, w, idv[r] * D + j));
        ref[idv[r] * D + j] += gv[r * D + j];
      }
    CHECK(rel_err(p, dw, ref) < tol(pr) * 10);
    CHECK(get(p, dw, 3 * D) == 0); /* row 3 never used */
    CHECK(!memcmp(rt_i32(p, flat), idv, sizeof idv));
    mc_free(wv);
    mc_free(gv);
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* A bad id: a user error ("moec: error: layer 'emb': token id 9 ...", exit 1), not a crash. */
static void bad_id_run(void *arg) {
  int which = *(const int *)arg;
  Graph *g = ir_graph_new("bad");
  ir_set_context(g, "emb", NULL, (Loc){0});
  Tensor *ids = ir_input(g, "ids", ty_i32(1, I_(4), I_(0)), (Loc){0});
  Tensor *w = param(g, "W", ty(2, I_(5), I_(3), I_(0)));
  if (which == 0)
    ir_op2(g, OP_EMBEDDING, ids, w);
  else
    node(g, OP_XENT, 2, param(g, "lg", ty(2, I_(4), I_(5), I_(0))), ids, 0, 0, 0);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F32);
  rt_i32(p, ids)[2] = which ? -1 : 9;
  KernelCtx kc = kctx(1, false);
  run(p, &kc); /* does not return if the kernel reports the id */
}

static void test_bad_ids(void) {
  static const char *const want[] = {"layer 'emb': token id 9 is outside the vocabulary [0, 5)",
                                     "layer 'emb': target -1 is outside the vocabulary [0, 5)"};
  for (int which = 0; which < 2; which++) {
    char msg[512];
    int st = test_in_child(bad_id_run, &which, msg, sizeof msg);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    CHECK(strstr(msg, want[which]) != NULL);
    if (!strstr(msg, want[which])) fprintf(stderr, "  got: %s", msg);
  }
}

/* ---------------------------------------------------------------- dropout */

static void test_dropout(void) {
  const int64_t B = 8, D = 1000;
  const double pdrop = 0.3;
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("drop");
    Tensor *x = param(g, "x", ty(2, B_, I_(D), I_(0)));
    Node *n = node(g, OP_DROPOUT, 1, x, NULL, 4, 0, pdrop);
    ir_bind(g, B, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double *xv = randv(B * D, 13, 1);
    set(p, x, xv);
    KernelCtx kc = kctx(B, true);
    run(p, &kc);
    int64_t kept = 0;
    bool ok = true;
    for (int64_t i = 0; i < B * D; i++) {
      double m = get(p, n->out[1], i), y = get(p, n->out[0], i);
      double xi = pr == PREC_F64 ? xv[i] : (double)(float)xv[i];
      if (m != 0) {
        kept++;
        ok &= fabs(m - 1 / (1 - pdrop)) < 1e-6 && fabs(y - xi * m) <= 1e-6 * fabs(xi * m);
      } else {
        ok &= y == 0;
      }
    }
    CHECK(ok);
    double rate = (double)kept / (double)(B * D);
    CHECK(fabs(rate - (1 - pdrop)) < 0.02); /* 8000 draws: sd 0.005 */
    /* the same step and seed: the same mask; a new step: a different one */
    double *m0 = mc_malloc((size_t)(B * D) * sizeof(double));
    for (int64_t i = 0; i < B * D; i++)
      m0[i] = get(p, n->out[1], i);
    run(p, &kc);
    int same = 0;
    for (int64_t i = 0; i < B * D; i++)
      same += get(p, n->out[1], i) == m0[i];
    CHECK(same == B * D);
    kc.step = 1;
    run(p, &kc);
    same = 0;
    for (int64_t i = 0; i < B * D; i++)
      same += get(p, n->out[1], i) == m0[i];
    CHECK(same < B * D * 0.8);
    /* a device holding rows [4, 8) of the batch draws what the whole batch drew there */
    kc.step = 0;
    Graph *g2 = ir_graph_new("drop_half");
    Tensor *x2 = param(g2, "x", ty(2, B_, I_(D), I_(0)));
    Node *n2 = node(g2, OP_DROPOUT, 1, x2, NULL, 4, 0, pdrop);
    ir_bind(g2, B / 2, 1);
    Program *p2 = cg_lower(g2, (Precision)pr);
    KernelCtx kc2 = kctx(B / 2, true);
    kc2.batch0 = B / 2;
    kc2.device = 1;
    kc2.ndevices = 2;
    run(p2, &kc2);
    same = 0;
    for (int64_t i = 0; i < B / 2 * D; i++)
      same += get(p2, n2->out[1], i) == m0[B / 2 * D + i];
    CHECK(same == B / 2 * D);
    /* not training: identity, mask 1 */
    kc.training = false;
    run(p, &kc);
    ok = true;
    for (int64_t i = 0; i < B * D; i++)
      ok &= get(p, n->out[1], i) == 1 && get(p, n->out[0], i) == get(p, x, i);
    CHECK(ok);
    mc_free(m0);
    mc_free(xv);
    cg_program_free(p);
    cg_program_free(p2);
    ir_graph_free(g);
    ir_graph_free(g2);
  }
}

/* ---------------------------------------------------------------- f32 vs f64, determinism */

/* embedding -> matmul -> bias -> lstm -> dropout -> softmax_xent at moderate size,
 * with hand-made backward ops: every output within 1e-4 relative between
 * precisions, and two runs of the f32 program bit-identical. */
static Graph *mid_model(Tensor **outs, int *nouts) {
  const int64_t V = 50, D = 32, U = 24;
  Graph *g = ir_graph_new("mid");
  Tensor *tok = ir_input(g, "tok", ty_i32(2, B_, T_), (Loc){0});
  Tensor *emb = param(g, "emb", ty(2, I_(V), I_(D), I_(0)));
  Tensor *wih = param(g, "wih", ty(2, I_(4 * U), I_(D), I_(0)));
  Tensor *whh = param(g, "whh", ty(2, I_(4 * U), I_(U), I_(0)));
  Tensor *bias = param(g, "bias", ty(1, I_(4 * U), I_(0), I_(0)));
  Tensor *h0 = param(g, "h0", ty(2, B_, I_(U), I_(0)));
  Tensor *c0 = param(g, "c0", ty(2, B_, I_(U), I_(0)));
  Tensor *wo = param(g, "wo", ty(2, I_(V), I_(U), I_(0)));
  Tensor *x = ir_op2(g, OP_EMBEDDING, tok, emb);
  Tensor *xp = ir_op2(g, OP_BIAS_ADD, node(g, OP_MATMUL, 2, x, wih, 0, 1, 0)->out[0], bias);
  Tensor *in4[4] = {xp, whh, h0, c0};
  Node *l = ir_node(g, OP_LSTM, 4, in4, NULL, NULL);
  Tensor *h = node(g, OP_DROPOUT, 1, l->out[0], NULL, 0, 0, 0.2)->out[0];
  Tensor *rows = ir_reshape(g, h, ty(2, dim_mul(B_, T_), I_(U), I_(0)));
  Tensor *lg = node(g, OP_MATMUL, 2, rows, wo, 0, 1, 0)->out[0];
  Tensor *tg = ir_reshape(g, tok, ty_i32(1, dim_mul(B_, T_), I_(0)));
  Node *xe = node(g, OP_XENT, 2, lg, tg, 0, 0, 0);
  Tensor *in3[3] = {param(g, "gseed", ty(0, I_(0), I_(0), I_(0))), xe->out[1], tg};
  Tensor *dlg = ir_node(g, OP_XENT_BWD, 3, in3, NULL, NULL)->out[0];
  Tensor *dwo = node(g, OP_MATMUL, 2, dlg, rows, 1, 0, 0)->out[0];
  Tensor *drows = node(g, OP_MATMUL, 2, dlg, wo, 0, 0, 0)->out[0];
  Tensor *gH = ir_reshape(g, drows, l->out[0]->ty);
  Tensor *in7[7] = {gH, whh, h0, c0, l->out[0], l->out[1], l->out[2]};
  Node *lb = ir_node(g, OP_LSTM_BWD, 7, in7, NULL, NULL);
  Tensor *dwih = node(g, OP_MATMUL, 2, lb->out[0], x, 1, 0, 0)->out[0];
  Tensor *dx = node(g, OP_MATMUL, 2, lb->out[0], wih, 0, 0, 0)->out[0];
  Tensor *demb = node(g, OP_EMBEDDING_BWD, 2, tok, dx, V, 0, 0)->out[0];
  Tensor *o[] = {xe->out[0], dwo, lb->out[1], lb->out[2], lb->out[3], dwih, demb};
  *nouts = (int)MC_ARRAY_LEN(o);
  memcpy(outs, o, sizeof o);
  return g;
}

static void fill_mid(Program *p) {
  Graph *g = p->g;
  for (int i = 0; i < g->nparams; i++) {
    Tensor *t = g->params[i];
    double *v = randv(t->numel, 20 + (uint64_t)i, strcmp(t->name, "gseed") ? 0.5 : 1);
    if (!strcmp(t->name, "gseed")) v[0] = 1;
    set(p, t, v);
    mc_free(v);
  }
  Tensor *tok = g->inputs[0];
  for (int64_t i = 0; i < tok->numel; i++)
    rt_i32(p, tok)[i] = (int32_t)((i * 13 + 5) % 50);
}

static void test_precision_and_determinism(void) {
  Tensor *outs[8];
  int nouts = 0;
  Graph *g = mid_model(outs, &nouts);
  const int64_t B = 4, T = 6;
  ir_bind(g, B, T);
  Program *p64 = cg_lower(g, PREC_F64), *p32 = cg_lower(g, PREC_F32), *q32 = cg_lower(g, PREC_F32);
  fill_mid(p64);
  fill_mid(p32);
  fill_mid(q32);
  KernelCtx kc = kctx(B, true);
  run(p64, &kc);
  run(p32, &kc);
  run(q32, &kc);
  double worst = 0;
  for (int j = 0; j < nouts; j++) {
    const Tensor *t = outs[j];
    double md = 0, mr = 0;
    for (int64_t i = 0; i < t->numel; i++) {
      md = fmax(md, fabs(get(p32, t, i) - get(p64, t, i)));
      mr = fmax(mr, fabs(get(p64, t, i)));
    }
    double rel = md / fmax(mr, 1e-30);
    worst = fmax(worst, rel);
    if (!(rel < 1e-4)) fprintf(stderr, "f32 vs f64: output %d (%s) rel %g\n", j, t->name, rel);
    CHECK(rel < 1e-4);
  }
  printf("f32 vs f64 on the mid model: worst rel diff %.2e over %d outputs\n", worst, nouts);
  int identical = 0;
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    size_t nb = (size_t)t->numel * (t->ty.dtype == DT_I32 ? 4 : 4);
    identical += !memcmp(p32->buf[i], q32->buf[i], nb);
  }
  CHECK(identical == g->ntensors);
  /* and a rerun of the same program gives the same bits */
  float *l0 = mc_malloc((size_t)outs[2]->numel * sizeof(float));
  memcpy(l0, rt_f32(p32, outs[2]), (size_t)outs[2]->numel * sizeof(float));
  run(p32, &kc);
  CHECK(!memcmp(l0, rt_f32(p32, outs[2]), (size_t)outs[2]->numel * sizeof(float)));
  mc_free(l0);
  cg_program_free(p64);
  cg_program_free(p32);
  cg_program_free(q32);
  ir_graph_free(g);
}

/* The softmax layer: bias_add -> xent -> xent_bwd -> sum_rows (the bias gradient), and
 * the same graph after the fusion pass folds the bias into xent and the column sums into
 * xent_bias_bwd. Every output the same bits, in both precisions and with 1 and 3
 * threads; V not a multiple of 16, and each of xent_bias_bwd's 4 column tasks over one
 * 2048-column strip; a pad-free target in the first and last column. */
static void test_xent_bias_fold(void) {
  const int64_t N = 37, V = 9001;
  for (int pr = 0; pr < 2; pr++) {
    double *ref[4] = {0};
    for (int fold = 0; fold < 3; fold++) {
      Graph *g = ir_graph_new("xent_bias");
      Tensor *xw = param(g, "xw", ty(2, I_(N), I_(V), I_(0)));
      Tensor *b = param(g, "b", ty(1, I_(V), I_(0), I_(0)));
      Tensor *tg = ir_input(g, "targets", ty_i32(1, I_(N), I_(0)), (Loc){0});
      Tensor *lg = node(g, OP_BIAS_ADD, 2, xw, b, 0, 0, 0)->out[0];
      Node *x = node(g, OP_XENT, 2, lg, tg, 0, 0, 0);
      Tensor *one = param(g, "one", ty(0, I_(0), I_(0), I_(0)));
      Tensor *in3[3] = {one, x->out[1], tg};
      Tensor *dl = ir_node(g, OP_XENT_BWD, 3, in3, NULL, NULL)->out[0];
      Tensor *db = ir_op1(g, OP_SUM_ROWS, dl);
      Tensor *outs[4] = {x->out[0], x->out[1], dl, db};
      if (fold) {
        Config cfg;
        fe_config_defaults(&cfg);
        cfg.backend = BK_CPU;
        PassCtx pc = {.cfg = &cfg, .devices = 1, .training = true};
        pass_fusion(g, &pc);
        int xb = 0, xbb = 0, other = 0;
        for (int k = 0; k < g->nnodes; k++) {
          xb += g->nodes[k]->op == OP_XENT && g->nodes[k]->nin == 3;
          xbb += g->nodes[k]->op == OP_XENT_BIAS_BWD;
          other += g->nodes[k]->op == OP_BIAS_ADD || g->nodes[k]->op == OP_SUM_ROWS;
        }
        CHECK(xb == 1 && xbb == 1 && other == 0 && g->nnodes == 2);
        ir_verify(g);
        rt_threads_set(fold == 1 ? 1 : 3);
      }
      ir_bind(g, 1, 1);
      Program *p = cg_lower(g, (Precision)pr);
      double *xv = randv(N * V, 21, 8), *bv = randv(V, 22, 4), ov = 0.75;
      set(p, xw, xv);
      set(p, b, bv);
      set(p, one, &ov);
      for (int64_t i = 0; i < N; i++)
        rt_i32(p, tg)[i] = (int32_t)(i == 0 ? 0 : i == 1 ? V - 1 : (977 * i) % V);
      KernelCtx kc = kctx(1, true);
      run(p, &kc);
      for (int o = 0; o < 4; o++) {
        int64_t n = outs[o]->numel;
        if (!fold) {
          ref[o] = mc_malloc((size_t)n * sizeof(double));
          for (int64_t i = 0; i < n; i++)
            ref[o][i] = get(p, outs[o], i);
          continue;
        }
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++)
          bad += memcmp(&ref[o][i], &(double){get(p, outs[o], i)}, sizeof(double)) != 0;
        if (bad)
          fprintf(stderr, "output %d: %lld of %lld differ\n", o, (long long)bad, (long long)n);
        CHECK(bad == 0);
      }
      rt_threads_set(1);
      mc_free(xv);
      mc_free(bv);
      cg_program_free(p);
      ir_graph_free(g);
    }
    for (int o = 0; o < 4; o++)
      mc_free(ref[o]);
  }
}

/* rt_sgemm split by rows (tall C) or by columns (wide C, N >= 8 M: the softmax's logits'
 * shape) over 1 and 3 threads: the same bits as one cblas_sgemm call, every transpose.
 * Each element's sum over K is one call's either way; OpenBLAS gives an element the
 * same bits wherever its tile lies. */
static void test_gemm_split(void) {
  const int64_t shapes[2][3] = {{40, 2000, 64}, {1000, 48, 96}}; /* M, N, K */
  for (int sh = 0; sh < 2; sh++)
    for (int t = 0; t < 4; t++) {
      const int64_t M = shapes[sh][0], N = shapes[sh][1], Kd = shapes[sh][2];
      const bool ta = t & 1, tb = t & 2;
      float *a = mc_malloc((size_t)(M * Kd) * sizeof(float));
      float *b = mc_malloc((size_t)(Kd * N) * sizeof(float));
      float *ref = mc_malloc((size_t)(M * N) * sizeof(float));
      float *c = mc_malloc((size_t)(M * N) * sizeof(float));
      double *av = randv(M * Kd, 31, 1), *bv = randv(Kd * N, 32, 1);
      for (int64_t i = 0; i < M * Kd; i++)
        a[i] = (float)av[i];
      for (int64_t i = 0; i < Kd * N; i++)
        b[i] = (float)bv[i];
      int lda = (int)(ta ? M : Kd), ldb = (int)(tb ? Kd : N);
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                  (int)M, (int)N, (int)Kd, 1.0f, a, lda, b, ldb, 0.0f, ref, (int)N);
      for (int th = 1; th <= 3; th += 2) {
        rt_threads_set(th);
        rt_sgemm(ta, tb, M, N, Kd, 1.0f, a, lda, b, ldb, 0.0f, c, N);
        bool same = memcmp(c, ref, (size_t)(M * N) * sizeof(float)) == 0;
        if (!same)
          fprintf(stderr, "gemm %lldx%lldx%lld ta=%d tb=%d, %d threads: not the bits of one call\n",
                  (long long)M, (long long)N, (long long)Kd, ta, tb, th);
        CHECK(same);
      }
      rt_threads_set(1);
      mc_free(a);
      mc_free(b);
      mc_free(ref);
      mc_free(c);
      mc_free(av);
      mc_free(bv);
    }
}

/* Every op of ops.def's dense section has a kernel in both precisions. */
static void test_table(void) {
  const KernelFn *t32 = rt_cpu_kernels(PREC_F32), *t64 = rt_cpu_kernels(PREC_F64);
  for (int op = OP_ADD; op <= OP_XENT_BIAS_BWD; op++) {
    if (!t32[op] || !t64[op]) fprintf(stderr, "no kernel for op '%s'\n", ir_ops[op].name);
    CHECK(t32[op] && t64[op] && t32[op] != t64[op]);
  }
}

int main(void) {
  test_table();
  test_matmul();
  test_gemm_split();
  test_lstm_step();
  test_lstm_steps();
  test_elementwise();
  test_f32_math();
  test_softmax_xent();
  test_xent_bias_fold();
  test_embedding();
  test_bad_ids();
  test_dropout();
  test_precision_and_determinism();
  TEST_DONE();
}
