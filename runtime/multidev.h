/* multidev.h: running one model over N devices (issue 4, items 4-5).
 *
 *   multidev.c      : per-device graph preparation (its own experts only: passes/shard.c;
 *                     expert rows sized for the global batch), the rows each device holds,
 *                     gathering expert parameters and optimizer state for checkpoints,
 *                     the optimizer step with the global gradient norm, and the drivers:
 *                     N in-process devices (threads) and MPI ranks
 *   kernels_comm.c  : the collective ops' kernels through KernelCtx.comm
 * The training loop itself is train.c's (rt_train_comm), the same code on 1 and N
 * devices. docs/multidev.md has the design. Prefix: rt_md_.
 */
#ifndef MOEC_MULTIDEV_H
#define MOEC_MULTIDEV_H

#include "comm.h"
#include "train.h"

/* After the passes placed g on P > 1 devices, before rt_md_bind: device `rank`'s graph
 * holds only its experts (pass_shard_experts: expert parameters, gradients and received
 * offsets at its E_r local experts; E_r = 0 off a layer's on(...) set). */
void rt_md_prepare(Graph *g, int rank, int P);
/* Every expert-side row tensor (part experts, dim 0 following B) gets room for the rows
 * of the global batch (B x T, B global), the most one device can receive from the
 * all-to-all; under moe(capacity=) its experts' capacity (pass_capacity_rows). */
void rt_md_widen_expert_rows(Graph *g, int P, int64_t B, int64_t T);

/* ---- device subsets (place ... : on(...); docs/multidev.md "Device subsets") ---- */

/* The devices of node n as a bit mask (bit d = device d): all P, one, or the on(...) list. */
uint64_t rt_md_node_mask(const Node *n, int P);
/* The devices holding tensor t's batch rows: its producer's set (a reshard's: the set it
 * moves rows to; all_to_all_back's: the batch side's); inputs and states: all. */
uint64_t rt_md_tensor_mask(const Tensor *t, int P);
/* Does device `rank` run node n? Devices outside a node's set skip it. */
bool rt_md_runs(const Node *n, int rank, int P);
/* True when some node runs on a subset of the P devices. */
bool rt_md_has_subsets(const Graph *g, int P);
/* The context node n runs in on device ctx->device: on a subset S, this device's index in
 * S, |S| devices, and its rows of the batch split over S (batch0, batch_local), so
 * counter-based draws and xent's 1/(rows * devices) are those of one device. */
KernelCtx rt_md_node_ctx(const KernelCtx *ctx, const Node *n);
/* Binds g (placed on P > 1 devices) for one device: every tensor at B/P batch rows but
 * those on a subset S (B/|S| rows: the symbolic row dim widened for the memory plan, the
 * bound shape exact), expert-side rows widened (rt_md_widen_expert_rows). B is global. */
void rt_md_bind(Graph *g, int64_t B, int64_t T, int P);
/* The device whose copy of parameter t is the one to gather (checkpoints, evaluation,
 * the gradient norm): -1 when every device holds it alike (replicated over all), the
 * first device of the set of t's gradient when only those devices train it. Expert
 * parameters: -1 (their experts are per device). */
int rt_md_param_owner(const Graph *g, const Tensor *t, int P);

/* Dies with a clear message for what the N-device runtime does not support yet (state
 * on a device subset, parameters read on different sets, an expert parameter that is not
 * a moe's or hmoe group's expert dimension). g bound. */
void rt_md_check_graph(const Graph *g, const Config *cfg, int P);

/* The rows this device holds of every parameter (by parameter index): sharded expert
 * parameters their local experts' rows of the whole tensor, others list NULL (whole).
 * All whole on a graph that holds every expert. */
RowSel *rt_md_param_rows(const Graph *g);
void rt_md_rows_free(const Graph *g, RowSel *rows);

/* Collective: on root, the whole tensor of every sharded expert parameter of program p
 * (cpu, f32), each expert's rows from its owner (moe layers and hmoe groups), and of
 * every parameter held whole but trained elsewhere (on(...) a set without root:
 * rt_md_param_owner), by parameter index; NULL for the parameters root
 * holds as they are, and on other ranks. rt_md_gathered_free frees them. */
float **rt_md_gather_params(Comm *c, Program *p, int root);
void rt_md_gathered_free(const Graph *g, float **full);

/* The optimizer of one device: rt_optim_new_prec over its parameters (its experts' rows),
 * except the factored moments of [E, H] expert matrices, kept whole on every device
 * (their column moments average over all experts). */
Optim *rt_md_optim_new(const Config *cfg, const Graph *g, Precision prec);
/* Bytes of optimizer state o holds. */
size_t rt_md_optim_bytes(const Optim *o);
/* Collective: the optimizer step with the global gradient norm (replicated gradients
 * once, expert gradients summed over their owners, a subset's parameters counted by its
 * first device), clipping as one device would; parameters trained on(...) a set without
 * this device are not updated here. Sets o->last_norm. On one device rt_optim_step. */
void rt_md_optim_step(Comm *c, const Graph *g, Optim *o, float *const *params, float *const *grads);
/* Collective: on root, an optimizer with the whole model's shapes and state (every
 * expert's moments from its owner), for rt_optim_tensors; NULL on other ranks. */
Optim *rt_md_optim_gather(Comm *c, const Graph *g, const Optim *o, int root);
void rt_md_optim_gathered_free(Optim *whole, const Optim *o);
/* rt_optim_load taking this device's rows of the sharded entries. */
bool rt_md_optim_load(const Graph *g, Optim *o, const StFile *f);

/* moec run FILE --devices N (N in-process devices) or under mpirun (one device per
 * rank): runs rt_train_comm on every device. Returns the exit status. */
int rt_md_train(AstFile *f, const Config *cfg, const TrainOpts *o, int devices);
/* Seconds rank r spent in collective kernels since the start: [r][0] all_to_all and
 * all_to_all_back (including waiting for the slowest device), [r][1] all_reduce. */
extern double rt_md_comm_seconds[RT_INPROC_MAX][2];
/* Bytes rank r's reshard kernels sent to other devices since the start (on(...) sets). */
extern int64_t rt_md_reshard_bytes[RT_INPROC_MAX];

/* True when started by an MPI launcher with more than one rank. */
bool rt_md_mpi_launched(void);

#endif
