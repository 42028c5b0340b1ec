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

/* After the passes placed g on P > 1 devices, before ir_bind(g, B/P, T): device
 * `rank`'s graph: only its experts (pass_shard_experts: expert parameters, gradients
 * and received offsets at its E_r local experts), then rt_md_widen_expert_rows. */
void rt_md_prepare(Graph *g, int rank, int P);
/* Every expert-side row tensor (part experts, dim 0 following B) gets room for the rows
 * of the global batch, the most one device can receive from the all-to-all. */
void rt_md_widen_expert_rows(Graph *g, int P);

/* Dies with a clear message for what the N-device runtime does not support yet (hmoe
 * layers, batchwise gating). g bound. */
void rt_md_check_graph(const Graph *g, int P);

/* The rows this device holds of every parameter (by parameter index): sharded expert
 * parameters their local experts' rows of the whole tensor, others list NULL (whole).
 * All whole on a graph that holds every expert. */
RowSel *rt_md_param_rows(const Graph *g);
void rt_md_rows_free(const Graph *g, RowSel *rows);

/* Collective: on root, the whole tensor of every sharded expert parameter of program p
 * (cpu, f32), each expert's rows from its owner (by parameter index; NULL for the
 * parameters p holds whole, and on other ranks). rt_md_gathered_free frees them. */
float **rt_md_gather_params(Comm *c, Program *p, int root);
void rt_md_gathered_free(const Graph *g, float **full);

/* The optimizer of one device: rt_optim_new over its parameters (its experts' rows),
 * except the factored moments of [E, H] expert matrices, kept whole on every device
 * (their column moments average over all experts). */
Optim *rt_md_optim_new(const Config *cfg, const Graph *g);
/* Bytes of optimizer state o holds. */
size_t rt_md_optim_bytes(const Optim *o);
/* Collective: the optimizer step with the global gradient norm (replicated gradients
 * once, expert gradients summed over their owners), clipping as one device would;
 * sets o->last_norm. On one device rt_optim_step. */
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

/* True when started by an MPI launcher with more than one rank. */
bool rt_md_mpi_launched(void);

#endif
