/* test_kernels_moe.c: the MoE kernels' forward values.
 *
 *   - the moe layer (noisy top-k in training and eval, no noise, dense softmax)
 *     against a naive loop computing y = sum_i g_i * expert_i(x), importance, load
 *     and aux straight from language.md ("The MoE layer exactly");
 *   - the hmoe layer against y = sum_i Gp_i sum_j G_i,j expert_i,j(x) and the
 *     hierarchical importance / load of appendix B;
 *   - dispatch / combine / undispatch round trips and the stable expert order;
 *   - top-k ties (to the lower index), thresholds, k == E, the sorting path;
 *   - cv2 of known vectors; load_count vs the smooth estimator;
 *   - float32 vs float64 agreement and bitwise determinism. */
#include <string.h>

#include "../codegen/codegen.h"
#include "../runtime/comm.h"
#include "../runtime/fastmath.h"
#include "test.h"

/* ---------------------------------------------------------------- helpers */

static Type ty2(int64_t a, int64_t b) {
  Dim d[2] = {dim_int(a), dim_int(b)};
  return ir_type(DT_F32, 2, d);
}

static Type bt(int64_t d) {
  Dim dims[3] = {dim_sym('B'), dim_sym('T'), dim_int(d)};
  return ir_type(DT_F32, 3, dims);
}

static Tensor *find(Graph *g, const char *name) {
  for (int i = 0; i < g->ntensors; i++)
    if (!strcmp(g->tensors[i]->name, name)) return g->tensors[i];
  fprintf(stderr, "no tensor '%s'\n", name);
  exit(1);
}

/* the tensor named `name`, or NULL (a moe without expert biases has no LAYER.b1) */
static Tensor *find_opt(Graph *g, const char *name) {
  for (int i = 0; i < g->ntensors; i++)
    if (!strcmp(g->tensors[i]->name, name)) return g->tensors[i];
  return NULL;
}

static const Node *find_op(Graph *g, OpKind op, int nth) {
  for (int k = 0; k < g->nnodes; k++)
    if (g->nodes[k]->op == op && nth-- == 0) return g->nodes[k];
  fprintf(stderr, "no op %s\n", ir_ops[op].name);
  exit(1);
}

static double urand(uint64_t key, uint64_t i) {
  return 2.0 * mc_rng_uniform(key, i) - 1.0;
}

/* Fills every f32 leaf (param or input) with U(-1,1) * scale (per-name overrides by
 * the caller afterwards). Values in double first, so f32 and f64 programs agree. */
static void fill(Program *p, uint64_t seed, double scale) {
  Graph *g = p->g;
  for (int k = 0; k < g->ntensors; k++) {
    Tensor *t = g->tensors[k];
    if ((t->kind != TK_PARAM && t->kind != TK_INPUT) || t->ty.dtype != DT_F32) continue;
    uint64_t key = mc_rng_key(seed, (uint64_t)k, 99);
    for (int64_t i = 0; i < t->numel; i++) {
      double v = scale * urand(key, (uint64_t)i);
      if (p->prec == PREC_F64)
        rt_f64(p, t)[i] = v;
      else
        rt_f32(p, t)[i] = (float)v;
    }
  }
}

static void set_all(Program *p, Tensor *t, double v) {
  for (int64_t i = 0; i < t->numel; i++) {
    if (p->prec == PREC_F64)
      rt_f64(p, t)[i] = v;
    else
      rt_f32(p, t)[i] = (float)v;
  }
}

static double get(Program *p, const Tensor *t, int64_t i) {
  return p->prec == PREC_F64 ? rt_f64(p, t)[i] : (double)rt_f32(p, t)[i];
}

static KernelCtx ctx_for(bool training, uint64_t seed, uint64_t step, int64_t B) {
  KernelCtx c = {.training = training,
                 .seed = seed,
                 .step = step,
                 .batch0 = 0,
                 .batch_local = B,
                 .device = 0,
                 .ndevices = 1};
  return c;
}

/* the moe layer's bias, act and capacity arguments in layer_call (the table's defaults) */
static bool ref_bias = true;
static int ref_act = LAE_NONE;
static double ref_capacity = 0;

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
  e.argv[LA_W_IMPORTANCE] = 0.01;
  e.argv[LA_W_LOAD] = 0.02;
  e.argv[LA_NOISE] = noise;
  e.argv[LA_BIAS] = ref_bias;
  e.argv[LA_ACT] = ref_act;
  e.argv[LA_CAPACITY] = ref_capacity;
  return e;
}

static double softplus(double x) {
  return (x > 0 ? x : 0) + log1p(exp(-fabs(x)));
}
static double Phi(double z) {
  return 0.5 * erfc(-z / sqrt(2.0));
}

static double cv2_ref(const double *v, int n) {
  double m = 0, var = 0;
  for (int i = 0; i < n; i++)
    m += v[i];
  m /= n;
  for (int i = 0; i < n; i++)
    var += (v[i] - m) * (v[i] - m);
  var /= n;
  return var / (m * m + 1e-10);
}

/* Top-k of v[E] by a plain selection sort: descending, ties to the lower index. */
static void topk_ref(const double *v, int E, int m, int *out) {
  bool used[512] = {0};
  for (int j = 0; j < m; j++) {
    int best = -1;
    for (int e = 0; e < E; e++)
      if (!used[e] && (best < 0 || v[e] > v[best])) best = e;
    used[best] = true;
    out[j] = best;
  }
}

/* One noisy top-k gate on a row: logits clean[E] (+ sigma*eps), k kept; writes gates[E]
 * (zero outside the top k), P[E] (smooth load terms; 1/0 counts without noise) */
static void gate_ref(const double *clean, const double *sigma, const double *eps, int E, int k,
                     double *gates, double *P, int *kept) {
  double noisy[512];
  for (int e = 0; e < E; e++)
    noisy[e] = clean[e] + (sigma ? sigma[e] * eps[e] : 0);
  int top[512] = {0};
  int m = k < E ? k + 1 : E;
  topk_ref(noisy, E, m, top);
  double mx = noisy[top[0]], z = 0;
  for (int e = 0; e < E; e++)
    gates[e] = 0;
  for (int j = 0; j < k; j++)
    z += exp(noisy[top[j]] - mx);
  for (int j = 0; j < k; j++)
    gates[top[j]] = exp(noisy[top[j]] - mx) / z;
  for (int j = 0; j < k; j++)
    kept[j] = top[j];
  double thr0 = noisy[top[k - 1]], thr1 = k < E ? noisy[top[k]] : -INFINITY;
  for (int e = 0; e < E; e++) {
    if (!sigma) {
      P[e] = gates[e] > 0 || (k == E) ? 1 : 0;
      continue;
    }
    double t = noisy[e] > thr1 ? thr1 : thr0;
    P[e] = Phi((clean[e] - t) / sigma[e]);
  }
}

/* expert e of a moe: relu(x.w1[e] + b1[e]).w2[e] + b2[e], x[D] -> out[O] */
static void expert_ref(Program *p, const char *pre, int e, const double *x, int D, int H, int O,
                       double *out) {
  char nm[128];
  snprintf(nm, sizeof nm, "%s.w1", pre);
  Tensor *w1 = find(p->g, nm);
  snprintf(nm, sizeof nm, "%s.b1", pre);
  Tensor *b1 = find_opt(p->g, nm);
  snprintf(nm, sizeof nm, "%s.w2", pre);
  Tensor *w2 = find(p->g, nm);
  snprintf(nm, sizeof nm, "%s.b2", pre);
  Tensor *b2 = find_opt(p->g, nm);
  double h[256];
  for (int j = 0; j < H; j++) {
    double s = b1 ? get(p, b1, e * H + j) : 0;
    for (int d = 0; d < D; d++)
      s += x[d] * get(p, w1, ((int64_t)e * D + d) * H + j);
    h[j] = s > 0 ? s : 0;
  }
  for (int o = 0; o < O; o++) {
    double s = b2 ? get(p, b2, e * O + o) : 0;
    for (int j = 0; j < H; j++)
      s += h[j] * get(p, w2, ((int64_t)e * H + j) * O + o);
    out[o] = s;
  }
}

/* x[D] . W[D, E] */
static void rowmat(Program *p, const Tensor *w, const double *x, int D, int E, double *out) {
  for (int e = 0; e < E; e++) {
    double s = 0;
    for (int d = 0; d < D; d++)
      s += x[d] * get(p, w, (int64_t)d * E + e);
    out[e] = s;
  }
}

/* ---------------------------------------------------------------- moe vs reference */

typedef struct MoeRun {
  Graph *g;
  Program *p;
  Tensor *y, *aux;
} MoeRun;

static MoeRun moe_run(int gating, bool noise, int E, int k, Precision prec, bool training,
                      uint64_t step, int64_t B, int64_t T) {
  MoeRun r;
  r.g = ir_graph_new("moe");
  Expr e = layer_call(L_MOE, E, k, 6, gating, noise);
  Tensor *x = ir_input(r.g, "x", bt(5), (Loc){0});
  r.y = ir_build_moe(r.g, &e, x, "m", &r.aux);
  ir_bind(r.g, B, T);
  ir_verify(r.g);
  r.p = cg_lower(r.g, prec);
  fill(r.p, 21, 1.0);
  KernelCtx c = ctx_for(training, 77, step, B);
  rt_exec(r.p, &c, 0, r.p->ninstrs);
  return r;
}

static void moe_free(MoeRun *r) {
  cg_program_free(r->p);
  ir_graph_free(r->g);
}

static void t_moe_reference(const char *what, int gating, bool noise, bool training, int E, int k) {
  const int64_t B = 3, T = 4, N = B * T;
  const int D = 5, H = 6, O = 5;
  MoeRun r = moe_run(gating, noise, E, k, PREC_F64, training, 2, B, T);
  Program *p = r.p;
  Graph *g = r.g;
  if (gating == LAE_SOFTMAX) k = E;
  Tensor *x = find(g, "x"), *wg = find(g, "m.w_gate");
  Tensor *wn = noise ? find(g, "m.w_noise") : NULL;
  uint64_t stream = noise ? (uint64_t)find_op(g, OP_NOISE, 0)->ia[0] : 0;
  uint64_t key = mc_rng_key(77, stream, 2);
  double imp[64] = {0}, load[64] = {0}, maxd = 0;
  /* capacity: every row's routes first, then each expert keeps its first cap routes in
   * (choice, row) order */
  static bool keep[64][64];
  int dropped = 0;
  for (int64_t n = 0; n < N; n++)
    for (int j = 0; j < k; j++)
      keep[n][j] = true;
  if (ref_capacity > 0) {
    int route[64][64], used[64] = {0};
    int64_t cap = (int64_t)ceil(ref_capacity * k * N / E - 1e-9);
    for (int64_t n = 0; n < N; n++) {
      double xr[16], clean[64], raw[64], sigma[64], eps[64], gates[64], P[64];
      for (int d = 0; d < D; d++)
        xr[d] = get(p, x, n * D + d);
      rowmat(p, wg, xr, D, E, clean);
      if (noise) {
        rowmat(p, wn, xr, D, E, raw);
        for (int e = 0; e < E; e++) {
          sigma[e] = softplus(raw[e]) + 0.01;
          eps[e] = training ? rt_noise_normal(key, (uint64_t)(n * E + e)) : 0;
        }
      }
      gate_ref(clean, noise ? sigma : NULL, eps, E, k, gates, P, route[n]);
    }
    for (int j = 0; j < k; j++)
      for (int64_t n = 0; n < N; n++) {
        keep[n][j] = used[route[n][j]] < cap;
        used[route[n][j]] += keep[n][j];
        dropped += !keep[n][j];
      }
    Tensor *td = find(g, "m.drop");
    double got = 0;
    for (int e = 0; e < E; e++)
      got += get(p, td, e);
    CHECK_CLOSE(got, (double)dropped / (double)(N * k), 1e-12, 0);
    CHECK(g->moe_drop && g->moe_drop[0] == td);
  }
  for (int64_t n = 0; n < N; n++) {
    double xr[16], clean[64], raw[64], sigma[64], eps[64], gates[64], P[64], out[16], yr[16];
    int kept[64];
    for (int d = 0; d < D; d++)
      xr[d] = get(p, x, n * D + d);
    rowmat(p, wg, xr, D, E, clean);
    if (noise) {
      rowmat(p, wn, xr, D, E, raw);
      for (int e = 0; e < E; e++) {
        sigma[e] = softplus(raw[e]) + 0.01;
        eps[e] = training ? rt_noise_normal(key, (uint64_t)(n * E + e)) : 0;
      }
    }
    gate_ref(clean, noise ? sigma : NULL, eps, E, k, gates, P, kept);
    for (int o = 0; o < O; o++)
      yr[o] = 0;
    for (int j = 0; j < k; j++) {
      if (!keep[n][j]) continue; /* dropped: beyond its expert's capacity */
      expert_ref(p, "m", kept[j], xr, D, H, O, out);
      for (int o = 0; o < O; o++)
        yr[o] += gates[kept[j]] * out[o];
    }
    for (int e = 0; e < E; e++) {
      imp[e] += gates[e];
      load[e] += P[e];
    }
    for (int o = 0; o < O; o++) {
      double want = ref_act == LAE_SIGMOID ? 1 / (1 + exp(-yr[o])) : yr[o];
      maxd = fmax(maxd, fabs(want - get(p, r.y, n * O + o)));
    }
  }
  printf("moe %-16s max |y - ref| = %.3g%s\n", what, maxd, ref_capacity > 0 ? "" : "");
  if (ref_capacity > 0) printf("    %d of %lld routes dropped\n", dropped, (long long)(N * k));
  CHECK(maxd < 1e-12);
  Tensor *ti = find(g, "m.importance"), *tl = find(g, "m.load");
  for (int e = 0; e < E; e++) {
    CHECK_CLOSE(get(p, ti, e), imp[e], 1e-12, 1e-12);
    CHECK_CLOSE(get(p, tl, e), load[e], 1e-12, 1e-12);
  }
  double aux = 0.01 * cv2_ref(imp, E) + 0.02 * cv2_ref(load, E);
  CHECK_CLOSE(get(p, r.aux, 0), aux, 1e-10, 1e-14);
  CHECK(g->nmoe == 1 && g->moe_importance[0] == ti && g->moe_load[0] == tl);
  /* the output keeps x's leading dims */
  CHECK(r.y->ty.rank == 3 && r.y->shape[0] == B && r.y->shape[1] == T && r.y->shape[2] == O);
  moe_free(&r);
}

/* ---------------------------------------------------------------- hmoe vs reference */

static void t_hmoe_reference(const char *what, bool noise, bool training) {
  const int64_t B = 2, T = 5, N = B * T;
  const int D = 4, H = 3, O = 4, G = 3, E = 4, KG = 2, k = 2;
  Graph *g = ir_graph_new("hmoe");
  Expr e = layer_call(L_HMOE, E, k, H, LAE_NOISY_TOPK, noise);
  e.argv[LA_GROUPS] = G;
  e.argv[LA_K_GROUP] = KG;
  Tensor *x = ir_input(g, "x", bt(D), (Loc){0});
  Tensor *aux;
  Tensor *y = ir_build_hmoe(g, &e, x, "h", &aux);
  ir_bind(g, B, T);
  ir_verify(g);
  Program *p = cg_lower(g, PREC_F64);
  fill(p, 5, 1.0);
  KernelCtx c = ctx_for(training, 13, 0, B);
  rt_exec(p, &c, 0, p->ninstrs);

  const Node *nz0 = noise ? find_op(g, OP_NOISE, 0) : NULL,
             *nz1 = noise ? find_op(g, OP_NOISE, 1) : NULL;
  uint64_t k0 = noise ? mc_rng_key(13, (uint64_t)nz0->ia[0], 0) : 0;
  uint64_t k1 = noise ? mc_rng_key(13, (uint64_t)nz1->ia[0], 0) : 0;
  /* the secondary noise is drawn per route (n, j): counter (n*KG + j)*E + e */
  double imp[64] = {0}, lp[8] = {0}, ls[8][16] = {{0}}, rows[8] = {0}, maxd = 0;
  for (int64_t n = 0; n < N; n++) {
    double xr[8], cl[8], rw[8], sg[8], ep[8], gp[8], Pp[8], yr[8] = {0};
    int kp[8];
    for (int d = 0; d < D; d++)
      xr[d] = get(p, x, n * D + d);
    rowmat(p, find(g, "h.w_gate"), xr, D, G, cl);
    if (noise) {
      rowmat(p, find(g, "h.w_noise"), xr, D, G, rw);
      for (int i = 0; i < G; i++) {
        sg[i] = softplus(rw[i]) + 0.01;
        ep[i] = training ? rt_noise_normal(k0, (uint64_t)(n * G + i)) : 0;
      }
    }
    gate_ref(cl, noise ? sg : NULL, ep, G, KG, gp, Pp, kp);
    for (int i = 0; i < G; i++)
      lp[i] += Pp[i];
    for (int jj = 0; jj < KG; jj++) {
      int i = kp[jj];
      char nm[64];
      double cs[8], rs[8], ss[8], es[8], gs[8], Ps[8], out[8];
      int ks[8];
      snprintf(nm, sizeof nm, "h.g%d.w_gate", i);
      rowmat(p, find(g, nm), xr, D, E, cs);
      if (noise) {
        snprintf(nm, sizeof nm, "h.g%d.w_noise", i);
        rowmat(p, find(g, nm), xr, D, E, rs);
        for (int j = 0; j < E; j++) {
          ss[j] = softplus(rs[j]) + 0.01;
          es[j] = training ? rt_noise_normal(k1, (uint64_t)((n * KG + jj) * E + j)) : 0;
        }
      }
      gate_ref(cs, noise ? ss : NULL, es, E, k, gs, Ps, ks);
      rows[i] += 1;
      for (int j = 0; j < E; j++) {
        imp[i * E + j] += gp[i] * gs[j];
        ls[i][j] += Ps[j];
      }
      snprintf(nm, sizeof nm, "h.g%d", i);
      for (int jj2 = 0; jj2 < k; jj2++) {
        expert_ref(p, nm, ks[jj2], xr, D, H, O, out);
        for (int o = 0; o < O; o++)
          yr[o] += gp[i] * gs[ks[jj2]] * out[o];
      }
    }
    for (int o = 0; o < O; o++)
      maxd = fmax(maxd, fabs(yr[o] - get(p, y, n * O + o)));
  }
  printf("hmoe %-15s max |y - ref| = %.3g\n", what, maxd);
  CHECK(maxd < 1e-12);
  double load[64];
  for (int i = 0; i < G; i++)
    for (int j = 0; j < E; j++)
      load[i * E + j] = lp[i] * ls[i][j] / fmax(rows[i], 1);
  Tensor *ti = find(g, "h.importance"), *tl = find(g, "h.load");
  for (int q = 0; q < G * E; q++) {
    CHECK_CLOSE(get(p, ti, q), imp[q], 1e-12, 1e-12);
    CHECK_CLOSE(get(p, tl, q), load[q], 1e-12, 1e-12);
  }
  CHECK_CLOSE(get(p, aux, 0), 0.01 * cv2_ref(imp, G * E) + 0.02 * cv2_ref(load, G * E), 1e-10,
              1e-14);
  cg_program_free(p);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- batchwise vs reference */

/* gs = softmax(x.w_gate); training: expert e keeps its m = floor(k*N/E) largest gs[:,e]
 * (ties to the lower row); eval: row n takes the experts with gs > threshold[e], at most
 * its k largest (ties to the lower expert), whatever the other rows;
 * G = gs*mask normalised per row; y = sum_e G[n,e] expert_e(x[n]); importance =
 * sum_n G, load = sum_n mask; aux adds the threshold loss (1/N) sum (Mthr - M)(gs - T). */
static void t_batchwise_reference(const char *what, bool training, int64_t B, int64_t T) {
  const int64_t N = B * T;
  const int D = 5, H = 6, O = 5, E = 4, k = 2;
  Graph *g = ir_graph_new("bw");
  Expr ex = layer_call(L_MOE, E, k, H, LAE_BATCHWISE, true);
  Tensor *x = ir_input(g, "x", bt(D), (Loc){0}), *aux;
  Tensor *y = ir_build_moe(g, &ex, x, "m", &aux);
  CHECK(find(g, "m.thresholds")->kind == TK_PARAM);
  ir_bind(g, B, T);
  Program *p = cg_lower(g, PREC_F64);
  fill(p, 31, 1.0);
  Tensor *thr = find(g, "m.thresholds");
  for (int e = 0; e < E; e++)
    rt_f64(p, thr)[e] = 0.12 + 0.05 * e; /* below 1/E: some rows pass more than k */
  KernelCtx c = ctx_for(training, 1, 0, B);
  rt_exec(p, &c, 0, p->ninstrs);
  int64_t m = k * N / E;
  static double gs[512][4], mask[512][4];
  for (int64_t n = 0; n < N; n++) {
    double xr[8], cl[4], mx = -INFINITY, z = 0;
    for (int d = 0; d < D; d++)
      xr[d] = get(p, x, n * D + d);
    rowmat(p, find(g, "m.w_gate"), xr, D, E, cl);
    for (int e = 0; e < E; e++)
      mx = fmax(mx, cl[e]);
    for (int e = 0; e < E; e++)
      z += exp(cl[e] - mx);
    for (int e = 0; e < E; e++)
      gs[n][e] = exp(cl[e] - mx) / z, mask[n][e] = 0;
  }
  double load[4] = {0}, imp[4] = {0}, tl = 0, maxd = 0;
  for (int e = 0; e < E && training; e++) {
    double col[512];
    int ord[512], taken = 0;
    for (int64_t n = 0; n < N; n++)
      col[n] = gs[n][e];
    topk_ref(col, (int)N, (int)N, ord);
    for (int j = 0; j < N && taken < m; j++)
      mask[ord[j]][e] = 1, taken++;
  }
  int passed_more = 0; /* rows over more than k thresholds: the cap at k is exercised */
  for (int64_t n = 0; n < N && !training; n++) {
    double row[4];
    int ord[4], over = 0;
    for (int e = 0; e < E; e++) {
      row[e] = gs[n][e] > get(p, thr, e) ? gs[n][e] : -INFINITY;
      over += row[e] > -INFINITY;
    }
    passed_more += over > k;
    topk_ref(row, E, E, ord);
    for (int j = 0; j < k; j++)
      if (row[ord[j]] > -INFINITY) mask[n][ord[j]] = 1;
  }
  for (int64_t n = 0; n < N; n++)
    for (int e = 0; e < E; e++)
      load[e] += mask[n][e];
  for (int64_t n = 0; n < N; n++) {
    double S = 0, yr[8] = {0}, out[8];
    for (int e = 0; e < E; e++)
      S += gs[n][e] * mask[n][e];
    for (int e = 0; e < E; e++) {
      double G = S > 0 ? gs[n][e] * mask[n][e] / S : 0;
      imp[e] += G;
      double tv = get(p, thr, e);
      tl += ((gs[n][e] > tv ? 1.0 : 0.0) - mask[n][e]) * (gs[n][e] - tv) / (double)N;
      if (mask[n][e] == 0) continue;
      double xr[8];
      for (int d = 0; d < D; d++)
        xr[d] = get(p, x, n * D + d);
      expert_ref(p, "m", e, xr, D, H, O, out);
      for (int o = 0; o < O; o++)
        yr[o] += G * out[o];
    }
    for (int o = 0; o < O; o++)
      maxd = fmax(maxd, fabs(yr[o] - get(p, y, n * O + o)));
  }
  printf("batchwise %-10s max |y - ref| = %.3g, m = %lld, rows over > k thresholds %d\n", what,
         maxd, (long long)m, passed_more);
  CHECK(maxd < 1e-12);
  CHECK(training || passed_more > 0); /* the cap at k per row is exercised */
  for (int e = 0; e < E; e++) {
    CHECK_CLOSE(get(p, find(g, "m.load"), e), load[e], 0, 0);
    CHECK_CLOSE(get(p, find(g, "m.importance"), e), imp[e], 1e-12, 1e-12);
    if (training) CHECK(load[e] == m); /* strictly balanced */
  }
  double want = 0.01 * cv2_ref(imp, E) + 0.02 * cv2_ref(load, E) + tl;
  CHECK_CLOSE(get(p, aux, 0), want, 1e-10, 1e-14);
  cg_program_free(p);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- device split */

/* A layer's output rows do not depend on how the batch is split over devices: the
 * second half of a [4, T] batch run alone as a device with batch0 = 2 gives the same
 * rows, gate noise included (the counters are global element indices; hmoe draws its
 * secondary noise per route, not per group-sorted row). */
static void t_split_invariance(int layer) {
  const int64_t T = 3, D = 5;
  Program *p[2];
  Graph *gr[2];
  Tensor *y[2], *x[2];
  for (int h = 0; h < 2; h++) {
    int64_t B = h ? 2 : 4;
    gr[h] = ir_graph_new("split");
    Expr e = layer_call(layer, 4, 2, 3, LAE_NOISY_TOPK, true);
    e.argv[LA_GROUPS] = 3;
    e.argv[LA_K_GROUP] = 2;
    x[h] = ir_input(gr[h], "x", bt(D), (Loc){0});
    Tensor *aux;
    y[h] = layer == L_MOE ? ir_build_moe(gr[h], &e, x[h], "m", &aux)
                          : ir_build_hmoe(gr[h], &e, x[h], "m", &aux);
    ir_bind(gr[h], B, T);
    p[h] = cg_lower(gr[h], PREC_F64);
    fill(p[h], 17, 1.0);
  }
  /* the half device gets rows 2..3 of the full batch */
  memcpy(rt_f64(p[1], x[1]), rt_f64(p[0], x[0]) + 2 * T * D, (size_t)(2 * T * D) * sizeof(double));
  KernelCtx c0 = ctx_for(true, 5, 1, 4), c1 = ctx_for(true, 5, 1, 2);
  c1.batch0 = 2;
  c1.device = 1;
  c1.ndevices = 2;
  rt_exec(p[0], &c0, 0, p[0]->ninstrs);
  rt_exec(p[1], &c1, 0, p[1]->ninstrs);
  int64_t half = y[1]->numel;
  double maxd = 0;
  for (int64_t i = 0; i < half; i++)
    maxd = fmax(maxd, fabs(rt_f64(p[1], y[1])[i] - rt_f64(p[0], y[0])[half + i]));
  printf("%s split over 2 devices: max |y - y_1dev| = %.3g\n", layer == L_MOE ? "moe" : "hmoe",
         maxd);
  CHECK(maxd < 1e-14);
  for (int h = 0; h < 2; h++) {
    cg_program_free(p[h]);
    ir_graph_free(gr[h]);
  }
}

/* ---------------------------------------------------------------- small graphs */

typedef struct Small {
  Graph *g;
  Program *p;
} Small;

static Small small_lower(Graph *g, Precision prec) {
  ir_bind(g, 1, 1);
  ir_verify(g);
  Small s = {g, cg_lower(g, prec)};
  return s;
}

static void small_free(Small *s) {
  cg_program_free(s->p);
  ir_graph_free(s->g);
}

static void small_run(Small *s) {
  KernelCtx c = ctx_for(false, 1, 0, 1);
  rt_exec(s->p, &c, 0, s->p->ninstrs);
}

static Node *topk_node(Graph *g, Tensor *x, int k) {
  int64_t ia[IR_MAX_ATTR] = {k};
  Tensor *in[1] = {x};
  return ir_node(g, OP_TOPK, 1, in, ia, NULL);
}

static void t_topk_ties(void) {
  Graph *g = ir_graph_new("ties");
  Tensor *x = ir_input(g, "x", ty2(3, 5), (Loc){0});
  Node *t2 = topk_node(g, x, 2), *t5 = topk_node(g, x, 5);
  Small s = small_lower(g, PREC_F64);
  const double v[15] = {1, 3, 3, 2, 3, /**/ 0, 0, 0, 0, 0, /**/ -1, 5, -2, 5, 4};
  memcpy(rt_f64(s.p, x), v, sizeof v);
  small_run(&s);
  const int32_t *idx = rt_i32(s.p, t2->out[0]), *ti = rt_i32(s.p, t2->out[3]);
  const double *val = rt_f64(s.p, t2->out[1]), *thr = rt_f64(s.p, t2->out[2]);
  const int32_t want_idx[6] = {1, 2, 0, 1, 1, 3}, want_ti[6] = {2, 4, 1, 2, 3, 4};
  const double want_thr[6] = {3, 3, 0, 0, 5, 4};
  for (int i = 0; i < 6; i++) {
    CHECK(idx[i] == want_idx[i]);
    CHECK(ti[i] == want_ti[i]);
    CHECK(thr[i] == want_thr[i]);
    CHECK(val[i] == v[(i / 2) * 5 + idx[i]]);
  }
  /* k == E: a full descending order, thr[1] = -inf and column -1 */
  const int32_t *i5 = rt_i32(s.p, t5->out[0]), *ti5 = rt_i32(s.p, t5->out[3]);
  const double *th5 = rt_f64(s.p, t5->out[2]);
  const int32_t want5[15] = {1, 2, 4, 3, 0, 0, 1, 2, 3, 4, 1, 3, 4, 0, 2};
  for (int i = 0; i < 15; i++)
    CHECK(i5[i] == want5[i]);
  for (int r = 0; r < 3; r++) {
    CHECK(isinf(th5[r * 2 + 1]) && th5[r * 2 + 1] < 0);
    CHECK(ti5[r * 2 + 1] == -1);
    CHECK(ti5[r * 2] == i5[r * 5 + 4]);
  }
  small_free(&s);
}

/* The sorting path (k+1 > 24) against the selection reference, with many ties. */
static void t_topk_large(void) {
  const int R = 6, E = 60;
  Graph *g = ir_graph_new("topk_large");
  Tensor *x = ir_input(g, "x", ty2(R, E), (Loc){0});
  Node *ta = topk_node(g, x, 30), *tb = topk_node(g, x, 7), *tc = topk_node(g, x, 60);
  Small s = small_lower(g, PREC_F32);
  float *xv = rt_f32(s.p, x);
  for (int i = 0; i < R * E; i++)
    xv[i] = (float)floor(8 * mc_rng_uniform(5, (uint64_t)i));
  small_run(&s);
  const Node *nodes[3] = {ta, tb, tc};
  for (int q = 0; q < 3; q++) {
    int k = (int)nodes[q]->ia[0], m = k < E ? k + 1 : E;
    const int32_t *idx = rt_i32(s.p, nodes[q]->out[0]), *ti = rt_i32(s.p, nodes[q]->out[3]);
    int bad = 0;
    for (int r = 0; r < R; r++) {
      double v[64];
      int ref[64] = {0};
      for (int e = 0; e < E; e++)
        v[e] = xv[r * E + e];
      topk_ref(v, E, m, ref);
      for (int j = 0; j < k; j++)
        bad += idx[r * k + j] != ref[j];
      bad += ti[r * 2] != ref[k - 1];
      bad += ti[r * 2 + 1] != (k < E ? ref[k] : -1);
    }
    CHECK(bad == 0);
  }
  small_free(&s);
}

static void t_cv2_known(void) {
  Graph *g = ir_graph_new("cv2");
  Dim d4 = dim_int(4), d2 = dim_int(2);
  Tensor *a = ir_input(g, "a", ir_type(DT_F32, 1, &d4), (Loc){0});
  Tensor *b = ir_input(g, "b", ir_type(DT_F32, 1, &d4), (Loc){0});
  Tensor *z = ir_input(g, "z", ir_type(DT_F32, 1, &d2), (Loc){0});
  Tensor *ca = ir_op1(g, OP_CV2, a), *cb = ir_op1(g, OP_CV2, b), *cz = ir_op1(g, OP_CV2, z);
  Small s = small_lower(g, PREC_F64);
  const double av[4] = {2, 2, 2, 2}, bv[4] = {0, 0, 0, 4}, zv[2] = {0, 0};
  memcpy(rt_f64(s.p, a), av, sizeof av);
  memcpy(rt_f64(s.p, b), bv, sizeof bv);
  memcpy(rt_f64(s.p, z), zv, sizeof zv);
  small_run(&s);
  CHECK(rt_f64(s.p, ca)[0] == 0);
  CHECK_CLOSE(rt_f64(s.p, cb)[0], 3.0 / (1.0 + 1e-10), 1e-15, 0); /* mean 1, var 3 */
  CHECK(rt_f64(s.p, cz)[0] == 0);                                 /* 0 / 1e-10 */
  small_free(&s);
}

/* dispatch -> combine with unit gates = k*x; undispatch likewise; the dispatched rows
 * are grouped by expert, stable in (n, j); offsets count the routes; load_count and
 * importance agree with direct counts. */
static void t_dispatch_roundtrip(void) {
  const int N = 11, D = 3, E = 5, k = 3;
  Graph *g = ir_graph_new("dispatch");
  Tensor *x = ir_input(g, "x", ty2(N, D), (Loc){0}), *lg = ir_input(g, "lg", ty2(N, E), (Loc){0});
  Tensor *ones = ir_input(g, "ones", ty2(N, k), (Loc){0});
  Node *tk = topk_node(g, lg, k);
  Tensor *din[2] = {x, tk->out[0]};
  int64_t iaE[IR_MAX_ATTR] = {E};
  Node *dn = ir_node(g, OP_DISPATCH, 2, din, iaE, NULL);
  Tensor *cin[3] = {dn->out[0], ones, dn->out[2]};
  Tensor *y = ir_node(g, OP_COMBINE, 3, cin, NULL, NULL)->out[0];
  Tensor *ux = ir_op2(g, OP_UNDISPATCH, dn->out[0], dn->out[2]);
  Tensor *iin[2] = {tk->out[0], ones};
  Tensor *imp = ir_node(g, OP_IMPORTANCE, 2, iin, iaE, NULL)->out[0];
  Tensor *lin[1] = {tk->out[0]};
  Tensor *cnt = ir_node(g, OP_LOAD_COUNT, 1, lin, iaE, NULL)->out[0];
  /* expert E-1 gets no rows: its weight gradient and bias sum must be exact zeros */
  Tensor *gy = ir_input(g, "gy", ty2(N * k, 2), (Loc){0});
  Tensor *dwin[3] = {dn->out[0], gy, dn->out[1]};
  Tensor *dw = ir_node(g, OP_GROUPED_MATMUL_DW, 3, dwin, NULL, NULL)->out[0]; // [E, D, 2]
  Tensor *sr = ir_op2(g, OP_GROUPED_SUM_ROWS, gy, dn->out[1]);                // [E, 2]
  Small s = small_lower(g, PREC_F64);
  fill(s.p, 3, 1.0);
  set_all(s.p, ones, 1.0);
  for (int n = 0; n < N; n++)
    rt_f64(s.p, lg)[n * E + E - 1] = -10;
  for (int64_t i = 0; i < dw->numel; i++)
    rt_f64(s.p, dw)[i] = NAN; /* must be overwritten */
  small_run(&s);
  for (int i = 0; i < D * 2; i++)
    CHECK(rt_f64(s.p, dw)[(E - 1) * D * 2 + i] == 0);
  for (int i = 0; i < 2; i++)
    CHECK(rt_f64(s.p, sr)[(E - 1) * 2 + i] == 0);
  {
    /* expert 0's dW against a direct sum over its rows */
    const int32_t *o = rt_i32(s.p, dn->out[1]);
    double maxd = 0;
    for (int d = 0; d < D; d++)
      for (int c = 0; c < 2; c++) {
        double acc = 0;
        for (int r = o[0]; r < o[1]; r++)
          acc += rt_f64(s.p, dn->out[0])[r * D + d] * rt_f64(s.p, gy)[r * 2 + c];
        maxd = fmax(maxd, fabs(acc - rt_f64(s.p, dw)[d * 2 + c]));
      }
    CHECK(maxd < 1e-13);
  }
  const int32_t *idx = rt_i32(s.p, tk->out[0]), *off = rt_i32(s.p, dn->out[1]);
  const int32_t *pos = rt_i32(s.p, dn->out[2]);
  const double *xv = rt_f64(s.p, x), *xs = rt_f64(s.p, dn->out[0]);
  int counts[8] = {0};
  for (int i = 0; i < N * k; i++)
    counts[idx[i]]++;
  CHECK(off[0] == 0 && off[E] == N * k && off[E] == off[E - 1]);
  int bad = 0;
  for (int e = 0; e < E; e++) {
    bad += off[e + 1] - off[e] != counts[e];
    CHECK(rt_f64(s.p, cnt)[e] == counts[e]);
    CHECK(rt_f64(s.p, imp)[e] == counts[e]);
  }
  int last_row[8];
  for (int e = 0; e < E; e++)
    last_row[e] = -1;
  for (int n = 0; n < N; n++)
    for (int j = 0; j < k; j++) {
      int e = idx[n * k + j], p = pos[n * k + j];
      bad += p < off[e] || p >= off[e + 1]; /* in its expert's block */
      bad += p <= last_row[e];              /* stable: increasing in (n, j) */
      last_row[e] = p;
      for (int d = 0; d < D; d++)
        bad += xs[p * D + d] != xv[n * D + d];
    }
  CHECK(bad == 0);
  double maxd = 0;
  for (int i = 0; i < N * D; i++) {
    maxd = fmax(maxd, fabs(rt_f64(s.p, y)[i] - k * xv[i]));
    maxd = fmax(maxd, fabs(rt_f64(s.p, ux)[i] - k * xv[i]));
  }
  CHECK(maxd < 1e-14);
  small_free(&s);
}

/* The grouped GEMMs at every row count an expert may get, against a direct sum in
 * double: experts of 0..17 rows and one of 40 (the few-row kernels, small_mm and
 * small_mm_tw to 16 rows, small_dw to 8, and sgemm past them), odd K and M (the kernels' vector
 * tails), W as [E,K,M] and transposed [E,M,K], and dW; the few-row experts' dW bit for
 * bit against the in-order sum. */
static void t_grouped_gemm_rows(Precision prec) {
  enum { E = 19, K = 21, M = 37 };
  int32_t offv[E + 1] = {0};
  for (int e = 0; e < E; e++)
    offv[e + 1] = offv[e] + (e < E - 1 ? e : 40);
  const int R = offv[E];
  Graph *g = ir_graph_new("grouped_rows");
  Dim dw3[3] = {dim_int(E), dim_int(K), dim_int(M)}, dt3[3] = {dim_int(E), dim_int(M), dim_int(K)};
  Dim doff = dim_int(E + 1);
  Tensor *xs = ir_input(g, "xs", ty2(R, K), (Loc){0}), *gy = ir_input(g, "gy", ty2(R, M), (Loc){0});
  Tensor *w = ir_input(g, "w", ir_type(DT_F32, 3, dw3), (Loc){0});
  Tensor *wt = ir_input(g, "wt", ir_type(DT_F32, 3, dt3), (Loc){0});
  Tensor *off = ir_input(g, "off", ir_type(DT_I32, 1, &doff), (Loc){0});
  int64_t tw[IR_MAX_ATTR] = {1};
  Tensor *in1[3] = {xs, w, off}, *in2[3] = {xs, wt, off}, *in3[3] = {xs, gy, off};
  Tensor *y = ir_node(g, OP_GROUPED_MATMUL, 3, in1, NULL, NULL)->out[0];     /* [R, M] */
  Tensor *yt = ir_node(g, OP_GROUPED_MATMUL, 3, in2, tw, NULL)->out[0];      /* [R, M] */
  Tensor *dw = ir_node(g, OP_GROUPED_MATMUL_DW, 3, in3, NULL, NULL)->out[0]; /* [E, K, M] */
  Small s = small_lower(g, prec);
  fill(s.p, 11, 1.0);
  memcpy(rt_i32(s.p, off), offv, sizeof offv);
  small_run(&s);
  double ey = 0, eyt = 0, edw = 0, big = 0;
  for (int e = 0; e < E; e++) {
    for (int r = offv[e]; r < offv[e + 1]; r++)
      for (int c = 0; c < M; c++) {
        double a = 0, b = 0;
        for (int k = 0; k < K; k++) {
          a += get(s.p, xs, r * K + k) * get(s.p, w, (e * K + k) * M + c);
          b += get(s.p, xs, r * K + k) * get(s.p, wt, (e * M + c) * K + k);
        }
        ey = fmax(ey, fabs(a - get(s.p, y, r * M + c)));
        eyt = fmax(eyt, fabs(b - get(s.p, yt, r * M + c)));
        big = fmax(big, fmax(fabs(a), fabs(b)));
      }
    for (int k = 0; k < K; k++)
      for (int c = 0; c < M; c++) {
        double a = 0;
        for (int r = offv[e]; r < offv[e + 1]; r++)
          a += get(s.p, xs, r * K + k) * get(s.p, gy, r * M + c);
        edw = fmax(edw, fabs(a - get(s.p, dw, (e * K + k) * M + c)));
      }
  }
  /* the few-row experts' dW (small_dw, also the fold's): each element its rows summed in
   * order, from 0, in the precision's own arithmetic: the same bits */
  int64_t differ = 0, summed = 0;
  for (int e = 0; e < E; e++) {
    if (offv[e + 1] - offv[e] > RT_FOLD_ROWS) continue;
    for (int k = 0; k < K; k++)
      for (int c = 0; c < M; c++, summed++) {
        if (prec == PREC_F64) {
          volatile double t = 0;
          for (int r = offv[e]; r < offv[e + 1]; r++)
            t += rt_f64(s.p, xs)[r * K + k] * rt_f64(s.p, gy)[r * M + c];
          differ += t != rt_f64(s.p, dw)[(e * K + k) * M + c];
        } else {
          volatile float t = 0;
          for (int r = offv[e]; r < offv[e + 1]; r++)
            t += rt_f32(s.p, xs)[r * K + k] * rt_f32(s.p, gy)[r * M + c];
          differ += t != rt_f32(s.p, dw)[(e * K + k) * M + c];
        }
      }
  }
  CHECK(summed > 0 && differ == 0);
  double tol = prec == PREC_F32 ? 1e-5 : 1e-13;
  printf("grouped GEMMs by rows (%s): max |err| y %.3g, y^T %.3g, dW %.3g (max |y| %.3g)\n",
         prec == PREC_F32 ? "f32" : "f64", ey, eyt, edw, big);
  CHECK(ey <= tol * big && eyt <= tol * big && edw <= tol * big);
  small_free(&s);
}

/* grouped_matmul_relu_bwd (h, g, W^T, offsets) = relu_bwd(grouped_matmul(g, W^T){transW},
 * h) bit for bit: experts of 0..17 rows (small_mm_tw) and one of 1000 (sgemm, in two
 * column pieces of 208 and 192 columns: the mask's words cross a piece), padding rows
 * past offsets[E], h with zeros and negative zeros; also written over h (the memory
 * plan's in-place form: the kernel called with its output at h's bytes). */
static void t_grouped_matmul_relu_bwd(Precision prec) {
  enum { E = 19, K = 100, M = 400, PAD = 5 };
  int32_t offv[E + 1] = {0};
  for (int e = 0; e < E; e++)
    offv[e + 1] = offv[e] + (e < E - 1 ? e : 1000);
  const int R = offv[E] + PAD;
  Graph *g = ir_graph_new("gmm_relu_bwd");
  Dim dt3[3] = {dim_int(E), dim_int(M), dim_int(K)}, doff = dim_int(E + 1);
  Tensor *h = ir_input(g, "h", ty2(R, M), (Loc){0}), *gy = ir_input(g, "gy", ty2(R, K), (Loc){0});
  Tensor *wt = ir_input(g, "wt", ir_type(DT_F32, 3, dt3), (Loc){0});
  Tensor *off = ir_input(g, "off", ir_type(DT_I32, 1, &doff), (Loc){0});
  int64_t tw[IR_MAX_ATTR] = {1};
  Tensor *in1[3] = {gy, wt, off};
  Tensor *dh = ir_node(g, OP_GROUPED_MATMUL, 3, in1, tw, NULL)->out[0]; /* [R, M] */
  Tensor *in2[2] = {dh, h}, *in4[4] = {h, gy, wt, off};
  Tensor *rb = ir_node(g, OP_RELU_BWD, 2, in2, NULL, NULL)->out[0];
  Node *fn = ir_node(g, OP_GROUPED_MATMUL_RELU_BWD, 4, in4, NULL, NULL);
  Small s = small_lower(g, prec);
  fill(s.p, 13, 1.0);
  for (int64_t i = 0; i < (int64_t)R * M; i += 7) { /* relu's zeros, of both signs */
    double z = i % 2 ? -0.0 : 0.0;
    if (prec == PREC_F64)
      rt_f64(s.p, h)[i] = z;
    else
      rt_f32(s.p, h)[i] = (float)z;
  }
  memcpy(rt_i32(s.p, off), offv, sizeof offv);
  size_t el = prec == PREC_F64 ? 8 : 4, n = (size_t)R * M * el;
  small_run(&s);
  int same = !memcmp(s.p->buf[rb->id], s.p->buf[fn->out[0]->id], n);
  /* over h: the kernel with its output at a copy of h's bytes */
  char *hc = mc_malloc(n);
  memcpy(hc, s.p->buf[h->id], n);
  void *ins[4] = {hc, s.p->buf[gy->id], s.p->buf[wt->id], s.p->buf[off->id]}, *outs[1] = {hc};
  KernelCtx c = ctx_for(false, 1, 0, 1);
  rt_cpu_kernels(prec)[OP_GROUPED_MATMUL_RELU_BWD](&c, fn, ins, outs);
  int inplace = !memcmp(s.p->buf[rb->id], hc, n);
  int zeros = 0;
  for (int64_t i = 0; i < (int64_t)R * M; i++)
    zeros += get(s.p, rb, i) == 0;
  printf("grouped_matmul_relu_bwd (%s): = grouped_matmul, relu_bwd %s; over h %s (%d of %d "
         "zero)\n",
         prec == PREC_F32 ? "f32" : "f64", same ? "bit for bit" : "DIFFERS",
         inplace ? "bit for bit" : "DIFFERS", zeros, R * M);
  CHECK(same && inplace);
  CHECK(zeros > R * M / 4 && zeros < R * M * 3 / 4);
  mc_free(hc);
  small_free(&s);
}

/* A folded grouped_matmul_dw (fold=1) and rt_fold_dw: any span of dW the optimizer makes
 * (across experts, starting and ending inside rows) equals the unfolded kernel's dW bit for
 * bit, for experts of 0..13 rows (made from xs and g) and of 40 (the kernel's sgemm). */
static void t_fold_dw(Precision prec) {
  enum { E = 15, K = 21, M = 37 };
  int32_t offv[E + 1] = {0};
  for (int e = 0; e < E; e++)
    offv[e + 1] = offv[e] + (e < E - 1 ? e : 40);
  const int R = offv[E];
  Graph *g = ir_graph_new("fold_dw");
  Dim doff = dim_int(E + 1);
  Tensor *xs = ir_input(g, "xs", ty2(R, K), (Loc){0}), *gy = ir_input(g, "gy", ty2(R, M), (Loc){0});
  Tensor *off = ir_input(g, "off", ir_type(DT_I32, 1, &doff), (Loc){0});
  int64_t fold[IR_MAX_ATTR] = {1};
  Tensor *in3[3] = {xs, gy, off};
  Tensor *dw = ir_node(g, OP_GROUPED_MATMUL_DW, 3, in3, NULL, NULL)->out[0];  /* [E, K, M] */
  Tensor *dwf = ir_node(g, OP_GROUPED_MATMUL_DW, 3, in3, fold, NULL)->out[0]; /* folded */
  Small s = small_lower(g, prec);
  fill(s.p, 12, 1.0);
  memcpy(rt_i32(s.p, off), offv, sizeof offv);
  size_t el = prec == PREC_F64 ? 8 : 4;
  int64_t n = (int64_t)E * K * M;
  memset(s.p->buf[dwf->id], 0x7f, (size_t)n * el); /* what the kernel leaves stays so */
  small_run(&s);
  FoldDW f = {s.p->buf[xs->id], s.p->buf[gy->id], rt_i32(s.p, off), s.p->buf[dwf->id], E, K, M};
  const char *want = s.p->buf[dw->id];
  char *got = mc_malloc((size_t)n * el);
  int bad = 0, spans = 0;
  int64_t cuts[] = {1, 7, M, K * M - 5, K * M, 2 * K * M + 3, 1000, 4096, n};
  for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) /* [0, n) in pieces of cuts[c] */
    for (int64_t a = 0; a < n; a += cuts[c], spans++) {
      int64_t b = a + cuts[c] < n ? a + cuts[c] : n;
      memset(got, 0xff, (size_t)(b - a) * el);
      rt_fold_dw(&f, el, a, b, got);
      bad += memcmp(got, want + (size_t)a * el, (size_t)(b - a) * el) != 0;
    }
  printf("fold_dw (%s): %d spans of dW, %d differ from the unfolded kernel's\n",
         prec == PREC_F32 ? "f32" : "f64", spans, bad);
  CHECK(bad == 0);
  /* the kernel left the experts of 0..8 rows unwritten and wrote the others (9..13, 40) */
  const unsigned char *kf = s.p->buf[dwf->id];
  CHECK(kf[0] == 0x7f && kf[(size_t)9 * K * M * el - 1] == 0x7f);
  CHECK(!memcmp(kf + (size_t)(E - 1) * K * M * el, want + (size_t)(E - 1) * K * M * el,
                (size_t)K * M * el));
  mc_free(got);
  small_free(&s);
}

/* load_count vs the smooth estimator: with tiny noise (sigma -> 0.01, w_noise very
 * negative) the smooth load approaches the routed counts; each row's P sums to
 * about k. With large noise the estimates stay in [0, N] and sum to about k*N. */
static void t_load_estimators(void) {
  const int64_t B = 8, T = 16, N = B * T;
  const int E = 6, k = 2;
  for (int big = 0; big < 2; big++) {
    Graph *g = ir_graph_new("load");
    Expr e = layer_call(L_MOE, E, k, 4, LAE_NOISY_TOPK, true);
    Tensor *x = ir_input(g, "x", bt(5), (Loc){0});
    Tensor *aux;
    ir_build_moe(g, &e, x, "m", &aux);
    Tensor *lin[1] = {find(g, "m.idx")};
    int64_t iaE[IR_MAX_ATTR] = {E};
    Tensor *cnt = ir_node(g, OP_LOAD_COUNT, 1, lin, iaE, NULL)->out[0];
    ir_bind(g, B, T);
    Program *p = cg_lower(g, PREC_F64);
    fill(p, 8, 1.0);
    /* gate logits spread by 3x; x > 0.5, so w_noise = -40 gives raw < -100 and
     * sigma = softplus(raw) + 0.01 = 0.01 (tiny), w_noise = 1 gives sigma > 2.5 */
    Tensor *wg = find(g, "m.w_gate");
    for (int64_t i = 0; i < wg->numel; i++)
      rt_f64(p, wg)[i] *= 3;
    for (int64_t i = 0; i < x->numel; i++)
      rt_f64(p, x)[i] = 0.5 + 0.5 * fabs(rt_f64(p, x)[i]);
    set_all(p, find(g, "m.w_noise"), big ? 1.0 : -40.0);
    KernelCtx c = ctx_for(true, 4, 0, B);
    rt_exec(p, &c, 0, p->ninstrs);
    const double *ls = rt_f64(p, find(g, "m.load")), *lc = rt_f64(p, cnt);
    double sum = 0, maxd = 0;
    for (int q = 0; q < E; q++) {
      sum += ls[q];
      maxd = fmax(maxd, fabs(ls[q] - lc[q]));
      CHECK(ls[q] >= 0 && ls[q] <= N);
    }
    printf("load %s noise: sum smooth %.2f (k*N = %lld), max |smooth - count| %.2f\n",
           big ? "large" : "tiny", sum, (long long)(k * N), maxd);
    if (!big) {
      CHECK(maxd < 0.03 * N);
      CHECK(fabs(sum - k * N) < 0.03 * N);
    } else {
      CHECK(fabs(sum - k * N) < 0.25 * k * N);
    }
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* f32 and f64 programs agree; two runs are bitwise equal; another step draws
 * other noise. */
static void t_precision_determinism(void) {
  const int64_t B = 4, T = 6;
  MoeRun a = moe_run(LAE_NOISY_TOPK, true, 8, 2, PREC_F64, true, 3, B, T);
  MoeRun b = moe_run(LAE_NOISY_TOPK, true, 8, 2, PREC_F32, true, 3, B, T);
  MoeRun c = moe_run(LAE_NOISY_TOPK, true, 8, 2, PREC_F32, true, 3, B, T);
  MoeRun d = moe_run(LAE_NOISY_TOPK, true, 8, 2, PREC_F32, true, 4, B, T);
  double maxd = 0, maxy = 0;
  for (int64_t i = 0; i < a.y->numel; i++) {
    maxd = fmax(maxd, fabs(get(a.p, a.y, i) - get(b.p, b.y, i)));
    maxy = fmax(maxy, fabs(get(a.p, a.y, i)));
  }
  printf("moe f32 vs f64: max |dy| %.3g (max |y| %.3g)\n", maxd, maxy);
  CHECK(maxd <= 1e-5 * maxy);
  CHECK_CLOSE(get(b.p, b.aux, 0), get(a.p, a.aux, 0), 1e-4, 1e-7);
  Tensor *ia = find(a.g, "m.idx"), *ib = find(b.g, "m.idx");
  CHECK(memcmp(rt_i32(a.p, ia), rt_i32(b.p, ib), (size_t)ia->numel * 4) == 0);
  bool same = true, differs = false;
  for (int k = 0; k < b.g->ntensors; k++) {
    const Tensor *t = b.g->tensors[k];
    size_t nb = (size_t)t->numel * 4;
    if (memcmp(b.p->buf[k], c.p->buf[k], nb) != 0) same = false;
  }
  for (int64_t i = 0; i < b.y->numel; i++)
    differs |= get(b.p, b.y, i) != get(d.p, d.y, i);
  CHECK(same);
  CHECK(differs);
  moe_free(&a);
  moe_free(&b);
  moe_free(&c);
  moe_free(&d);
}

/* ---------------------------------------------------------------- batchwise over devices */

/* batchwise_route over P in-process devices (all_gather_topm's cut, as the comm pass
 * builds it) against one device holding the whole batch: the same mask rows, and each
 * expert's slots on a device are exactly its rows of the one-device slot list. Scores on
 * a coarse grid, so there are many ties across devices (broken by the global row). */
enum { BWS_N = 24, BWS_E = 4, BWS_K = 2 };
typedef struct BwSplit {
  bool training;
  double gs[BWS_N * BWS_E], thr[BWS_E];
  double mask[BWS_N * BWS_E];     /* the devices' masks, each at its rows */
  int32_t rows[4][BWS_N * BWS_K]; /* per device: global row of each slot, -1 unused */
  int32_t off[4][BWS_E + 1];
  bool bad;
} BwSplit;

/* route(gs, thr) on one device, or all_gather_topm + route(gs, thr, cut) on ctx's. */
static Graph *bw_route_graph(int P) {
  Graph *g = ir_graph_new("bw_split");
  Dim d[2] = {dim_sym('B'), dim_int(BWS_E)}, de = dim_int(BWS_E);
  Tensor *gs = ir_input(g, "gs", ir_type(DT_F32, 2, d), (Loc){0});
  Tensor *thr = ir_input(g, "thr", ir_type(DT_F32, 1, &de), (Loc){0});
  Tensor *in[4] = {gs, thr, NULL, NULL};
  int64_t ia[IR_MAX_ATTR] = {BWS_K, P > 1 ? P : 0};
  if (P > 1) {
    Node *cut = ir_node(g, OP_ALL_GATHER_TOPM, 2, in, ia, NULL);
    in[2] = cut->out[0];
    in[3] = cut->out[1];
  }
  ir_node(g, OP_BATCHWISE_ROUTE, P > 1 ? 4 : 2, in, ia, NULL);
  return g;
}

static void bw_run(Comm *c, BwSplit *s, int P) {
  int r = c ? c->rank : 0;
  int64_t Nl = BWS_N / P;
  Graph *g = bw_route_graph(P);
  ir_bind(g, Nl, 1);
  Program *p = cg_lower(g, PREC_F32);
  const Node *rt = g->nodes[g->nnodes - 1];
  float *gs = rt_f32(p, g->inputs[0]), *thr = rt_f32(p, g->inputs[1]);
  for (int64_t i = 0; i < Nl * BWS_E; i++)
    gs[i] = (float)s->gs[r * Nl * BWS_E + i];
  for (int e = 0; e < BWS_E; e++)
    thr[e] = (float)s->thr[e];
  KernelCtx ctx = ctx_for(s->training, 1, 0, Nl);
  ctx.batch0 = r * Nl;
  ctx.comm = c;
  ctx.device = r;
  ctx.ndevices = P;
  rt_exec(p, &ctx, 0, p->ninstrs);
  const float *mask = rt_f32(p, rt->out[0]);
  const int32_t *rows = rt_i32(p, rt->out[1]);
  const int32_t *off = rt_i32(p, rt->out[2]);
  for (int64_t i = 0; i < Nl * BWS_E; i++)
    s->mask[r * Nl * BWS_E + i] = mask[i];
  s->bad |= rt->out[1]->numel != BWS_N * BWS_K; /* N*k*P slots whatever the split */
  for (int64_t j = 0; j < rt->out[1]->numel && j < BWS_N * BWS_K; j++)
    s->rows[r][j] = rows[j] < 0 ? -1 : (int32_t)(rows[j] + r * Nl);
  memcpy(s->off[r], off, sizeof s->off[r]);
  cg_program_free(p);
  ir_graph_free(g);
}

static BwSplit *bw_split_arg;
static int bw_split_P;
static void bw_thread(Comm *c, void *arg) {
  (void)arg;
  bw_run(c, bw_split_arg, bw_split_P);
}

static void t_batchwise_split(bool training) {
  static BwSplit one, many;
  memset(&one, 0, sizeof one);
  uint64_t st = 12345;
  for (int i = 0; i < BWS_N * BWS_E; i++) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    one.gs[i] = (double)((st >> 33) % 5) / 8.0; /* 0 .. 0.5 in steps of 1/8: ties */
  }
  for (int e = 0; e < BWS_E; e++)
    one.thr[e] = 0.1 + 0.05 * e;
  one.training = training;
  bw_run(NULL, &one, 1);
  int m = BWS_K * BWS_N / BWS_E;
  for (int P = 2; P <= 4; P++) {
    if (BWS_N % P) continue;
    many = one;
    memset(many.rows, 0, sizeof many.rows);
    bw_split_arg = &many;
    bw_split_P = P;
    CHECK(rt_inproc_run(P, bw_thread, NULL) == 0);
    CHECK(!many.bad);
    CHECK(memcmp(one.mask, many.mask, sizeof one.mask) == 0);
    for (int e = 0; e < BWS_E; e++) {
      int taken = 0;
      for (int r = 0; r < P; r++) /* device r's slots of e: the one-device list, in order */
        for (int j = many.off[r][e]; j < many.off[r][e + 1]; j++, taken++)
          CHECK(one.off[0][e] + taken < one.off[0][e + 1] &&
                many.rows[r][j] == one.rows[0][one.off[0][e] + taken]);
      CHECK(taken == one.off[0][e + 1] - one.off[0][e]);
      if (training) CHECK(taken == m);
    }
  }
  printf("batchwise %s over 2, 3, 4 devices: the one-device routes\n",
         training ? "training" : "eval");
}

/* ---------------------------------------------------------------- capacity over devices */

/* capacity(idx) over P in-process devices (all_gather_rows of every device's idx first, as
 * the comm pass builds it) against one device holding the whole batch: every device's
 * kept routes are its rows of the one-device decision, the drop fractions the same. Skewed
 * routing (expert 0 most popular) so that experts overflow. */
enum { CS_N = 24, CS_E = 5, CS_K = 2 };
static int32_t cs_idx[CS_N * CS_K], cs_kept[4][CS_N * CS_K];
static double cs_drop[4][CS_E];

static void cs_run(Comm *c, int P) {
  int r = c ? c->rank : 0;
  int64_t Nl = CS_N / P;
  Graph *g = ir_graph_new("capacity");
  Dim d[2] = {dim_sym('B'), dim_int(CS_K)};
  Tensor *idx = ir_input(g, "idx", ir_type(DT_I32, 2, d), (Loc){0});
  Tensor *in[2] = {idx, NULL};
  if (P > 1) {
    int64_t ia[IR_MAX_ATTR] = {P};
    in[1] = ir_node(g, OP_ALL_GATHER_ROWS, 1, in, ia, NULL)->out[0];
  }
  int64_t ia[IR_MAX_ATTR] = {CS_E};
  double fa[IR_MAX_ATTR] = {0.8};
  Node *cn = ir_node(g, OP_CAPACITY, P > 1 ? 2 : 1, in, ia, fa);
  ir_bind(g, Nl, 1);
  Program *p = cg_lower(g, PREC_F64);
  memcpy(p->buf[idx->id], cs_idx + r * Nl * CS_K, (size_t)(Nl * CS_K) * sizeof(int32_t));
  KernelCtx kc = {.batch0 = r * Nl, .batch_local = Nl, .device = r, .ndevices = P, .comm = c};
  rt_exec(p, &kc, 0, p->ninstrs);
  memcpy(cs_kept[r], p->buf[cn->out[0]->id], (size_t)(Nl * CS_K) * sizeof(int32_t));
  memcpy(cs_drop[r], p->buf[cn->out[1]->id], sizeof cs_drop[r]);
  cg_program_free(p);
  ir_graph_free(g);
}

static int cs_P;
static void cs_thread(Comm *c, void *arg) {
  (void)arg;
  cs_run(c, cs_P);
}

static void t_capacity_split(void) {
  uint64_t key = mc_rng_key(5, 6, 7);
  for (int i = 0; i < CS_N * CS_K; i++) { /* distinct experts per row, skewed to low ids */
    double u = mc_rng_uniform(key, (uint64_t)i);
    int e = (int)(u * u * CS_E);
    if (i % CS_K && e == cs_idx[i - 1]) e = (e + 1) % CS_E;
    cs_idx[i] = e;
  }
  cs_run(NULL, 1);
  /* the one-device decision against the formula: choice by choice, rows in order */
  int64_t cap = ir_capacity_rows(0.8, CS_K, CS_N, CS_E), used[CS_E] = {0}, dropped = 0;
  CHECK(cap == 8); /* ceil(0.8 * 2 * 24 / 5) = ceil(7.68) */
  for (int j = 0; j < CS_K; j++)
    for (int n = 0; n < CS_N; n++) {
      int e = cs_idx[n * CS_K + j];
      bool keep = used[e] < cap;
      used[e] += keep;
      dropped += !keep;
      CHECK(cs_kept[0][n * CS_K + j] == (keep ? e : -1));
    }
  double tot = 0;
  for (int e = 0; e < CS_E; e++)
    tot += cs_drop[0][e];
  CHECK(dropped > 0);
  CHECK_CLOSE(tot, (double)dropped / (CS_N * CS_K), 1e-15, 0);
  int32_t one[CS_N * CS_K];
  double drop1[CS_E];
  memcpy(one, cs_kept[0], sizeof one);
  memcpy(drop1, cs_drop[0], sizeof drop1);
  for (int P = 2; P <= 4; P++) {
    if (CS_N % P) continue;
    cs_P = P;
    CHECK(rt_inproc_run(P, cs_thread, NULL) == 0);
    for (int r = 0; r < P; r++) {
      CHECK(memcmp(cs_kept[r], one + r * (CS_N / P) * CS_K,
                   (size_t)(CS_N / P * CS_K) * sizeof(int32_t)) == 0);
      CHECK(memcmp(cs_drop[r], drop1, sizeof drop1) == 0);
    }
  }
  printf("capacity over 2, 3, 4 devices: the one-device decision (%lld of %d routes dropped)\n",
         (long long)dropped, CS_N * CS_K);
}

/* hmoe with batchwise gating is rejected, never silently replaced: sema refuses it with a
 * location (tests/sema, multidev_errors); the builder, past sema, asserts: checked in a
 * child */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void t_batchwise_rejected(void) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stderr)) _exit(2);
    Graph *g = ir_graph_new("bw");
    Expr e = layer_call(L_HMOE, 4, 2, 4, LAE_BATCHWISE, true);
    e.argv[LA_GROUPS] = 2;
    e.argv[LA_K_GROUP] = 1;
    Tensor *x = ir_input(g, "x", bt(5), (Loc){0}), *aux;
    ir_build_hmoe(g, &e, x, "m", &aux);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

int main(void) {
  t_moe_reference("noisy train", LAE_NOISY_TOPK, true, true, 4, 2);
  t_moe_reference("noisy eval", LAE_NOISY_TOPK, true, false, 4, 2);
  t_moe_reference("noisy k=1", LAE_NOISY_TOPK, true, true, 6, 1);
  t_moe_reference("noisy k=E", LAE_NOISY_TOPK, true, true, 3, 3);
  t_moe_reference("no noise", LAE_NOISY_TOPK, false, true, 5, 2);
  t_moe_reference("softmax", LAE_SOFTMAX, false, true, 4, 2);
  t_moe_reference("many experts", LAE_NOISY_TOPK, true, true, 40, 30);
  /* appendix C's layer: no expert biases, a sigmoid on the output; capacity (dropped
   * routes), noisy and softmax gating */
  ref_bias = false;
  ref_act = LAE_SIGMOID;
  t_moe_reference("no bias, sigmoid", LAE_NOISY_TOPK, true, true, 4, 2);
  ref_bias = true;
  ref_act = LAE_NONE;
  ref_capacity = 0.7;
  t_moe_reference("capacity 0.7", LAE_NOISY_TOPK, true, true, 4, 2);
  t_moe_reference("capacity softmax", LAE_SOFTMAX, false, true, 3, 3);
  ref_capacity = 1.0;
  t_moe_reference("capacity 1.0 k=1", LAE_NOISY_TOPK, true, true, 6, 1);
  ref_capacity = 0;
  t_capacity_split();
  t_hmoe_reference("noisy train", true, true);
  t_hmoe_reference("noisy eval", true, false);
  t_hmoe_reference("no noise", false, true);
  t_batchwise_reference("train", true, 3, 5);
  t_batchwise_reference("eval", false, 3, 5);
  t_batchwise_reference("train N*k%E", true, 3, 3);
  t_batchwise_split(true);
  t_batchwise_split(false);
  t_split_invariance(L_MOE);
  t_split_invariance(L_HMOE);
  t_topk_ties();
  t_topk_large();
  t_cv2_known();
  t_dispatch_roundtrip();
  t_grouped_gemm_rows(PREC_F32);
  t_grouped_gemm_rows(PREC_F64);
  t_fold_dw(PREC_F32);
  t_fold_dw(PREC_F64);
  t_grouped_matmul_relu_bwd(PREC_F32);
  t_grouped_matmul_relu_bwd(PREC_F64);
  t_load_estimators();
  t_precision_determinism();
  t_batchwise_rejected();
  TEST_DONE();
}
