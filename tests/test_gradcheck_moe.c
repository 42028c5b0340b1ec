/* test_gradcheck_moe.c: every differentiable MoE op, alone or in the smallest
 * chain that produces valid indices, and the whole moe / hmoe layers, against
 * finite differences in float64, plus float32-vs-float64 agreement
 * (tests/gradcheck.h). Random values make top-k selections well separated, so
 * no selection flips under the 1e-6 steps; gate noise is fixed by the seed. */
#include <string.h>

#include "gradcheck.h"
#include "test.h"

static Type ty2(int64_t a, int64_t b) {
  Dim d[2] = {dim_int(a), dim_int(b)};
  return ir_type(DT_F32, 2, d);
}
static Type ty3(int64_t a, int64_t b, int64_t c) {
  Dim d[3] = {dim_int(a), dim_int(b), dim_int(c)};
  return ir_type(DT_F32, 3, d);
}

static Tensor *P(Graph *g, const char *name, Type t) {
  return ir_param(g, name, t, INIT_ZERO, 0, (Loc){0});
}

static Node *N_(Graph *g, OpKind op, int nin, Tensor **in, int64_t ia0, int64_t ia1) {
  int64_t ia[IR_MAX_ATTR] = {ia0, ia1};
  return ir_node(g, op, nin, in, ia, NULL);
}

/* Params named "pos.*" get values in [0.5, 1.5] (positive vectors for cv2). */
static bool fill_pos(const Tensor *t, double *buf, void *user) {
  (void)user;
  if (strncmp(t->name, "pos.", 4) != 0) return false;
  for (int64_t i = 0; i < t->numel; i++)
    buf[i] = 0.5 + mc_rng_uniform(mc_rng_key(7, (uint64_t)t->id, 0), (uint64_t)i);
  return true;
}

static double worst = 0;
static char worst_name[64];
static bool verbose;

static void run(Graph *g, int nouts, Tensor **outs, GcOpts *o) {
  if (!o->fill_f64) o->fill_f64 = fill_pos;
  o->verbose = verbose;
  GcResult r = gc_check(g, nouts, outs, o);
  CHECK(r.ok);
  CHECK(r.nparams > 0);
  if (r.worst_rel > worst) {
    worst = r.worst_rel;
    snprintf(worst_name, sizeof worst_name, "%s", g->name);
  }
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- single ops */

static void t_noise(void) {
  Graph *g = ir_graph_new("noise");
  Tensor *in[2] = {P(g, "clean", ty2(6, 5)), P(g, "raw", ty2(6, 5))};
  Node *n = N_(g, OP_NOISE, 2, in, 3, 0);
  Tensor *outs[2] = {n->out[0], n->out[1]};
  GcOpts o = gc_opts();
  o.training = true;
  o.seed = 11;
  run(g, 2, outs, &o);
}

static void t_topk(int k) {
  Graph *g = ir_graph_new(k == 5 ? "topk_all" : "topk");
  Tensor *in[1] = {P(g, "x", ty2(7, 5))};
  Node *n = N_(g, OP_TOPK, 1, in, k, 0);
  Tensor *outs[2] = {n->out[1], n->out[2]};
  GcOpts o = gc_opts();
  /* k == E: thr[:,1] = -inf, whose weight must be 0 for a finite loss */
  run(g, k == 5 ? 1 : 2, outs, &o);
}

/* clean, raw -> noise -> topk(noisy) -> load_smooth: gradients through clean, sigma
 * and the thresholds (topk's thr output). */
static void t_load_smooth(bool training) {
  Graph *g = ir_graph_new(training ? "load_smooth" : "load_smooth_eval");
  Tensor *clean = P(g, "clean", ty2(9, 6)), *raw = P(g, "raw", ty2(9, 6));
  Tensor *in[2] = {clean, raw};
  Node *nz = N_(g, OP_NOISE, 2, in, 0, 0);
  Tensor *tin[1] = {nz->out[0]};
  Node *tk = N_(g, OP_TOPK, 1, tin, 2, 0);
  Tensor *lin[4] = {clean, nz->out[0], nz->out[1], tk->out[2]};
  Tensor *load = ir_node(g, OP_LOAD_SMOOTH, 4, lin, NULL, NULL)->out[0];
  GcOpts o = gc_opts();
  o.training = training;
  o.seed = 5;
  run(g, 1, &load, &o);
}

/* logits -> topk -> softmax -> importance (and cv2 of it) */
static void t_importance(void) {
  Graph *g = ir_graph_new("importance");
  Tensor *in[1] = {P(g, "logits", ty2(8, 5))};
  Node *tk = N_(g, OP_TOPK, 1, in, 2, 0);
  Tensor *gates = ir_op1(g, OP_SOFTMAX, tk->out[1]);
  Tensor *iin[2] = {tk->out[0], gates};
  Tensor *imp = N_(g, OP_IMPORTANCE, 2, iin, 5, 0)->out[0];
  Tensor *outs[2] = {imp, ir_op1(g, OP_CV2, imp)};
  GcOpts o = gc_opts();
  run(g, 2, outs, &o);
}

static void t_cv2(void) {
  Graph *g = ir_graph_new("cv2");
  Dim d = dim_int(7);
  Tensor *v = P(g, "pos.v", ir_type(DT_F32, 1, &d));
  Tensor *c = ir_op1(g, OP_CV2, v);
  GcOpts o = gc_opts();
  run(g, 1, &c, &o);
}

/* x, logits -> topk -> dispatch(x) -> grouped matmul (transW or not) -> grouped bias
 * -> combine with softmax gates */
static void t_expert_path(bool transW, int k) {
  Graph *g = ir_graph_new(transW   ? "dispatch_gmm_T"
                          : k == 4 ? "dispatch_gmm_dense"
                                   : "dispatch_gmm");
  const int64_t R = 9, D = 4, E = 4, M = 3;
  Tensor *x = P(g, "x", ty2(R, D)), *lg = P(g, "logits", ty2(R, E));
  Tensor *w = P(g, "w", transW ? ty3(E, M, D) : ty3(E, D, M)), *b = P(g, "b", ty2(E, M));
  Tensor *tin[1] = {lg};
  Node *tk = N_(g, OP_TOPK, 1, tin, k, 0);
  Tensor *gates = ir_op1(g, OP_SOFTMAX, tk->out[1]);
  Tensor *din[2] = {x, tk->out[0]};
  Node *dn = N_(g, OP_DISPATCH, 2, din, E, 0);
  Tensor *gin[3] = {dn->out[0], w, dn->out[1]};
  Tensor *h = N_(g, OP_GROUPED_MATMUL, 3, gin, transW, 0)->out[0];
  Tensor *bin[3] = {h, b, dn->out[1]};
  Tensor *hb = N_(g, OP_GROUPED_BIAS, 3, bin, 0, 0)->out[0];
  Tensor *cin[3] = {hb, gates, dn->out[2]};
  Tensor *y = N_(g, OP_COMBINE, 3, cin, 0, 0)->out[0];
  GcOpts o = gc_opts();
  run(g, 1, &y, &o);
}

static void t_concat(void) {
  Graph *g = ir_graph_new("concat0");
  Tensor *in[3] = {P(g, "a", ty3(2, 3, 2)), P(g, "b", ty3(1, 3, 2)), P(g, "c", ty3(3, 3, 2))};
  Tensor *y = ir_node(g, OP_CONCAT0, 3, in, NULL, NULL)->out[0];
  GcOpts o = gc_opts();
  run(g, 1, &y, &o);
}

/* The hmoe helpers: rows dispatched to groups; scatter_pos / gather_pos / row_scale /
 * div_group_rows / load_smooth_grouped */
static void t_hmoe_helpers(void) {
  Graph *g = ir_graph_new("hmoe_helpers");
  const int64_t N = 8, G = 3, E = 4, KG = 2;
  Tensor *lg = P(g, "logits", ty2(N, G)), *x = P(g, "x", ty2(N, 2));
  Tensor *tin[1] = {lg};
  Node *tk = N_(g, OP_TOPK, 1, tin, KG, 0);
  Tensor *gates = ir_op1(g, OP_SOFTMAX, tk->out[1]);
  Tensor *din[2] = {x, tk->out[0]};
  Node *dn = N_(g, OP_DISPATCH, 2, din, G, 0);
  Tensor *off = dn->out[1], *pos = dn->out[2];
  Tensor *sin[2] = {gates, pos};
  Tensor *rows = N_(g, OP_SCATTER_POS, 2, sin, 0, 0)->out[0]; // [N*KG]
  Tensor *gin2[2] = {rows, pos};
  Tensor *back = N_(g, OP_GATHER_POS, 2, gin2, 0, 0)->out[0]; // [N, KG]
  Tensor *sc = P(g, "s_clean", ty2(N * KG, E)), *sr = P(g, "s_raw", ty2(N * KG, E));
  Tensor *nin[2] = {sc, sr};
  Node *nz = N_(g, OP_NOISE, 2, nin, 1, 0);
  Tensor *tin2[1] = {nz->out[0]};
  Node *tk2 = N_(g, OP_TOPK, 1, tin2, 2, 0);
  Tensor *rsin[2] = {ir_op1(g, OP_SOFTMAX, tk2->out[1]), rows};
  Tensor *eff = N_(g, OP_ROW_SCALE, 2, rsin, 0, 0)->out[0]; // [N*KG, 2]
  Tensor *lin[5] = {sc, nz->out[0], nz->out[1], tk2->out[2], off};
  Tensor *ls = ir_node(g, OP_LOAD_SMOOTH_GROUPED, 5, lin, NULL, NULL)->out[0]; // [G, E]
  Tensor *dvin[2] = {ls, off};
  Tensor *fr = N_(g, OP_DIV_GROUP_ROWS, 2, dvin, 0, 0)->out[0];
  Tensor *outs[5] = {back, eff, ls, fr, dn->out[0]};
  GcOpts o = gc_opts();
  o.training = true;
  o.seed = 3;
  run(g, 5, outs, &o);
}

/* Batchwise gating's ops: softmax scores -> batchwise_route (k*N not a multiple of E:
 * padding slots) -> gather_rows -> grouped matmul -> masked_norm -> combine_routes,
 * and the threshold loss; in training (top m per expert) and eval (thresholds). */
static void t_batchwise_ops(bool training) {
  Graph *g = ir_graph_new(training ? "batchwise_ops" : "batchwise_ops_eval");
  const int64_t N = 7, E = 3, D = 2, M = 3, k = 2;
  Dim dE = dim_int(E);
  Tensor *lg = P(g, "logits", ty2(N, E)), *x = P(g, "x", ty2(N, D));
  Tensor *thr = P(g, "thr", ir_type(DT_F32, 1, &dE)), *w = P(g, "w", ty3(E, D, M));
  Tensor *gs = ir_op1(g, OP_SOFTMAX, lg);
  Tensor *rin[2] = {gs, thr};
  Node *rt = N_(g, OP_BATCHWISE_ROUTE, 2, rin, k, 0);
  Tensor *xs = ir_op2(g, OP_GATHER_ROWS, x, rt->out[1]);
  Tensor *gin[3] = {xs, w, rt->out[2]};
  Tensor *ys = N_(g, OP_GROUPED_MATMUL, 3, gin, 0, 0)->out[0];
  Tensor *G = ir_op2(g, OP_MASKED_NORM, gs, rt->out[0]);
  Tensor *cin[4] = {ys, G, rt->out[1], rt->out[2]};
  Tensor *y = ir_node(g, OP_COMBINE_ROUTES, 4, cin, NULL, NULL)->out[0];
  Tensor *tin[3] = {gs, rt->out[0], thr};
  Tensor *tl = ir_node(g, OP_THRESHOLD_LOSS, 3, tin, NULL, NULL)->out[0];
  Tensor *outs[3] = {y, tl, xs};
  GcOpts o = gc_opts();
  o.training = training;
  o.seed = training ? 2 : 6;
  run(g, 3, outs, &o);
}

/* The multi-device form the comm pass builds (here on one device, which holds the whole
 * batch): all_gather_topm's cut -> batchwise_route with 4 inputs and N*k*2 slots (ia[1]),
 * and the threshold loss scaled as on 3 devices (ia[0]: its mean over a global batch of
 * 3N rows), in training and evaluation. */
static void t_batchwise_cut(bool training) {
  Graph *g = ir_graph_new(training ? "batchwise_cut" : "batchwise_cut_eval");
  const int64_t N = 7, E = 3, D = 2, M = 3, k = 2;
  Dim dE = dim_int(E);
  Tensor *lg = P(g, "logits", ty2(N, E)), *x = P(g, "x", ty2(N, D));
  Tensor *thr = P(g, "thr", ir_type(DT_F32, 1, &dE)), *w = P(g, "w", ty3(E, D, M));
  Tensor *gs = ir_op1(g, OP_SOFTMAX, lg);
  Tensor *cin0[2] = {gs, thr};
  Node *cut = N_(g, OP_ALL_GATHER_TOPM, 2, cin0, k, 1);
  Tensor *rin[4] = {gs, thr, cut->out[0], cut->out[1]};
  Node *rt = N_(g, OP_BATCHWISE_ROUTE, 4, rin, k, 2);
  CHECK(rt->out[1]->ty.dim[0].c == N * k * 2);
  Tensor *xs = ir_op2(g, OP_GATHER_ROWS, x, rt->out[1]);
  Tensor *gin[3] = {xs, w, rt->out[2]};
  Tensor *ys = N_(g, OP_GROUPED_MATMUL, 3, gin, 0, 0)->out[0];
  Tensor *G = ir_op2(g, OP_MASKED_NORM, gs, rt->out[0]);
  Tensor *cin[4] = {ys, G, rt->out[1], rt->out[2]};
  Tensor *y = ir_node(g, OP_COMBINE_ROUTES, 4, cin, NULL, NULL)->out[0];
  Tensor *tin[3] = {gs, rt->out[0], thr};
  Tensor *tl = N_(g, OP_THRESHOLD_LOSS, 3, tin, 3, 0)->out[0];
  Tensor *outs[3] = {y, tl, xs};
  GcOpts o = gc_opts();
  o.training = training;
  o.seed = training ? 2 : 6;
  run(g, 3, outs, &o);
}

/* ---------------------------------------------------------------- whole layers */

/* bias, act, capacity of the layers below (the table's defaults unless a case sets them) */
static bool moe_bias = true;
static int moe_act = LAE_NONE;
static double moe_capacity = 0;

static Expr layer_call(int layer, int64_t E, int64_t k, int64_t H, int gating, bool noise) {
  Expr e;
  memset(&e, 0, sizeof e);
  e.kind = EX_CALL;
  e.layer = layer;
  e.loc = (Loc){1, 1, 1, 1, NULL};
  e.argv[LA_EXPERTS] = (double)E;
  e.argv[LA_K] = (double)k;
  e.argv[LA_HIDDEN] = (double)H;
  e.argv[LA_GATING] = gating;
  e.argv[LA_W_IMPORTANCE] = 0.7; /* large weights: the aux gradients are checked too */
  e.argv[LA_W_LOAD] = 0.9;
  e.argv[LA_NOISE] = noise;
  e.argv[LA_OUT] = 0;
  e.argv[LA_GROUPS] = 3;
  e.argv[LA_K_GROUP] = 2;
  e.argv[LA_BIAS] = moe_bias;
  e.argv[LA_ACT] = moe_act;
  e.argv[LA_CAPACITY] = moe_capacity;
  return e;
}

static Type bt(int64_t d) {
  Dim dims[3] = {dim_sym('B'), dim_sym('T'), dim_int(d)};
  return ir_type(DT_F32, 3, dims);
}

static int64_t moe_E = 4;

static void t_moe(const char *name, int gating, bool noise, bool training, int64_t k) {
  Graph *g = ir_graph_new(name);
  Expr e = layer_call(L_MOE, moe_E, k, 5, gating, noise);
  Tensor *x = P(g, "x", bt(3));
  Tensor *aux = NULL;
  Tensor *y = ir_build_moe(g, &e, x, "m", &aux);
  CHECK(aux != NULL && aux->ty.rank == 0);
  CHECK(y->ty.rank == 3 && dim_eq(y->ty.dim[2], dim_int(3)));
  CHECK(g->nmoe == 1);
  Tensor *outs[2] = {y, aux};
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 3;
  o.training = training;
  /* k = 1 with seed 9's noise draws: the test loss, sum(y R0) + aux R1 = 0.078 - 0.092,
   * cancels to -0.014, and its f32/f64 relative difference (3e-5) measured that */
  o.seed = k == 1 ? 10 : 9;
  run(g, 2, outs, &o);
}

static int64_t hmoe_G = 3, hmoe_kg = 2, hmoe_k = 2;
static double hmoe_tol_f32 = 1e-4;

static void t_hmoe(const char *name, bool noise, bool training, int gating) {
  Graph *g = ir_graph_new(name);
  Expr e = layer_call(L_HMOE, 3, hmoe_k, 4, gating, noise);
  e.argv[LA_GROUPS] = (double)hmoe_G;
  e.argv[LA_K_GROUP] = (double)hmoe_kg;
  e.argv[LA_OUT] = 2;
  Tensor *x = P(g, "x", bt(3));
  Tensor *aux = NULL;
  Tensor *y = ir_build_hmoe(g, &e, x, "h", &aux);
  CHECK(aux != NULL && aux->ty.rank == 0);
  CHECK(y->ty.rank == 3 && dim_eq(y->ty.dim[2], dim_int(2)));
  Tensor *outs[2] = {y, aux};
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 3;
  o.training = training;
  o.seed = 4;
  o.tol_f32 = hmoe_tol_f32;
  run(g, 2, outs, &o);
}

int main(int argc, char **argv) {
  verbose = argc > 1 && !strcmp(argv[1], "-v");
  t_noise();
  t_topk(2);
  t_topk(5);
  t_load_smooth(true);
  t_load_smooth(false);
  t_importance();
  t_cv2();
  t_expert_path(false, 2);
  t_expert_path(true, 2);
  t_expert_path(false, 4);
  t_concat();
  t_hmoe_helpers();
  t_batchwise_ops(true);
  t_batchwise_ops(false);
  t_batchwise_cut(true);
  t_batchwise_cut(false);
  t_moe("moe_noisy_train", LAE_NOISY_TOPK, true, true, 2);
  t_moe("moe_noisy_eval", LAE_NOISY_TOPK, true, false, 2);
  t_moe("moe_noisy_k1", LAE_NOISY_TOPK, true, true, 1);
  t_moe("moe_no_noise", LAE_NOISY_TOPK, false, true, 2);
  t_moe("moe_softmax", LAE_SOFTMAX, false, true, 2);
  t_moe("moe_batchwise", LAE_BATCHWISE, false, true, 2);
  t_moe("moe_batchwise_eval", LAE_BATCHWISE, false, false, 2);
  t_hmoe("hmoe_noisy_train", true, true, LAE_NOISY_TOPK);
  t_hmoe("hmoe_no_noise", false, true, LAE_NOISY_TOPK);
  t_hmoe("hmoe_softmax", false, true, LAE_SOFTMAX);
  /* edge cases: one expert (k = E, thr[:,1] = -inf, cv2 of one value); k = E with
   * noise; one group (no concat); every group and expert picked */
  moe_E = 1;
  t_moe("moe_one_expert", LAE_NOISY_TOPK, true, true, 1);
  moe_E = 3;
  t_moe("moe_k_eq_E_noisy", LAE_NOISY_TOPK, true, true, 3);
  hmoe_G = 1, hmoe_kg = 1;
  /* one group: load_H = load_p * frac is a scalar multiple of frac and cv2 is scale
   * invariant, so d aux / d load_p is exactly 0 and its computed value is rounding
   * noise in either precision: no f32-vs-f64 comparison here (the fd check stays) */
  hmoe_tol_f32 = -1;
  t_hmoe("hmoe_one_group", true, true, LAE_NOISY_TOPK);
  hmoe_tol_f32 = 1e-4;
  hmoe_G = 2, hmoe_kg = 2, hmoe_k = 3;
  t_hmoe("hmoe_all_picked", true, true, LAE_NOISY_TOPK);
  /* appendix C's layers: no expert biases, a sigmoid on the output */
  hmoe_G = 3, hmoe_kg = 2, hmoe_k = 2;
  moe_bias = false;
  moe_act = LAE_SIGMOID;
  moe_E = 4;
  t_moe("moe_no_bias_sigmoid", LAE_NOISY_TOPK, true, true, 2);
  t_hmoe("hmoe_no_bias_sigmoid", true, true, LAE_NOISY_TOPK);
  moe_bias = true;
  moe_act = LAE_NONE;
  /* capacity: routes beyond an expert's share dropped (6 rows x 2 routes, cap 2 each of
   * 4 experts at 0.6: at least 4 of 12 routes dropped) */
  moe_capacity = 0.6;
  t_moe("moe_capacity", LAE_NOISY_TOPK, true, true, 2);
  t_moe("moe_capacity_softmax", LAE_SOFTMAX, false, true, 2);
  moe_capacity = 0;
  printf("worst finite-difference error: %.3g (%s)\n", worst, worst_name);
  TEST_DONE();
}
