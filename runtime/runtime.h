/* runtime.h: executing programs on devices.
 *
 *   kernels_dense.c : CPU kernels of the dense ops, float32 and float64 (OpenBLAS)
 *   kernels_moe.c   : CPU kernels of the MoE ops, float32 and float64
 *   kernels.c       : assembles the per-precision kernel tables
 *   exec.c          : runs a program (the interpreter loop)
 *   (training)      : data.c, safetensors.c, optim.c, train.c
 *
 * Prefix: rt_.
 */
#ifndef MOEC_RUNTIME_H
#define MOEC_RUNTIME_H

#include "../ir/ir.h"

typedef enum Precision { PREC_F32, PREC_F64 } Precision;

/* What a kernel knows beyond its node and buffers. */
typedef struct KernelCtx {
  bool training;      /* dropout and gate noise on */
  uint64_t seed;      /* the run's seed */
  uint64_t step;      /* global step: a new draw each step */
  int64_t batch0;     /* global index of this device's first batch row */
  int64_t batch_local;/* rows of the batch on this device (bound B) */
  int device, ndevices;
} KernelCtx;

/* A kernel reads the node's bound shapes (n->in[i]->shape, ->numel) and attrs,
 * and the buffers in[i], out[j] (float or double per the table's precision;
 * int32_t for DT_I32 tensors). It writes every element of every output. */
typedef void (*KernelFn)(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out);

/* Random draws are counter-based: key = mc_rng_key(ctx->seed, stream, ctx->step),
 * counter = global element index, so a draw does not depend on the device split.
 * For a tensor whose dim 0 (or its flattened rows) follows the batch: */
static inline uint64_t rt_rng_counter0(const KernelCtx *ctx, int64_t numel) {
  return ctx->batch_local > 0 ? (uint64_t)(ctx->batch0 * (numel / ctx->batch_local)) : 0;
}

void rt_kern_dense_register(KernelFn *f32, KernelFn *f64);
void rt_kern_moe_register(KernelFn *f32, KernelFn *f64);
/* The table for a precision; every op that has a kernel is filled, others NULL. */
const KernelFn *rt_cpu_kernels(Precision p);

/* Runtime errors detected inside kernels (a token id outside the vocabulary...)
 * are reported with mc_die naming the op and the layer. */

#endif
