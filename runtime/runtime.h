/* runtime.h: what runs: kernels, backends, and the program a compile hands on (codegen
 * fills it; the runtime only runs it).
 *
 *   kernels_dense.c : CPU kernels of the dense ops, float32 and float64 (OpenBLAS)
 *   kernels_moe.c   : CPU kernels of the MoE ops, float32 and float64
 *   kernels_comm.c  : the collective ops' kernels (through KernelCtx.comm)
 *   kernels.c       : assembles the per-precision kernel tables; the cpu backend
 *   exec.c          : runs a program (its host function, or the interpreter loop)
 *   training        : train.h (data, checkpoints, optimizers, the loop, evaluation)
 *   threads.c       : worker threads: tasks that kernels and the optimizer split into
 *
 * Prefix: rt_.
 */
#ifndef MOEC_RUNTIME_H
#define MOEC_RUNTIME_H

#include "../ir/ir.h"

typedef enum Precision { PREC_F32, PREC_F64 } Precision;

/* What a kernel knows beyond its node and buffers. */
typedef struct KernelCtx {
  bool training;       /* dropout and gate noise on */
  bool sample_softmax; /* sampled_softmax_xent samples even when not training (moec grad) */
  uint64_t seed;       /* the run's seed */
  uint64_t step;       /* global step: a new draw each step */
  int64_t batch0;      /* global index of this device's first batch row */
  int64_t batch_local; /* rows of the batch on this device (bound B) */
  int device, ndevices;
  void *dev;               /* backend state (cuda: stream, cuBLAS handle); NULL on cpu */
  struct Comm *comm;       /* collectives (runtime/kernels_comm.c); NULL on one device */
  const Graph *graph;      /* for collectives: the expert -> device maps; NULL on one device */
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
  const char *name;                        /* "cpu", "cuda" */
  const KernelFn *(*kernels)(Precision p); /* table by op; NULL entries: no kernel */
  void *(*alloc)(size_t bytes);            /* zeroed; NULL when out of memory */
  void (*release)(void *p);
  void (*upload)(void *dst, const void *src, size_t bytes);   /* host -> device */
  void (*download)(void *dst, const void *src, size_t bytes); /* device -> host */
  void (*copy)(void *dst, const void *src, size_t bytes);     /* device -> same device */
  void (*sync)(void);
} Backend;

extern const Backend rt_backend_cpu;
/* NULL when moec was built without CUDA or no GPU is present (runtime/cuda/). */
const Backend *rt_backend_cuda(void);
/* Its kernel table, with no device needed (the compiler checks a graph against it); only
 * in a build with CUDA. */
const KernelFn *rt_cuda_kernel_table(Precision p);

void rt_kern_dense_register(KernelFn *f32, KernelFn *f64);
/* A matrix dimension or leading dimension for OpenBLAS, whose ints are 32-bit: v, or
 * mc_die naming n's layer when v exceeds 2^31 - 1 (bound dims are each at most that,
 * but products of them, B*T rows or T*4U strides, can be more). */
int rt_blas_int(int64_t v, const Node *n);
void rt_kern_moe_register(KernelFn *f32, KernelFn *f64);
void rt_kern_comm_register(KernelFn *f32, KernelFn *f64); /* kernels_comm.c: collectives */
void rt_kern_rows_register(KernelFn *f32, KernelFn *f64); /* kernels_rows.c: collectives */

/* kernels_sampled.c: the sampled softmax's proposal, log-uniform (Zipfian) over [0, V):
 * P(c) = log((c+2)/(c+1)) / log(V+1). rt_sample_log_uniform draws with replacement from
 * the counter RNG (key, counters 0, 1, ...) until S classes are distinct and writes them
 * in order of first draw; returns the draws it took (0 when S = V: all classes, in order).
 * The expected count of class c, 1 - (1 - P(c))^tries (1 when tries = 0), is the
 * probability it is among the samples, as TensorFlow's samplers estimate it. */
int64_t rt_sample_log_uniform(uint64_t key, int64_t V, int64_t S, int32_t *cand);
double rt_log_uniform_p(int64_t c, int64_t V);
double rt_log_uniform_expected(int64_t c, int64_t V, int64_t tries);
/* sampled_xent's S candidates of V for this step (key from ctx's seed and step and the
 * node's stream ia[0]) into cand, and the draws they took into tries[0] */
void rt_sample_candidates(const KernelCtx *ctx, const Node *n, int64_t V, int64_t S, int32_t *cand,
                          int32_t *tries);
/* kernels_rows.c: every device's `bytes` of send into recv in rank order (n's device set);
 * returns the devices (1 without a communicator: a copy) and this device's rank */
int rt_rows_all_gather(const KernelCtx *ctx, const Node *n, const void *send, void *recv,
                       size_t bytes, int *rank);
/* The table for a precision; every op that has a kernel is filled, others NULL. */
const KernelFn *rt_cpu_kernels(Precision p);

/* ---------------------------------------------------------------- threads.c
 * Work split into tasks fixed by the shapes (never by the thread count), each writing
 * its own outputs: the same bits with any number of threads. */

#define RT_MAX_THREADS 64 /* threads the kernels use at most */
typedef void (*RtTaskFn)(void *arg, int64_t task);
/* Threads the CPU kernels use, the caller included: the CPUs this process may use, or
 * what rt_threads_set says (the command line: MOEC_THREADS, else OPENBLAS_NUM_THREADS or
 * OMP_NUM_THREADS). OpenBLAS itself is set to one thread (it runs inside the tasks). */
int rt_threads(void);
/* The kernels OpenBLAS runs ("Haswell", "Cooperlake", ...: its choice for the CPU, or
 * OPENBLAS_CORETYPE's), for benchmark reports. */
const char *rt_blas_core(void);
/* Sets that count (>= 1) and makes the calling thread the one whose rt_parallel
 * calls use the workers (in-process devices set 1: each device thread runs inline). */
void rt_threads_set(int n);
/* fn(arg, i) for every i in [0, ntasks), on any threads, in any order; returns when
 * all are done. Called from a task, or from a thread other than the pool's, it runs
 * them inline in order. */
void rt_parallel(int64_t ntasks, RtTaskFn fn, void *arg);
/* The calling thread's index, below RT_MAX_THREADS: 1.. a worker, 0 any other thread (a
 * task's per-thread scratch slot; tasks on one thread run one after another). */
int rt_thread_index(void);
/* The row-major GEMMs of every CPU kernel: C[M,N] = alpha op(A) op(B) + beta C, split
 * over C's rows, its columns or K into tasks by shape alone. kernels.c */
void rt_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void rt_dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
              int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc);
/* How many tasks the runtime splits a kernel into, by the shape rules it runs them by
 * (the cost model divides a kernel's time by min(cores, tasks)): rt_sgemm's pieces of an
 * [M, K] x [K, N] GEMM; a grouped GEMM's tasks for one expert of `flops` over `cols`
 * output columns; the LSTM's row blocks of a batch of B. Loops over rows: rt_chunks
 * below. All in split.c, which needs nothing else of the runtime (the compiler links it). */
int64_t rt_gemm_pieces(int64_t M, int64_t N, int64_t K);
int64_t rt_moe_pieces(double flops, int64_t cols);
int64_t rt_lstm_tasks(int64_t B);
/* float32 GEMMs against op(B)[K,N] packed once into column panels and reused over
 * many calls with few rows (the LSTM's recurrent GEMMs; gemm_pack.c). The same bits for
 * any split of M, and on both vector paths. rt_pack packs (its panels split over the
 * threads); rt_gemm_packed runs on the calling thread: C[M,N] = A[M,K] . op(B), plus C's
 * old value when acc. */
enum { RT_ISA_PORTABLE, RT_ISA_AVX2, RT_ISA_AVX512 };
/* The widest of those the CPU runs (AVX2 with FMA); the packed GEMMs and the optimizer's
 * row sums pick their kernels by it (gemm_pack.c). */
int rt_cpu_isa(void);
typedef struct RtPacked {
  int isa;
  int64_t K, N, nr; /* panels of nr columns, the last zero-padded */
  float *p, *base;  /* p: [ceil(N/nr)][K][nr], 64-byte aligned inside base */
} RtPacked;
void rt_pack(RtPacked *pk, const float *B, int64_t ldb, bool tb, int64_t K, int64_t N);
void rt_pack_free(RtPacked *pk);
void rt_gemm_packed(const RtPacked *pk, int64_t M, const float *A, int64_t lda, float *C,
                    int64_t ldc, bool acc);
/* The path the next rt_pack takes: the CPU's best, at most cap when cap >= 0 (tests and
 * benchmarks run the narrower paths with it). */
int rt_gemm_pack_isa(int cap);
const char *rt_gemm_pack_isa_name(int isa);
/* A loop over R rows of `cost` work each (elements touched) in tasks of at least
 * RT_GRAIN work, at most RT_MAX_TASKS of them: rt_chunks(R, cost) tasks, task i
 * covering rows [rt_chunk_lo(R, n, i), rt_chunk_lo(R, n, i + 1)). */
#define RT_GRAIN 32768
#define RT_MAX_TASKS 64
int64_t rt_chunks(int64_t R, int64_t cost);
static inline int64_t rt_chunk_lo(int64_t R, int64_t n, int64_t i) {
  return R / n * i + MC_MIN(i, R % n);
}
/* fn(arg, lo, hi) over those ranges (threads.c). */
typedef void (*RtRangeFn)(void *arg, int64_t lo, int64_t hi);
void rt_parallel_rows(int64_t R, int64_t cost, RtRangeFn fn, void *arg);
/* The same with n ranges chosen by the caller: rt_parallel(n, rt_rows_task, &job). */
typedef struct RtRowsJob {
  int64_t R, n;
  RtRangeFn fn;
  void *arg;
} RtRowsJob;
void rt_rows_task(void *arg, int64_t i);
/* What a kernel hands its tasks: its own arguments and one pointer more. */
typedef struct RtKArgs {
  const KernelCtx *ctx;
  const Node *n;
  void *const *in;
  void *const *out;
  void *aux;
} RtKArgs;

/* Offsets i32[E+1] of a MoE op, checked as every MoE kernel checks them: 0 = off[0] <=
 * ... <= off[E] <= R (rows past off[E]: padding); dies naming the layer and op. Backends
 * whose offsets live on a device check their host copies with it (kernels_moe.c). */
void rt_moe_check_offsets(const Node *n, const int32_t *off, int64_t E, int64_t R);

/* An expert weight's gradient folded into the optimizer (a grouped_matmul_dw with fold=1,
 * passes/fusion.c): the kernel writes dW only for the experts with more than
 * RT_FOLD_ROWS rows; the optimizer makes every other expert's dW, a span at a time, from
 * xs and g with the kernel's own arithmetic (rt_fold_dw), so its bits are unchanged. */
#define RT_FOLD_ROWS 8
typedef struct FoldDW {
  const void *xs, *g; /* [R, K], [R, M] (float, or double at elem 8) */
  const int32_t *off; /* [E+1] */
  const void *dw;     /* [E, K, M]: written for the experts with more rows only */
  int64_t E, K, M;
} FoldDW;
/* dW's elements [a, b) (flattened [E, K, M]) into out, as grouped_matmul_dw writes them. */
void rt_fold_dw(const FoldDW *f, size_t elem, int64_t a, int64_t b, void *out);

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
  const Tensor *ids, *targets;      /* the i32[B, T] inputs fed each step (ids: NULL for a
                                       translation model, whose targets are its labels) */
  const Tensor *source, *target_in; /* a translation model's source ids [B, S] and target
                                       inputs [B, T]; NULL for a language model */
  int vocab;                        /* ids and targets must be below it */
  RowSel *rows;                     /* by parameter: the rows this device holds; NULL: all whole */
  uint64_t *param_set;              /* by parameter: the devices that train it (its gradient's
                                       device set; bit d = device d); NULL on one device */
  /* a program whose batches change shape (its graph's shapes: a translation model's length
     buckets, decoding's batches): the tensors whose sizes follow B, T or S, for
     rt_program_bind; NULL for a program of one shape */
  Tensor **var;
  int nvar;
} Program;

/* rows.c: the expert rows sized per step (Tensor.rows_per_step): in their slots in the
 * arena, moved to a region apart when a step outgrows them. rt_rows_setup (at lowering,
 * before the block is allocated) binds every exchange at its fair share of the routes, on
 * every backend (the region apart is the backend's alloc, copy and release);
 * rt_rows_in_arena (after) points the buffers at their slots. rt_rows_need, in a forward
 * all_to_all once the counts are known, grows the rows to hold total (logged): in the
 * slots, or past them in the region apart. rt_rows_bytes: that region's size now, or the
 * most it has held (high); 0 while the rows are in the arena. */
void rt_rows_setup(Program *p);
void rt_rows_in_arena(Program *p);
void rt_rows_need(const KernelCtx *ctx, const Node *n, int64_t total);
size_t rt_rows_bytes(const Program *p, bool high);
void rt_rows_poison(Program *p, const void *nan, size_t chunk);
void rt_rows_free(Program *p);

/* Sets the sizes of p's shape-following tensors (and its graph's B, T, S) for a batch of
 * global shape s, B over the graph's devices; s must fit one of the shapes it was compiled
 * for, whose sizes the compiler checked and whose memory it planned (exec.c). */
void rt_program_bind(Program *p, BatchShape s);

/* Runs instructions [from, to) (exec.c): [0, first_backward) is the forward pass. With
 * ctx->trace, the interpreter loop runs and records a span per instruction (trace.c). */
void rt_exec(Program *p, const KernelCtx *ctx, int from, int to);
/* Copies each state's next value into the state (after a step). */
void rt_carry_state(Program *p);
/* Fills the arena with NaN bytes (the poison test). */
void rt_poison_arena(Program *p);

/* Direct host pointers: cpu backend only. */
static inline float *rt_f32(Program *p, const Tensor *t) {
  return (float *)p->buf[t->id];
}
static inline double *rt_f64(Program *p, const Tensor *t) {
  return (double *)p->buf[t->id];
}
static inline int32_t *rt_i32(Program *p, const Tensor *t) {
  return (int32_t *)p->buf[t->id];
}

#endif
