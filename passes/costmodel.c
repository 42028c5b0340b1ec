/* costmodel.c: what a placed, bound graph costs per device (moec plan; moec simulate
 * with its cluster presets: the same code). docs/placement.md lists every formula:
 *   params       bytes of the parameters a device holds (expert params: its experts' rows)
 *   grads        the same again
 *   optimizer    adam: 2 x params; factored: rows + cols per matrix (leading dims kept),
 *                numel for vectors (no first moment)
 *   activations  forward outputs read by a backward node (kept for backward), at the
 *                device's share (an estimate: the allocated figures are the memory plan's,
 *                plan_cost_set_memory)
 *   flops        forward + backward: matmul 2*M*N*K, grouped matmuls 2*R*K*M over routed
 *                rows, lstm 2*B*T*4U*U (+ elementwise), other ops 1 per output element
 *   step time    max over devices of flops / GFLOP/s + the sum over collectives of
 *                (bytes one device sends / link GB/s + latency); on a cluster of nodes
 *                (per_node > 0) an all-to-all sends (n-1)/(P-1) of its bytes inside the
 *                node and the rest between nodes, a ring all-reduce runs at the slower
 *                link between nodes
 *   memory plan  pass_memplan_plan at the device's ceil(B/P) rows: persistent (params,
 *                inputs, state) + arena + the optimizer state (not in the plan), as the
 *                runtime allocates it (its experts only: shard.c; expert rows widened x P)
 * Work of expert-sharded nodes is split by experts held (uniform routing). */
#include <math.h>
#include <string.h>

#include "plan.h"

/* cpu: one in-process device is one thread; OpenBLAS sgemm 2048^3 on one thread of this
 * machine measured 36-41 GFLOP/s (docs/placement.md); link: an in-process memcpy between
 * threads. The K40 / H100 cluster presets are moec simulate's (src/cmd_simulate.c). */
const CostConsts plan_consts_cpu = {"cpu", 40, 10, 5, 0, 0, 0, 0, 0};

/* Seconds one collective takes for one device: bytes it sends over its links. */
static double collective_s(const Node *n, double bytes, int P, const CostConsts *k) {
  int steps = n->op == OP_ALL_REDUCE ? 2 * (int)(n->ia[0] - 1) : 1;
  int per = k->per_node;
  bool nodes = per > 0 && per < P && k->inter_gbs > 0;
  if (!nodes) return bytes / (k->link_gbs * 1e9) + steps * k->latency_us * 1e-6;
  double lat = k->inter_latency_us > 0 ? k->inter_latency_us : k->latency_us;
  if (n->op == OP_ALL_REDUCE) /* a ring over every device: the slowest hop sets the pace */
    return bytes / (fmin(k->link_gbs, k->inter_gbs) * 1e9) + steps * lat * 1e-6;
  double inside = P > 1 ? (double)(per - 1) / (P - 1) : 0;
  return bytes * inside / (k->link_gbs * 1e9) + bytes * (1 - inside) / (k->inter_gbs * 1e9) +
         lat * 1e-6;
}

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
  case OP_LSTM: { /* h[B,U] . W_hh^T per step, plus the cell's elementwise work */
    double U = (double)n->in[1]->shape[1], BT = rows(n->out[0]);
    return 2.0 * BT * 4 * U * U + 10.0 * BT * U;
  }
  case OP_LSTM_BWD: { /* dh . W_hh and dW_hh += g^T h */
    double U = (double)n->in[1]->shape[1], BT = rows(n->in[0]);
    return 4.0 * BT * 4 * U * U + 20.0 * BT * U;
  }
  case OP_XENT:
  case OP_SOFTMAX:
    return 3.0 * numel(a);
  case OP_SAMPLED_XENT: /* training: x[N,D] times S+1 rows of W, then their softmax */
    return (2.0 * (double)a->shape[1] + 3.0) * numel(n->out[1]);
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
  return save;
}

void plan_restore_shapes(Graph *g, Type *save) {
  pass_unshard_experts(g, save);
}

PlanCost plan_cost(const Graph *g, int devices, OptKind opt, const CostConsts *k) {
  PlanCost c = {.devices = devices, .k = *k};
  c.dev = mc_calloc((size_t)devices, sizeof(DeviceCost));
  bool placed = devices > 1 && g->moe_expert_dev;
  int64_t B = g->B > 0 ? g->B : 1;
  c.rows_per_device = (B + devices - 1) / devices;
  /* forward outputs a backward node reads (a backward node comes after its producer) */
  bool *bwd_read = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  for (int kk = 0; kk < g->nnodes; kk++)
    if (g->nodes[kk]->backward)
      for (int i = 0; i < g->nodes[kk]->nin; i++)
        bwd_read[g->nodes[kk]->in[i]->id] = true;
  for (int d = 0; d < devices; d++) {
    DeviceCost *dc = &c.dev[d];
    for (int i = 0; i < g->nparams; i++) {
      const Tensor *p = g->params[i];
      double s = 1;
      if (placed && p->part == PART_EXPERTS)
        s = expert_param_share(g, p, d);
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
      double s = plan_node_share(g, n, d, devices);
      dc->flops += plan_node_flops(n) * s;
      if (n->backward) continue;
      for (int j = 0; j < n->nout; j++) /* kept for backward? */
        if (bwd_read[n->out[j]->id]) dc->act_bytes += 4 * numel(n->out[j]) * s;
    }
  }
  mc_free(bwd_read);
  double maxf = 0;
  for (int d = 0; d < devices; d++)
    maxf = c.dev[d].flops > maxf ? c.dev[d].flops : maxf;
  c.fits = true; /* until plan_cost_set_memory says otherwise */
  c.compute_s = maxf / (k->gflops * 1e9);
  for (int kk = 0; kk < g->nnodes; kk++) {
    const Node *n = g->nodes[kk];
    if (!(ir_ops[n->op].flags & OPF_COLLECTIVE)) continue;
    CommBytes b = pass_comm_bytes(g, n);
    c.comm_bytes_expected += (double)b.expected;
    c.comm_bytes_upper += (double)b.upper;
    c.comm_s += collective_s(n, (double)b.per_device, devices, k);
  }
  c.step_s = c.compute_s + c.comm_s;
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

void plan_cost_free(PlanCost *c) {
  mc_free(c->dev);
  c->dev = NULL;
}
