/* plan.h: placement and partitioning over N devices (the compile-time half).
 *
 *   placement.c : the `placement` pass: strategy (paper | data_parallel | hmoe), the
 *                 expert policy (contiguous | round_robin | balanced) and the file's
 *                 `place` rules -> Node.device / Node.devices, Tensor.part and each MoE
 *                 layer's expert -> device map (Graph.moe_expert_dev)
 *   comm.c      : the `comm` pass: every collective as an explicit op (all_to_all,
 *                 all_to_all_back, all_reduce, reshard) and its bytes per step
 *   shard.c     : the `shard` pass: one device's share of the experts (expert parameters
 *                 and received offsets at the device's local experts)
 *   bind.c      : the `bind` pass: B and T bound, for the whole batch or one device's
 *                 rows (expert-row buffers with room for every device's rows); the
 *                 device-set rules the runtime cannot follow, as errors at their rule
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

/* Reads a JSON lines file (a previous run's metrics): the last line with a "moe"
 * array whose entries have "name" and "load": [numbers]. NULL (and *err set) if none. */
PlanLoads *plan_read_loads(const char *path, const char **err);
void plan_free_loads(PlanLoads *pl);
/* The routing assumed for MoE layer `name` of E experts (relative loads): its measured
 * loads, else Zipf weights 1/(e+1)^zipf in buf (E doubles) when zipf > 0, else NULL
 * (uniform). placement's balanced policy and the cost model read the same. */
const double *plan_route_loads(const PlanLoads *pl, double zipf, const char *name, int E,
                               double *buf);

void pass_placement(Graph *g, const PassCtx *ctx);
/* Does place-rule pattern pat address node n? "L": every node of layer L (`*`
 * wildcards); "L.experts", "L.gate": that part of a moe/hmoe layer L. */
bool pass_rule_matches(const char *pat, const Node *n);
/* The second (expert-level) dispatch of hmoe layer `name`, or NULL for a moe layer. */
Node *pass_group_dispatch(const Graph *g, const char *name);
/* Is n on the group side of an hmoe layer under the two-level exchange (role "group")? */
bool pass_group_node(const Node *n);
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

/* The pass: on a device graph of P > 1 devices, pass_shard_experts(g, ctx->rank). */
void pass_shard(Graph *g, const PassCtx *ctx);
/* Rewrites a placed graph (after comm and the later passes, before ir_bind) to hold only
 * the experts of `rank`: expert parameters [E_r, ...], received offsets i32[E_r + 1],
 * the shapes that follow (expert gradients). Sets g->experts_local. Returns every
 * tensor's type before the rewrite: pass_unshard_experts restores them (moec plan). */
Type *pass_shard_experts(Graph *g, int rank);
void pass_unshard_experts(Graph *g, Type *saved);

/* ---------------------------------------------------------------- bind.c */

/* The pass: binds B = cfg->batch and T = cfg->unroll. The global graph: the whole batch.
 * A device graph of P > 1: ir_bind at B/P rows, every tensor on an on(...) subset S at
 * its B/|S| rows, and every expert-row tensor (part experts, B in dim 0) with room for
 * the rows of the global batch (the most one device can receive from the all-to-all).
 * Sets g->rank, g->ndev, g->B_global. On P > 1 it also reports what the runtime cannot
 * run (state on a device subset, a parameter read on two device sets, a batch a subset
 * does not divide) at the place rule or layer that asked for it. */
void pass_bind(Graph *g, const PassCtx *ctx);
/* Device d's graph, made from the global one (placed, bound, planned) in place by the
 * same shard, bind and memplan steps its own compile runs: so a plan reports what each
 * device allocates without compiling P graphs. pass_device_view_end restores the global
 * graph (types, binding, plan). */
Type *pass_device_view(Graph *g, const PassCtx *ctx, int d);
void pass_device_view_end(Graph *g, const PassCtx *ctx, Type *save);
/* Every expert-row tensor's rows x devices, or its layer's capacity rows under
 * moe(capacity=) (pass_capacity_rows at the global B, T): what pass_bind does on a device
 * graph; returns what plan_unwiden_expert_rows needs to restore the types. */
int64_t *plan_widen_expert_rows(Graph *g, int devices, int64_t B, int64_t T);
/* Per MoE layer: the factor its expert rows are widened by on P devices (P: the worst
 * case; plan.expert_headroom: less). mc_free it. */
int *plan_layer_widen(const Graph *g, int P);
/* The rows a device of MoE layer m's expert set gets under uniform routing, as a factor
 * of its B/P share: ceil(P / the devices holding its experts), at most P. */
int plan_fair_widen(const Graph *g, int m, int P);
void plan_unwiden_expert_rows(Graph *g, int64_t *save);
/* Expert rows sized per step (Tensor.rows_per_step, marked by the widening above on a
 * device graph; runtime/rows.c): plan_rows_bytes is their region on a bound device graph
 * with share x every route's rows, at most plan_rows_of's bound (share <= 0: the fair
 * share the runtime starts at, each exchange's rows x scale[moe * PLAN_ROW_LEVELS +
 * level] when scale is not NULL), elem bytes per float; plan_rows_clear unmarks them
 * (their bound in the arena). */
#define PLAN_ROW_LEVELS 3 /* PlanRows.level: 0 a plain layer's, 1 and 2 an hmoe's */
int64_t plan_rows_bytes(const Graph *g, double share, const double *scale, size_t elem);
/* What per-step tensor t (marked rows_per_step) holds on device rank of P, bound at b
 * rows a device and T: the rows of the all-to-all of its level (a plain layer's, or an
 * hmoe's group-level or expert-level one) x per_row, worst at every route, bound the most
 * one step can bring there (a device with e < K of the level's K routes' experts, or
 * groups, per token: e x the tokens), fair under uniform routing (where the runtime
 * starts). */
typedef struct PlanRows {
  int moe, level;  /* its MoE layer; 1: an hmoe's group rows, 2: its expert rows, else 0 */
  int64_t per_row; /* its rows per row the exchange brings: k at the group side's dispatch */
  int64_t worst, bound, fair; /* the exchange's rows */
} PlanRows;
PlanRows plan_rows_of(const Graph *g, const Tensor *t, int P, int rank, int64_t b, int64_t T);
void plan_rows_clear(Graph *g);
/* The rows of a per-step tensor's slot in the arena (docs/memory.md, "Expert-row buffers"):
 * PLAN_ROWS_MARGIN x its exchange's fair share, at most its bound (x per_row: its dim 0). */
int64_t plan_rows_slot_of(const PlanRows *r);
/* Whether, at the rows each exchange brings this bound device graph under a routing
 * (scale as plan_rows_bytes'), one of them outgrows its slot: the runtime then moves the
 * per-step rows to a region apart from the arena. */
bool plan_rows_outgrow(const Graph *g, const double *scale);
/* For the views that plan every tensor in the arena (plan_device_shapes: recompute =
 * auto's choices): the marked rows at PLAN_ROWS_MARGIN x the fair share of uniform
 * routing (at most the bound), unmarked. B, T: the global batch. */
void plan_rows_at_margin(Graph *g, int d, int devices, int64_t B, int64_t T);

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
  /* the shape and launch terms (0: not modelled; a moec calibrate profile and moec
     simulate's cluster presets set them) */
  double gemm_half; /* a GEMM whose smallest side is s runs at s / (s + gemm_half) of gflops */
  double elem_gbs;  /* GB/s of elementwise ops (bytes read + written); 0: 1 flop per element */
  double launch_us; /* per kernel call (an LSTM: one per timestep) */
  int cores;        /* devices share this many cores (in-process threads; gflops is one
                       core's): a phase takes at least its devices' work over the cores,
                       and one device alone uses them all. 0: every device its own */
  double dram_gbs;  /* GB/s from memory with every core streaming (bytes read + written), */
  double llc_bytes; /* past a last-level cache of llc_bytes: a memory-bound phase (the
                       optimizer) whose devices together touch more streams at dram_gbs
                       at best. 0: not modelled (moec calibrate measures both) */
  double norm_ns;   /* host devices (0: not modelled, as for GPUs): ns an element of the
                       global norm's pass of several devices (runtime/multidev.c: each
                       device over its gradients in double on its one thread, 8 lanes:
                       rt_sumsq); the step's finiteness check (guard.c) reads
                       the gradients once more at elem_gbs */
  bool inproc;      /* the in-process communicator (a calibrated profile of this machine): an
                       all-reduce moves the whole vector per device at any device count (each
                       sums its segment of every buffer into every buffer) in two barriers,
                       not a ring's 2(n-1)/n in 2(n-1) steps */
  /* in-situ kernel factors (moec calibrate): an op's measured time over the time modelled
   * above, [0] for one device alone on every core, [1] for a device on one thread of
   * several (in-process, or an MPI rank with a profile's MPI section); 0: not measured (1).
   * The optimizer's likewise. */
  double kfactor[2][OP_COUNT];
  double kfactor_optim[2];
  double kcall_us[2];        /* with the factors: measured seconds of every kernel call beside its
                                modelled work (the interpreter, thread wake-ups) */
  double kcoll_us[OP_COUNT]; /* a collective call's measured time beyond its modelled one
                                on devices of set [1] (waiting for the slowest, syncing) */
} CostConsts;

/* The plan's constants (one in-process cpu device). Cluster presets (K40, H100, links) are
 * moec simulate's (src/cmd_simulate.c), which fills a CostConsts from a cluster spec. */
extern const CostConsts plan_consts_cpu;

typedef struct DeviceCost {
  /* the estimate: params, grads, optimizer state, activations kept for backward */
  double param_bytes, grad_bytes, optim_bytes, act_bytes;
  double flops; /* forward + backward per step */
  int nexperts; /* experts placed here (all MoE layers) */
  /* what this device's program allocates: its memory plan (B/P rows, its experts only,
   * expert-row tensors with room for every device's rows) and optimizer state, from the
   * same passes its compile runs (plan_cost_set_memory) */
  double persist_bytes;     /* params, inputs, state */
  double arena_bytes;       /* activations and gradients, lifetimes overlaid */
  double optim_alloc_bytes; /* optimizer state of its parameters */
  double planned_bytes;     /* persist + arena + optim_alloc (+ rows_apart_bytes) */
  /* expert rows sized per step: in their slots in the arena (PLAN_ROWS_MARGIN x the fair
   * share of uniform routing), apart when the routing outgrows them (runtime/rows.c) */
  double rows_bytes;        /* their region at the expected routing */
  double rows_margin_bytes; /* the same x PLAN_ROWS_MARGIN, at most every route's */
  double rows_apart_bytes;  /* the margin's, where a level outgrows its slots; else 0 */
  double param_alloc_bytes; /* its parameters (in persist): its experts' rows, the rest whole */
  /* the step on this device: routed rows its experts receive (forward, all MoE layers),
   * its kernels' time, its collectives' time and bytes on each kind of link */
  double expert_rows, route_share; /* route_share: of the routed rows, mean over layers */
  double *rows_scale; /* [nmoe * PLAN_ROW_LEVELS]: per MoE layer and exchange level (the
                         expert rows', an hmoe's group rows'), the routed share of the
                         level's rows this device's experts or groups get over uniform
                         routing's; what plan_rows_bytes scales the fair region by */
  double compute_s, comm_s, intra_bytes, inter_bytes;
  double expert_s, expert_flops; /* of compute_s: its experts' GEMMs (one per expert) */
} DeviceCost;

typedef struct PlanCost {
  int devices;
  DeviceCost *dev; /* [devices] */
  double comm_bytes_expected, comm_bytes_upper;
  double compute_s, comm_s, step_s; /* estimate: per phase between collectives the slowest
                                       device's kernels, then the collective's slowest */
  int busiest;                      /* the device with the most compute + comm time */
  double mean_expert_rows;
  CostConsts k;
  int64_t rows_per_device; /* ceil(B / devices): the batch rows the memory plan is made at */
  double live_max;         /* the memory plan's lower bound for the arena (bytes) */
  double max_planned;      /* the largest planned_bytes over devices */
  bool fits;               /* max_planned <= k.mem_bytes (true when mem_bytes is 0) */
} PlanCost;

/* Which set of in-situ factors a plan on `devices` devices uses: 0, one device alone on
 * every core (cores > 0); 1, a device on one thread. */
int plan_kernel_set(const CostConsts *k, int devices);
/* The cores node n of a bound graph runs on when one device has all k->cores (set 0):
 * min(cores, the tasks the runtime splits its kernel into, by the runtime's own shape
 * rules), a mix weighted by time for a node of several GEMMs, the largest task's share
 * for an expert GEMM; 1 when k->cores is 0. Set 0's modelled time of n is
 * plan_node_seconds over this. */
double plan_node_cores(const Graph *g, const Node *n, const CostConsts *k);
/* The modelled seconds of node n of a bound graph on one device under uniform routing,
 * without kernel factors or call time (what moec calibrate sets a measured time against); and of
 * the optimizer's pass over param_bytes of parameters. */
double plan_node_seconds(const Graph *g, const Node *n, const CostConsts *k);
double plan_optim_seconds(double param_bytes, OptKind opt, const CostConsts *k);
/* Seconds of the passes over a device's gradients of param_bytes before its update, on
 * host devices (k->norm_ns > 0; else 0): the guard's finiteness check (a read at
 * elem_gbs) and, on several devices, the global norm's own pass (norm_ns an element;
 * one device's norm is a vectorised read inside the update's pass, not its own). */
double plan_pre_optim_seconds(double param_bytes, int devices, const CostConsts *k);
/* The modelled seconds of collective n of a placed, bound graph on `devices` devices
 * under uniform routing, at its slowest device, without factors. */
double plan_collective_seconds(const Graph *g, const Node *n, int devices, const CostConsts *k);

/* The cost of a placed, bound graph on `devices` devices. opt: optimizer kind. The
 * allocated memory of each device comes from plan_cost_set_memory (the driver computes
 * it with the device's own passes: driver/compile.c drv_device_memory). */
PlanCost plan_cost(const Graph *g, int devices, OptKind opt, const CostConsts *k);
/* The same under a routing assumption (plan_route_loads: measured loads, Zipf skew, or
 * NULL loads and zipf 0: uniform) for the expert rows each device computes and receives. */
PlanCost plan_cost_routed(const Graph *g, int devices, OptKind opt, const CostConsts *k,
                          const PlanLoads *loads, double zipf);
/* Seconds of one GEMM [M, K] x [K, N] under k (the shape term included). */
double plan_gemm_s(const CostConsts *k, double M, double N, double K);
/* Device d allocates persist + arena (its memory plan) + optim bytes; params of them its
 * parameters; live_max its plan's lower bound. Updates the maximum and whether it fits. */
void plan_cost_set_memory(PlanCost *c, int d, double persist, double arena, double optim,
                          double params, double live_max);
/* Device d's expert rows sized per step (runtime/rows.c): expected, their region at the
 * routing's rows of each level (plan_rows_bytes with the device's rows_scale); worst, at
 * the most a step can bring. They live in their slots in the arena (in arena_bytes) at
 * PLAN_ROWS_MARGIN x the fair share of uniform routing; where the routing outgrows a slot
 * (outgrow: plan_rows_outgrow) the runtime moves them apart, and the plan counts the
 * expected region x PLAN_ROWS_MARGIN (at most worst; docs/memory.md) in planned_bytes. */
#define PLAN_ROWS_MARGIN 1.25
void plan_cost_set_rows(PlanCost *c, int d, double expected, double worst, bool outgrow);
void plan_cost_free(PlanCost *c);
/* Device d's types as its compile makes them (the shard pass and the bind pass's
 * widening at the global B, T: pass_device_view has the binding too), for the recompute
 * pass's choices and the plan's recompute report. The bound shapes are untouched;
 * plan_restore_shapes puts the types back. */
Type *plan_device_shapes(Graph *g, int d, int devices, int64_t B, int64_t T);
void plan_restore_shapes(Graph *g, Type *save);
/* FLOPs of one node on the bound graph (global: all devices together). */
double plan_node_flops(const Node *n);
/* Fraction of a node's work on device d (1/|set| data-parallel, expert share, ...). */
double plan_node_share(const Graph *g, const Node *n, int d, int devices);

#endif
