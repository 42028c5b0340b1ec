/* multidev.h: running one model over N devices (issue 4, items 4-5).
 *
 *   multidev.c      : per-device graph preparation (expert rows sized for the global
 *                     batch), expert ownership, gathering expert parameters and optimizer
 *                     state for checkpoints and evaluation, global gradient-norm clipping,
 *                     and the drivers: N in-process devices (threads) and MPI ranks
 *   kernels_comm.c  : the collective ops' kernels through KernelCtx.comm
 * The training loop itself is train.c's (rt_train_comm), the same code on 1 and N
 * devices. docs/multidev.md has the design. Prefix: rt_md_.
 */
#ifndef MOEC_MULTIDEV_H
#define MOEC_MULTIDEV_H

#include "comm.h"
#include "train.h"

/* After the passes placed g on P > 1 devices, before ir_bind(g, B/P, T): every
 * expert-side row tensor (part experts, dim 0 following B) gets room for the rows of
 * the global batch, the most one device can receive from the all-to-all. */
void rt_md_widen_expert_rows(Graph *g, int P);

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

/* Dies with a clear message for what the N-device runtime does not support yet (hmoe
 * layers, batchwise gating, the factored optimizer with sharded experts). g bound. */
void rt_md_check_graph(const Graph *g, const Config *cfg, int P);

/* The MoE layer index an expert-sharded parameter belongs to (its dim 0 indexes that
 * layer's experts); -1 for other parameters. Dies for expert parameters it cannot
 * attribute. rt_md_param_experts also gives the layer's expert number of the
 * parameter's row 0 (an hmoe's NAME.gJ.w1 holds experts J*Eg .. J*Eg+Eg-1; 0 for a moe):
 * row e is on device g->moe_expert_dev[layer][*first + e]. */
int rt_md_param_moe(const Graph *g, const Tensor *t);
int rt_md_param_experts(const Graph *g, const Tensor *t, int *first);

/* Zeroes, in buf (the layout of param t), the slices of the experts not on `rank`. */
void rt_md_zero_nonlocal(const Graph *g, const Tensor *t, int rank, float *buf);

/* Collective: every rank gets the full expert parameters (each expert from its
 * owner) in program p (cpu, f32). Other parameters are replicated already. */
void rt_md_gather_experts(Comm *c, Program *p);

/* Collective: the global gradient norm (replicated gradients once, expert gradients
 * summed over their owners), and clipping as rt_optim_step would do on one device;
 * then the optimizer step with the local gradients. Sets o->last_norm. */
void rt_md_optim_step(Comm *c, const Graph *g, Optim *o, float *const *params, float *const *grads);

/* Collective: temporary copies of the optimizer's moments with every expert's from
 * its owner (for a checkpoint written by rank 0); rt_md_optim_restore puts the local
 * ones back. */
typedef struct MdOptimSave {
  float **m, **v, **vr, **vc;
} MdOptimSave;
void rt_md_optim_gather(Comm *c, const Graph *g, Optim *o, MdOptimSave *s);
void rt_md_optim_restore(Optim *o, MdOptimSave *s);
/* After loading a checkpoint: the moments of experts not on `rank` back to zero. */
void rt_md_optim_localize(const Graph *g, Optim *o, int rank);

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
