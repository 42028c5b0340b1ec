/* multidev.h: the state of one model spread over N devices, as training needs it.
 *
 *   multidev.c     : gathering sharded expert parameters and optimizer state (and
 *                    parameters trained on an on(...) set without device 0) for a
 *                    checkpoint with one device's names and shapes; the optimizer of one
 *                    device and its step with the global gradient norm
 *   kernels_comm.c : the collective ops' kernels through KernelCtx.comm
 * What each device holds comes from its program (Program.rows, Program.param_set: the
 * compiler's shard tables); the training loop (train_loop.c) is the same code on 1 and N
 * devices. docs/multidev.md has the design. Prefix: rt_md_.
 */
#ifndef MOEC_MULTIDEV_H
#define MOEC_MULTIDEV_H

#include "comm.h"
#include "train.h"

/* The device whose copy of parameter i is the one to gather (checkpoints, the gradient
 * norm): -1 when every device trains it alike, else the first device of the on(...) set
 * its gradient is made on. Expert parameters: -1 (each device holds its own rows). */
int rt_md_param_owner(const Program *p, int i);

/* Collective: on root, the whole tensor of every sharded expert parameter of program p
 * (f32; a device program's through host copies), each expert's rows from its owner, and
 * of every parameter held whole but trained elsewhere (rt_md_param_owner), by parameter
 * index; NULL for the parameters root holds as they are, and on other ranks.
 * rt_md_gathered_free frees them. */
float **rt_md_gather_params(Comm *c, Program *p, int root);
void rt_md_gathered_free(const Program *p, float **full);

/* The optimizer of one device: rt_optim_new_prec over its parameters (its experts' rows),
 * except the factored moments of [E, H] expert matrices, kept whole on every device
 * (their column moments average over all experts). */
Optim *rt_md_optim_new(const Config *cfg, const Program *p);
/* Bytes of optimizer state o holds. */
size_t rt_md_optim_bytes(const Optim *o);
/* The bytes rt_md_optim_new allocates for a device graph g (bound) holding rows of its
 * parameters, without allocating them (what a plan reports). */
size_t rt_md_optim_layout_bytes(const Config *cfg, const Graph *g, const RowSel *rows,
                                size_t elem);
/* Collective: the optimizer step with the global gradient norm (replicated gradients
 * once, expert gradients summed over their owners, a subset's parameters counted by its
 * first device), clipping as one device would; parameters trained on(...) a set without
 * this device are not updated here. Sets o->last_norm. On one device rt_optim_step. */
void rt_md_optim_step(Comm *c, const Program *p, Optim *o, float *const *params,
                      float *const *grads);
/* Collective: on root, an optimizer with the whole model's shapes and state (every
 * expert's moments from its owner), for rt_optim_tensors; NULL on other ranks. */
Optim *rt_md_optim_gather(Comm *c, const Program *p, const Optim *o, int root);
void rt_md_optim_gathered_free(Optim *whole, const Optim *o);
/* rt_optim_load taking this device's rows of the sharded entries. */
bool rt_md_optim_load(const Program *p, Optim *o, const StFile *f);

#endif
