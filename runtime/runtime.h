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
  void *dev;          /* backend state (cuda: stream, cuBLAS handle); NULL on cpu */
  struct Comm *comm;  /* collectives (runtime/kernels_comm.c); NULL on one device */
  const Graph *graph; /* for collectives: the expert -> device maps; NULL on one device */
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

/* A device backend: where buffers live and which kernels run on them. The
 * training loop touches buffers only through upload/download, so the same loop
 * drives cpu and cuda devices. */
typedef struct Backend {
  const char *name;                       /* "cpu", "cuda" */
  const KernelFn *(*kernels)(Precision p); /* table by op; NULL entries: no kernel */
  void *(*alloc)(size_t bytes);           /* zeroed; NULL when out of memory */
  void (*release)(void *p);
  void (*upload)(void *dst, const void *src, size_t bytes);   /* host -> device */
  void (*download)(void *dst, const void *src, size_t bytes); /* device -> host */
  void (*copy)(void *dst, const void *src, size_t bytes);     /* device -> same device */
  void (*sync)(void);
} Backend;

extern const Backend rt_backend_cpu;
/* NULL when moec was built without CUDA or no GPU is present (runtime/cuda/). */
const Backend *rt_backend_cuda(void);

void rt_kern_dense_register(KernelFn *f32, KernelFn *f64);
/* A matrix dimension or leading dimension for OpenBLAS, whose ints are 32-bit: v, or
 * mc_die naming n's layer when v exceeds 2^31 - 1 (bound dims are each at most that,
 * but products of them, B*T rows or T*4U strides, can be more). */
int rt_blas_int(int64_t v, const Node *n);
void rt_kern_moe_register(KernelFn *f32, KernelFn *f64);
void rt_kern_comm_register(KernelFn *f32, KernelFn *f64); /* kernels_comm.c: collectives */
/* The table for a precision; every op that has a kernel is filled, others NULL. */
const KernelFn *rt_cpu_kernels(Precision p);

/* Runtime errors detected inside kernels (a token id outside the vocabulary...)
 * are reported with mc_die naming the op and the layer. */

#endif
