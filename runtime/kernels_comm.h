/* kernels_comm.h: what the collective ops' kernels share: the CPU kernels on host
 * buffers (kernels_comm.c, which defines these) and their device-buffer form
 * (comm_dev.c): the same checks, messages and statistics. Prefix: rt_comm_. */
#ifndef MOEC_RUNTIME_KERNELS_COMM_H
#define MOEC_RUNTIME_KERNELS_COMM_H

#include "comm.h"
#include "runtime.h"

/* One collective of kind k on this device into ctx->stats: its seconds since t0 (waiting
 * for peers included), the bytes of the rows it moves here (payload) and the bytes it
 * sent to other devices. */
void rt_comm_count(const KernelCtx *ctx, CommKind k, double t0, double payload, double sent);
/* ctx->comm; dies naming the op when the program runs without a communicator. */
Comm *rt_comm_need(const KernelCtx *ctx, const Node *n);
/* The expert -> device map of n's MoE layer (E experts); dies when there is none or an
 * expert is replicated. */
const int *rt_comm_expert_map(const KernelCtx *ctx, const Node *n, int64_t E);
/* cnt[s*E + e]: rows of expert e on device s (every device's offsets i32[E+1],
 * all_gather'ed). Free with mc_free. */
int64_t *rt_comm_gather_counts(Comm *c, const int32_t *off, int64_t E);
/* all_to_all's receive side: rc[s] = the bytes (rows of rb bytes) device s sends this
 * device `me` (its experts' rows); returns the rows that arrive, dying when they exceed
 * the output's cap or the received offsets do not fit the local experts. */
int64_t rt_comm_a2a_recv(const Node *n, const int *map, const int64_t *cnt, int P, int me,
                         int64_t E, int64_t rb, int64_t *rc);
/* A forward all_to_all's rows sized per step (runtime/rows.c): grows the region to hold
 * the rows the counts bring this device; out[0] may move. */
void rt_comm_rows_need(const KernelCtx *ctx, const Node *n, const int *map, const int64_t *cnt,
                       int P, int me, int64_t E);
/* The received layout all_to_all_back sends from: start[s*E + e] = the first row of
 * expert e's rows from device s (this device's experts, expert-major, sources in rank
 * order); free with mc_free. Dies when the counts exceed n's input rows. */
int64_t *rt_comm_back_starts(const Node *n, const int *map, const int64_t *cnt, int P, int me,
                             int64_t E);
/* Elements of one row (dim 0) of t. */
static inline int64_t rt_comm_row_width(const Tensor *t) {
  return t->shape[0] > 0 ? t->numel / t->shape[0] : 0;
}

#endif
