/* costmodel.c: what a placed, bound graph costs per device (moec plan; moec simulate
 * with its cluster presets; moec plan --search ranks by it). docs/placement.md lists every
 * formula:
 *   params       bytes of the parameters a device holds (expert params: its experts' rows)
 *   grads        the same again
 *   optimizer    adam: 2 x params; factored: rows + cols per matrix (leading dims kept),
 *                numel for vectors (no first moment)
 *   activations  forward outputs read by a backward node (kept for backward), at the
 *                device's share (an estimate: the allocated figures are the memory plan's,
 *                plan_cost_set_memory)
 *   flops        forward + backward: matmul 2*M*N*K, grouped matmuls 2*R*K*M over routed
 *                rows, lstm 2*B*T*4U*U (+ elementwise), other ops 1 per output element
 *   routing      each MoE layer's rows over its experts: measured loads, a Zipf skew or
 *                uniform (plan_route_loads); an expert node's work on a device is its
 *                experts' routed share, not their count
 *   kernel time  a GEMM 2MNK / (gflops * s/(s + gemm_half)), s its smallest side (small
 *                per-expert GEMMs are slower per FLOP), one per expert at its routed rows,
 *                T per LSTM; elementwise bytes / elem_gbs; launch_us per kernel call
 *   collectives  per device: an all-to-all sends its rows' share and receives its experts'
 *                routed share; bytes to devices of another node (per_node) cross the
 *                slower link; a ring all-reduce spanning nodes runs at the slower link;
 *                latency per step
 *   step time    per phase between collectives its slowest device's kernels, plus each
 *                collective at its slowest device (the runtime overlaps nothing), plus
 *                the optimizer (its parameters' elements read and written) after the
 *                passes over its gradients before it on host devices (the guard's read;
 *                several devices: each its global norm's own pass, norm_ns); devices on
 *                shared cores (cores > 0): a phase as the cores share their work (evenly
 *                while more devices than cores are busy);
 *                one device alone: each kernel over the cores the runtime splits it on;
 *                when the state every step touches (the devices' parameters, gradients,
 *                optimizer state) is past the last-level cache (llc_bytes), the optimizer
 *                and the expert GEMMs' weights at no more than the memory's bandwidth
 *                (dram_gbs)
 *   memory plan  pass_memplan_plan at the device's ceil(B/P) rows: persistent (params,
 *                inputs, state) + arena + the optimizer state (not in the plan), as the
 *                runtime allocates it (its experts only: shard.c; expert rows widened x P)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/runtime.h" /* the runtime's task counts per kernel shape */
#include "plan.h"

/* cpu: one in-process device is one thread; OpenBLAS sgemm 2048^3 on one thread of this
 * machine measured 36-41 GFLOP/s (docs/placement.md); link: an in-process memcpy between
 * threads; the GEMM shape, elementwise and launch terms are rough guesses until `moec
 * calibrate` measures them. The K40 / H100 / H200 presets are moec simulate's
 * (src/cmd_simulate.c). */
const CostConsts plan_consts_cpu = {.name = "cpu",
                                    .gflops = 40,
                                    .link_gbs = 10,
                                    .latency_us = 5,
                                    .gemm_half = 16,
                                    .elem_gbs = 5,
                                    .launch_us = 1,
                                    .norm_ns = 0.15};

static double numel(const Tensor *t) {
  return (double)t->numel;
}

/* rows of x[..., K] (all dims but the last) */
static double rows(const Tensor *t) {
  return t->ty.rank >= 1 && t->shape[t->ty.rank - 1] > 0
             ? numel(t) / (double)t->shape[t->ty.rank - 1]
             : numel(t);
}

double plan_node_flops(const Node *n) {
  const Tensor *a = n->in[0];
  switch (n->op) {
  case OP_MATMUL: { /* out [M, N]: 2 * M * N * K */
    int64_t K = n->ia[0] ? rows(a) : a->shape[a->ty.rank - 1];
    return 2.0 * numel(n->out[0]) * (double)K;
  }
  case OP_GROUPED_MATMUL: /* [R, K] x [K, M] per row */
    return 2.0 * numel(n->out[0]) * (double)a->shape[a->ty.rank - 1];
  case OP_GROUPED_MATMUL_DW: /* xs[R,K], g[R,M] */
    return 2.0 * numel(a) * (double)n->in[1]->shape[n->in[1]->ty.rank - 1];
  case OP_GROUPED_MATMUL_RELU_BWD: /* g[R,O] x W[e]^T, then relu_bwd over [R,H] */
    return (2.0 * (double)n->in[1]->shape[n->in[1]->ty.rank - 1] + 1) * numel(n->out[0]);
  case OP_LSTM: { /* h[B,R] . W_hh^T per step, the cell's elementwise work, m . W_p^T */
    double R = (double)n->in[1]->shape[1], U = (double)n->out[1]->shape[2], BT = rows(n->out[0]);
    return 2.0 * BT * 4 * U * R + 10.0 * BT * U + (n->nin == 5 ? 2.0 * BT * R * U : 0);
  }
  case OP_LSTM_BWD: /* dh . W_hh and dW_hh += g^T h (with W_p: dm and dW_p too) */
  case OP_LSTMP_BWD: {
    double R = (double)n->in[1]->shape[1], U = (double)n->in[5]->shape[2], BT = rows(n->in[0]);
    return 4.0 * BT * 4 * U * R + 20.0 * BT * U + (n->nin == 8 ? 4.0 * BT * R * U : 0);
  }
  case OP_XENT:
  case OP_SOFTMAX:
    return 3.0 * numel(a);
  case OP_SAMPLED_XENT_ROWS:
  case OP_SAMPLED_XENT: /* training: x[N,D] times S+1 rows of W, then their softmax */
    return (2.0 * (double)a->shape[1] + 3.0) * numel(n->out[1]);
  case OP_SAMPLED_XENT_ROWS_BWD:
  case OP_SAMPLED_XENT_BWD: /* dx and the sampled rows' dW: two GEMMs over [N, S+1] */
    return 4.0 * numel(n->in[1]) * (double)n->in[2]->shape[1];
  case OP_EMBEDDING:
  case OP_RESHAPE:
  case OP_ALL_TO_ALL:
  case OP_ALL_TO_ALL_BACK:
  case OP_ALL_REDUCE:
  case OP_ALL_GATHER_TOPM:
  case OP_RESHARD:
  case OP_ALL_GATHER_ROWS:
  case OP_SPARSE_ALL_REDUCE:
  case OP_TABLE_GATHER:
  case OP_TABLE_SCATTER:
    return 0;
  default: {
    double f = 0;
    for (int j = 0; j < n->nout; j++)
      f += numel(n->out[j]);
    return f;
  }
  }
}

static int moe_of(const Graph *g, const char *layer) {
  for (int i = 0; layer && i < g->nmoe; i++)
    if (!strcmp(g->moe_names[i], layer)) return i;
  return -1;
}

static bool in_set(const Node *n, int d) {
  if (n->device >= 0) return n->device == d;
  if (n->ndevices == 0) return true;
  for (int i = 0; i < n->ndevices; i++)
    if (n->devices[i] == d) return true;
  return false;
}

static int set_size(const Node *n, int P) {
  return n->ndevices > 0 ? n->ndevices : n->device >= 0 ? 1 : P;
}

double plan_node_share(const Graph *g, const Node *n, int d, int devices) {
  if (devices <= 1 || !g->moe_expert_dev) return 1; /* not placed: one device does it all */
  if (!in_set(n, d)) return 0;
  int m = moe_of(g, n->layer);
  if (pass_group_node(n) && m >= 0 && g->moe_ngroups && g->moe_ngroups[m] > 0) {
    int G = g->moe_ngroups[m], mine = 0; /* hmoe's group side: the groups of device d */
    for (int u = 0; u < G; u++)
      mine += g->moe_group_dev[m][u] == d;
    return (double)mine / G;
  }
  if (n->nout > 0 && n->out[0]->part == PART_EXPERTS && m >= 0 && g->moe_nexperts[m] > 0) {
    int E = g->moe_nexperts[m], mine = 0;
    for (int e = 0; e < E; e++)
      mine += g->moe_expert_dev[m][e] == d;
    return (double)mine / E;
  }
  bool rows = n->nout > 0 && n->out[0]->ty.rank >= 1 && n->out[0]->ty.dim[0].b > 0;
  bool partial = n->nout > 0 && n->out[0]->part == PART_PARTIAL;
  if (rows || partial || n->op == OP_XENT) return 1.0 / set_size(n, devices);
  return 1; /* replicated work: every device of the set does it (aux losses, all_reduce) */
}

/* Devices holding a parameter: the set of its first reader. */
static const Node *first_reader(const Graph *g, const Tensor *t) {
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++)
      if (g->nodes[k]->in[i] == t) return g->nodes[k];
  return NULL;
}

/* Fraction of expert parameter p (PART_EXPERTS, rows = experts) on device d. Names:
 * LAYER.w1 (rows = experts 0..E-1) or LAYER.gI.w1 (group I: experts I*Eg ...). */
static double expert_param_share(const Graph *g, const Tensor *p, int d) {
  for (int m = 0; m < g->nmoe; m++) {
    size_t L = strlen(g->moe_names[m]);
    if (strncmp(p->name, g->moe_names[m], L) || p->name[L] != '.') continue;
    int E = g->moe_nexperts[m], first = 0, grp = -1, rowsn = (int)p->shape[0];
    if (sscanf(p->name + L + 1, "g%d.", &grp) == 1 && grp >= 0) first = grp * rowsn;
    if (rowsn <= 0 || first + rowsn > E) continue;
    int mine = 0;
    for (int e = first; e < first + rowsn; e++)
      mine += g->moe_expert_dev[m][e] == d || g->moe_expert_dev[m][e] < 0;
    return (double)mine / rowsn;
  }
  return 1;
}

static double optim_elems(const Tensor *p, OptKind opt) {
  if (opt == OPT_ADAM || p->ty.rank < 2) return opt == OPT_ADAM ? 2 * numel(p) : numel(p);
  double r = (double)p->shape[p->ty.rank - 2], c = (double)p->shape[p->ty.rank - 1];
  return numel(p) / (r * c) * (r + c);
}

Type *plan_device_shapes(Graph *g, int d, int devices, int64_t B, int64_t T) {
  bool placed = devices > 1 && g->moe_expert_dev;
  Type *save = placed ? pass_shard_experts(g, d) : pass_shard_experts(g, -1);
  mc_free(plan_widen_expert_rows(g, devices, B, T)); /* undone with the types */
  plan_rows_at_margin(g, d, devices, B, T);          /* these views keep them in the arena */
  return save;
}

void plan_restore_shapes(Graph *g, Type *save) {
  pass_unshard_experts(g, save);
}

double plan_gemm_s(const CostConsts *k, double M, double N, double K) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  double s = fmin(M, fmin(N, K)), eff = k->gemm_half > 0 ? s / (s + k->gemm_half) : 1;
  return 2 * M * N * K / (k->gflops * 1e9 * eff);
}

/* The routing each MoE layer is costed under: w[m][e] the fraction of the layer's routed
 * rows expert e gets (sums to 1), share[m][d] device d's (its experts'). */
typedef struct Route {
  int nmoe, P;
  int *E;
  double **w, **share;
  int **mine; /* [m][d]: experts of layer m on device d */
} Route;

/* Experts of MoE layer m: the placement's count, else its first expert GEMM's offsets. */
static int layer_experts(const Graph *g, int m) {
  if (g->moe_nexperts && g->moe_nexperts[m] > 0) return g->moe_nexperts[m];
  for (int kk = 0; kk < g->nnodes; kk++) {
    const Node *n = g->nodes[kk];
    if (n->op == OP_GROUPED_MATMUL && n->layer && !strcmp(n->layer, g->moe_names[m]))
      return (int)n->in[2]->shape[0] - 1;
  }
  return 0;
}

static Route route_make(const Graph *g, int P, const PlanLoads *loads, double zipf) {
  Route r = {.nmoe = g->nmoe, .P = P};
  r.E = mc_calloc((size_t)g->nmoe + 1, sizeof(int));
  r.w = mc_calloc((size_t)g->nmoe + 1, sizeof(double *));
  r.share = mc_calloc((size_t)g->nmoe + 1, sizeof(double *));
  r.mine = mc_calloc((size_t)g->nmoe + 1, sizeof(int *));
  bool placed = P > 1 && g->moe_expert_dev;
  for (int m = 0; m < g->nmoe; m++) {
    int E = r.E[m] = layer_experts(g, m);
    if (E <= 0) continue;
    double *w = r.w[m] = mc_calloc((size_t)E, sizeof(double));
    const double *l = plan_route_loads(loads, zipf, g->moe_names[m], E, w);
    double sum = 0;
    for (int e = 0; e < E; e++)
      sum += l ? fmax(l[e], 0) : 1;
    for (int e = 0; e < E; e++)
      w[e] = sum > 0 ? (l ? fmax(l[e], 0) : 1) / sum : 1.0 / E;
    r.share[m] = mc_calloc((size_t)P, sizeof(double));
    r.mine[m] = mc_calloc((size_t)P, sizeof(int));
    for (int e = 0; e < E; e++) {
      int d = placed ? g->moe_expert_dev[m][e] : 0;
      if (d >= 0 && d < P) {
        r.share[m][d] += w[e];
        r.mine[m][d]++;
      } else if (d < 0) /* replicated (data_parallel): every device runs it on its rows */
        for (int dd = 0; dd < P; dd++) {
          r.share[m][dd] += w[e] / P;
          r.mine[m][dd]++;
        }
    }
  }
  return r;
}

/* Device d's rows_scale (DeviceCost): per MoE layer m, the routed share of its rows each
 * level brings d over uniform routing's, the expert rows' (levels 0 and 2: d's experts)
 * and an hmoe's group rows' (level 1: the rows of d's groups, every expert of a group
 * counting for it). 1 where d has none of the level's or the route does not know m. */
static double *level_scales(const Graph *g, const Route *r, int d) {
  double *f = mc_calloc((size_t)g->nmoe * PLAN_ROW_LEVELS + 1, sizeof(double));
  for (int m = 0; m < g->nmoe; m++) {
    double *fm = f + (size_t)m * PLAN_ROW_LEVELS;
    fm[0] = fm[1] = fm[2] = 1;
    int E = r->E[m];
    if (r->P <= 1 || !g->moe_expert_dev || !r->w[m] || E <= 0 || E != g->moe_nexperts[m]) continue;
    double u = 0; /* d's share under uniform routing, as route_make counts it */
    for (int e = 0; e < E; e++) {
      int de = g->moe_expert_dev[m][e];
      u += de == d ? 1.0 / E : de < 0 ? 1.0 / E / r->P : 0;
    }
    if (u > 0) fm[0] = fm[2] = r->share[m][d] / u;
    int G = g->moe_group_dev && g->moe_group_dev[m] ? g->moe_ngroups[m] : 0;
    if (G <= 0 || E % G) continue;
    double s = 0;
    int mine = 0;
    for (int q = 0; q < G; q++) {
      if (g->moe_group_dev[m][q] != d) continue;
      mine++;
      for (int e = q * (E / G); e < (q + 1) * (E / G); e++)
        s += r->w[m][e];
    }
    if (mine > 0) fm[1] = s / ((double)mine / G);
  }
  return f;
}

static void route_free(Route *r) {
  for (int m = 0; m < r->nmoe; m++) {
    mc_free(r->w[m]);
    mc_free(r->share[m]);
    mc_free(r->mine[m]);
  }
  mc_free(r->mine);
  mc_free(r->w);
  mc_free(r->share);
  mc_free(r->E);
}

/* plan_node_share with the route's expert counts per device (no scan of the layer's
 * experts per node and device: 131072 experts on 128 devices). */
static double node_share(const Graph *g, const Route *r, const Node *n, int d) {
  int P = r->P;
  if (P <= 1 || !g->moe_expert_dev) return 1;
  if (!in_set(n, d)) return 0;
  int m = moe_of(g, n->layer);
  if (pass_group_node(n) && m >= 0 && g->moe_ngroups && g->moe_ngroups[m] > 0 && r->w[m] &&
      r->E[m] == g->moe_nexperts[m]) {
    int G = g->moe_ngroups[m], Eg = r->E[m] / G; /* the routed share of d's groups */
    double s = 0;
    for (int e = 0; e < r->E[m]; e++)
      s += g->moe_group_dev[m][e / Eg] == d ? r->w[m][e] : 0;
    return s;
  }
  if (n->nout > 0 && n->out[0]->part == PART_EXPERTS && m >= 0 && g->moe_nexperts[m] > 0 &&
      r->mine[m] && r->E[m] == g->moe_nexperts[m])
    return (double)r->mine[m][d] / r->E[m];
  return plan_node_share(g, n, d, P);
}

/* An expert node's share s of its work on device d (its experts of the layer's) as the
 * routed share of the layer's rows its experts get. */
static double routed_share(const Graph *g, const Route *r, const Node *n, int d, double s) {
  int m = moe_of(g, n->layer);
  if (r->P <= 1 || !g->moe_expert_dev || m < 0 || !r->share[m] || r->E[m] <= 0 || n->nout < 1 ||
      n->out[0]->part != PART_EXPERTS || pass_group_node(n))
    return s;
  int mine = r->mine[m][d];
  return mine > 0 && fabs(s - (double)mine / r->E[m]) < 1e-12 ? r->share[m][d] : s;
}

/* Elementwise seconds for `elems` elements read and written (flops: the fallback). */
static double elem_s(const CostConsts *k, double elems, double flops) {
  return k->elem_gbs > 0 ? 4 * elems / (k->elem_gbs * 1e9) : flops / (k->gflops * 1e9);
}

int plan_kernel_set(const CostConsts *k, int devices) {
  return devices == 1 && k->cores > 0 ? 0 : 1;
}

/* Seconds of node n on every device: t[d]. Rows split by plan_node_share; an expert
 * node's work by its experts' routed rows, an expert GEMM per expert at its rows. */
static void node_times_model(const Graph *g, const Node *n, const Route *r, const CostConsts *k,
                             double *t, DeviceCost *dc);

/* A grouped_matmul_relu_bwd is costed as the two nodes it stands for (passes/fusion.c):
 * grouped_matmul (transW) of its g, W and offsets, then relu_bwd of that and h, both with
 * its place, so the plan's times are the split form's (the fused kernel makes the same
 * GEMMs and touches the same bytes). Fills parts (copies of n; ins: their inputs) and
 * returns how many: 1, n itself, for any other node. */
static int node_parts(const Node *n, Node parts[2], Tensor *ins[5]) {
  parts[0] = *n;
  if (n->op != OP_GROUPED_MATMUL_RELU_BWD) return 1;
  ins[0] = n->in[1], ins[1] = n->in[2], ins[2] = n->in[3]; /* grouped_matmul(g, W, off) */
  ins[3] = n->out[0], ins[4] = n->in[0];                   /* relu_bwd(its output, h) */
  parts[0].op = OP_GROUPED_MATMUL, parts[0].nin = 3, parts[0].in = ins, parts[0].ia[0] = 1;
  parts[1] = *n;
  parts[1].op = OP_RELU_BWD, parts[1].nin = 2, parts[1].in = ins + 3;
  return 2;
}

/* An expert GEMM of a layer the route knows: one GEMM per expert at its routed rows. */
static bool expert_gemm(const Graph *g, const Node *n, const Route *r) {
  int m = moe_of(g, n->layer);
  return (n->op == OP_GROUPED_MATMUL || n->op == OP_GROUPED_MATMUL_DW) && m >= 0 && r->w[m] &&
         (int)n->in[2]->shape[0] - 1 == r->E[m];
}

static void expert_gemm_km(const Node *n, double *K, double *M);

/* Parallel parts of one node: time and tasks, combined into the cores it keeps busy. */
typedef struct Par {
  double work, spread; /* seconds on one core; the same over the cores each part uses */
} Par;

static void par_add(Par *p, const CostConsts *k, double s, int64_t tasks) {
  p->work += s;
  p->spread += s / (double)MC_MAX(1, MC_MIN((int64_t)k->cores, tasks));
}

static void par_gemm(Par *p, const CostConsts *k, double M, double N, double K) {
  par_add(p, k, plan_gemm_s(k, M, N, K), rt_gemm_pieces((int64_t)M, (int64_t)N, (int64_t)K));
}

/* Node n's cores on one device alone (route r over 1 device): rt_sgemm's pieces for a GEMM,
 * rt_chunks over its output's rows for a loop, the LSTM's row blocks, an expert GEMM's
 * tasks over all experts (never faster than its largest task alone). */
static double node_cores(const Graph *g, const Node *n, const Route *r, const CostConsts *k) {
  if (k->cores <= 1) return 1;
  Par p = {0, 0};
  const Tensor *a = n->in[0];
  if (expert_gemm(g, n, r)) {
    int m = moe_of(g, n->layer);
    double R = rows(a), K, M, big = 0;
    expert_gemm_km(n, &K, &M);
    for (int e = 0; e < r->E[m]; e++) {
      double Re = R * r->w[m][e];
      double x = n->op == OP_GROUPED_MATMUL ? plan_gemm_s(k, Re, M, K) : plan_gemm_s(k, K, M, Re);
      int64_t tasks = rt_moe_pieces(2 * Re * M * K, (int64_t)M);
      p.work += x;
      big = fmax(big, x / (double)tasks);
    }
    return p.work > 0 ? p.work / fmax(p.work / k->cores, big) : 1;
  }
  switch (n->op) {
  case OP_MATMUL: {
    const Tensor *o = n->out[0];
    double K = n->ia[0] ? rows(a) : (double)a->shape[a->ty.rank - 1];
    par_gemm(&p, k, rows(o), (double)o->shape[o->ty.rank - 1], K);
    break;
  }
  case OP_LSTM:
  case OP_LSTM_BWD:
  case OP_LSTMP_BWD: { /* the recurrence in row blocks; backward: dW over all B*T rows */
    bool fwd = n->op == OP_LSTM, proj = n->nin == (fwd ? 5 : 8);
    double R = (double)n->in[1]->shape[1], T = g->T > 0 ? (double)g->T : 1;
    double U = (double)(fwd ? n->out[1] : n->in[5])->shape[2];
    double BT = fwd ? rows(n->out[0]) : rows(n->in[0]);
    par_add(&p, k, T * plan_gemm_s(k, BT / T, 4 * U, R), rt_lstm_tasks((int64_t)(BT / T)));
    if (!fwd) {
      par_gemm(&p, k, 4 * U, R, BT);
      if (proj) par_gemm(&p, k, R, U, BT);
    }
    break;
  }
  case OP_SAMPLED_XENT_ROWS:
  case OP_SAMPLED_XENT: {
    double N = (double)a->shape[0], D = (double)a->shape[1];
    par_gemm(&p, k, N, N > 0 ? numel(n->out[1]) / N : 0, D);
    break;
  }
  case OP_SAMPLED_XENT_ROWS_BWD:
  case OP_SAMPLED_XENT_BWD: {
    double N = (double)n->in[1]->shape[0], S1 = N > 0 ? numel(n->in[1]) / N : 0;
    double D = (double)n->in[2]->shape[1];
    par_gemm(&p, k, N, D, S1);
    par_gemm(&p, k, S1, D, N);
    break;
  }
  default: { /* a loop over its largest output's rows */
    const Tensor *o = NULL;
    for (int j = 0; j < n->nout; j++)
      if (!o || n->out[j]->numel > o->numel) o = n->out[j];
    if (!o || o->numel <= 0) return 1;
    int64_t C = o->ty.rank >= 1 && o->shape[o->ty.rank - 1] > 0 ? o->shape[o->ty.rank - 1] : 1;
    return (double)MC_MIN((int64_t)k->cores, rt_chunks(o->numel / C, C));
  }
  }
  return p.spread > 0 ? p.work / p.spread : 1;
}

double plan_node_cores(const Graph *g, const Node *n, const CostConsts *k) {
  Route r = route_make(g, 1, NULL, 0);
  Node parts[2];
  Tensor *ins[5];
  node_parts(n, parts, ins); /* a fused expert backward: its GEMM's */
  double c = node_cores(g, &parts[0], &r, k);
  route_free(&r);
  return c;
}

/* node_times_model times the op's measured factor; n: a part of node `of` (node_parts),
 * which gives the factor (calibrate measures the fused kernel as a whole) */
static void node_times(const Graph *g, const Node *n, const Node *of, const Route *r,
                       const CostConsts *k, double *t, DeviceCost *dc) {
  node_times_model(g, n, r, k, t, dc);
  if (ir_ops[n->op].flags & OPF_COLLECTIVE) return;
  int j = plan_kernel_set(k, r->P);
  double f = k->kfactor[j][of->op] > 0 ? k->kfactor[j][of->op] : 1;
  /* one device alone: its phases are divided by the cores, so a kernel the runtime runs
   * on fewer (node_cores) counts cores / those times its time, and its calls' time once */
  double call = k->kcall_us[j] * 1e-6 * (j == 0 ? k->cores : 1);
  double spread = j == 0 ? k->cores / node_cores(g, n, r, k) : 1;
  bool experts = expert_gemm(g, n, r);
  for (int d = 0; d < r->P; d++) {
    if (t[d] > 0 || node_share(g, r, n, d) > 0) t[d] = t[d] * f * spread + call;
    if (experts && dc) dc[d].expert_s += t[d];
  }
}

double plan_node_seconds(const Graph *g, const Node *n, const CostConsts *k) {
  Route r = route_make(g, 1, NULL, 0);
  double t = 0;
  Node parts[2];
  Tensor *ins[5];
  for (int q = 0, np = node_parts(n, parts, ins); q < np; q++)
    node_times_model(g, &parts[q], &r, k, &t, NULL);
  route_free(&r);
  return t;
}

/* Elements the optimizer reads and writes over param_bytes of parameters (Adam: the
 * parameter, its gradient and two moments read, three written; factored: no first moment,
 * the second's rows and columns negligible). */
static double optim_elems_moved(double param_bytes, OptKind opt) {
  return param_bytes / 4 * (opt == OPT_ADAM ? 7 : 5);
}

double plan_optim_seconds(double param_bytes, OptKind opt, const CostConsts *k) {
  double el = optim_elems_moved(param_bytes, opt);
  return elem_s(k, el, el / 2) + 4 * k->launch_us * 1e-6;
}

double plan_pre_optim_seconds(double param_bytes, int devices, const CostConsts *k) {
  if (k->norm_ns <= 0) return 0;
  double guard = k->elem_gbs > 0 ? param_bytes / (k->elem_gbs * 1e9) : 0;
  return guard + (devices > 1 ? param_bytes / 4 * k->norm_ns * 1e-9 : 0);
}

/* A memory-bound phase whose devices together touch more than the last-level cache:
 * no faster than the bytes it moves at the machine's memory bandwidth (0 within it). */
static double dram_floor_s(const CostConsts *k, double touched, double moved) {
  if (k->dram_gbs <= 0 || k->llc_bytes <= 0 || touched <= k->llc_bytes) return 0;
  return moved / (k->dram_gbs * 1e9);
}

/* An expert GEMM's weight sides: each expert's [K, M] (rows x K -> M forward). */
static void expert_gemm_km(const Node *n, double *K, double *M) {
  *K = (double)n->in[0]->shape[n->in[0]->ty.rank - 1];
  *M = (double)n->in[1]->shape[n->in[1]->ty.rank - 1];
  if (n->op == OP_GROUPED_MATMUL) *M = (double)n->out[0]->shape[n->out[0]->ty.rank - 1];
}

/* Bytes of expert weights an expert GEMM streams on all devices together (each expert's
 * [K, M] read, or its gradient written, once per device that runs it); 0 for other nodes. */
static double expert_weight_bytes(const Graph *g, const Node *n, const Route *r) {
  if (!expert_gemm(g, n, r)) return 0;
  int m = moe_of(g, n->layer);
  bool placed = r->P > 1 && g->moe_expert_dev;
  double K, M, copies = 0;
  expert_gemm_km(n, &K, &M);
  for (int e = 0; e < r->E[m]; e++) {
    int d = placed ? g->moe_expert_dev[m][e] : 0;
    copies += d < 0 ? r->P : d < r->P;
  }
  return 4 * K * M * copies;
}

static void node_times_model(const Graph *g, const Node *n, const Route *r, const CostConsts *k,
                             double *t, DeviceCost *dc) {
  const int P = r->P;
  const double launch = k->launch_us * 1e-6;
  int m = moe_of(g, n->layer);
  bool placed = P > 1 && g->moe_expert_dev;
  if (expert_gemm(g, n, r)) { /* one GEMM per expert at its routed rows */
    double R = rows(n->in[0]), K, M;
    expert_gemm_km(n, &K, &M);
    for (int e = 0; e < r->E[m]; e++) {
      int d = placed ? g->moe_expert_dev[m][e] : 0;
      if (d >= P) continue;
      /* a replicated expert (data_parallel) runs on every device, on its 1/P of the rows */
      int lo = d < 0 ? 0 : d, hi = d < 0 ? P : d + 1;
      double Re = R * r->w[m][e] / (d < 0 ? P : 1);
      double x = launch +
                 (n->op == OP_GROUPED_MATMUL ? plan_gemm_s(k, Re, M, K) : plan_gemm_s(k, K, M, Re));
      for (int dd = lo; dd < hi; dd++) {
        t[dd] += x; /* node_times adds the device's expert seconds, factor applied */
        if (dc) dc[dd].expert_flops += 2 * Re * M * K;
      }
    }
    return;
  }
  if (ir_ops[n->op].flags & OPF_COLLECTIVE) return;
  for (int d = 0; d < P; d++) {
    double s = node_share(g, r, n, d);
    if (s <= 0) continue;
    s = routed_share(g, r, n, d, s);
    const Tensor *a = n->in[0];
    double x = 0;
    switch (n->op) {
    case OP_MATMUL: {
      const Tensor *o = n->out[0];
      double Mo = rows(o), No = (double)o->shape[o->ty.rank - 1];
      double K = n->ia[0] ? rows(a) : (double)a->shape[a->ty.rank - 1];
      x = launch + (n->ia[0] ? plan_gemm_s(k, Mo, No, K * s) : plan_gemm_s(k, Mo * s, No, K));
      break;
    }
    case OP_LSTM:
    case OP_LSTM_BWD:
    case OP_LSTMP_BWD: { /* T steps of [B, R] x [R, 4U] (backward: dh, dW), W_p: [B, U] x [U, R] */
      bool fwd = n->op == OP_LSTM, proj = n->nin == (fwd ? 5 : 8);
      double R = (double)n->in[1]->shape[1], T = g->T > 0 ? (double)g->T : 1;
      double U = (double)(fwd ? n->out[1] : n->in[5])->shape[2];
      double Bd = (fwd ? rows(n->out[0]) : rows(n->in[0])) / T * s;
      if (fwd)
        x = T * (launch + plan_gemm_s(k, Bd, 4 * U, R)) +
            elem_s(k, 8 * Bd * T * U, 10 * Bd * T * U) +
            (proj ? T * (launch + plan_gemm_s(k, Bd, R, U)) : 0);
      else
        x = T * (2 * launch + plan_gemm_s(k, Bd, R, 4 * U) + plan_gemm_s(k, 4 * U, R, Bd)) +
            elem_s(k, 16 * Bd * T * U, 20 * Bd * T * U) +
            (proj ? T * (launch + plan_gemm_s(k, Bd, U, R)) + plan_gemm_s(k, R, U, Bd * T) : 0);
      break;
    }
    case OP_SAMPLED_XENT_ROWS:
    case OP_SAMPLED_XENT: { /* x[N, D] against S+1 rows of W */
      double N = (double)a->shape[0], D = (double)a->shape[1];
      double S1 = N > 0 ? numel(n->out[1]) / N : 0;
      x = launch + plan_gemm_s(k, N * s, S1, D) + elem_s(k, 3 * N * s * S1, 3 * N * s * S1);
      break;
    }
    case OP_SAMPLED_XENT_ROWS_BWD:
    case OP_SAMPLED_XENT_BWD: {
      double N = (double)n->in[1]->shape[0], S1 = N > 0 ? numel(n->in[1]) / N : 0;
      double D = (double)n->in[2]->shape[1];
      x = 2 * launch + plan_gemm_s(k, N * s, D, S1) + plan_gemm_s(k, S1, D, N * s);
      break;
    }
    case OP_RESHAPE:
      break;
    default: {
      if (pass_memplan_view(g, n)) break; /* no bytes moved: only the call (node_times) */
      double el = 0;
      for (int i = 0; i < n->nin; i++)
        el += numel(n->in[i]);
      for (int j = 0; j < n->nout; j++)
        el += numel(n->out[j]);
      x = launch + elem_s(k, el * s, plan_node_flops(n) * s);
    }
    }
    t[d] += x;
  }
}

/* An all-to-all of hmoe's two-level exchange (strategy = hmoe): the bytes from device s
 * to device d, routed: group rows from every batch device (each 1/P of the rows) to each
 * group's device (ia[3] = 1), expert rows from each group's device to its experts'; the
 * reverse for all_to_all_back. A device's time is the larger of what it sends and
 * receives, each part at its link (inside its node or between nodes). */
static void two_level_times(const Graph *g, const Node *n, const Route *r, const CostConsts *k,
                            int m, CommBytes b, int per, double *t, double *intra, double *inter) {
  if (!n->ia[3] && ir_hmoe_experts_local(g, m)) return; /* the runtime exchanges nothing */
  const int P = r->P, E = r->E[m], Eg = E / g->moe_ngroups[m];
  const int *gdev = g->moe_group_dev[m], *edev = g->moe_expert_dev[m];
  double *io = mc_calloc((size_t)P * 4, sizeof(double)); /* send in, send out, recv in, out */
  double pay = (double)b.payload;
  for (int e = 0; e < E; e++) {
    int to = n->ia[3] ? gdev[e / Eg] : edev[e];
    for (int s = 0; s < (n->ia[3] ? P : 1); s++) { /* expert rows: only the group's device */
      int from = n->ia[3] ? s : gdev[e / Eg];
      double v = n->ia[3] ? pay / P * r->w[m][e] : pay * r->w[m][e];
      int a = n->op == OP_ALL_TO_ALL ? from : to, c = n->op == OP_ALL_TO_ALL ? to : from;
      if (a == c) continue;
      bool out = a / per != c / per;
      io[4 * a + out] += v;     /* a sends */
      io[4 * c + 2 + out] += v; /* c receives */
    }
  }
  double inter_gbs = k->inter_gbs > 0 ? k->inter_gbs : k->link_gbs;
  double inter_lat = k->inter_latency_us > 0 ? k->inter_latency_us : k->latency_us;
  for (int d = 0; d < P; d++) {
    const double *x = io + 4 * d;
    bool recv = x[2] + x[3] > x[0] + x[1];
    double vin = recv ? x[2] : x[0], vout = recv ? x[3] : x[1];
    intra[d] += vin;
    inter[d] += vout;
    t[d] += vin / (k->link_gbs * 1e9) + vout / (inter_gbs * 1e9) +
            (vout > 0 ? inter_lat : k->latency_us) * 1e-6;
  }
  mc_free(io);
}

/* One collective on every device: seconds t[d] and bytes over links inside a node
 * (intra[d]) and between nodes (inter[d]). An all-to-all's device receives its experts'
 * routed share of the rows (sends its own rows' share); a ring all-reduce that spans
 * nodes runs every hop at the slower link. */
static void collective_times(const Graph *g, const Node *n, const Route *r, const CostConsts *k,
                             double *t, double *intra, double *inter) {
  const int P = r->P;
  int per = k->per_node > 0 && k->per_node < P ? k->per_node : P;
  CommBytes b = pass_comm_bytes(g, n);
  int S = set_size(n, P);
  if (S <= 1) return;
  int m = moe_of(g, n->layer);
  bool a2a = n->op == OP_ALL_TO_ALL || n->op == OP_ALL_TO_ALL_BACK;
  if (a2a && m >= 0 && g->moe_ngroups && g->moe_ngroups[m] > 0 && r->w[m] &&
      r->E[m] == g->moe_nexperts[m]) {
    two_level_times(g, n, r, k, m, b, per, t, intra, inter);
    return;
  }
  double set_share = 0; /* the routed share of the set's devices (hmoe: a node's) */
  if (a2a && m >= 0 && r->share[m] && g->moe_expert_dev)
    for (int d = 0; d < P; d++)
      set_share += in_set(n, d) ? r->share[m][d] : 0;
  double inter_gbs = k->inter_gbs > 0 ? k->inter_gbs : k->link_gbs;
  double inter_lat = k->inter_latency_us > 0 ? k->inter_latency_us : k->latency_us;
  int nodes = (P + per - 1) / per;
  int *in_node = mc_calloc((size_t)nodes, sizeof(int)); /* the set's devices per node */
  for (int d = 0; d < P; d++)
    in_node[d / per] += in_set(n, d);
  for (int d = 0; d < P; d++) {
    if (!in_set(n, d)) continue;
    int out = S - in_node[d / per]; /* peers in other nodes */
    double frac_out = (double)out / (S - 1), vol = (double)b.per_device;
    if (a2a) {
      vol = (double)b.expected / S;
      if (set_share > 0) vol = fmax(vol, (double)b.expected * r->share[m][d] / set_share);
    }
    double lat = out > 0 ? inter_lat : k->latency_us;
    if (n->op == OP_ALL_REDUCE && k->inproc && n->in[0]->ty.dtype != DT_I32) {
      intra[d] += vol; /* the bytes a ring would send (what the run counts) */
      t[d] += (double)b.payload / (k->link_gbs * 1e9) + 2 * lat * 1e-6;
      continue;
    }
    if (n->op == OP_ALL_REDUCE) {
      int steps = 2 * (S - 1);
      if (out > 0) {
        inter[d] += vol;
        t[d] += vol / (fmin(k->link_gbs, inter_gbs) * 1e9) + steps * lat * 1e-6;
      } else {
        intra[d] += vol;
        t[d] += vol / (k->link_gbs * 1e9) + steps * lat * 1e-6;
      }
      continue;
    }
    intra[d] += vol * (1 - frac_out);
    inter[d] += vol * frac_out;
    t[d] += vol * (1 - frac_out) / (k->link_gbs * 1e9) + vol * frac_out / (inter_gbs * 1e9) +
            lat * 1e-6;
  }
  mc_free(in_node);
}

PlanCost plan_cost(const Graph *g, int devices, OptKind opt, const CostConsts *k) {
  return plan_cost_routed(g, devices, opt, k, NULL, 0);
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A phase's time on this machine, each device's work t[d] seconds: the slowest device's,
 * or, when the devices share the machine's cores (k->cores > 0: threads or ranks), the
 * time the cores take to run them side by side: shared evenly while more devices than
 * cores are busy (the OS time-slices their threads), then each on a core of its own as
 * they finish. So no less than the slowest nor than all the work over the cores, and an
 * uneven phase on shared cores costs more than its even share (4 devices on 2 cores:
 * the busiest runs alone at the end while a core idles). A device alone (alone: one
 * device's kernels) has every core. */
static double shared_cores_s(const CostConsts *k, const double *t, int devices, bool alone) {
  double mx = 0;
  for (int d = 0; d < devices; d++)
    mx = fmax(mx, t[d]);
  if (k->cores <= 0) return mx;
  if (alone) return mx / k->cores;
  double *w = mc_malloc(sizeof(double) * (size_t)devices), at = 0, done = 0;
  memcpy(w, t, sizeof(double) * (size_t)devices);
  qsort(w, (size_t)devices, sizeof(double), by_value);
  for (int i = 0; i < devices; i++) { /* the devices still busy share the cores */
    at += (w[i] - done) * fmax(1.0, (double)(devices - i) / k->cores);
    done = w[i];
  }
  mc_free(w);
  return at;
}

double plan_collective_seconds(const Graph *g, const Node *n, int devices, const CostConsts *k) {
  Route r = route_make(g, devices, NULL, 0);
  double *t = mc_calloc((size_t)devices * 3, sizeof(double));
  collective_times(g, n, &r, k, t, t + devices, t + 2 * devices);
  double mx = shared_cores_s(k, t, devices, false);
  mc_free(t);
  route_free(&r);
  return mx;
}

PlanCost plan_cost_routed(const Graph *g, int devices, OptKind opt, const CostConsts *k,
                          const PlanLoads *loads, double zipf) {
  PlanCost c = {.devices = devices, .k = *k};
  c.dev = mc_calloc((size_t)devices, sizeof(DeviceCost));
  bool placed = devices > 1 && g->moe_expert_dev;
  int64_t B = g->B > 0 ? g->B : 1;
  c.rows_per_device = (B + devices - 1) / devices;
  Route r = route_make(g, devices, loads, zipf);
  bool *kept = mc_calloc((size_t)g->ntensors + 1, sizeof(bool)); /* read by backward */
  for (int kk = 0; kk < g->nnodes; kk++)
    for (int i = 0; g->nodes[kk]->backward && i < g->nodes[kk]->nin; i++)
      kept[g->nodes[kk]->in[i]->id] = true;
  for (int d = 0; d < devices; d++) {
    DeviceCost *dc = &c.dev[d];
    for (int i = 0; i < g->nparams; i++) {
      const Tensor *p = g->params[i];
      double s = 1;
      int64_t V;
      int tp;
      if (placed && p->part == PART_EXPERTS)
        s = expert_param_share(g, p, d);
      else if (placed && ir_table_shard(g, p, &V, &tp)) /* its range of a table's rows */
        s = (double)(ir_table_first(V, tp, d + 1) - ir_table_first(V, tp, d)) / (double)V;
      else if (placed) {
        const Node *r = first_reader(g, p);
        s = r && !in_set(r, d) ? 0 : 1;
      }
      dc->param_bytes += 4 * numel(p) * s;
      if (g->has_backward) {
        dc->grad_bytes += 4 * numel(p) * s;
        dc->optim_bytes += 4 * optim_elems(p, opt) * s;
      }
    }
    for (int m = 0; m < g->nmoe && placed; m++)
      for (int e = 0; e < g->moe_nexperts[m]; e++)
        dc->nexperts += g->moe_expert_dev[m][e] == d || g->moe_expert_dev[m][e] < 0;
    for (int m = 0; m < g->nmoe && !placed; m++) {
      for (int kk = 0; kk < g->nnodes; kk++) {
        const Node *n = g->nodes[kk];
        if (n->op == OP_GROUPED_MATMUL && n->layer && !strcmp(n->layer, g->moe_names[m]) &&
            !n->backward && n->role && !strcmp(n->role, "experts")) {
          dc->nexperts += (int)n->in[2]->shape[0] - 1;
          break;
        }
      }
    }
    for (int kk = 0; kk < g->nnodes; kk++) {
      const Node *n = g->nodes[kk];
      double s = routed_share(g, &r, n, d, node_share(g, &r, n, d));
      dc->flops += plan_node_flops(n) * s;
      if (n->backward) continue;
      for (int j = 0; j < n->nout; j++)
        if (kept[n->out[j]->id]) dc->act_bytes += 4 * numel(n->out[j]) * s;
    }
  }
  /* expert rows at the routed share */
  bool *seen_layer = mc_calloc((size_t)g->nmoe + 1, sizeof(bool));
  for (int kk = 0; kk < g->nnodes; kk++) {
    const Node *n = g->nodes[kk];
    int m = moe_of(g, n->layer);
    if (n->op != OP_GROUPED_MATMUL || n->backward || m < 0 || seen_layer[m] || !r.share[m])
      continue;
    seen_layer[m] = true;
    double R = rows(n->in[0]);
    for (int d = 0; d < devices; d++)
      c.dev[d].expert_rows += R * (placed ? r.share[m][d] : 1);
  }
  int nlayers = 0;
  for (int m = 0; m < g->nmoe; m++)
    if (r.share[m]) {
      nlayers++;
      for (int d = 0; d < devices; d++)
        c.dev[d].route_share += placed ? r.share[m][d] : 1;
    }
  for (int d = 0; d < devices; d++) {
    c.dev[d].route_share /= nlayers > 0 ? nlayers : 1;
    c.dev[d].rows_scale = level_scales(g, &r, d);
    c.mean_expert_rows += c.dev[d].expert_rows / devices;
  }
  mc_free(seen_layer);
  /* the step: phases of kernels between collectives; each phase as long as its slowest
   * device, each collective as long as its slowest device (nothing overlaps) */
  double *acc = mc_calloc((size_t)devices, sizeof(double));
  double *acc_exp = mc_calloc((size_t)devices, sizeof(double)); /* of acc: expert GEMMs */
  double *t = mc_calloc((size_t)devices, sizeof(double));
  double *intra = mc_calloc((size_t)devices, sizeof(double));
  double *inter = mc_calloc((size_t)devices, sizeof(double));
  double step = 0, comm = 0, wbytes = 0; /* wbytes: the phase's expert weights streamed */
  /* what every step touches: the devices' parameters and, training, their gradients and
   * optimizer state (the update's pass reads them all); past the cache the weights a
   * phase reads were evicted since their last use, however few the phase's own bytes */
  double state = 0;
  for (int d = 0; d < devices; d++)
    state += c.dev[d].param_bytes * (!g->has_backward ? 1 : opt == OPT_ADAM ? 4 : 2);
  for (int kk = 0; kk <= g->nnodes; kk++) {
    const Node *n = kk < g->nnodes ? g->nodes[kk] : NULL;
    bool coll = n && (ir_ops[n->op].flags & OPF_COLLECTIVE);
    if (!n || coll) {
      double all = shared_cores_s(k, acc, devices, devices == 1);
      for (int d = 0; d < devices; d++) /* without the expert GEMMs */
        acc[d] -= acc_exp[d];
      /* the expert GEMMs no faster than their weights from memory, past the cache */
      double mx = fmax(all, shared_cores_s(k, acc, devices, devices == 1) +
                                dram_floor_s(k, fmax(wbytes, state), wbytes));
      memset(acc, 0, sizeof(double) * (size_t)devices);
      memset(acc_exp, 0, sizeof(double) * (size_t)devices);
      wbytes = 0;
      step += mx;
    }
    if (!n) break;
    memset(t, 0, sizeof(double) * (size_t)devices);
    if (coll) {
      CommBytes b = pass_comm_bytes(g, n);
      c.comm_bytes_expected += (double)b.expected;
      c.comm_bytes_upper += (double)b.upper;
      memset(intra, 0, sizeof(double) * (size_t)devices);
      memset(inter, 0, sizeof(double) * (size_t)devices);
      collective_times(g, n, &r, k, t, intra, inter);
      double wait = k->kcoll_us[n->op] * 1e-6; /* in situ: the wait for the slowest, syncs */
      /* devices on shared cores copy and sum on them too: their bytes over the cores */
      double mx = shared_cores_s(k, t, devices, false) + wait;
      for (int d = 0; d < devices; d++) {
        t[d] += wait;
        c.dev[d].comm_s += t[d];
        c.dev[d].intra_bytes += intra[d];
        c.dev[d].inter_bytes += inter[d];
      }
      step += mx;
      comm += mx;
      continue;
    }
    Node parts[2];
    Tensor *ins[5];
    for (int q = 0, np = node_parts(n, parts, ins); q < np; q++) {
      const Node *x = &parts[q];
      if (q) memset(t, 0, sizeof(double) * (size_t)devices);
      node_times(g, x, n, &r, k, t, c.dev);
      bool experts = expert_gemm(g, x, &r);
      wbytes += expert_weight_bytes(g, x, &r);
      for (int d = 0; d < devices; d++) {
        acc[d] += t[d];
        if (experts) acc_exp[d] += t[d];
        c.dev[d].compute_s += t[d];
      }
    }
  }
  /* the optimizer step (the in-situ factor is the reference models' in-cache rate), after
   * the passes before it on host devices: the guard's and several devices' global norm */
  double moved = 0; /* the update touches `state` */
  double of = k->kfactor_optim[plan_kernel_set(k, devices)];
  memset(t, 0, sizeof(double) * (size_t)devices);
  for (int d = 0; d < devices && g->has_backward; d++) {
    double pb = c.dev[d].param_bytes, ts = plan_optim_seconds(pb, opt, k) * (of > 0 ? of : 1);
    t[d] = ts + plan_pre_optim_seconds(pb, devices, k);
    c.dev[d].compute_s += t[d];
    moved += 4 * optim_elems_moved(pb, opt) + (k->norm_ns > 0 ? pb * (devices > 1 ? 2 : 1) : 0);
  }
  step += fmax(shared_cores_s(k, t, devices, devices == 1), dram_floor_s(k, state, moved));
  mc_free(acc);
  mc_free(acc_exp);
  mc_free(t);
  mc_free(intra);
  mc_free(inter);
  route_free(&r);
  mc_free(kept);
  c.fits = true;                    /* until plan_cost_set_memory says otherwise */
  if (k->cores > 0 && devices == 1) /* per device: the same scale as the step */
    c.dev[0].compute_s /= k->cores, c.dev[0].expert_s /= k->cores;
  c.step_s = step;
  c.comm_s = comm;
  c.compute_s = step - comm;
  for (int d = 1; d < devices; d++)
    if (c.dev[d].compute_s + c.dev[d].comm_s >
        c.dev[c.busiest].compute_s + c.dev[c.busiest].comm_s + 1e-15)
      c.busiest = d;
  return c;
}

void plan_cost_set_memory(PlanCost *c, int d, double persist, double arena, double optim,
                          double params, double live_max) {
  DeviceCost *dc = &c->dev[d];
  dc->persist_bytes = persist;
  dc->arena_bytes = arena;
  dc->optim_alloc_bytes = optim;
  dc->param_alloc_bytes = params;
  dc->planned_bytes = persist + arena + optim;
  c->live_max = fmax(c->live_max, live_max);
  c->max_planned = fmax(c->max_planned, dc->planned_bytes);
  c->fits = c->k.mem_bytes <= 0 || c->max_planned <= c->k.mem_bytes;
}

void plan_cost_set_rows(PlanCost *c, int d, double expected, double worst, bool outgrow) {
  DeviceCost *dc = &c->dev[d];
  if (worst <= 0) return;
  dc->rows_bytes = fmin(expected, worst);
  dc->rows_margin_bytes = fmin(expected * PLAN_ROWS_MARGIN, worst);
  dc->rows_apart_bytes = outgrow ? dc->rows_margin_bytes : 0;
  dc->planned_bytes += dc->rows_apart_bytes;
  c->max_planned = fmax(c->max_planned, dc->planned_bytes);
  c->fits = c->k.mem_bytes <= 0 || c->max_planned <= c->k.mem_bytes;
}

void plan_cost_free(PlanCost *c) {
  for (int d = 0; c->dev && d < c->devices; d++)
    mc_free(c->dev[d].rows_scale);
  mc_free(c->dev);
  c->dev = NULL;
}
