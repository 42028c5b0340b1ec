/* build_moe.c: the `moe` and `hmoe` layers expanded into primitive ops
 * (docs/moe.md has the maths and every decision). x[..., D] is flattened to
 * rows [N, D] (N = B*T for [B, T, D]) and the output reshaped back.
 *
 * moe, gating=noisy_topk:
 *   clean = x.w_gate; raw = x.w_noise; (noisy, sigma, eps) = noise(clean, raw)
 *   (idx, val, thr, thr_idx) = topk(noisy, k); gates = softmax(val)
 *   (xs, offsets, pos) = dispatch(x, idx)
 *   ys = gbias(gmm(relu(gbias(gmm(xs, w1), b1)), w2), b2); y = combine(ys, gates, pos)
 *   importance = importance(idx, gates); load = load_smooth(clean, noisy, sigma, thr)
 *   (noise=false: no w_noise, no noise op, load = load_count(idx))
 *   aux = w_importance*cv2(importance) + w_load*cv2(load)
 * gating=softmax: topk(clean, E) + softmax, load_count: every expert sees every row.
 * gating=batchwise (appendix F): softmax scores, each expert takes its top m = k*N/E
 * rows in training (per-expert thresholds in eval), gather_rows / combine_routes, and a
 * threshold loss in aux (build_batchwise).
 * hmoe: a primary gate over groups, then per-group secondary gates evaluated on the
 * dispatched rows with the group gate matrices stacked (concat0), global expert ids,
 * one dispatch to groups*experts experts, two combines; aux from the hierarchical
 * importance and load of appendix B. */
#include <math.h>
#include <string.h>

#include "ir.h"

/* ---------------------------------------------------------------- helpers */

/* Names an op's output "LAYER.part" unless that name is taken. */
static Tensor *named(Graph *g, Tensor *t, const char *layer, const char *part) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s.%s", layer, part);
  if (t->producer && !ir_name_taken(g, buf)) ir_rename(g, t, buf);
  return t;
}

static Tensor *param(Graph *g, const char *layer, const char *part, Type ty, InitKind init,
                     double scale, Loc loc) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s.%s", layer, part);
  for (int i = 0; ir_name_taken(g, buf) && i < g->nparams; i++) /* scan only when it may be */
    MOEC_ASSERT(strcmp(g->params[i]->name, buf) != 0); /* sema: each layer call on its own */
  return ir_param(g, buf, ty, init, scale, loc);
}

static Type t1(Dim a) {
  return ir_type(DT_F32, 1, &a);
}
static Type t2(Dim a, Dim b) {
  Dim d[2] = {a, b};
  return ir_type(DT_F32, 2, d);
}
static Type t3(Dim a, Dim b, Dim c) {
  Dim d[3] = {a, b, c};
  return ir_type(DT_F32, 3, d);
}

static Node *node(Graph *g, OpKind op, int nin, Tensor *const *in, int64_t ia0, int64_t ia1) {
  int64_t ia[IR_MAX_ATTR] = {ia0, ia1};
  return ir_node(g, op, nin, in, ia, NULL);
}

static Tensor *op1a(Graph *g, OpKind op, Tensor *a, int64_t ia0) {
  Tensor *in[1] = {a};
  return node(g, op, 1, in, ia0, 0)->out[0];
}

static Tensor *op2a(Graph *g, OpKind op, Tensor *a, Tensor *b, int64_t ia0) {
  Tensor *in[2] = {a, b};
  return node(g, op, 2, in, ia0, 0)->out[0];
}

static Tensor *op3a(Graph *g, OpKind op, Tensor *a, Tensor *b, Tensor *c, int64_t ia0) {
  Tensor *in[3] = {a, b, c};
  return node(g, op, 3, in, ia0, 0)->out[0];
}

static Tensor *scale(Graph *g, Tensor *x, double s) {
  double fa[IR_MAX_ATTR] = {s, 0};
  Tensor *in[1] = {x};
  return ir_node(g, OP_SCALE, 1, in, NULL, fa)->out[0];
}

/* Registers a layer's importance and load vectors (and dropped routes, or NULL) for
 * monitoring. */
static void register_moe(Graph *g, const char *name, Tensor *imp, Tensor *load, Tensor *drop) {
  int n = g->nmoe + 1;
  g->moe_importance = mc_realloc(g->moe_importance, (size_t)n * sizeof(Tensor *));
  g->moe_load = mc_realloc(g->moe_load, (size_t)n * sizeof(Tensor *));
  g->moe_drop = mc_realloc(g->moe_drop, (size_t)n * sizeof(Tensor *));
  g->moe_names = mc_realloc(g->moe_names, (size_t)n * sizeof(char *));
  g->moe_importance[g->nmoe] = imp;
  g->moe_load[g->nmoe] = load;
  g->moe_drop[g->nmoe] = drop;
  g->moe_names[g->nmoe] = mc_arena_strdup(&g->arena, name);
  g->nmoe = n;
}

/* The layer's integer argument `a`, checked as sema checks it (layers.def: at most
 * 2^31 - 1), so what `moec check` accepts builds. */
static int64_t int_arg(const Expr *call, int a, const char *what) {
  double v = call->argv[a];
  (void)what;
  MOEC_ASSERT(v >= 1 && v == floor(v) && v <= 1e9); /* sema: layers.def's ranges, the 1e9 cap */
  return (int64_t)v;
}

/* ---------------------------------------------------------------- gating */

/* What a gate produces for rows [R, ...]. */
typedef struct Gate {
  Tensor *idx;                 /* i32[R,k] chosen experts, descending gate logit */
  Tensor *gates;               /* [R,k] softmax over the kept logits */
  Tensor *clean;               /* [R,E] */
  Tensor *noisy, *sigma, *thr; /* [R,E], [R,E], [R,2]; NULL without noise */
} Gate;

/* Noisy top-k gating of the logits clean[R,E] (raw[R,E] the noise logits, or NULL:
 * no noise). route (i32[R], or NULL) lists, for each route in batch order, its row of
 * clean: the noise is then drawn in route order (gather_rows, noise, scatter_rows back)
 * so that a route's draw does not depend on how rows were sorted. Role "gate". */
static Gate gate_topk(Graph *g, const char *name, const char *pre, Tensor *clean, Tensor *raw,
                      Tensor *route, int64_t k) {
  Gate gt = {.clean = clean};
  char part[128];
  Tensor *logits = clean;
  if (raw) {
    Tensor *in[2] = {clean, raw};
    if (route) {
      in[0] = ir_op2(g, OP_GATHER_ROWS, clean, route); // [R, E] in route order
      snprintf(part, sizeof part, "%sclean_route", pre);
      named(g, in[0], name, part);
      in[1] = ir_op2(g, OP_GATHER_ROWS, raw, route);
      snprintf(part, sizeof part, "%sraw_route", pre);
      named(g, in[1], name, part);
    }
    Node *nz = node(g, OP_NOISE, 2, in, ir_next_rng_stream(g), 0);
    if (route) {
      snprintf(part, sizeof part, "%snoisy_route", pre);
      named(g, nz->out[0], name, part);
      snprintf(part, sizeof part, "%ssigma_route", pre);
      named(g, nz->out[1], name, part);
    }
    gt.noisy = logits = nz->out[0]; // [R, E]
    gt.sigma = nz->out[1];          // [R, E]
    if (route) {
      Tensor *b1[3] = {nz->out[0], route, clean}, *b2[3] = {nz->out[1], route, clean};
      gt.noisy = logits = ir_node(g, OP_SCATTER_ROWS, 3, b1, NULL, NULL)->out[0]; // row order
      gt.sigma = ir_node(g, OP_SCATTER_ROWS, 3, b2, NULL, NULL)->out[0];
    }
    snprintf(part, sizeof part, "%snoisy", pre);
    named(g, gt.noisy, name, part);
    snprintf(part, sizeof part, "%ssigma", pre);
    named(g, gt.sigma, name, part);
    snprintf(part, sizeof part, "%seps", pre);
    named(g, nz->out[2], name, part);
  }
  Tensor *in[1] = {logits};
  Node *tk = node(g, OP_TOPK, 1, in, k, 0);
  gt.idx = tk->out[0];          // i32[R, k]
  if (raw) gt.thr = tk->out[2]; // [R, 2]
  snprintf(part, sizeof part, "%sidx", pre);
  named(g, tk->out[0], name, part);
  snprintf(part, sizeof part, "%stop", pre);
  named(g, tk->out[1], name, part);
  snprintf(part, sizeof part, "%sthr", pre);
  named(g, tk->out[2], name, part);
  snprintf(part, sizeof part, "%sthr_idx", pre);
  named(g, tk->out[3], name, part);
  gt.gates = ir_op1(g, OP_SOFTMAX, tk->out[1]); // [R, k]
  snprintf(part, sizeof part, "%sgates", pre);
  named(g, gt.gates, name, part);
  return gt;
}

/* The expert FFNs on dispatched rows xs[R', D] with (possibly stacked) weights
 * w1[E,D,H], b1[E,H], w2[E,H,O], b2[E,O] and offsets[E+1]; b1, b2 NULL: no biases
 * (bias=false). Role "experts". */
static Tensor *experts_ffn(Graph *g, const char *name, Tensor *xs, Tensor *w1, Tensor *b1,
                           Tensor *w2, Tensor *b2, Tensor *off) {
  Tensor *h = op3a(g, OP_GROUPED_MATMUL, xs, w1, off, 0); // [R', H]
  named(g, h, name, "xw1");
  if (b1) {
    h = op3a(g, OP_GROUPED_BIAS, h, b1, off, 0); // [R', H]
    named(g, h, name, "pre");
  }
  h = ir_op1(g, OP_RELU, h); // [R', H]
  named(g, h, name, "h");
  Tensor *ys = op3a(g, OP_GROUPED_MATMUL, h, w2, off, 0); // [R', O]
  if (!b2) return named(g, ys, name, "ys");
  named(g, ys, name, "hw2");
  ys = op3a(g, OP_GROUPED_BIAS, ys, b2, off, 0); // [R', O]
  return named(g, ys, name, "ys");
}

/* x[..., D] -> rows [N, D] */
static Tensor *flatten_rows(Graph *g, Tensor *x) {
  if (x->ty.rank == 2) return x;
  Dim r = dim_int(1);
  for (int i = 0; i < x->ty.rank - 1; i++)
    r = dim_mul(r, x->ty.dim[i]);
  return ir_reshape(g, x, t2(r, x->ty.dim[x->ty.rank - 1]));
}

/* y[N, O] -> x's leading dims + [O] */
static Tensor *unflatten_rows(Graph *g, Tensor *y, const Tensor *x) {
  if (x->ty.rank == 2) return y;
  Type t = x->ty;
  t.dtype = DT_F32;
  t.dim[t.rank - 1] = y->ty.dim[1];
  return ir_reshape(g, y, t);
}

/* The layer's output y[N, O] through its `act` (appendix C: a sigmoid on the MoE output),
 * then back to x's leading dims. */
static Tensor *layer_output(Graph *g, const Expr *call, const char *name, Tensor *y,
                            const Tensor *x) {
  static const OpKind acts[] = {
      [LAE_RELU] = OP_RELU, [LAE_TANH] = OP_TANH, [LAE_SIGMOID] = OP_SIGMOID};
  int act = (int)call->argv[LA_ACT];
  ir_set_context(g, name, NULL, call->loc);
  if (act > LAE_NONE && act <= LAE_SIGMOID) y = ir_op1(g, acts[act], y); // [N, O]
  return unflatten_rows(g, y, x);
}

/* Sema checked the input: f32 rows [..., in] of rank >= 2 with a constant width. */
static void check_input(const Expr *call, const Tensor *x, const char *layer) {
  (void)call, (void)layer;
  MOEC_ASSERT(x->ty.dtype == DT_F32 && x->ty.rank >= 2 && x->ty.rank <= MAX_RANK &&
              dim_is_const(x->ty.dim[x->ty.rank - 1]));
}

/* aux = w_imp * cv2(imp) + w_load * cv2(load). Role "aux". */
static Tensor *aux_loss(Graph *g, const char *name, Tensor *imp, Tensor *load, double w_imp,
                        double w_load) {
  Tensor *ci = named(g, ir_op1(g, OP_CV2, imp), name, "cv2_importance");
  Tensor *cl = named(g, ir_op1(g, OP_CV2, load), name, "cv2_load");
  Tensor *si = named(g, scale(g, ci, w_imp), name, "aux_importance"); /* fixed node order */
  Tensor *sl = named(g, scale(g, cl, w_load), name, "aux_load");
  return ir_op2(g, OP_ADD, si, sl);
}

/* ---------------------------------------------------------------- batchwise */

/* Strictly balanced gating (appendix F) on rows xr[N, D] with logits clean[N, E]:
 *   gs = softmax(clean); (mask, rows, offsets) = batchwise_route(gs, thresholds, k)
 *   (training: each expert takes its top m = floor(k*N/E) rows by gs; eval: the rows
 *   with gs > threshold, at most m); xs = gather_rows(xr, rows) [N*k, D];
 *   G = masked_norm(gs, mask); y = combine_routes(ffn(xs), G, rows, offsets)
 *   aux = w_imp*cv2(sum_rows(G)) + w_load*cv2(sum_rows(mask)) + threshold_loss */
static Tensor *build_batchwise(Graph *g, const Expr *call, const char *name, Tensor *xr,
                               Tensor *clean, Tensor *thr, int64_t k, Tensor *w1, Tensor *b1,
                               Tensor *w2, Tensor *b2, Tensor **aux) {
  Loc loc = call->loc;
  ir_set_context(g, name, "gate", loc);
  Tensor *gs = named(g, ir_op1(g, OP_SOFTMAX, clean), name, "scores"); // [N, E]
  Tensor *rin[2] = {gs, thr};
  Node *rt = node(g, OP_BATCHWISE_ROUTE, 2, rin, k, 0);
  Tensor *mask = named(g, rt->out[0], name, "mask");                        // [N, E] 0/1
  Tensor *rows = named(g, rt->out[1], name, "slots");                       // i32[N*k]
  Tensor *off = named(g, rt->out[2], name, "offsets");                      // i32[E+1]
  Tensor *G = named(g, ir_op2(g, OP_MASKED_NORM, gs, mask), name, "gates"); // [N, E]

  ir_set_context(g, name, "dispatch", loc);
  Tensor *xs = named(g, ir_op2(g, OP_GATHER_ROWS, xr, rows), name, "xs"); // [N*k, D]

  ir_set_context(g, name, "experts", loc);
  Tensor *ys = experts_ffn(g, name, xs, w1, b1, w2, b2, off); // [N*k, O]

  ir_set_context(g, name, "combine", loc);
  Tensor *cin[4] = {ys, G, rows, off};
  Tensor *y = named(g, ir_node(g, OP_COMBINE_ROUTES, 4, cin, NULL, NULL)->out[0], name, "y");

  ir_set_context(g, name, "aux", loc);
  Tensor *imp = named(g, ir_op1(g, OP_SUM_ROWS, G), name, "importance"); // [E]
  Tensor *load = named(g, ir_op1(g, OP_SUM_ROWS, mask), name, "load");   // [E]
  register_moe(g, name, imp, load, NULL);
  Tensor *bal = aux_loss(g, name, imp, load, call->argv[LA_W_IMPORTANCE], call->argv[LA_W_LOAD]);
  Tensor *tin[3] = {gs, mask, thr};
  Tensor *tl =
      named(g, ir_node(g, OP_THRESHOLD_LOSS, 3, tin, NULL, NULL)->out[0], name, "threshold_loss");
  *aux = ir_op2(g, OP_ADD, bal, tl);
  return y;
}

/* ---------------------------------------------------------------- moe */

int64_t ir_capacity_rows(double C, int64_t k, int64_t N, int64_t E) {
  double c = C * (double)k * (double)N / (double)E;
  int64_t cap = (int64_t)ceil(c * (1 - 1e-12)); /* an integer product stays that integer */
  return cap < 1 ? 1 : cap;
}

Tensor *ir_build_moe(Graph *g, Expr *call, Tensor *x, const char *name, Tensor **aux) {
  Loc loc = call->loc;
  check_input(call, x, "moe");
  int gating = (int)call->argv[LA_GATING];
  int64_t E = int_arg(call, LA_EXPERTS, "experts"), H = int_arg(call, LA_HIDDEN, "hidden");
  int64_t k = gating == LAE_SOFTMAX ? E : int_arg(call, LA_K, "k");
  MOEC_ASSERT(k <= E); /* sema */
  /* noise only for noisy_topk (batchwise gates with a plain softmax, appendix F) */
  bool noise = gating == LAE_NOISY_TOPK && call->argv[LA_NOISE] != 0;
  Dim D = x->ty.dim[x->ty.rank - 1];
  Dim O = call->argv[LA_OUT] >= 1 ? dim_int((int64_t)call->argv[LA_OUT]) : D;
  Dim dE = dim_int(E), dH = dim_int(H);

  /* parameters (language.md names; gates start at zero as in the paper) */
  Tensor *w_gate = param(g, name, "w_gate", t2(D, dE), INIT_ZERO, 0, loc);
  Tensor *w_noise = noise ? param(g, name, "w_noise", t2(D, dE), INIT_ZERO, 0, loc) : NULL;
  /* batchwise: per-expert inference thresholds on the softmax scores (appendix F) */
  Tensor *thr =
      gating == LAE_BATCHWISE ? param(g, name, "thresholds", t1(dE), INIT_ZERO, 0, loc) : NULL;
  Tensor *w1 = param(g, name, "w1", t3(dE, D, dH), INIT_UNIFORM, 1.0 / sqrt((double)D.c), loc);
  bool bias = call->argv[LA_BIAS] != 0;
  Tensor *b1 = bias ? param(g, name, "b1", t2(dE, dH), INIT_ZERO, 0, loc) : NULL;
  Tensor *w2 = param(g, name, "w2", t3(dE, dH, O), INIT_UNIFORM, 1.0 / sqrt((double)H), loc);
  Tensor *b2 = bias ? param(g, name, "b2", t2(dE, O), INIT_ZERO, 0, loc) : NULL;

  ir_set_context(g, name, NULL, loc);
  Tensor *xr = flatten_rows(g, x); // [N, D]
  named(g, xr, name, "rows");

  ir_set_context(g, name, "gate", loc);
  Tensor *clean = named(g, ir_op2(g, OP_MATMUL, xr, w_gate), name, "clean"); // [N, E]
  if (gating == LAE_BATCHWISE) {
    Tensor *y = build_batchwise(g, call, name, xr, clean, thr, k, w1, b1, w2, b2, aux);
    return layer_output(g, call, name, y, x);
  }
  Tensor *raw = noise ? named(g, ir_op2(g, OP_MATMUL, xr, w_noise), name, "raw") : NULL;
  Gate gt = gate_topk(g, name, "", clean, raw, NULL, k);
  Tensor *kept = gt.idx, *drop = NULL;
  if (call->argv[LA_CAPACITY] > 0) { /* routes beyond each expert's capacity: idx -1 */
    Tensor *cin[1] = {gt.idx};
    double fa[IR_MAX_ATTR] = {call->argv[LA_CAPACITY]};
    int64_t ia[IR_MAX_ATTR] = {E};
    Node *cn = ir_node(g, OP_CAPACITY, 1, cin, ia, fa);
    kept = named(g, cn->out[0], name, "kept"); // i32[N, k]
    drop = named(g, cn->out[1], name, "drop"); // [E]
  }

  ir_set_context(g, name, "dispatch", loc);
  Tensor *din[2] = {xr, kept};
  Node *dn = node(g, OP_DISPATCH, 2, din, E, 0);
  Tensor *xs = named(g, dn->out[0], name, "xs");       // [N*k, D]
  Tensor *off = named(g, dn->out[1], name, "offsets"); // i32[E+1]
  Tensor *pos = named(g, dn->out[2], name, "pos");     // i32[N, k]

  ir_set_context(g, name, "experts", loc);
  Tensor *ys = experts_ffn(g, name, xs, w1, b1, w2, b2, off); // [N*k, O]

  ir_set_context(g, name, "combine", loc);
  Tensor *y = op3a(g, OP_COMBINE, ys, gt.gates, pos, 0); // [N, O]
  named(g, y, name, "y");

  ir_set_context(g, name, "aux", loc);
  Tensor *imp = named(g, op2a(g, OP_IMPORTANCE, gt.idx, gt.gates, E), name, "importance"); // [E]
  Tensor *load;
  if (noise) {
    Tensor *lin[4] = {gt.clean, gt.noisy, gt.sigma, gt.thr};
    load = ir_node(g, OP_LOAD_SMOOTH, 4, lin, NULL, NULL)->out[0]; // [E]
  } else {
    load = op1a(g, OP_LOAD_COUNT, gt.idx, E); // [E]
  }
  named(g, load, name, "load");
  register_moe(g, name, imp, load, drop);
  *aux = aux_loss(g, name, imp, load, call->argv[LA_W_IMPORTANCE], call->argv[LA_W_LOAD]);
  return layer_output(g, call, name, y, x);
}

/* ---------------------------------------------------------------- hmoe */

/* CONCAT0 of n tensors. */
static Tensor *concat0(Graph *g, Tensor **xs, int n) {
  if (n == 1) return xs[0];
  return ir_node(g, OP_CONCAT0, n, xs, NULL, NULL)->out[0];
}

Tensor *ir_build_hmoe(Graph *g, Expr *call, Tensor *x, const char *name, Tensor **aux) {
  Loc loc = call->loc;
  check_input(call, x, "hmoe");
  int gating = (int)call->argv[LA_GATING];
  MOEC_ASSERT(gating != LAE_BATCHWISE); /* sema refuses it */
  int64_t G = int_arg(call, LA_GROUPS, "groups"), E = int_arg(call, LA_EXPERTS, "experts");
  int64_t H = int_arg(call, LA_HIDDEN, "hidden");
  bool dense = gating == LAE_SOFTMAX;
  int64_t kg = dense ? G : int_arg(call, LA_K_GROUP, "k_group");
  int64_t k = dense ? E : int_arg(call, LA_K, "k");
  MOEC_ASSERT(kg <= G && k <= E && G * E <= ((int64_t)1 << 30)); /* sema */
  bool noise = !dense && call->argv[LA_NOISE] != 0;
  Dim D = x->ty.dim[x->ty.rank - 1];
  Dim O = call->argv[LA_OUT] >= 1 ? dim_int((int64_t)call->argv[LA_OUT]) : D;
  Dim dG = dim_int(G), dE = dim_int(E), dH = dim_int(H), one = dim_int(1);
  bool bias = call->argv[LA_BIAS] != 0;

  /* parameters: the primary gate, then group by group its gate and experts */
  Tensor *w_gate = param(g, name, "w_gate", t2(D, dG), INIT_ZERO, 0, loc);
  Tensor *w_noise = noise ? param(g, name, "w_noise", t2(D, dG), INIT_ZERO, 0, loc) : NULL;
  Tensor **sg = mc_calloc((size_t)G, sizeof(Tensor *)),
         **sn = mc_calloc((size_t)G, sizeof(Tensor *));
  Tensor **w1 = mc_calloc((size_t)G, sizeof(Tensor *)),
         **b1 = mc_calloc((size_t)G, sizeof(Tensor *));
  Tensor **w2 = mc_calloc((size_t)G, sizeof(Tensor *)),
         **b2 = mc_calloc((size_t)G, sizeof(Tensor *));
  for (int64_t i = 0; i < G; i++) {
    char p[64];
#define GP(part) (snprintf(p, sizeof p, "g%lld.%s", (long long)i, part), p)
    sg[i] = param(g, name, GP("w_gate"), t2(D, dE), INIT_ZERO, 0, loc);
    if (noise) sn[i] = param(g, name, GP("w_noise"), t2(D, dE), INIT_ZERO, 0, loc);
    w1[i] = param(g, name, GP("w1"), t3(dE, D, dH), INIT_UNIFORM, 1.0 / sqrt((double)D.c), loc);
    if (bias) b1[i] = param(g, name, GP("b1"), t2(dE, dH), INIT_ZERO, 0, loc);
    w2[i] = param(g, name, GP("w2"), t3(dE, dH, O), INIT_UNIFORM, 1.0 / sqrt((double)H), loc);
    if (bias) b2[i] = param(g, name, GP("b2"), t2(dE, O), INIT_ZERO, 0, loc);
#undef GP
  }

  ir_set_context(g, name, NULL, loc);
  Tensor *xr = flatten_rows(g, x); // [N, D]
  named(g, xr, name, "rows");

  /* primary gate over groups */
  ir_set_context(g, name, "gate", loc);
  Tensor *clean_p = named(g, ir_op2(g, OP_MATMUL, xr, w_gate), name, "clean"); // [N, G]
  Tensor *raw_p = noise ? named(g, ir_op2(g, OP_MATMUL, xr, w_noise), name, "raw") : NULL;
  Gate gp = gate_topk(g, name, "", clean_p, raw_p, NULL, kg); // idx/gates [N, kg]

  ir_set_context(g, name, "dispatch", loc);
  Tensor *din[2] = {xr, gp.idx};
  Node *dn = node(g, OP_DISPATCH, 2, din, G, 0);
  Tensor *xg = named(g, dn->out[0], name, "xg");           // [N*kg, D] rows by group
  Tensor *off_g = named(g, dn->out[1], name, "offsets_g"); // i32[G+1]
  Tensor *pos_g = named(g, dn->out[2], name, "pos_g");     // i32[N, kg]

  /* secondary gates: group i's gate matrices on group i's rows */
  ir_set_context(g, name, "gate", loc);
  Tensor **tmp = mc_calloc((size_t)G, sizeof(Tensor *));
  char part[64];
  for (int64_t i = 0; i < G; i++) {
    tmp[i] = ir_reshape(g, sg[i], t3(one, D, dE)); // [1, D, E]
    snprintf(part, sizeof part, "g%lld.w_gate_3d", (long long)i);
    named(g, tmp[i], name, part);
  }
  Tensor *sg_all = named(g, concat0(g, tmp, (int)G), name, "w_gate_groups"); // [G, D, E]
  Tensor *clean_s = named(g, op3a(g, OP_GROUPED_MATMUL, xg, sg_all, off_g, 0), name,
                          "clean_s"); // [N*kg, E]
  Tensor *raw_s = NULL;
  if (noise) {
    for (int64_t i = 0; i < G; i++) {
      tmp[i] = ir_reshape(g, sn[i], t3(one, D, dE));
      snprintf(part, sizeof part, "g%lld.w_noise_3d", (long long)i);
      named(g, tmp[i], name, part);
    }
    Tensor *sn_all = named(g, concat0(g, tmp, (int)G), name, "w_noise_groups"); // [G, D, E]
    raw_s = named(g, op3a(g, OP_GROUPED_MATMUL, xg, sn_all, off_g, 0), name, "raw_s");
  }
  /* the secondary noise is drawn per route (n, j), not per group-sorted row */
  Tensor *route = NULL;
  if (noise) {
    Dim r = dim_mul(xr->ty.dim[0], dim_int(kg));
    route = named(g, ir_reshape(g, pos_g, ir_type(DT_I32, 1, &r)), name, "route_rows"); // i32
  }
  Gate gs = gate_topk(g, name, "s_", clean_s, raw_s, route, k); // [N*kg, k], local ids
  Tensor *gidx = named(g, op2a(g, OP_GLOBAL_IDX, gs.idx, off_g, E), name, "s_gidx"); // i32

  ir_set_context(g, name, "dispatch", loc);
  Tensor *din2[2] = {xg, gidx};
  Node *dn2 = node(g, OP_DISPATCH, 2, din2, G * E, 0);
  Tensor *xs = named(g, dn2->out[0], name, "xs");       // [N*kg*k, D]
  Tensor *off = named(g, dn2->out[1], name, "offsets"); // i32[G*E+1]
  Tensor *pos = named(g, dn2->out[2], name, "pos");     // i32[N*kg, k]

  /* experts: the groups' weights stacked, [G*E, ...] */
  ir_set_context(g, name, "experts", loc);
  Tensor *W1 = named(g, concat0(g, w1, (int)G), name, "w1_all");               // [G*E, D, H]
  Tensor *B1 = bias ? named(g, concat0(g, b1, (int)G), name, "b1_all") : NULL; // [G*E, H]
  Tensor *W2 = named(g, concat0(g, w2, (int)G), name, "w2_all");               // [G*E, H, O]
  Tensor *B2 = bias ? named(g, concat0(g, b2, (int)G), name, "b2_all") : NULL; // [G*E, O]
  Tensor *ys = experts_ffn(g, name, xs, W1, B1, W2, B2, off);                  // [N*kg*k, O]

  ir_set_context(g, name, "combine", loc);
  Tensor *yg = named(g, op3a(g, OP_COMBINE, ys, gs.gates, pos, 0), name, "yg"); // [N*kg, O]
  Tensor *y = named(g, op3a(g, OP_COMBINE, yg, gp.gates, pos_g, 0), name, "y"); // [N, O]

  /* aux (appendix B): importance_H[i,j] = sum_x Gp(x)_i G_i(x)_j,
   * load_H[i,j] = Load_p(X)_i Load_i(X^(i))_j / |X^(i)| */
  ir_set_context(g, name, "aux", loc);
  Tensor *pg_rows = named(g, op2a(g, OP_SCATTER_POS, gp.gates, pos_g, 0), name, "pg_rows");
  Tensor *eff = named(g, op2a(g, OP_ROW_SCALE, gs.gates, pg_rows, 0), name, "gates_eff");
  Tensor *imp = named(g, op2a(g, OP_IMPORTANCE, gidx, eff, G * E), name, "importance"); // [G*E]
  Tensor *load_p, *load_s;
  if (noise) {
    Tensor *lin[4] = {gp.clean, gp.noisy, gp.sigma, gp.thr};
    load_p = ir_node(g, OP_LOAD_SMOOTH, 4, lin, NULL, NULL)->out[0]; // [G]
    Tensor *lin2[5] = {gs.clean, gs.noisy, gs.sigma, gs.thr, off_g};
    load_s = ir_node(g, OP_LOAD_SMOOTH_GROUPED, 5, lin2, NULL, NULL)->out[0]; // [G, E]
  } else {
    load_p = op1a(g, OP_LOAD_COUNT, gp.idx, G);                              // [G]
    load_s = ir_reshape(g, op1a(g, OP_LOAD_COUNT, gidx, G * E), t2(dG, dE)); // [G, E]
  }
  named(g, load_p, name, "load_primary");
  named(g, load_s, name, "load_groups");
  Tensor *frac = op2a(g, OP_DIV_GROUP_ROWS, load_s, off_g, 0); // [G, E]
  named(g, frac, name, "load_groups_frac");
  Tensor *lh = op2a(g, OP_ROW_SCALE, frac, load_p, 0); // [G, E]
  named(g, lh, name, "load_h");
  Tensor *load = named(g, ir_reshape(g, lh, t1(dim_int(G * E))), name, "load"); // [G*E]
  register_moe(g, name, imp, load, NULL);
  *aux = aux_loss(g, name, imp, load, call->argv[LA_W_IMPORTANCE], call->argv[LA_W_LOAD]);

  mc_free(sg);
  mc_free(sn);
  mc_free(w1);
  mc_free(b1);
  mc_free(w2);
  mc_free(b2);
  mc_free(tmp);
  return layer_output(g, call, name, y, x);
}
