/* test_sampled.c: the sampled softmax (ops sampled_xent, sampled_xent_bwd) and the
 * row-sparse all-reduce of gradients.
 *   - the log-uniform sampler: S distinct ids in [0, V), deterministic, S = V gives every
 *     class; single draws follow P(c) = log((c+2)/(c+1))/log(V+1) (binomial bounds);
 *     inclusion frequencies follow the expected-count estimate 1 - (1-P(c))^tries;
 *   - the forward loss against a naive loop of the formula (docs/moe.md) on the samples
 *     the op drew, accidental hits masked;
 *   - samples = vocab equals softmax_xent (matmul, bias_add, xent): loss and the
 *     gradients of x, W and b, in training; evaluation is exact for any samples;
 *   - finite differences in float64 of x, W and b (training: fixed samples), f32 vs f64;
 *   - a device holding the second half of the rows draws the same samples and computes
 *     the same row losses;
 *   - sparse_all_reduce on 1..4 in-process devices equals one scatter of every device's
 *     rows, the same bits on every device;
 *   - the backward writes its dlogits over probs (no [N,S+1] buffer of its own: each row
 *     of probs then sums to 0, not 1), and ir_verify refuses a graph that reads probs
 *     after it. */
#include <string.h>

#include "../codegen/codegen.h"
#include "../passes/passes.h"
#include "../runtime/comm.h"
#include "gradcheck.h"
#include "test.h"

static Type ty2(int64_t a, int64_t b) {
  Dim d[2] = {dim_int(a), dim_int(b)};
  return ir_type(DT_F32, 2, d);
}
static Type ty1(DType dt, int64_t a) {
  Dim d[1] = {dim_int(a)};
  return ir_type(dt, 1, d);
}

/* ---------------------------------------------------------------- the sampler */

static void t_sampler(void) {
  enum { V = 50 };
  int32_t c[V], c2[V];
  for (int S = 1; S <= V; S += 7) {
    uint64_t key = mc_rng_key(3, 5, (uint64_t)S);
    int64_t n = rt_sample_log_uniform(key, V, S, c);
    int64_t n2 = rt_sample_log_uniform(key, V, S, c2);
    CHECK(n == n2 && memcmp(c, c2, (size_t)S * sizeof(int32_t)) == 0); /* deterministic */
    CHECK(S == V ? n == 0 : n >= S);
    bool seen[V] = {0}, ok = true;
    for (int j = 0; j < S; j++) {
      ok &= c[j] >= 0 && c[j] < V && !seen[c[j]];
      if (c[j] >= 0 && c[j] < V) seen[c[j]] = true;
    }
    CHECK(ok);
  }
  CHECK(rt_sample_log_uniform(mc_rng_key(1, 1, 1), V, V, c) == 0);
  for (int j = 0; j < V; j++)
    CHECK(c[j] == j);
  CHECK(rt_log_uniform_expected(7, V, 0) == 1);
  double psum = 0;
  for (int j = 0; j < V; j++)
    psum += rt_log_uniform_p(j, V);
  CHECK_CLOSE(psum, 1.0, 1e-12, 0);

  /* single draws: class frequencies within 5 binomial sigmas of P(c) */
  enum { DRAWS = 40000 };
  int cnt[V] = {0};
  for (int i = 0; i < DRAWS; i++) {
    rt_sample_log_uniform(mc_rng_key(11, 2, (uint64_t)i), V, 1, c);
    cnt[c[0]]++;
  }
  int bad = 0;
  for (int j = 0; j < V; j++) {
    double p = rt_log_uniform_p(j, V), mu = DRAWS * p, sd = sqrt(DRAWS * p * (1 - p));
    bad += fabs(cnt[j] - mu) > 5 * sd + 1;
  }
  CHECK(bad == 0);
  /* inclusion with S = 10: the frequency of each class vs the mean expected count */
  enum { RUNS = 4000, S10 = 10 };
  double inc[V] = {0}, est[V] = {0};
  for (int i = 0; i < RUNS; i++) {
    int64_t n = rt_sample_log_uniform(mc_rng_key(12, 2, (uint64_t)i), V, S10, c);
    for (int j = 0; j < S10; j++)
      inc[c[j]] += 1.0 / RUNS;
    for (int j = 0; j < V; j++)
      est[j] += rt_log_uniform_expected(j, V, n) / RUNS;
  }
  double worst = 0, total = 0;
  for (int j = 0; j < V; j++) {
    worst = fmax(worst, fabs(inc[j] - est[j]));
    total += inc[j];
  }
  CHECK_CLOSE(total, (double)S10, 1e-9, 0);
  CHECK(worst < 0.03); /* the estimate is TensorFlow's (approximate): within 3 points */
  printf("sampler: distinct, deterministic, P(c) within 5 sigma; inclusion vs estimate %.4f\n",
         worst);
}

/* ---------------------------------------------------------------- forward vs a loop */

typedef struct Ids {
  int64_t V;
  uint64_t seed;
} Ids;

static void fill_targets(const Tensor *t, int32_t *buf, void *user) {
  const Ids *ids = user;
  uint64_t key = mc_rng_key(ids->seed, 77, 0);
  for (int64_t i = 0; i < t->numel; i++) /* low ids often: accidental hits happen */
    buf[i] = (int32_t)(mc_rng_uniform(key, (uint64_t)i) * mc_rng_uniform(key, (uint64_t)i + 999) *
                       (double)ids->V);
}

/* x, W, b params; targets input; -> the sampled_xent node */
static Node *sampled_graph(Graph *g, int64_t N, int64_t D, int64_t V, int64_t S, Tensor **pt) {
  Tensor *x = ir_param(g, "x", ty2(N, D), INIT_ZERO, 0, (Loc){0});
  Tensor *w = ir_param(g, "W", ty2(V, D), INIT_ZERO, 0, (Loc){0});
  Tensor *b = ir_param(g, "b", ty1(DT_F32, V), INIT_ZERO, 0, (Loc){0});
  Tensor *t = ir_input(g, "targets", ty1(DT_I32, N), (Loc){0});
  Tensor *in[4] = {x, w, b, t};
  int64_t ia[IR_MAX_ATTR] = {4, S};
  double fa[IR_MAX_ATTR] = {0};
  if (pt) *pt = t;
  return ir_node(g, OP_SAMPLED_XENT, 4, in, ia, fa);
}

static void fill_uniform(double *v, int64_t n, uint64_t key, double s) {
  for (int64_t i = 0; i < n; i++)
    v[i] = s * (2 * mc_rng_uniform(key, (uint64_t)i) - 1);
}

static void t_forward_loop(void) {
  enum { N = 9, D = 5, V = 30, S = 8 };
  Graph *g = ir_graph_new("sx");
  Node *n = sampled_graph(g, N, D, V, S, NULL);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F64);
  double *x = p->buf[n->in[0]->id], *W = p->buf[n->in[1]->id], *b = p->buf[n->in[2]->id];
  int32_t *tg = p->buf[n->in[3]->id];
  fill_uniform(x, N * D, mc_rng_key(1, 1, 0), 1);
  fill_uniform(W, V * D, mc_rng_key(1, 2, 0), 1);
  fill_uniform(b, V, mc_rng_key(1, 3, 0), 0.5);
  Ids ids = {V, 4};
  fill_targets(n->in[3], tg, &ids);
  KernelCtx kc = {.training = true, .seed = 9, .step = 3, .batch_local = 1, .ndevices = 1};
  rt_exec(p, &kc, 0, p->ninstrs);
  const int32_t *cand = p->buf[n->out[2]->id];
  int64_t tries = ((int32_t *)p->buf[n->out[3]->id])[0];
  int32_t want[S];
  CHECK(rt_sample_log_uniform(mc_rng_key(9, 4, 3), V, S, want) == tries);
  CHECK(memcmp(want, cand, sizeof want) == 0);
  double loss = 0;
  int hits = 0;
  for (int r = 0; r < N; r++) {
    double l[S + 1], mx = -INFINITY, s = 0;
    for (int j = 0; j <= S; j++) {
      int c = j ? cand[j - 1] : tg[r];
      double v = b[c];
      for (int d = 0; d < D; d++)
        v += x[r * D + d] * W[c * D + d];
      l[j] = v - log(rt_log_uniform_expected(c, V, tries));
      if (j && c == tg[r]) {
        l[j] = -INFINITY; /* the target sampled again */
        hits++;
      }
      mx = fmax(mx, l[j]);
    }
    for (int j = 0; j <= S; j++)
      s += exp(l[j] - mx);
    loss += log(s) + mx - l[0];
  }
  CHECK(hits > 0);
  CHECK_CLOSE(((double *)p->buf[n->out[0]->id])[0], loss / N, 1e-12, 0);
  printf("forward: the loop's loss over %d rows (%d accidental hits masked)\n", N, hits);
  cg_program_free(p);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- samples = vocab */

/* loss and the gradients of x, W, b of (a) sampled_xent with S = V and (b) softmax_xent */
static void t_equals_xent(void) {
  enum { N = 7, D = 4, V = 11 };
  double loss[2][2], *grad[2][3];
  for (int which = 0; which < 2; which++) {
    Graph *g = ir_graph_new(which ? "xent" : "sampled");
    Tensor *x = ir_param(g, "x", ty2(N, D), INIT_ZERO, 0, (Loc){0});
    Tensor *w = ir_param(g, "W", ty2(V, D), INIT_ZERO, 0, (Loc){0});
    Tensor *b = ir_param(g, "b", ty1(DT_F32, V), INIT_ZERO, 0, (Loc){0});
    Tensor *t = ir_input(g, "targets", ty1(DT_I32, N), (Loc){0});
    if (which == 0) {
      Tensor *in[4] = {x, w, b, t};
      int64_t ia[IR_MAX_ATTR] = {0, V};
      g->loss = ir_node(g, OP_SAMPLED_XENT, 4, in, ia, NULL)->out[0];
    } else {
      int64_t tb[IR_MAX_ATTR] = {0, 1};
      Tensor *mm[2] = {x, w};
      Tensor *lg = ir_op2(g, OP_BIAS_ADD, ir_node(g, OP_MATMUL, 2, mm, tb, NULL)->out[0], b);
      Tensor *in[2] = {lg, t};
      g->loss = ir_node(g, OP_XENT, 2, in, NULL, NULL)->out[0];
    }
    PassCtx pc = {.devices = 1, .training = true};
    pass_autodiff(g, &pc);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, PREC_F64);
    fill_uniform(p->buf[x->id], N * D, mc_rng_key(2, 1, 0), 1);
    fill_uniform(p->buf[w->id], V * D, mc_rng_key(2, 2, 0), 1);
    fill_uniform(p->buf[b->id], V, mc_rng_key(2, 3, 0), 1);
    Ids ids = {V, 2};
    fill_targets(t, p->buf[t->id], &ids);
    for (int train = 1; train >= 0; train--) {
      KernelCtx kc = {.training = train, .seed = 1, .batch_local = 1, .ndevices = 1};
      rt_exec(p, &kc, 0, train ? p->ninstrs : p->first_backward);
      loss[which][train] = ((double *)p->buf[g->loss->id])[0];
      if (!train) continue;
      Tensor *ps[3] = {x, w, b};
      for (int k = 0; k < 3; k++) {
        grad[which][k] = mc_malloc((size_t)ps[k]->numel * sizeof(double));
        memcpy(grad[which][k], p->buf[ps[k]->grad->id], (size_t)ps[k]->numel * sizeof(double));
      }
    }
    cg_program_free(p);
    ir_graph_free(g);
  }
  CHECK_CLOSE(loss[0][1], loss[1][1], 1e-13, 0); /* training, samples = vocab */
  CHECK_CLOSE(loss[0][0], loss[1][0], 1e-13, 0); /* evaluation: exact */
  int64_t nel[3] = {N * D, V * D, V};
  double worst = 0;
  for (int k = 0; k < 3; k++) {
    for (int64_t i = 0; i < nel[k]; i++)
      worst = fmax(worst, fabs(grad[0][k][i] - grad[1][k][i]));
    mc_free(grad[0][k]);
    mc_free(grad[1][k]);
  }
  CHECK(worst < 1e-14);
  printf("samples = vocab: loss %.15f = softmax_xent's, gradients within %.1e\n", loss[0][1],
         worst);
}

/* evaluation is exact for any number of samples (and several vocabulary chunks) */
static void t_eval_exact(void) {
  enum { N = 40, D = 3, V = 5000, S = 16 };
  Graph *g = ir_graph_new("exact");
  Node *n = sampled_graph(g, N, D, V, S, NULL);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F64);
  double *x = p->buf[n->in[0]->id], *W = p->buf[n->in[1]->id], *b = p->buf[n->in[2]->id];
  int32_t *tg = p->buf[n->in[3]->id];
  fill_uniform(x, N * D, mc_rng_key(5, 1, 0), 2);
  fill_uniform(W, V * D, mc_rng_key(5, 2, 0), 2);
  fill_uniform(b, V, mc_rng_key(5, 3, 0), 1);
  Ids ids = {V, 5};
  fill_targets(n->in[3], tg, &ids);
  KernelCtx kc = {.training = false, .seed = 1, .batch_local = 1, .ndevices = 1};
  rt_exec(p, &kc, 0, p->ninstrs);
  double loss = 0;
  for (int r = 0; r < N; r++) {
    double mx = -INFINITY, s = 0, *l = mc_malloc(V * sizeof(double));
    for (int c = 0; c < V; c++) {
      l[c] = b[c];
      for (int d = 0; d < D; d++)
        l[c] += x[r * D + d] * W[c * D + d];
      mx = fmax(mx, l[c]);
    }
    for (int c = 0; c < V; c++)
      s += exp(l[c] - mx);
    loss += log(s) + mx - l[tg[r]];
    mc_free(l);
  }
  CHECK_CLOSE(((double *)p->buf[n->out[0]->id])[0], loss / N, 1e-12, 0);
  CHECK(((int32_t *)p->buf[n->out[3]->id])[0] == -1);
  printf("evaluation: the exact loss over %d classes\n", V);
  cg_program_free(p);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- finite differences */

static void t_gradcheck(void) {
  enum { N = 6, D = 4, V = 13 };
  int64_t Ss[2] = {5, V};
  for (int i = 0; i < 2; i++) {
    Graph *g = ir_graph_new(i ? "sampled_xent S=V" : "sampled_xent S=5");
    Node *n = sampled_graph(g, N, D, V, Ss[i], NULL);
    g->loss = n->out[0];
    Ids ids = {V, 3};
    GcOpts o = gc_opts();
    o.training = true; /* the sampled loss: the same samples in every run (seed, step) */
    o.fill_i32 = fill_targets;
    o.user = &ids;
    GcResult r = gc_check(g, 0, NULL, &o);
    CHECK(r.ok);
    ir_graph_free(g);
  }
}

/* ---------------------------------------------------------------- a device split */

static void t_split(void) {
  enum { N = 8, D = 3, V = 40, S = 9 };
  double row_loss[2];
  int32_t cand[2][S];
  double whole = 0;
  for (int part = -1; part < 2; part++) { /* -1: all rows on one device; 0, 1: halves */
    int64_t rows = part < 0 ? N : N / 2;
    Graph *g = ir_graph_new("split");
    Node *n = sampled_graph(g, rows, D, V, S, NULL);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, PREC_F64);
    double xs[N * D], *x = p->buf[n->in[0]->id];
    fill_uniform(xs, N * D, mc_rng_key(6, 1, 0), 1);
    memcpy(x, xs + (part > 0 ? N / 2 * D : 0), (size_t)(rows * D) * sizeof(double));
    fill_uniform(p->buf[n->in[1]->id], V * D, mc_rng_key(6, 2, 0), 1);
    fill_uniform(p->buf[n->in[2]->id], V, mc_rng_key(6, 3, 0), 1);
    int32_t tg[N];
    for (int r = 0; r < N; r++)
      tg[r] = (r * 7) % V;
    memcpy(p->buf[n->in[3]->id], tg + (part > 0 ? N / 2 : 0), (size_t)rows * sizeof(int32_t));
    KernelCtx kc = {.training = true,
                    .seed = 2,
                    .step = 5,
                    .batch0 = part > 0 ? 1 : 0,
                    .batch_local = 1,
                    .device = part > 0,
                    .ndevices = part < 0 ? 1 : 2};
    rt_exec(p, &kc, 0, p->ninstrs);
    double l = ((double *)p->buf[n->out[0]->id])[0];
    if (part < 0)
      whole = l;
    else {
      row_loss[part] = l;
      memcpy(cand[part], p->buf[n->out[2]->id], sizeof cand[part]);
    }
    cg_program_free(p);
    ir_graph_free(g);
  }
  CHECK(memcmp(cand[0], cand[1], sizeof cand[0]) == 0);
  CHECK_CLOSE(row_loss[0] + row_loss[1], whole, 1e-13, 0);
  printf("two devices: the same samples, the halves' losses sum to the whole's\n");
}

/* ---------------------------------------------------------------- sparse_all_reduce */

/* two (ids, rows) pairs per device: SP_R rows, then SP_R2 (as a sampled softmax's targets
 * and samples) */
enum { SP_R = 5, SP_R2 = 3, SP_D = 3, SP_V = 17, SP_MAXP = 4 };
static double sp_out[SP_MAXP][SP_V * SP_D];

static void sp_rows(int rank, int pair, int32_t *ids, double *rows) {
  for (int r = 0; r < (pair ? SP_R2 : SP_R); r++) {
    ids[r] = (rank * 5 + r * 3 + pair * 7) % SP_V;
    for (int d = 0; d < SP_D; d++)
      rows[r * SP_D + d] = 0.25 * rank + 0.5 * r - 0.125 * d + pair;
  }
}

static void sp_thread(Comm *c, void *arg) {
  (void)arg;
  Graph *g = ir_graph_new("sparse");
  Tensor *ids = ir_input(g, "ids", ty1(DT_I32, SP_R), (Loc){0});
  Tensor *rows = ir_input(g, "rows", ty2(SP_R, SP_D), (Loc){0});
  Tensor *ids2 = ir_input(g, "ids2", ty1(DT_I32, SP_R2), (Loc){0});
  Tensor *rows2 = ir_input(g, "rows2", ty2(SP_R2, SP_D), (Loc){0});
  Tensor *in[4] = {ids, rows, ids2, rows2};
  int64_t ia[IR_MAX_ATTR] = {SP_V, c->size};
  Node *n = ir_node(g, OP_SPARSE_ALL_REDUCE, 4, in, ia, NULL);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F64);
  sp_rows(c->rank, 0, p->buf[ids->id], p->buf[rows->id]);
  sp_rows(c->rank, 1, p->buf[ids2->id], p->buf[rows2->id]);
  KernelCtx kc = {.batch_local = 1, .device = c->rank, .ndevices = c->size, .comm = c};
  rt_exec(p, &kc, 0, p->ninstrs);
  memcpy(sp_out[c->rank], p->buf[n->out[0]->id], sizeof sp_out[0]);
  cg_program_free(p);
  ir_graph_free(g);
}

static void t_sparse_all_reduce(void) {
  for (int P = 1; P <= SP_MAXP; P++) {
    memset(sp_out, 0, sizeof sp_out);
    CHECK(rt_inproc_run(P, sp_thread, NULL) == 0);
    double want[SP_V * SP_D] = {0};
    for (int s = 0; s < P; s++) /* rank order, then pair order, then row order */
      for (int pair = 0; pair < 2; pair++) {
        int32_t ids[SP_R];
        double rows[SP_R * SP_D];
        sp_rows(s, pair, ids, rows);
        for (int r = 0; r < (pair ? SP_R2 : SP_R); r++)
          for (int d = 0; d < SP_D; d++)
            want[ids[r] * SP_D + d] += rows[r * SP_D + d];
      }
    for (int q = 0; q < P; q++)
      CHECK(memcmp(sp_out[q], want, sizeof want) == 0);
  }
  printf("sparse_all_reduce (two pairs) on 1..%d devices: every device holds the sum of all "
         "rows\n",
         SP_MAXP);
}

/* (in a child) a node reading the forward's probs after its backward, then ir_verify */
typedef struct GraphNode {
  Graph *g;
  Node *n;
} GraphNode;
static void read_after_bwd(void *arg) {
  GraphNode *gn = arg;
  ir_op1(gn->g, OP_RELU, gn->n->out[1]);
  ir_verify(gn->g); /* does not return: it reports the reader */
}

/* The backward's scratch is probs itself (OPF_CLOBBER1): after a training step each row
 * of the buffer holds g*scale*(probs - onehot0), which sums to 0 where probs summed to 1;
 * a node reading probs after the backward is refused by ir_verify, naming both. */
static void t_scratch(void) {
  enum { N = 5, D = 3, V = 40, S = 6 };
  Graph *g = ir_graph_new("scratch");
  Tensor *t;
  Node *n = sampled_graph(g, N, D, V, S, &t);
  g->loss = n->out[0];
  PassCtx pc = {.devices = 1, .training = true};
  pass_autodiff(g, &pc);
  const Node *bwd = NULL;
  for (int k = 0; k < g->nnodes; k++)
    if (g->nodes[k]->op == OP_SAMPLED_XENT_BWD) bwd = g->nodes[k];
  CHECK(bwd && bwd->in[1] == n->out[1]);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F64);
  fill_uniform(p->buf[n->in[0]->id], N * D, mc_rng_key(4, 1, 0), 1);
  fill_uniform(p->buf[n->in[1]->id], V * D, mc_rng_key(4, 2, 0), 1);
  Ids ids = {V, 3};
  fill_targets(t, p->buf[t->id], &ids);
  KernelCtx kc = {.training = true, .seed = 1, .batch_local = 1, .ndevices = 1};
  rt_exec(p, &kc, 0, p->first_backward);
  const double *probs = p->buf[n->out[1]->id];
  double fwd = 0, bwd_sum = 0;
  for (int64_t r = 0; r < N; r++) {
    double rs = 0;
    for (int64_t j = 0; j <= S; j++)
      rs += probs[r * (S + 1) + j];
    fwd = fmax(fwd, fabs(rs - 1));
  }
  rt_exec(p, &kc, p->first_backward, p->ninstrs);
  for (int64_t r = 0; r < N; r++) {
    double rs = 0;
    for (int64_t j = 0; j <= S; j++)
      rs += probs[r * (S + 1) + j];
    bwd_sum = fmax(bwd_sum, fabs(rs));
  }
  CHECK(fwd < 1e-12);     /* the forward's probabilities */
  CHECK(bwd_sum < 1e-12); /* then the backward's dlogits over them */
  cg_program_free(p);

  /* a reader of probs after the backward: refused */
  char msg[512];
  GraphNode gn = {g, n};
  int st = test_in_child(read_after_bwd, &gn, msg, sizeof msg);
  CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 0)); /* mc_fatal: an internal error */
  CHECK(strstr(msg, "after node") && strstr(msg, "used it as scratch"));
  ir_graph_free(g);
  printf("sampled_xent_bwd: dlogits over probs (rows sum %.1e, were 1 within %.1e); a later "
         "reader refused\n", bwd_sum, fwd);
}

int main(void) {
  t_sampler();
  t_forward_loop();
  t_equals_xent();
  t_eval_exact();
  t_gradcheck();
  t_split();
  t_sparse_all_reduce();
  t_scratch();
  TEST_DONE();
}
