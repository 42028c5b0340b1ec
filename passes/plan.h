/* plan.h: placement and partitioning over N devices (issue 4, compile-time half).
 *
 *   placement.c : the `placement` pass: strategy (paper | data_parallel | hmoe), the
 *                 expert policy (contiguous | round_robin | balanced) and the file's
 *                 `place` rules -> Node.device / Node.devices, Tensor.part and each MoE
 *                 layer's expert -> device map (Graph.moe_expert_dev)
 *   comm.c      : the `comm` pass: every collective as an explicit op (all_to_all,
 *                 all_to_all_back, all_reduce, reshard) and its bytes per step
 *   shard.c     : one device's share of the experts (pass_shard_experts: expert
 *                 parameters and received offsets at the device's local experts)
 *   costmodel.c : per device parameter / optimizer / activation bytes, the memory plan
 *                 per device, FLOPs, the step-time estimate and its constants (moec plan,
 *                 and moec simulate with its cluster presets: src/cmd_simulate.c)
 *
 * With one device both passes leave the graph exactly as it is. docs/placement.md has
 * every decision. Prefix: pass_ (passes), plan_ (the report).
 */
#ifndef MOEC_PLAN_H
#define MOEC_PLAN_H

#include "passes.h"

/* ---------------------------------------------------------------- placement.c */

/* Measured routing loads for experts=balanced: per MoE layer name, one value per
 * expert (routed rows or load estimates; only ratios matter). */
typedef struct PlanLoads {
  int n;
  const char **names;
  const double **load;
  const int *nexperts;
} PlanLoads;

/* Set by moec plan before running the passes (NULL: none). The placement pass reads
 * the loads for experts=balanced; without them balanced falls back to contiguous and
 * says so in plan_note. */
extern const PlanLoads *plan_loads;
/* Reads a JSON lines file (a previous run's metrics): the last line with a "moe"
 * array whose entries have "name" and "load": [numbers]. NULL (and *err set) if none. */
PlanLoads *plan_read_loads(const char *path, const char **err);
void plan_free_loads(PlanLoads *pl);

/* Notes the passes left for the reader of the plan (fallbacks, idle devices). */
extern char plan_note[1024];

void pass_placement(Graph *g, const PassCtx *ctx);
/* ---------------------------------------------------------------- comm.c */

void pass_comm(Graph *g, const PassCtx *ctx);

typedef struct CommBytes {
  int64_t payload;    /* bytes of the tensor the collective moves (global, all devices) */
  int64_t upper;      /* bytes crossing devices, worst case */
  int64_t expected;   /* bytes crossing devices, uniform routing (what the plan prints) */
  int64_t per_device; /* expected bytes one device sends */
} CommBytes;
/* Bytes per step of a collective node on a bound graph (ir_bind done). */
CommBytes pass_comm_bytes(const Graph *g, const Node *n);

/* ---------------------------------------------------------------- shard.c */

/* An expert-sharded parameter: dim 0 indexes experts [first, first + count) of MoE layer
 * `moe`; expert e lives on g->moe_expert_dev[moe][e] (its owner map). */
typedef struct ExpertShard {
  int moe;
  int64_t first, count;
} ExpertShard;
/* True (and *s filled; s may be NULL) when t is such a parameter of a placed graph (moe
 * layers' LAYER.w1, b1, w2, b2; an hmoe's LAYER.gJ.w1 ...: first J*Eg, count Eg). */
bool pass_expert_shard(const Graph *g, const Tensor *t, ExpertShard *s);
/* The experts of s on device `rank`, in global order, into list (NULL: only count). */
int64_t pass_expert_local(const Graph *g, const ExpertShard *s, int rank, int64_t *list);
/* Rewrites a placed graph (after comm and the later passes, before ir_bind) to hold only
 * the experts of `rank`: expert parameters [E_r, ...], received offsets i32[E_r + 1],
 * the shapes that follow (expert gradients). Sets g->experts_local. Returns every
 * tensor's type before the rewrite: pass_unshard_experts restores them (moec plan). */
Type *pass_shard_experts(Graph *g, int rank);
void pass_unshard_experts(Graph *g, Type *saved);

/* ---------------------------------------------------------------- costmodel.c */

typedef struct CostConsts {
  const char *name;
  double gflops;     /* sustained GFLOP/s of one device */
  double link_gbs;   /* GB/s of one device's link (inside a node, or the only one) */
  double latency_us; /* per collective step */
  /* optional (0: not known / not used); moec simulate's cluster presets set them */
  double peak_gflops; /* datasheet peak, for the "% of peak" figure */
  double mem_bytes;   /* memory of one device: plan_cost says whether the plan fits */
  int per_node;       /* devices per node (0: one group, every link link_gbs) */
  double inter_gbs;   /* GB/s of one device's share of the link between nodes */
  double inter_latency_us;
} CostConsts;

/* The plan's constants (one in-process cpu device). Cluster presets (K40, H100, links) are
 * moec simulate's (src/cmd_simulate.c), which fills a CostConsts from a cluster spec. */
extern const CostConsts plan_consts_cpu;

typedef struct DeviceCost {
  /* the estimate: params, grads, optimizer state, activations kept for backward */
  double param_bytes, grad_bytes, optim_bytes, act_bytes;
  double flops; /* forward + backward per step */
  int nexperts; /* experts placed here (all MoE layers) */
  /* the memory plan (memplan.c) of this device as the runtime allocates it
   * (runtime/train.c build_on): B/P rows, its experts only (shard.c), expert-row tensors
   * widened to every device's rows (x P) */
  double persist_bytes;     /* params, inputs, state */
  double arena_bytes;       /* activations and gradients, lifetimes overlaid */
  double optim_alloc_bytes; /* optimizer state of its parameters */
  double planned_bytes;     /* persist + arena + optim_alloc: what is allocated */
  double param_alloc_bytes; /* its parameters (in persist): its experts' rows, the rest whole */
} DeviceCost;

typedef struct PlanCost {
  int devices;
  DeviceCost *dev; /* [devices] */
  double comm_bytes_expected, comm_bytes_upper;
  double compute_s, comm_s, step_s; /* estimate */
  CostConsts k;
  int64_t rows_per_device; /* ceil(B / devices): the batch rows the memory plan is made at */
  double live_max;         /* the memory plan's lower bound for the arena (bytes) */
  double max_planned;      /* the largest planned_bytes over devices */
  bool fits;               /* max_planned <= k.mem_bytes (true when mem_bytes is 0) */
} PlanCost;

/* The cost of a placed, bound graph on `devices` devices. opt: optimizer kind. The memory
 * plan per device is pass_memplan_plan at (ceil(B/devices), T, f32) on the device's shapes
 * (plan_device_shapes): planned_bytes is what the runtime allocates (with one device the
 * exact persist + arena + optimizer of cg_lower). */
PlanCost plan_cost(const Graph *g, int devices, OptKind opt, const CostConsts *k);
void plan_cost_free(PlanCost *c);
/* The runtime's per-device shapes (runtime/train.c): every expert-row tensor (part experts,
 * B in dim 0) widened x devices, room for every device's rows. Returns what
 * plan_unwiden_expert_rows needs to restore the graph; the bound shapes are untouched. */
int64_t *plan_widen_expert_rows(Graph *g, int devices);
void plan_unwiden_expert_rows(Graph *g, int64_t *save);
/* Device d's shapes as the runtime allocates them (runtime/train.c build_on): its experts
 * only (pass_shard_experts, on a placed graph) and every expert-row tensor widened x
 * devices. The bound shapes are untouched; plan_restore_shapes puts the types back. */
Type *plan_device_shapes(Graph *g, int d, int devices);
void plan_restore_shapes(Graph *g, Type *save);
/* FLOPs of one node on the bound graph (global: all devices together). */
double plan_node_flops(const Node *n);
/* Fraction of a node's work on device d (1/|set| data-parallel, expert share, ...). */
double plan_node_share(const Graph *g, const Node *n, int d, int devices);

#endif
