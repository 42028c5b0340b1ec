/* plan.h: placement and partitioning over N devices (issue 4, compile-time half).
 *
 *   placement.c : the `placement` pass: strategy (paper | data_parallel | hmoe), the
 *                 expert policy (contiguous | round_robin | balanced) and the file's
 *                 `place` rules -> Node.device / Node.devices, Tensor.part and each MoE
 *                 layer's expert -> device map (Graph.moe_expert_dev)
 *   comm.c      : the `comm` pass: every collective as an explicit op (all_to_all,
 *                 all_to_all_back, all_reduce, reshard) and its bytes per step
 *   costmodel.c : per device parameter / optimizer / activation bytes and FLOPs, the
 *                 step-time estimate and its constants (moec plan, moec simulate later)
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

/* ---------------------------------------------------------------- costmodel.c */

typedef struct CostConsts {
  const char *name;
  double gflops;     /* sustained GFLOP/s of one device */
  double link_gbs;   /* GB/s of one device's link */
  double latency_us; /* per collective step */
} CostConsts;

extern const CostConsts plan_consts_cpu, plan_consts_k40, plan_consts_h100;

typedef struct DeviceCost {
  double param_bytes, grad_bytes, optim_bytes, act_bytes;
  double flops; /* forward + backward per step */
  int nexperts; /* experts placed here (all MoE layers) */
} DeviceCost;

typedef struct PlanCost {
  int devices;
  DeviceCost *dev; /* [devices] */
  double comm_bytes_expected, comm_bytes_upper;
  double compute_s, comm_s, step_s; /* estimate */
  CostConsts k;
} PlanCost;

/* The cost of a placed, bound graph on `devices` devices. opt: optimizer kind. */
PlanCost plan_cost(const Graph *g, int devices, OptKind opt, const CostConsts *k);
void plan_cost_free(PlanCost *c);
/* FLOPs of one node on the bound graph (global: all devices together). */
double plan_node_flops(const Node *n);
/* Fraction of a node's work on device d (1/|set| data-parallel, expert share, ...). */
double plan_node_share(const Graph *g, const Node *n, int d, int devices);

#endif
