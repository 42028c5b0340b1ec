/* runtime.h: what runs: kernels, backends, and the program a compile hands on (codegen
 * fills it; the runtime only runs it).
 *
 *   kernels_dense.c : CPU kernels of the dense ops, float32 and float64 (OpenBLAS)
 *   kernels_moe.c   : CPU kernels of the MoE ops, float32 and float64
 *   kernels_comm.c  : the collective ops' kernels (through KernelCtx.comm)
 *   kernels.c       : assembles the per-precision kernel tables; the cpu backend
 *   exec.c          : runs a program (its host function, or the interpreter loop)
 *   training        : train.h (data, checkpoints, optimizers, the loop, evaluation)
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
  struct CommStats *stats; /* where collectives add their time and bytes; NULL: nowhere */
  int accum;               /* micro-batches of one optimizer step (gradient accumulation): the
                              loss's mean is over all of them; 0 or 1: one */
  int64_t micro_row0;      /* the micro-batch's first row in the step's whole batch */
  struct RtTrace *trace;   /* trace.c: time every instruction (the interpreter loop); NULL: off */
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
void rt_kern_moe_register(KernelFn *f32, KernelFn *f64);
void rt_kern_comm_register(KernelFn *f32, KernelFn *f64); /* kernels_comm.c: collectives */
/* The table for a precision; every op that has a kernel is filled, others NULL. */
const KernelFn *rt_cpu_kernels(Precision p);

/* Runtime errors detected inside kernels (a token id outside the vocabulary...)
 * are reported with mc_die naming the op and the layer. */

/* ---------------------------------------------------------------- programs */

/* One kernel call. A node placed on a device subset sees that subset's rows: sub
 * (IrSubCtx: its first global row, rows, index in the set and the set's size). */
typedef struct Instr {
  KernelFn fn;
  const Node *node;
  void **in, **out;
  bool on_subset;
  IrSubCtx sub;
} Instr;

/* The rows a device holds of a parameter sharded along dim 0 (expert parameters): the
 * whole tensor has `global` rows, this device holds rows list[0..n), in that order;
 * owner[r] is the device holding row r (every device's rows, for gathers). list NULL:
 * the whole tensor. */
typedef struct RowSel {
  int64_t global, n;
  const int64_t *list;
  const int *owner;
} RowSel;

/* A compiled program of one device: the ordered kernel calls of its graph with their
 * buffers, and what the compiler found for the runtime to feed and read. */
typedef struct Program {
  Graph *g;          /* its graph (shapes bound; freed with the program) */
  const Backend *be; /* where the buffers live */
  void *dev;         /* the device context kernels run on (KernelCtx.dev; cuda: RtCudaDev*);
                        NULL: the backend's default */
  Precision prec;
  size_t elem; /* bytes per float element: 4 or 8 */
  Instr *instrs;
  int ninstrs;
  int first_backward; /* index of the first backward instr (= ninstrs if none) */
  void **buf;         /* by tensor id: the tensor's storage */
  size_t bytes;       /* total bytes allocated for tensors */
  /* the memory plan (passes/memplan.c): one block, persistent region then arena */
  bool planned; /* false: one allocation per tensor (--no-memplan: every value kept) */
  void *base;   /* the block */
  size_t persist_bytes, arena_bytes;
  bool poison; /* rt_exec from 0 first fills the arena with NaN (tests) */
  /* the host program (codegen/hostjit.c), compiled with the program: NULL: the interpreter
   * loop (no LLVM, --no-jit, or instructions on device subsets) */
  void (*host_fwd)(const KernelCtx *ctx); /* [0, first_backward) */
  void (*host_bwd)(const KernelCtx *ctx); /* [first_backward, ninstrs) */
  struct HostJit *hostjit;
  /* for the runtime: found by the compiler (driver/compile.c) */
  const Tensor *ids, *targets; /* the i32[B, T] inputs fed each step */
  int vocab;                   /* ids and targets must be below it */
  RowSel *rows;                /* by parameter: the rows this device holds; NULL: all whole */
  uint64_t *param_set;         /* by parameter: the devices that train it (its gradient's
                                  device set; bit d = device d); NULL on one device */
} Program;

/* Runs instructions [from, to) (exec.c): [0, first_backward) is the forward pass. With
 * ctx->trace, the interpreter loop runs and records a span per instruction (trace.c). */
void rt_exec(Program *p, const KernelCtx *ctx, int from, int to);
/* Copies each state's next value into the state (after a step). */
void rt_carry_state(Program *p);
/* Fills the arena with NaN bytes (the poison test). */
void rt_poison_arena(Program *p);

/* Direct host pointers: cpu backend only. */
static inline float *rt_f32(Program *p, const Tensor *t) { return (float *)p->buf[t->id]; }
static inline double *rt_f64(Program *p, const Tensor *t) { return (double *)p->buf[t->id]; }
static inline int32_t *rt_i32(Program *p, const Tensor *t) { return (int32_t *)p->buf[t->id]; }

#endif
