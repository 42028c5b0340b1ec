/* cuda_internal.cuh: what the .cu files of the CUDA backend share: the device
 * context, the check macros, scratch memory, the device RNG (bit-identical
 * uniforms to common.c), launch helpers. Not for host C code (see cuda.h). */
#ifndef MOEC_RUNTIME_CUDA_INTERNAL_CUH
#define MOEC_RUNTIME_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* The shared C headers use two C11 keywords C++ spells differently. */
#ifndef _Noreturn
#define _Noreturn __attribute__((noreturn))
#endif
#ifndef _Static_assert
#define _Static_assert static_assert
#endif
extern "C" {
#include "../runtime.h"
#include "cuda.h"
}

/* ---------------------------------------------------------------- checks */

/* Every CUDA / cuBLAS call goes through one of these: the call's text, file, line. */
#define CUDA_CHECK(call)                                                                  \
  do {                                                                                    \
    cudaError_t e_ = (call);                                                              \
    if (e_ != cudaSuccess)                                                                \
      mc_fatal_at(__FILE__, __LINE__, "CUDA call %s failed: %s (%s)", #call,              \
                  cudaGetErrorString(e_), cudaGetErrorName(e_));                          \
  } while (0)
#define CUBLAS_CHECK(call)                                                                \
  do {                                                                                    \
    cublasStatus_t s_ = (call);                                                           \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                      \
      mc_fatal_at(__FILE__, __LINE__, "cuBLAS call %s failed: %s (%d)", #call,            \
                  cublasGetStatusString(s_), (int)s_);                                    \
  } while (0)
/* After every kernel launch. */
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

/* ---------------------------------------------------------------- device context */

/* User errors a kernel can detect (an id out of range): the first one is stored in
 * mapped host memory and reported at the next sync, naming the op. */
enum { RT_CUDA_ERR_NONE, RT_CUDA_ERR_EMBED_ID, RT_CUDA_ERR_TARGET, RT_CUDA_ERR_EXPERT_ID };

/* A host copy of a group-offsets tensor, made right after the op that wrote it
 * (dispatch, batchwise_route) by an async copy and an event, so that the grouped GEMMs
 * wait only for that point of the stream, not for the whole queue (kernels_moe.cu). */
#define RT_CUDA_OFFSET_SLOTS 16
struct RtCudaOffsets {
  const void *dev;      /* the offsets buffer on the device */
  const Node *producer; /* the node that wrote it */
  int32_t *host;        /* pinned copy */
  int64_t count, cap;
  cudaEvent_t ev;       /* recorded after the copy */
  bool known;           /* host written by the host (rt_cuda_offsets_known): no wait */
};

/* One slot of the pinned upload ring (rt_cuda_upload_async). */
struct RtCudaRingSlot {
  void *host;
  size_t bytes;
  cudaEvent_t ev; /* recorded after the copy out of host */
};
/* The ring grows (up to RT_CUDA_RING_MAX slots) instead of waiting when every slot's
 * copy is still queued, so the host runs ahead of the GPU by a whole step's uploads
 * (inputs and every grouped GEMM's pointer array), not by four. */
#define RT_CUDA_RING_MAX 256
#define RT_CUDA_RING_BYTES (1u << 20) /* larger copies: cudaMemcpyAsync from the source */

struct RtCudaDev {
  int gpu, virt;
  cudaStream_t stream;
  cublasHandle_t blas;
  bool tf32;
  void *scratch;       /* device workspace, grows (rt_cuda_scratch) */
  size_t scratch_bytes;
  void *stage;         /* pinned host staging (rt_cuda_stage) */
  size_t stage_bytes;
  void *ptrs;          /* device array of pointers for grouped GEMMs */
  size_t ptrs_bytes;
  int *err_host;       /* mapped pinned: [0] code, [1] op, [2] bad value */
  int *err_dev;
  RtCudaOffsets offs[RT_CUDA_OFFSET_SLOTS];
  int offs_next;
  RtCudaRingSlot ring[RT_CUDA_RING_MAX]; /* pinned ring for small async host->device copies */
  int ring_n, ring_next;
  void *cbuf[2]; /* the collectives' staging buffers (comm_cuda.cu) */
  size_t cbuf_bytes[2];
  void *segs; /* device copy of a segment list (comm_cuda.cu) */
  size_t segs_bytes;
};

/* ---------------------------------------------------------------- device discipline */

/* Several GPUs in one process: each device thread binds itself to its context
 * (rt_cuda_bind_thread). Every call that names a context or a GPU makes that GPU
 * current for its duration (RtDevScope) and gives the caller's back; kernels and the
 * Backend's calls (which act on the current GPU) check that a bound thread is on its
 * own GPU. Unbound threads (one GPU, tests) act on the current GPU as before. */
RtCudaDev *rt_cuda_bound(void);
/* Dies when the calling thread is bound to a GPU other than `gpu` (what: the call). */
void rt_cuda_check_gpu(int gpu, const char *what);
struct RtDevScope {
  int prev, gpu;
  explicit RtDevScope(int g) : prev(-1), gpu(g) {
    CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != gpu) CUDA_CHECK(cudaSetDevice(gpu));
  }
  ~RtDevScope() {
    if (prev != gpu && prev >= 0) (void)cudaSetDevice(prev);
  }
  RtDevScope(const RtDevScope &) = delete;
  RtDevScope &operator=(const RtDevScope &) = delete;
};

/* ctx->dev, or the calling thread's bound context, or device 0; made current. A kernel
 * of another GPU than the thread's is a runtime bug (fatal). */
static inline RtCudaDev *rt_cuda_of(const KernelCtx *ctx) {
  RtCudaDev *d = ctx && ctx->dev ? (RtCudaDev *)ctx->dev : rt_cuda_bound();
  if (!d) d = rt_cuda_dev(0);
  if (!d) mc_fatal("a cuda kernel ran but no CUDA device is available");
  rt_cuda_check_gpu(d->gpu, "a kernel");
  int cur = -1; /* launches go to the current device: make it d's */
  CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != d->gpu) CUDA_CHECK(cudaSetDevice(d->gpu));
  return d;
}
/* At least `bytes` of device scratch, valid until the next call on this device
 * (stream-ordered; growing waits for the stream before freeing the old block). */
void *rt_cuda_scratch(RtCudaDev *d, size_t bytes);
/* At least `bytes` of pinned host memory; waits for the stream first, so earlier
 * async copies from it have finished. */
void *rt_cuda_stage(RtCudaDev *d, size_t bytes);
/* Copies `bytes` from host src to device dst on d's stream (src may be reused at once):
 * small copies through the ring of pinned buffers (no wait for the stream; the ring
 * grows while all its copies are queued), larger ones straight from src. */
void rt_cuda_upload_async(RtCudaDev *d, void *dst, const void *src, size_t bytes);
/* Device array of at least `bytes` for grouped-GEMM pointer arrays. */
void *rt_cuda_ptrs(RtCudaDev *d, size_t bytes);

/* Kernel tables (kernels_dense.cu, kernels_moe.cu, comm_cuda.cu). */
void rt_cuda_dense_register(KernelFn *f32, KernelFn *f64);
void rt_cuda_moe_register(KernelFn *f32, KernelFn *f64);
void rt_cuda_seq_register(KernelFn *f32, KernelFn *f64); /* kernels_seq.cu */
void rt_cuda_comm_register(KernelFn *f32, KernelFn *f64);
/* Group offsets (count int32) that a collective wrote at off_dev and knows on the host
 * (kernels_moe.cu): the grouped ops that read them next take this copy, no wait. */
void rt_cuda_offsets_known(RtCudaDev *d, const Node *producer, const void *off_dev,
                           const int32_t *host, int64_t count);
/* The host copy of offsets tensor t (count int32 at off_dev) that its producer
 * published, when there is one: waits for that copy only. False when none matches. */
bool rt_cuda_offsets_copy(RtCudaDev *d, const Tensor *t, const void *off_dev, int32_t *dst,
                          int64_t count);

/* ---------------------------------------------------------------- launch helpers */

#define RT_CUDA_THREADS 256
static inline unsigned rt_cuda_blocks(int64_t n, int threads = RT_CUDA_THREADS) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 1048576) b = 1048576; /* grid-stride loops cover the rest */
  return (unsigned)b;
}
#define GRID_STRIDE(i, n)                                                                 \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
       i += (int64_t)gridDim.x * blockDim.x)

/* Element count and row width of a node's tensor i / output j (bound shapes). */
static inline int64_t rt_numel_in(const Node *n, int i) { return n->in[i]->numel; }
static inline int64_t rt_numel_out(const Node *n, int j) { return n->out[j]->numel; }
static inline int64_t rt_last_dim(const Tensor *t) {
  return t->ty.rank ? t->shape[t->ty.rank - 1] : 1;
}

/* ---------------------------------------------------------------- RNG (common.c on device) */

__device__ __forceinline__ uint64_t rt_d_hash64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
/* Bit-identical to mc_rng_uniform. */
__device__ __forceinline__ double rt_d_uniform(uint64_t key, uint64_t counter) {
  uint64_t r = rt_d_hash64(key ^ rt_d_hash64(counter));
  return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
/* mc_rng_normal's Box-Muller in float64 (CUDA's log/cos are within 1-2 ulp of glibc's). */
__device__ __forceinline__ double rt_d_normal(uint64_t key, uint64_t counter) {
  double u1 = rt_d_uniform(key, 2 * counter), u2 = rt_d_uniform(key, 2 * counter + 1);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Reports a user error found on the device into mapped host memory (plain stores:
 * when several threads race, one of their reports survives, which is enough). */
__device__ __forceinline__ void rt_d_error(int *err, int code, int op, int value) {
  volatile int *e = err;
  if (e[0] == 0) {
    e[1] = op;
    e[2] = value;
    e[0] = code;
    __threadfence_system();
  }
}

/* ---------------------------------------------------------------- cuBLAS, row-major */

/* C[M,N] = alpha op(A) op(B) + beta C, all row-major with leading dims lda/ldb/ldc
 * (row strides). ta: A is stored [K,M]; tb: B is stored [N,K]. */
void rt_cuda_gemm_f32(RtCudaDev *d, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                      int64_t ldc);
void rt_cuda_gemm_f64(RtCudaDev *d, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                      double alpha, const double *A, int64_t lda, const double *B, int64_t ldb,
                      double beta, double *C, int64_t ldc);
static inline void rt_cuda_gemm(RtCudaDev *d, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                                float alpha, const float *A, int64_t lda, const float *B,
                                int64_t ldb, float beta, float *C, int64_t ldc) {
  rt_cuda_gemm_f32(d, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static inline void rt_cuda_gemm(RtCudaDev *d, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                                double alpha, const double *A, int64_t lda, const double *B,
                                int64_t ldb, double beta, double *C, int64_t ldc) {
  rt_cuda_gemm_f64(d, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif

/* ---------------------------------------------------------------- block reductions */
#ifndef MOEC_RT_CUDA_REDUCE
#define MOEC_RT_CUDA_REDUCE
/* Sum / max over a block (blockDim.x a multiple of 32, <= 1024) in a fixed tree:
 * the same inputs give the same bits. Every thread gets the result. */
template <typename A> __device__ A rt_d_block_sum(A v) {
  __shared__ A s_sum[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads(); /* s_sum may still be read by a previous call */
  if (lane == 0) s_sum[w] = v;
  __syncthreads();
  A r = lane < nw ? s_sum[lane] : A(0);
  for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
  return r;
}
template <typename A> __device__ A rt_d_block_max(A v) {
  __shared__ A s_max[32];
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) s_max[w] = v;
  __syncthreads();
  A r = lane < nw ? s_max[lane] : s_max[0];
  for (int o = 16; o > 0; o >>= 1) r = max(r, __shfl_xor_sync(0xffffffffu, r, o));
  return r;
}
#endif

/* ---------------------------------------------------------------- sorted segments */
#ifndef MOEC_RT_CUDA_SEGMENTS
#define MOEC_RT_CUDA_SEGMENTS
/* First index i in the ascending a[0..n) with a[i] >= key. */
__device__ __forceinline__ int64_t lower_bound_i32(const int32_t *a, int64_t n, int32_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (a[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* out[k,c] = sum of g[perm[j],c] over the run of skeys equal to k, in sorted order
 * (skeys[0..R) ascending, from a stable sort, perm the original rows): each (k,c)
 * finds its run by binary search, so the sum order is fixed (no atomics). Keys
 * outside [0, K) are never summed. Embedding's dW (keys = ids) and the MoE's
 * scatter back to token rows (keys = row of each slot). */
template <typename T>
__global__ void rt_d_segment_sum_rows(const int32_t *skeys, const int32_t *perm, int64_t R,
                                      const T *g, T *out, int64_t K, int64_t D) {
  GRID_STRIDE(i, K * D) {
    int32_t k = (int32_t)(i / D);
    int64_t c = i % D;
    int64_t lo = lower_bound_i32(skeys, R, k), hi = lower_bound_i32(skeys, R, k + 1);
    T acc = 0;
    for (int64_t j = lo; j < hi; j++) acc += g[(int64_t)perm[j] * D + c];
    out[i] = acc;
  }
}
#endif

/* Stable sort of int keys in [0, maxkey] (kernels_moe.cu, CUB radix sort over just
 * the bits maxkey needs: in effect a counting sort): sorted_keys and perm (the
 * original index of each sorted element; equal keys keep their order). temp must
 * hold rt_cuda_sort_temp_bytes(n, maxkey) bytes of device memory. */
size_t rt_cuda_sort_temp_bytes(int64_t n, int32_t maxkey);
void rt_cuda_sort_keys(RtCudaDev *d, const int32_t *keys, int64_t n, int32_t maxkey, void *temp,
                       int32_t *iota_tmp, int32_t *sorted_keys, int32_t *perm);
/* Carves aligned pieces from one scratch block. */
struct RtCarve {
  char *base;
  size_t off;
  template <typename X> X *take(int64_t count) {
    off = (off + 255) & ~(size_t)255;
    X *p = (X *)(base + off);
    off += (size_t)(count > 0 ? count : 1) * sizeof(X);
    return p;
  }
};
static inline size_t rt_carve_size(size_t bytes) { return ((bytes + 255) & ~(size_t)255) + 256; }

/* ---------------------------------------------------------------- Adam's element */

/* Adam's coefficients rounded to float32 on the host, as runtime/optim.inc's loop. */
struct RtAdamCoef {
  float scale, b1, nb1, b2, nb2, lr, eps, bc1, bc2;
};
static inline RtAdamCoef rt_adam_coef(double lr, double b1, double b2, double eps, double bc1,
                                      double bc2, double scale) {
  return RtAdamCoef{(float)scale, (float)b1,  (float)(1.0 - b1), (float)b2, (float)(1.0 - b2),
                    (float)lr,    (float)eps, (float)bc1,        (float)bc2};
}

/* One element of Adam in float32, each operation rounded in docs/training.md's order
 * with no FMA (the _rn intrinsics: the same bits as optim.inc's loop whatever -fmad). */
__device__ __forceinline__ void rt_adam_elem(float *p, float gr, float *m, float *v,
                                             const RtAdamCoef &c) {
  float g = __fmul_rn(gr, c.scale);
  float mk = __fadd_rn(__fmul_rn(c.b1, *m), __fmul_rn(c.nb1, g));
  float vk = __fadd_rn(__fmul_rn(c.b2, *v), __fmul_rn(__fmul_rn(c.nb2, g), g));
  *m = mk;
  *v = vk;
  float step = __fdiv_rn(__fmul_rn(c.lr, __fdiv_rn(mk, c.bc1)),
                         __fadd_rn(__fsqrt_rn(__fdiv_rn(vk, c.bc2)), c.eps));
  *p = __fsub_rn(*p, step);
}
