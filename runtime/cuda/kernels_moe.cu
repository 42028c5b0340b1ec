/* kernels_moe.cu: CUDA kernels of the MoE ops of ir/ops.def (noise, top-k,
 * load estimators, importance, cv2, dispatch/undispatch, grouped GEMMs and bias,
 * combine) and of concat0/slice0, float32 and float64. The CPU kernels
 * (runtime/kernels_moe.c) are the reference.
 *
 * Determinism: no float atomics. Dispatch is a stable sort of the (n,j) entries
 * by expert (CUB radix sort over the ceil(log2(E+1)) key bits: a counting sort,
 * stable), so xs rows, offsets and pos are unique. Column sums (load, importance)
 * run in two fixed-order stages; row sums in a fixed tree.
 *
 * Grouped GEMMs: one cublasGemmGroupedBatchedEx (float32) or
 * cublasDgemmGroupedBatched (float64) call per op, one group per expert that has
 * rows. The per-expert row counts are needed on the host to describe the groups:
 * dispatch copies its E+1 offsets to pinned host memory right after computing them
 * (async, with an event), and each grouped op waits for that event only (a stream
 * sync and copy when the offsets came from elsewhere); see docs/cuda.md. */
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <vector>

#include "../fastmath.h" /* the gate noise's draws, rt_softplusf, rt_sigmoidf */
#include "cuda_internal.cuh"

#define IN(i, T) ((const T *)in[i])
#define OUT(j, T) ((T *)out[j])
#define I32IN(i) ((const int32_t *)in[i])
#define I32OUT(j) ((int32_t *)out[j])

static void publish_offsets(RtCudaDev *d, const Node *producer, const int32_t *off_dev,
                            int64_t count);

/* ---------------------------------------------------------------- stable sort by key */

static int key_bits(int32_t maxkey) {
  int b = 1;
  while (b < 31 && ((int64_t)1 << b) <= (int64_t)maxkey) b++;
  return b;
}

size_t rt_cuda_sort_temp_bytes(int64_t n, int32_t maxkey) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const int32_t *)nullptr,
                                             (int32_t *)nullptr, (const int32_t *)nullptr,
                                             (int32_t *)nullptr, (int)n, 0, key_bits(maxkey)));
  return bytes;
}

__global__ void iota_kernel(int32_t *a, int64_t n) { GRID_STRIDE(i, n) a[i] = (int32_t)i; }

void rt_cuda_sort_keys(RtCudaDev *d, const int32_t *keys, int64_t n, int32_t maxkey, void *temp,
                       int32_t *iota_tmp, int32_t *sorted_keys, int32_t *perm) {
  MOEC_ASSERT(n < INT32_MAX);
  iota_kernel<<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, d->stream>>>(iota_tmp, n);
  CUDA_LAUNCH_CHECK();
  size_t bytes = rt_cuda_sort_temp_bytes(n, maxkey);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, sorted_keys, iota_tmp, perm, (int)n,
                                             0, key_bits(maxkey), d->stream));
}

/* The expert owning row r: the e with offsets[e] <= r < offsets[e+1]; -1 if none. */
__device__ __forceinline__ int expert_of_row(const int32_t *off, int E, int64_t r) {
  if (r < off[0] || r >= off[E]) return -1;
  int lo = 0, hi = E; /* off[lo] <= r < off[hi] */
  while (hi - lo > 1) {
    int mid = (lo + hi) >> 1;
    if (off[mid] <= r) lo = mid;
    else hi = mid;
  }
  return lo;
}

/* ---------------------------------------------------------------- noise */

template <typename T> __device__ __forceinline__ T d_sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }
template <typename T> __device__ __forceinline__ T d_softplus(T x) {
  return x > T(0) ? x + log1p(exp(-x)) : log1p(exp(x));
}

/* The CPU kernel's arithmetic per precision (kernels_moe.c): float32 through fastmath.h's
 * polynomials (this file is compiled with -fmad=false, so the same bits), float64 with
 * libm-like device functions (within 1-2 ulp of glibc's). */
__device__ __forceinline__ float noise_eps(float, uint64_t key, uint64_t c) {
  return rt_noise_normalf(key, c);
}
__device__ __forceinline__ double noise_eps(double, uint64_t key, uint64_t c) {
  return rt_noise_normal(key, c);
}
__device__ __forceinline__ float noise_softplus(float x) { return rt_softplusf(x); }
__device__ __forceinline__ double noise_softplus(double x) { return d_softplus(x); }
__device__ __forceinline__ float noise_sigmoid(float x) { return rt_sigmoidf(x); }
__device__ __forceinline__ double noise_sigmoid(double x) { return d_sigmoid(x); }

template <typename T>
__global__ void noise_kernel(const T *clean, const T *raw, T *noisy, T *sigma, T *eps, int64_t n,
                             bool training, uint64_t key, uint64_t c0) {
  GRID_STRIDE(i, n) {
    T s = noise_softplus(raw[i]) + T(0.01);
    T e = training ? noise_eps(T(0), key, c0 + (uint64_t)i) : T(0);
    sigma[i] = s;
    eps[i] = e;
    noisy[i] = clean[i] + s * e;
  }
}

template <typename T>
static void k_noise(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = n->in[0]->numel;
  uint64_t key = mc_rng_key(ctx->seed, (uint64_t)n->ia[0], ctx->step);
  noise_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), OUT(0, T), OUT(1, T), OUT(2, T), ne, ctx->training, key,
      rt_rng_counter0(ctx, ne));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
__global__ void noise_bwd_kernel(const T *gn, const T *gs, const T *eps, const T *raw, T *draw,
                                 int64_t n) {
  GRID_STRIDE(i, n) draw[i] = (gn[i] * eps[i] + gs[i]) * noise_sigmoid(raw[i]);
}

template <typename T>
static void k_noise_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  noise_bwd_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), IN(2, T), IN(3, T), OUT(0, T), ne);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- top-k */

/* (v1,i1) ranks before (v2,i2): larger value, ties to the lower index. */
template <typename T> __device__ __forceinline__ bool ranks_before(T v1, int i1, T v2, int i2) {
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

/* One warp per row: k+1 selection passes, each taking the best element that ranks
 * after the previous pick (no mask needed; E <= a few thousand). */
template <typename T>
__global__ void topk_kernel(const T *x, int32_t *idx, T *val, T *thr, int32_t *thr_idx, int64_t N,
                            int E, int k) {
  int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x / 32);
  int lane = threadIdx.x & 31;
  if (row >= N) return;
  const T *xr = x + row * E;
  T pv = INFINITY;
  int pi = -1;
  int passes = k + 1 <= E ? k + 1 : E;
  for (int s = 0; s < passes; s++) {
    T bv = -INFINITY;
    int bi = -1;
    for (int c = lane; c < E; c += 32) {
      T v = xr[c];
      bool after = v < pv || (v == pv && c > pi);
      if (after && (bi < 0 || ranks_before(v, c, bv, bi))) {
        bv = v;
        bi = c;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      T ov = __shfl_xor_sync(0xffffffffu, bv, o);
      int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi >= 0 && (bi < 0 || ranks_before(ov, oi, bv, bi))) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) {
      if (s < k) {
        idx[row * k + s] = bi;
        val[row * k + s] = bv;
      }
      if (s == k - 1) {
        thr[row * 2] = bv;
        thr_idx[row * 2] = bi;
      }
      if (s == k) {
        thr[row * 2 + 1] = bv;
        thr_idx[row * 2 + 1] = bi;
      }
    }
    pv = bv;
    pi = bi;
  }
  if (lane == 0 && k >= E) {
    thr[row * 2 + 1] = -INFINITY;
    thr_idx[row * 2 + 1] = -1;
  }
}

template <typename T>
static void k_topk(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t E = rt_last_dim(n->in[0]), N = n->in[0]->numel / E;
  int k = (int)n->ia[0];
  if (N == 0) return;
  topk_kernel<T><<<(unsigned)((N + 7) / 8), 256, 0, d->stream>>>(
      IN(0, T), I32OUT(0), OUT(1, T), OUT(2, T), I32OUT(3), N, (int)E, k);
  CUDA_LAUNCH_CHECK();
}

/* dx = 0, then per row in order: g_val[j] at idx[j], g_thr[c] at thr_idx[c] (>= 0). */
template <typename T>
__global__ void topk_bwd_kernel(const T *gv, const T *gt, const int32_t *idx, const int32_t *tidx,
                                T *dx, int64_t N, int E, int k) {
  GRID_STRIDE(r, N) {
    T *row = dx + r * E;
    for (int j = 0; j < k; j++) {
      int c = idx[r * k + j];
      if (c >= 0 && c < E) row[c] += gv[r * k + j];
    }
    for (int j = 0; j < 2; j++) {
      int c = tidx[r * 2 + j];
      if (c >= 0 && c < E) row[c] += gt[r * 2 + j];
    }
  }
}

template <typename T>
static void k_topk_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t E = n->ia[0], k = rt_last_dim(n->in[0]), N = n->in[0]->numel / k;
  CUDA_CHECK(cudaMemsetAsync(out[0], 0, (size_t)(N * E) * sizeof(T), d->stream));
  topk_bwd_kernel<T><<<rt_cuda_blocks(N), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), I32IN(2), I32IN(3), OUT(0, T), N, (int)E, (int)k);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- column sums with a functor */

#define COL_CHUNK 128
/* part[c, e] = sum over rows [c*CHUNK, ...) in order of f(row, e) (double); then
 * y[e] = sum_c part in order. */
template <typename F>
__global__ void colsum_f_partial(F f, int64_t N, int64_t E, double *part) {
  int64_t c = blockIdx.x;
  int64_t r0 = c * COL_CHUNK, r1 = min(N, r0 + COL_CHUNK);
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    double acc = 0;
    for (int64_t r = r0; r < r1; r++) acc += f(r, e);
    part[c * E + e] = acc;
  }
}
template <typename T>
__global__ void colsum_f_final(const double *part, int64_t C, int64_t E, T *y) {
  GRID_STRIDE(e, E) {
    double acc = 0;
    for (int64_t c = 0; c < C; c++) acc += part[c * E + e];
    y[e] = (T)acc;
  }
}
template <typename T, typename F>
static void colsum_f(RtCudaDev *d, F f, int64_t N, int64_t E, T *y) {
  int64_t C = (N + COL_CHUNK - 1) / COL_CHUNK;
  if (C < 1) C = 1;
  double *part = (double *)rt_cuda_scratch(d, (size_t)(C * E) * sizeof(double));
  int th = E >= 256 ? 256 : E > 32 ? (int)((E + 31) / 32 * 32) : 32;
  colsum_f_partial<F><<<(unsigned)C, th, 0, d->stream>>>(f, N, E, part);
  CUDA_LAUNCH_CHECK();
  colsum_f_final<T><<<rt_cuda_blocks(E), RT_CUDA_THREADS, 0, d->stream>>>(part, C, E, y);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- load estimators, importance */

/* Phi((clean - t)/sigma), t = thr[n,1] if noisy > thr[n,1] else thr[n,0]. */
template <typename T> struct LoadSmoothF {
  const T *clean, *noisy, *sigma, *thr;
  int64_t E;
  __device__ double operator()(int64_t r, int64_t e) const {
    int64_t i = r * E + e;
    double t1 = thr[r * 2 + 1];
    double t = noisy[i] > t1 ? t1 : (double)thr[r * 2];
    double z = ((double)clean[i] - t) / (double)sigma[i];
    return 0.5 * erfc(-z * 0.70710678118654752440);
  }
};

template <typename T>
static void k_load_smooth(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t E = rt_last_dim(n->in[0]), N = n->in[0]->numel / E;
  LoadSmoothF<T> f = {IN(0, T), IN(1, T), IN(2, T), IN(3, T), E};
  colsum_f<T>(d, f, N, E, OUT(0, T));
}

/* Warp per row: dclean = g phi/sigma, dsigma = -g phi z/sigma, dthr[which] = sum of
 * -g phi/sigma over the row (fixed tree), all in double. A non-finite z (t = -inf,
 * k == E) contributes 0. With offsets (G groups), row r uses g[group of r]; rows of no
 * group get zeros. */
template <typename T>
__global__ void load_smooth_bwd_kernel(const T *g, const T *clean, const T *noisy, const T *sigma,
                                       const T *thr, const int32_t *off, int G, T *dclean,
                                       T *dsigma, T *dthr, int64_t N, int64_t E) {
  int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x / 32);
  int lane = threadIdx.x & 31;
  if (r >= N) return;
  int grp = off ? expert_of_row(off, G, r) : 0;
  const T *gr = g + (int64_t)(grp < 0 ? 0 : grp) * E;
  double t0 = thr[r * 2], t1 = thr[r * 2 + 1], a0 = 0, a1 = 0;
  for (int64_t e = lane; e < E; e += 32) {
    int64_t i = r * E + e;
    bool upper = noisy[i] > t1;
    double t = upper ? t1 : t0, s = sigma[i];
    double z = ((double)clean[i] - t) / s;
    double dc = 0, ds = 0;
    if (grp >= 0 && isfinite(z)) {
      dc = (double)gr[e] * (0.39894228040143267794 * exp(-0.5 * z * z)) / s;
      ds = -dc * z;
    }
    dclean[i] = (T)dc;
    dsigma[i] = (T)ds;
    if (upper) a1 -= dc;
    else a0 -= dc;
  }
  for (int o = 16; o > 0; o >>= 1) {
    a0 += __shfl_xor_sync(0xffffffffu, a0, o);
    a1 += __shfl_xor_sync(0xffffffffu, a1, o);
  }
  if (lane == 0) {
    dthr[r * 2] = (T)a0;
    dthr[r * 2 + 1] = (T)a1;
  }
}

template <typename T>
static void k_load_smooth_bwd(const KernelCtx *ctx, const Node *n, void *const *in,
                              void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t E = rt_last_dim(n->in[1]), N = n->in[1]->numel / E;
  bool grouped = n->op == OP_LOAD_SMOOTH_GROUPED_BWD;
  int G = grouped ? (int)(n->in[5]->numel - 1) : 1;
  if (N == 0) return;
  load_smooth_bwd_kernel<T><<<(unsigned)((N + 7) / 8), 256, 0, d->stream>>>(
      IN(0, T), IN(1, T), IN(2, T), IN(3, T), IN(4, T), grouped ? I32IN(5) : nullptr, G, OUT(0, T),
      OUT(1, T), OUT(2, T), N, E);
  CUDA_LAUNCH_CHECK();
}

/* load[i,e] = sum over the rows of group i, in order, of Phi(...) (double): thread per (i,e). */
template <typename T>
__global__ void load_smooth_grouped_kernel(LoadSmoothF<T> f, const int32_t *off, int64_t G,
                                           int64_t E, T *load) {
  GRID_STRIDE(q, G * E) {
    int64_t i = q / E, e = q % E;
    double acc = 0;
    for (int64_t r = off[i]; r < off[i + 1]; r++) acc += f(r, e);
    load[q] = (T)acc;
  }
}

template <typename T>
static void k_load_smooth_grouped(const KernelCtx *ctx, const Node *n, void *const *in,
                                  void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t E = rt_last_dim(n->in[0]), G = n->in[4]->numel - 1;
  LoadSmoothF<T> f = {IN(0, T), IN(1, T), IN(2, T), IN(3, T), E};
  load_smooth_grouped_kernel<T><<<rt_cuda_blocks(G * E), RT_CUDA_THREADS, 0, d->stream>>>(
      f, I32IN(4), G, E, OUT(0, T));
  CUDA_LAUNCH_CHECK();
}

/* sum over (n,j) with idx[n,j] == e of gates[n,j] (1 when gates is NULL). */
template <typename T> struct ScatterF {
  const int32_t *idx;
  const T *gates;
  int64_t k;
  __device__ double operator()(int64_t r, int64_t e) const {
    double acc = 0;
    for (int64_t j = 0; j < k; j++)
      if (idx[r * k + j] == e) acc += gates ? (double)gates[r * k + j] : 1.0;
    return acc;
  }
};

template <typename T>
static void k_load_count(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t k = rt_last_dim(n->in[0]), N = n->in[0]->numel / k, E = n->ia[0];
  ScatterF<T> f = {I32IN(0), nullptr, k};
  colsum_f<T>(d, f, N, E, OUT(0, T));
}

template <typename T>
static void k_importance(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t k = rt_last_dim(n->in[0]), N = n->in[0]->numel / k, E = n->ia[0];
  ScatterF<T> f = {I32IN(0), IN(1, T), k};
  colsum_f<T>(d, f, N, E, OUT(0, T));
}

template <typename T>
__global__ void gather_idx_kernel(const T *g, const int32_t *idx, T *y, int64_t n, int64_t E) {
  GRID_STRIDE(i, n) {
    int32_t e = idx[i];
    y[i] = e >= 0 && e < E ? g[e] : T(0);
  }
}

template <typename T>
static void k_gather_idx(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  gather_idx_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), ne, n->in[0]->numel);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- cv2 */

/* One block: mean and population variance in double, fixed tree. */
template <typename T>
__global__ void cv2_kernel(const T *v, int64_t E, T *y, const T *g, T *dv) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) s += (double)v[i];
  double mean = rt_d_block_sum<double>(s) / (double)E;
  double q = 0;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
    double dlt = (double)v[i] - mean;
    q += dlt * dlt;
  }
  double var = rt_d_block_sum<double>(q) / (double)E;
  double den = mean * mean + 1e-10;
  if (!dv) {
    if (threadIdx.x == 0) y[0] = (T)(var / den);
    return;
  }
  /* d/dv_i var/den = 2(v_i - mean)/(E den) - 2 mean var/(E den^2) */
  double gg = (double)g[0];
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x)
    dv[i] = (T)(gg * (2.0 * ((double)v[i] - mean) / ((double)E * den) -
                      2.0 * mean * var / ((double)E * den * den)));
}

template <typename T>
static void k_cv2(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  cv2_kernel<T><<<1, 1024, 0, d->stream>>>(IN(0, T), n->in[0]->numel, OUT(0, T), nullptr, nullptr);
  CUDA_LAUNCH_CHECK();
}

/* (g scalar, v[E]) -> dv[E] (either input order: the scalar is g). */
template <typename T>
static void k_cv2_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int gi = n->in[0]->ty.rank == 0 ? 0 : 1, vi = 1 - gi;
  cv2_kernel<T><<<1, 1024, 0, d->stream>>>(IN(vi, T), n->in[vi]->numel, nullptr, IN(gi, T),
                                           OUT(0, T));
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- dispatch */

__global__ void expert_keys_kernel(const int32_t *idx, int32_t *keys, int64_t n, int32_t E, int *err) {
  GRID_STRIDE(i, n) {
    int32_t e = idx[i];
    if (e < 0 || e >= E) {
      rt_d_error(err, RT_CUDA_ERR_EXPERT_ID, OP_DISPATCH, e);
      e = E;
    }
    keys[i] = e;
  }
}

__global__ void offsets_kernel(const int32_t *skeys, int64_t n, int32_t *off, int32_t E) {
  GRID_STRIDE(e, (int64_t)E + 1) off[e] = (int32_t)lower_bound_i32(skeys, n, (int32_t)e);
}

__global__ void pos_kernel(const int32_t *perm, int32_t *pos, int64_t n) {
  GRID_STRIDE(r, n) pos[perm[r]] = (int32_t)r;
}

template <typename T>
__global__ void gather_rows_kernel(const T *x, const int32_t *perm, T *xs, int64_t R, int64_t D,
                                   int64_t k) {
  GRID_STRIDE(i, R * D) {
    int64_t r = i / D, c = i % D;
    xs[i] = x[(int64_t)(perm[r] / k) * D + c];
  }
}

template <typename T>
static void k_dispatch(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t D = rt_last_dim(n->in[0]), k = rt_last_dim(n->in[1]), R = n->in[1]->numel;
  int32_t E = (int32_t)n->ia[0];
  size_t tb = rt_cuda_sort_temp_bytes(R, E);
  size_t need = rt_carve_size(tb) + 4 * rt_carve_size((size_t)R * sizeof(int32_t));
  RtCarve cv = {(char *)rt_cuda_scratch(d, need), 0};
  void *temp = cv.take<char>((int64_t)tb);
  int32_t *keys = cv.take<int32_t>(R), *iota = cv.take<int32_t>(R), *skeys = cv.take<int32_t>(R),
          *perm = cv.take<int32_t>(R);
  expert_keys_kernel<<<rt_cuda_blocks(R), RT_CUDA_THREADS, 0, d->stream>>>(I32IN(1), keys, R, E,
                                                                           d->err_dev);
  CUDA_LAUNCH_CHECK();
  rt_cuda_sort_keys(d, keys, R, E, temp, iota, skeys, perm);
  offsets_kernel<<<rt_cuda_blocks(E + 1), RT_CUDA_THREADS, 0, d->stream>>>(skeys, R, I32OUT(1), E);
  CUDA_LAUNCH_CHECK();
  publish_offsets(d, n, I32OUT(1), E + 1);
  pos_kernel<<<rt_cuda_blocks(R), RT_CUDA_THREADS, 0, d->stream>>>(perm, I32OUT(2), R);
  CUDA_LAUNCH_CHECK();
  gather_rows_kernel<T><<<rt_cuda_blocks(R * D), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), perm, OUT(0, T), R, D, k);
  CUDA_LAUNCH_CHECK();
}

/* dx[n] = sum_j g_xs[pos[n,j]], j in order */
template <typename T>
__global__ void undispatch_kernel(const T *gxs, const int32_t *pos, T *dx, int64_t N, int64_t D,
                                  int64_t k) {
  GRID_STRIDE(i, N * D) {
    int64_t r = i / D, c = i % D;
    T acc = 0;
    for (int64_t j = 0; j < k; j++) acc += gxs[(int64_t)pos[r * k + j] * D + c];
    dx[i] = acc;
  }
}

template <typename T>
static void k_undispatch(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t D = rt_last_dim(n->in[0]), k = rt_last_dim(n->in[1]), N = n->in[1]->numel / k;
  undispatch_kernel<T><<<rt_cuda_blocks(N * D), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), N, D, k);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- grouped GEMMs */

/* The slot for offsets at off_dev (the one they had, else the next in turn), its
 * pinned copy sized for count and not being written by an earlier copy. */
static RtCudaOffsets *offsets_slot(RtCudaDev *d, const void *off_dev, int64_t count) {
  RtCudaOffsets *o = NULL;
  for (int i = 0; i < RT_CUDA_OFFSET_SLOTS; i++)
    if (d->offs[i].dev == off_dev) o = &d->offs[i];
  if (!o) {
    o = &d->offs[d->offs_next];
    d->offs_next = (d->offs_next + 1) % RT_CUDA_OFFSET_SLOTS;
  }
  if (!o->ev) CUDA_CHECK(cudaEventCreateWithFlags(&o->ev, cudaEventDisableTiming));
  if (o->host) CUDA_CHECK(cudaEventSynchronize(o->ev)); /* a copy into it may be in flight */
  if (o->cap < count) {
    if (o->host) CUDA_CHECK(cudaFreeHost(o->host));
    o->cap = count < 1024 ? 1024 : 2 * count;
    CUDA_CHECK(cudaMallocHost((void **)&o->host, (size_t)o->cap * sizeof(int32_t)));
  }
  return o;
}

/* After `producer` wrote offsets[count] at off_dev: an async copy to pinned host
 * memory and an event, for the grouped ops that read them later. */
static void publish_offsets(RtCudaDev *d, const Node *producer, const int32_t *off_dev,
                            int64_t count) {
  RtCudaOffsets *o = offsets_slot(d, off_dev, count);
  o->dev = off_dev;
  o->producer = producer;
  o->count = count;
  o->known = false;
  CUDA_CHECK(cudaMemcpyAsync(o->host, off_dev, (size_t)count * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, d->stream));
  CUDA_CHECK(cudaEventRecord(o->ev, d->stream));
}

void rt_cuda_offsets_known(RtCudaDev *d, const Node *producer, const void *off_dev,
                           const int32_t *host, int64_t count) {
  RtDevScope on(d->gpu);
  RtCudaOffsets *o = offsets_slot(d, off_dev, count);
  memcpy(o->host, host, (size_t)count * sizeof(int32_t));
  o->dev = off_dev;
  o->producer = producer;
  o->count = count;
  o->known = true;
}

bool rt_cuda_offsets_copy(RtCudaDev *d, const Tensor *t, const void *off_dev, int32_t *dst,
                          int64_t count) {
  for (int i = 0; i < RT_CUDA_OFFSET_SLOTS; i++) {
    RtCudaOffsets *o = &d->offs[i];
    if (o->dev != off_dev || o->producer != t->producer || o->count != count) continue;
    if (!o->known) CUDA_CHECK(cudaEventSynchronize(o->ev));
    memcpy(dst, o->host, (size_t)count * sizeof(int32_t));
    return true;
  }
  return false;
}

/* The offsets of node n (E + 1 of them, for R rows) on the host: the published copy
 * when the tensor's producer made one (waits only for that copy), else one small D->H
 * copy and a stream sync; checked as the CPU kernels check them (moe_check_offsets),
 * so a bad offset is a clear error, not a GEMM reading outside its operands. */
static std::vector<int32_t> host_offsets(RtCudaDev *d, const Node *n, const Tensor *t,
                                         const int32_t *off_dev, int64_t E, int64_t R) {
  std::vector<int32_t> h((size_t)E + 1);
  if (!rt_cuda_offsets_copy(d, t, off_dev, h.data(), E + 1)) {
    int32_t *st = (int32_t *)rt_cuda_stage(d, (size_t)(E + 1) * sizeof(int32_t));
    CUDA_CHECK(cudaMemcpyAsync(st, off_dev, (size_t)(E + 1) * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, d->stream));
    CUDA_CHECK(cudaStreamSynchronize(d->stream));
    memcpy(h.data(), st, (size_t)(E + 1) * sizeof(int32_t));
  }
  rt_moe_check_offsets(n, h.data(), E, R);
  return h;
}

/* One grouped call: problem g computes column-major C_g (m x n) = op(A_g) op(B_g), with
 * m, n, k, ld* per group and the same transposes; A/B/C pointer arrays are copied to
 * the device. */
struct Grouped {
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  std::vector<const void *> A, B;
  std::vector<void *> C;
  void add(cublasOperation_t opa, cublasOperation_t opb, int64_t mm, int64_t nn, int64_t kk,
           const void *a, int64_t la, const void *b, int64_t lb, void *c, int64_t lc) {
    MOEC_ASSERT(mm < INT32_MAX && nn < INT32_MAX && kk < INT32_MAX);
    ta.push_back(opa);
    tb.push_back(opb);
    m.push_back((int)mm);
    n.push_back((int)nn);
    k.push_back((int)kk);
    A.push_back(a);
    B.push_back(b);
    C.push_back(c);
    lda.push_back((int)la);
    ldb.push_back((int)lb);
    ldc.push_back((int)lc);
    size.push_back(1);
  }
  template <typename T> void run(RtCudaDev *d) {
    int G = (int)m.size();
    if (G == 0) return;
    size_t pb = 3 * (size_t)G * sizeof(void *);
    std::vector<void *> h((size_t)(3 * G));
    for (int g = 0; g < G; g++) {
      h[(size_t)g] = (void *)A[(size_t)g];
      h[(size_t)(G + g)] = (void *)B[(size_t)g];
      h[(size_t)(2 * G + g)] = C[(size_t)g];
    }
    void **dp = (void **)rt_cuda_ptrs(d, pb);
    rt_cuda_upload_async(d, dp, h.data(), pb); /* no stream sync */
    std::vector<T> alpha((size_t)G, T(1)), beta((size_t)G, T(0));
    if (sizeof(T) == sizeof(float)) {
      cublasComputeType_t ct = d->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      cublasStatus_t grouped_gemm = cublasGemmGroupedBatchedEx(
          d->blas, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
          (const void *const *)dp, CUDA_R_32F, lda.data(), (const void *const *)(dp + G),
          CUDA_R_32F, ldb.data(), beta.data(), dp + 2 * G, CUDA_R_32F, ldc.data(), G, size.data(),
          ct);
      /* TF32 asked for but refused (no such variant, an unsupported shape, any status):
       * the same call in plain FP32, whose failure is then the error */
      if (grouped_gemm != CUBLAS_STATUS_SUCCESS && ct != CUBLAS_COMPUTE_32F)
        grouped_gemm = cublasGemmGroupedBatchedEx(
            d->blas, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
            (const void *const *)dp, CUDA_R_32F, lda.data(), (const void *const *)(dp + G),
            CUDA_R_32F, ldb.data(), beta.data(), dp + 2 * G, CUDA_R_32F, ldc.data(), G,
            size.data(), CUBLAS_COMPUTE_32F);
      CUBLAS_CHECK(grouped_gemm);
    } else {
      CUBLAS_CHECK(cublasDgemmGroupedBatched(
          d->blas, ta.data(), tb.data(), m.data(), n.data(), k.data(), (const double *)alpha.data(),
          (const double *const *)dp, lda.data(), (const double *const *)(dp + G), ldb.data(),
          (const double *)beta.data(), (double *const *)(dp + 2 * G), ldc.data(), G, size.data()));
    }
    /* the device pointer array is rewritten by the next grouped op's copy, which the
     * stream orders after this GEMM */
  }
};

/* (xs[R,K], W[E,K,M] or [E,M,K] with ia[0], offsets) -> [R,M] */
template <typename T>
static void k_grouped_matmul(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const T *xs = IN(0, T), *W = IN(1, T);
  T *y = OUT(0, T);
  bool tw = n->ia[0] != 0;
  int64_t E = n->in[1]->shape[0], K = rt_last_dim(n->in[0]), M = rt_last_dim(n->out[0]);
  int64_t R = n->in[0]->shape[0];
  std::vector<int32_t> off = host_offsets(d, n, n->in[2], I32IN(2), E, R);
  if (off[(size_t)E] < R) /* rows past offsets[E] (batchwise padding) are zero, as on the CPU */
    CUDA_CHECK(cudaMemsetAsync(y + (int64_t)off[(size_t)E] * M, 0,
                               (size_t)((R - off[(size_t)E]) * M) * sizeof(T), d->stream));
  Grouped gr;
  for (int64_t e = 0; e < E; e++) {
    int64_t r0 = off[(size_t)e], me = off[(size_t)e + 1] - r0;
    if (me <= 0) continue;
    /* row-major y_e[me,M] = xs_e[me,K] . op(W_e) == column-major y_e^T = op(W_e)^T xs_e^T */
    gr.add(tw ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, M, me, K, W + e * K * M, tw ? K : M,
           xs + r0 * K, K, y + r0 * M, M);
  }
  gr.run<T>(d);
}

/* (xs[R,K], g[R,M], offsets) -> dW[E,K,M]; experts without rows get zeros. */
template <typename T>
static void k_grouped_matmul_dw(const KernelCtx *ctx, const Node *n, void *const *in,
                                void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const T *xs = IN(0, T), *g = IN(1, T);
  T *dW = OUT(0, T);
  int64_t E = n->out[0]->shape[0], K = rt_last_dim(n->in[0]), M = rt_last_dim(n->in[1]);
  std::vector<int32_t> off = host_offsets(d, n, n->in[2], I32IN(2), E, n->in[0]->shape[0]);
  Grouped gr;
  for (int64_t e = 0; e < E; e++) {
    int64_t r0 = off[(size_t)e], me = off[(size_t)e + 1] - r0;
    if (me <= 0) {
      CUDA_CHECK(cudaMemsetAsync(dW + e * K * M, 0, (size_t)(K * M) * sizeof(T), d->stream));
      continue;
    }
    /* row-major dW_e[K,M] = xs_e^T . g_e == column-major dW_e^T (MxK) = g_e^T (Mxme) xs_e (mexK) */
    gr.add(CUBLAS_OP_N, CUBLAS_OP_T, M, K, me, g + r0 * M, M, xs + r0 * K, K, dW + e * K * M, M);
  }
  gr.run<T>(d);
}

/* Block per row: y = x + b[expert of row] (rows of no expert copied). */
template <typename T>
__global__ void grouped_bias_kernel(const T *x, const T *b, const int32_t *off, T *y, int64_t R,
                                   int64_t M, int E) {
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    int e = expert_of_row(off, E, r);
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x)
      y[r * M + c] = e >= 0 ? x[r * M + c] + b[(int64_t)e * M + c] : x[r * M + c];
  }
}

template <typename T>
static void k_grouped_bias(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t M = rt_last_dim(n->in[0]), R = n->in[0]->numel / M, E = n->in[1]->shape[0];
  if (R == 0) return;
  grouped_bias_kernel<T><<<(unsigned)(R < 65535 * 16 ? R : 65535 * 16), M >= 256 ? 256 : 128, 0,
                           d->stream>>>(IN(0, T), IN(1, T), I32IN(2), OUT(0, T), R, M, (int)E);
  CUDA_LAUNCH_CHECK();
}

/* y[e,c] = sum of g[r,c] over the rows of expert e, in row order (double). */
template <typename T>
__global__ void grouped_sum_rows_kernel(const T *g, const int32_t *off, T *y, int64_t E, int64_t M) {
  GRID_STRIDE(i, E * M) {
    int64_t e = i / M, c = i % M;
    double acc = 0;
    for (int64_t r = off[e]; r < off[e + 1]; r++) acc += (double)g[r * M + c];
    y[i] = (T)acc;
  }
}

template <typename T>
static void k_grouped_sum_rows(const KernelCtx *ctx, const Node *n, void *const *in,
                               void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t M = rt_last_dim(n->in[0]), E = n->out[0]->shape[0];
  grouped_sum_rows_kernel<T><<<rt_cuda_blocks(E * M), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), E, M);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- combine */

template <typename T>
__global__ void combine_kernel(const T *ys, const T *gates, const int32_t *pos, T *y, int64_t N,
                               int64_t O, int64_t k) {
  GRID_STRIDE(i, N * O) {
    int64_t r = i / O, c = i % O;
    T acc = 0;
    for (int64_t j = 0; j < k; j++) acc += gates[r * k + j] * ys[(int64_t)pos[r * k + j] * O + c];
    y[i] = acc;
  }
}

template <typename T>
static void k_combine(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t O = rt_last_dim(n->in[0]), k = rt_last_dim(n->in[1]), N = n->in[1]->numel / k;
  combine_kernel<T><<<rt_cuda_blocks(N * O), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), I32IN(2), OUT(0, T), N, O, k);
  CUDA_LAUNCH_CHECK();
}

/* dys[pos[n,j]] = gates[n,j] g[n] */
template <typename T>
__global__ void combine_bwd_dys_kernel(const T *g, const T *gates, const int32_t *pos, T *dys,
                                       int64_t N, int64_t O, int64_t k) {
  GRID_STRIDE(i, N * k * O) {
    int64_t c = i % O, nj = i / O, r = nj / k;
    dys[(int64_t)pos[nj] * O + c] = gates[nj] * g[r * O + c];
  }
}

/* Block per (n,j): dgates[n,j] = g[n] . ys[pos[n,j]] (fixed tree). */
template <typename T>
__global__ void combine_bwd_dg_kernel(const T *g, const T *ys, const int32_t *pos, T *dg, int64_t O,
                                      int64_t k) {
  int64_t nj = blockIdx.x, r = nj / k, p = pos[nj];
  double acc = 0;
  for (int64_t c = threadIdx.x; c < O; c += blockDim.x)
    acc += (double)g[r * O + c] * (double)ys[p * O + c];
  acc = rt_d_block_sum<double>(acc);
  if (threadIdx.x == 0) dg[nj] = (T)acc;
}

template <typename T>
static void k_combine_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t O = rt_last_dim(n->in[0]), k = rt_last_dim(n->in[2]), N = n->in[2]->numel / k;
  combine_bwd_dys_kernel<T><<<rt_cuda_blocks(N * k * O), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(2, T), I32IN(3), OUT(0, T), N, O, k);
  CUDA_LAUNCH_CHECK();
  if (N * k == 0) return;
  MOEC_ASSERT(N * k < INT32_MAX);
  combine_bwd_dg_kernel<T><<<(unsigned)(N * k), O >= 256 ? 256 : 64, 0, d->stream>>>(
      IN(0, T), IN(1, T), I32IN(3), OUT(1, T), O, k);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- hmoe helpers */

/* gidx[r,j] = group(r)*E + idx[r,j] */
__global__ void global_idx_kernel(const int32_t *idx, const int32_t *off, int32_t *gi, int64_t R,
                                  int64_t k, int G, int32_t E) {
  GRID_STRIDE(q, R * k) {
    int grp = expert_of_row(off, G, q / k);
    gi[q] = (grp < 0 ? 0 : grp) * E + idx[q];
  }
}

template <typename T>
static void k_global_idx(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t k = rt_last_dim(n->in[0]), R = n->in[0]->numel / k;
  int G = (int)(n->in[1]->numel - 1);
  global_idx_kernel<<<rt_cuda_blocks(R * k), RT_CUDA_THREADS, 0, d->stream>>>(
      I32IN(0), I32IN(1), I32OUT(0), R, k, G, (int32_t)n->ia[0]);
  CUDA_LAUNCH_CHECK();
}

/* u[pos[i]] = v[i] (pos a permutation: every u written) */
template <typename T>
__global__ void scatter_pos_kernel(const T *v, const int32_t *pos, T *u, int64_t nk) {
  GRID_STRIDE(i, nk) {
    int32_t p = pos[i];
    if (p >= 0 && p < nk) u[p] = v[i];
  }
}

template <typename T>
static void k_scatter_pos(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t nk = n->in[1]->numel;
  CUDA_CHECK(cudaMemsetAsync(out[0], 0, (size_t)nk * sizeof(T), d->stream));
  scatter_pos_kernel<T><<<rt_cuda_blocks(nk), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), nk);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
__global__ void gather_pos_kernel(const T *u, const int32_t *pos, T *v, int64_t nk) {
  GRID_STRIDE(i, nk) {
    int32_t p = pos[i];
    v[i] = p >= 0 && p < nk ? u[p] : T(0);
  }
}

template <typename T>
static void k_gather_pos(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t nk = n->in[1]->numel;
  gather_pos_kernel<T><<<rt_cuda_blocks(nk), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), nk);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
__global__ void row_scale_kernel(const T *x, const T *s, T *y, int64_t R, int64_t M) {
  GRID_STRIDE(i, R * M) y[i] = x[i] * s[i / M];
}

template <typename T>
static void k_row_scale(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t M = rt_last_dim(n->in[0]), R = n->in[0]->numel / M;
  row_scale_kernel<T><<<rt_cuda_blocks(R * M), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), OUT(0, T), R, M);
  CUDA_LAUNCH_CHECK();
}

/* Block per row: y[r] = a[r] . b[r] in double, fixed tree. */
template <typename T> __global__ void row_dot_kernel(const T *a, const T *b, T *y, int64_t M) {
  int64_t r = blockIdx.x;
  double acc = 0;
  for (int64_t c = threadIdx.x; c < M; c += blockDim.x)
    acc += (double)a[r * M + c] * (double)b[r * M + c];
  acc = rt_d_block_sum<double>(acc);
  if (threadIdx.x == 0) y[r] = (T)acc;
}

template <typename T>
static void k_row_dot(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t M = rt_last_dim(n->in[0]), R = n->in[0]->numel / M;
  if (R == 0) return;
  row_dot_kernel<T><<<(unsigned)R, M >= 256 ? 256 : 64, 0, d->stream>>>(IN(0, T), IN(1, T),
                                                                        OUT(0, T), M);
  CUDA_LAUNCH_CHECK();
}

/* y[i,e] = v[i,e] / max(1, rows of group i) */
template <typename T>
__global__ void div_group_rows_kernel(const T *v, const int32_t *off, T *y, int64_t G, int64_t E) {
  GRID_STRIDE(q, G * E) {
    int64_t i = q / E, rows = off[i + 1] - off[i];
    y[q] = (T)((double)v[q] / (rows > 1 ? (double)rows : 1.0));
  }
}

template <typename T>
static void k_div_group_rows(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t E = rt_last_dim(n->in[0]), G = n->in[0]->numel / E;
  div_group_rows_kernel<T><<<rt_cuda_blocks(G * E), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), G, E);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- batchwise gating */

/* Slots grouped by row: sorted row keys and the slot permutation (stable: slots of
 * one row in ascending order); rows of -1 sort last (key N). Carved from cv. */
__global__ void row_keys_kernel(const int32_t *rows, int32_t *keys, int64_t R, int32_t N) {
  GRID_STRIDE(s, R) {
    int32_t r = rows[s];
    keys[s] = r < 0 || r >= N ? N : r;
  }
}
struct SlotsByRow {
  int32_t *skeys, *perm;
};
static size_t slots_by_row_bytes(int64_t R, int32_t N) {
  return rt_carve_size(rt_cuda_sort_temp_bytes(R, N)) + 4 * rt_carve_size((size_t)R * 4);
}
static SlotsByRow slots_by_row(RtCudaDev *d, RtCarve &cv, const int32_t *rows, int64_t R,
                               int32_t N) {
  size_t tb = rt_cuda_sort_temp_bytes(R, N);
  void *temp = cv.take<char>((int64_t)tb);
  int32_t *keys = cv.take<int32_t>(R), *iota = cv.take<int32_t>(R);
  SlotsByRow o = {cv.take<int32_t>(R), cv.take<int32_t>(R)};
  row_keys_kernel<<<rt_cuda_blocks(R), RT_CUDA_THREADS, 0, d->stream>>>(rows, keys, R, N);
  CUDA_LAUNCH_CHECK();
  rt_cuda_sort_keys(d, keys, R, N, temp, iota, o.skeys, o.perm);
  return o;
}

__global__ void transpose_keys_kernel(const float *gs, float *kt, int32_t *vt, int32_t *seg,
                                      int64_t N, int64_t E) {
  GRID_STRIDE(i, N * E) {
    int64_t n = i / E, e = i % E;
    kt[e * N + n] = gs[i];
    vt[e * N + n] = (int32_t)n;
  }
  GRID_STRIDE(e, E + 1) seg[e] = (int32_t)(e * N);
}
__global__ void transpose_keys_kernel_f64(const double *gs, double *kt, int32_t *vt, int32_t *seg,
                                          int64_t N, int64_t E) {
  GRID_STRIDE(i, N * E) {
    int64_t n = i / E, e = i % E;
    kt[e * N + n] = gs[i];
    vt[e * N + n] = (int32_t)n;
  }
  GRID_STRIDE(e, E + 1) seg[e] = (int32_t)(e * N);
}

/* Training, a block per expert: its m best rows, and their mask entries. */
template <typename T>
__global__ void bw_select_kernel(const int32_t *sv, T *mask, int32_t *cnt, int64_t N, int64_t E,
                                 int64_t m) {
  int64_t e = blockIdx.x;
  if (threadIdx.x == 0) cnt[e] = (int32_t)m;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x)
    mask[(int64_t)sv[e * N + j] * E + e] = T(1);
}

/* Evaluation, a thread per row (as the CPU's batchwise_route_eval): the experts over their
 * thresholds, at most the k best (gs desc, ties to the lower expert), whatever the other
 * rows. The mask was zeroed. */
template <typename T>
__global__ void bw_eval_mask_kernel(const T *gs, const T *thr, T *mask, int64_t N, int64_t E,
                                    int64_t k) {
  GRID_STRIDE(r, N) {
    const T *g = gs + r * E;
    T *mr = mask + r * E;
    for (int64_t j = 0; j < k; j++) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; e++)
        if (mr[e] == T(0) && g[e] > thr[e] && (best < 0 || g[e] > g[best])) best = e;
      if (best < 0) break;
      mr[best] = T(1);
    }
  }
}

/* Block per expert: the rows its mask column holds. */
template <typename T>
__global__ void bw_count_kernel(const T *mask, int32_t *cnt, int64_t N, int64_t E) {
  typedef cub::BlockReduce<int, 256> Reduce;
  __shared__ typename Reduce::TempStorage tmp;
  int64_t e = blockIdx.x;
  int c = 0;
  for (int64_t n = threadIdx.x; n < N; n += 256)
    c += mask[n * E + e] != T(0);
  int total = Reduce(tmp).Sum(c);
  if (threadIdx.x == 0) cnt[e] = total;
}

__global__ void bw_offsets_kernel(const int32_t *cnt, int32_t *off, int64_t E) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    int32_t a = 0;
    for (int64_t e = 0; e < E; e++) {
      off[e] = a;
      a += cnt[e];
    }
    off[E] = a;
  }
}

/* Block per expert: its masked rows in ascending order into slots [off[e], off[e+1]). */
template <typename T>
__global__ void bw_rows_kernel(const T *mask, const int32_t *off, int32_t *rows, int64_t N,
                               int64_t E) {
  typedef cub::BlockScan<int, 256> Scan;
  __shared__ typename Scan::TempStorage tmp;
  int64_t e = blockIdx.x;
  int base = off[e];
  for (int64_t n0 = 0; n0 < N; n0 += 256) {
    int64_t n = n0 + threadIdx.x;
    int flag = n < N && mask[n * E + e] != T(0) ? 1 : 0, rank, total;
    Scan(tmp).ExclusiveSum(flag, rank, total);
    if (flag) rows[base + rank] = (int32_t)n;
    base += total;
    __syncthreads();
  }
}

template <typename T>
static void k_batchwise_route(const KernelCtx *ctx, const Node *n, void *const *in,
                              void *const *out) {
  if (n->nin == 4) /* a global cut from all_gather_topm: the CPU runtime's multi-device path */
    mc_die("layer '%s': batchwise gating over several devices (all_gather_topm's cut) has no "
           "cuda kernel yet; run it on cpu devices",
           n->layer ? n->layer : "?");
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t N = n->in[0]->shape[0], E = n->in[0]->shape[1], k = n->ia[0], m = k * N / E;
  int64_t R = n->out[1]->numel;
  MOEC_ASSERT(N * E < INT32_MAX);
  T *mask = OUT(0, T);
  int32_t *rows = I32OUT(1), *off = I32OUT(2);
  size_t tb = 0;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, tb, (const T *)nullptr, (T *)nullptr, (const int32_t *)nullptr, (int32_t *)nullptr,
      (int)(N * E), (int)E, (const int32_t *)nullptr, (const int32_t *)nullptr));
  size_t need = rt_carve_size(tb) + 2 * rt_carve_size((size_t)(N * E) * sizeof(T)) +
                2 * rt_carve_size((size_t)(N * E) * 4) + 2 * rt_carve_size((size_t)(E + 1) * 4);
  RtCarve cv = {(char *)rt_cuda_scratch(d, need), 0};
  void *temp = cv.take<char>((int64_t)tb);
  T *kt = cv.take<T>(N * E), *sk = cv.take<T>(N * E);
  int32_t *vt = cv.take<int32_t>(N * E), *sv = cv.take<int32_t>(N * E),
          *seg = cv.take<int32_t>(E + 1), *cnt = cv.take<int32_t>(E + 1);
  CUDA_CHECK(cudaMemsetAsync(mask, 0, (size_t)(N * E) * sizeof(T), d->stream));
  CUDA_CHECK(cudaMemsetAsync(rows, 0xff, (size_t)R * sizeof(int32_t), d->stream)); /* -1 */
  if (!ctx->training) { /* row by row: at most k per row, so the N*k slots hold them */
    bw_eval_mask_kernel<T>
        <<<rt_cuda_blocks(N), RT_CUDA_THREADS, 0, d->stream>>>(IN(0, T), IN(1, T), mask, N, E, k);
    CUDA_LAUNCH_CHECK();
    bw_count_kernel<T><<<(unsigned)E, 256, 0, d->stream>>>(mask, cnt, N, E);
    CUDA_LAUNCH_CHECK();
  } else {
    if (sizeof(T) == sizeof(float))
      transpose_keys_kernel<<<rt_cuda_blocks(N * E), RT_CUDA_THREADS, 0, d->stream>>>(
          (const float *)in[0], (float *)kt, vt, seg, N, E);
    else
      transpose_keys_kernel_f64<<<rt_cuda_blocks(N * E), RT_CUDA_THREADS, 0, d->stream>>>(
          (const double *)in[0], (double *)kt, vt, seg, N, E);
    CUDA_LAUNCH_CHECK();
    /* stable: equal values keep ascending rows (ties to the lower row) */
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        temp, tb, kt, sk, vt, sv, (int)(N * E), (int)E, seg, seg + 1, 0, (int)(sizeof(T) * 8),
        d->stream));
    bw_select_kernel<T><<<(unsigned)E, 128, 0, d->stream>>>(sv, mask, cnt, N, E, m);
    CUDA_LAUNCH_CHECK();
  }
  bw_offsets_kernel<<<1, 32, 0, d->stream>>>(cnt, off, E);
  CUDA_LAUNCH_CHECK();
  publish_offsets(d, n, off, E + 1);
  bw_rows_kernel<T><<<(unsigned)E, 256, 0, d->stream>>>(mask, off, rows, N, E);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
__global__ void gather_rows_by_kernel(const T *x, const int32_t *rows, T *xs, int64_t R, int64_t D,
                                      int64_t N) {
  GRID_STRIDE(i, R * D) {
    int32_t r = rows[i / D];
    xs[i] = r >= 0 && r < N ? x[(int64_t)r * D + i % D] : T(0);
  }
}

template <typename T>
static void k_gather_rows(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t D = rt_last_dim(n->in[0]), N = n->in[0]->shape[0], R = n->in[1]->numel;
  gather_rows_by_kernel<T><<<rt_cuda_blocks(R * D), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), I32IN(1), OUT(0, T), R, D, N);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
static void k_scatter_rows(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t D = rt_last_dim(n->in[0]), R = n->in[1]->numel, N = n->in[2]->shape[0];
  RtCarve cv = {(char *)rt_cuda_scratch(d, slots_by_row_bytes(R, (int32_t)N)), 0};
  SlotsByRow sr = slots_by_row(d, cv, I32IN(1), R, (int32_t)N);
  rt_d_segment_sum_rows<T><<<rt_cuda_blocks(N * D), RT_CUDA_THREADS, 0, d->stream>>>(
      sr.skeys, sr.perm, R, IN(0, T), OUT(0, T), N, D);
  CUDA_LAUNCH_CHECK();
}

/* Warp per row. Forward: G = gs*mask / S, S = sum_e gs*mask (0 where S <= 0).
 * Backward (g given): dgs = mask (g - sum_e g G) / S (0 where S <= 0). Sums in double. */
template <typename T>
__global__ void masked_norm_kernel(const T *g, const T *gs, const T *mask, T *y, int64_t N,
                                   int64_t E) {
  int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x / 32);
  int lane = threadIdx.x & 31;
  if (r >= N) return;
  const T *a = gs + r * E, *mk = mask + r * E;
  double S = 0;
  for (int64_t e = lane; e < E; e += 32) S += (double)a[e] * (double)mk[e];
  for (int o = 16; o > 0; o >>= 1) S += __shfl_xor_sync(0xffffffffu, S, o);
  if (!g) {
    for (int64_t e = lane; e < E; e += 32)
      y[r * E + e] = S > 0 ? (T)((double)a[e] * (double)mk[e] / S) : T(0);
    return;
  }
  const T *gr = g + r * E;
  double dot = 0;
  for (int64_t e = lane; e < E; e += 32)
    if (S > 0) dot += (double)gr[e] * ((double)a[e] * (double)mk[e] / S);
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  for (int64_t e = lane; e < E; e += 32)
    y[r * E + e] = S > 0 ? (T)((double)mk[e] * ((double)gr[e] - dot) / S) : T(0);
}

template <typename T>
static void k_masked_norm(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  bool bwd = n->op == OP_MASKED_NORM_BWD;
  int a = bwd ? 1 : 0;
  int64_t E = rt_last_dim(n->in[a]), N = n->in[a]->numel / E;
  if (N == 0) return;
  masked_norm_kernel<T><<<(unsigned)((N + 7) / 8), 256, 0, d->stream>>>(
      bwd ? IN(0, T) : nullptr, IN(a, T), IN(a + 1, T), OUT(0, T), N, E);
  CUDA_LAUNCH_CHECK();
}

/* y[n,c] = sum over the slots s of row n (ascending) of G[n, expert(s)] ys[s,c] */
template <typename T>
__global__ void combine_routes_kernel(const int32_t *skeys, const int32_t *perm, int64_t R,
                                      const T *ys, const T *G, const int32_t *off, T *y, int64_t N,
                                      int64_t O, int E) {
  GRID_STRIDE(i, N * O) {
    int32_t r = (int32_t)(i / O);
    int64_t c = i % O;
    int64_t lo = lower_bound_i32(skeys, R, r), hi = lower_bound_i32(skeys, R, r + 1);
    T acc = 0;
    for (int64_t j = lo; j < hi; j++) {
      int64_t s = perm[j];
      int e = expert_of_row(off, E, s);
      if (e >= 0) acc += G[(int64_t)r * E + e] * ys[s * O + c];
    }
    y[i] = acc;
  }
}

template <typename T>
static void k_combine_routes(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t O = rt_last_dim(n->in[0]), R = n->in[0]->shape[0], N = n->in[1]->shape[0],
          E = n->in[1]->shape[1];
  RtCarve cv = {(char *)rt_cuda_scratch(d, slots_by_row_bytes(R, (int32_t)N)), 0};
  SlotsByRow sr = slots_by_row(d, cv, I32IN(2), R, (int32_t)N);
  combine_routes_kernel<T><<<rt_cuda_blocks(N * O), RT_CUDA_THREADS, 0, d->stream>>>(
      sr.skeys, sr.perm, R, IN(0, T), IN(1, T), I32IN(3), OUT(0, T), N, O, (int)E);
  CUDA_LAUNCH_CHECK();
}

/* dys[s] = G[rows[s], e] g[rows[s]] (0 for unused slots) */
template <typename T>
__global__ void combine_routes_dys_kernel(const T *g, const T *G, const int32_t *rows,
                                          const int32_t *off, T *dys, int64_t R, int64_t O,
                                          int64_t N, int E) {
  GRID_STRIDE(i, R * O) {
    int64_t s = i / O, c = i % O;
    int32_t r = rows[s];
    int e = expert_of_row(off, E, s);
    dys[i] = r >= 0 && r < N && e >= 0 ? G[(int64_t)r * E + e] * g[(int64_t)r * O + c] : T(0);
  }
}

/* Block per used slot s: dG[rows[s], e] = g[rows[s]] . ys[s] (double, fixed tree). */
template <typename T>
__global__ void combine_routes_dg_kernel(const T *g, const T *ys, const int32_t *rows,
                                         const int32_t *off, T *dG, int64_t O, int64_t N, int E) {
  int64_t s = blockIdx.x;
  int32_t r = rows[s];
  int e = expert_of_row(off, E, s);
  if (r < 0 || r >= N || e < 0) return;
  double acc = 0;
  for (int64_t c = threadIdx.x; c < O; c += blockDim.x)
    acc += (double)g[(int64_t)r * O + c] * (double)ys[s * O + c];
  acc = rt_d_block_sum<double>(acc);
  if (threadIdx.x == 0) dG[(int64_t)r * E + e] = (T)acc;
}

template <typename T>
static void k_combine_routes_bwd(const KernelCtx *ctx, const Node *n, void *const *in,
                                 void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t O = rt_last_dim(n->in[0]), R = n->in[1]->shape[0], N = n->in[2]->shape[0],
          E = n->in[2]->shape[1];
  combine_routes_dys_kernel<T><<<rt_cuda_blocks(R * O), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(2, T), I32IN(3), I32IN(4), OUT(0, T), R, O, N, (int)E);
  CUDA_LAUNCH_CHECK();
  CUDA_CHECK(cudaMemsetAsync(out[1], 0, (size_t)(N * E) * sizeof(T), d->stream));
  if (R == 0) return;
  combine_routes_dg_kernel<T><<<(unsigned)R, O >= 256 ? 256 : 64, 0, d->stream>>>(
      IN(0, T), IN(1, T), I32IN(3), I32IN(4), OUT(1, T), O, N, (int)E);
  CUDA_LAUNCH_CHECK();
}

/* One block: (1/N) sum (1[gs > thr] - mask)(gs - thr), double, fixed tree. */
template <typename T>
__global__ void threshold_loss_kernel(const T *gs, const T *mask, const T *thr, T *y, int64_t N,
                                      int64_t E, double Ng) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < N * E; i += blockDim.x) {
    double t = thr[i % E], v = gs[i];
    acc += ((v > t ? 1.0 : 0.0) - (double)mask[i]) * (v - t);
  }
  acc = rt_d_block_sum<double>(acc);
  if (threadIdx.x == 0) y[0] = (T)(acc / Ng);
}

template <typename T>
static void k_threshold_loss(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t N = n->in[0]->shape[0], E = n->in[0]->shape[1];
  double Ng = (double)N * (double)(n->ia[0] > 1 ? n->ia[0] : 1); /* rows of the global batch */
  threshold_loss_kernel<T>
      <<<1, 1024, 0, d->stream>>>(IN(0, T), IN(1, T), IN(2, T), OUT(0, T), N, E, Ng);
  CUDA_LAUNCH_CHECK();
}

template <typename T> struct ThrIndF {
  const T *gs, *mask, *thr;
  int64_t E;
  __device__ double operator()(int64_t r, int64_t e) const {
    int64_t i = r * E + e;
    return ((double)gs[i] > (double)thr[e] ? 1.0 : 0.0) - (double)mask[i];
  }
};

template <typename T>
__global__ void threshold_dgs_kernel(const T *g, const T *gs, const T *mask, const T *thr, T *dgs,
                                     int64_t N, int64_t E, double Ng) {
  double s = (double)g[0] / Ng;
  GRID_STRIDE(i, N * E) {
    double ind = ((double)gs[i] > (double)thr[i % E] ? 1.0 : 0.0) - (double)mask[i];
    dgs[i] = (T)(s * ind);
  }
}
template <typename T> __global__ void scale_by_kernel(const T *g, T *v, int64_t E, double Ng) {
  GRID_STRIDE(e, E) v[e] = (T)(-(double)g[0] / Ng * (double)v[e]);
}

template <typename T>
static void k_threshold_loss_bwd(const KernelCtx *ctx, const Node *n, void *const *in,
                                 void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t N = n->in[1]->shape[0], E = n->in[1]->shape[1];
  double Ng = (double)N * (double)(n->ia[0] > 1 ? n->ia[0] : 1);
  threshold_dgs_kernel<T><<<rt_cuda_blocks(N * E), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), IN(2, T), IN(3, T), OUT(0, T), N, E, Ng);
  CUDA_LAUNCH_CHECK();
  ThrIndF<T> f = {IN(1, T), IN(2, T), IN(3, T), E};
  colsum_f<T>(d, f, N, E, OUT(1, T)); /* sum_n (1[gs > thr] - mask) */
  scale_by_kernel<T>
      <<<rt_cuda_blocks(E), RT_CUDA_THREADS, 0, d->stream>>>(IN(0, T), OUT(1, T), E, Ng);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- concat0, slice0 */

template <typename T> static size_t elem_bytes(const Tensor *t) {
  return t->ty.dtype == DT_I32 ? sizeof(int32_t) : sizeof(T);
}

template <typename T>
static void k_concat0(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  size_t at = 0;
  for (int i = 0; i < n->nin; i++) {
    size_t b = (size_t)n->in[i]->numel * elem_bytes<T>(n->in[i]);
    if (b && (char *)out[0] + at != (const char *)in[i]) /* else a view (memplan.c) */
      CUDA_CHECK(cudaMemcpyAsync((char *)out[0] + at, in[i], b, cudaMemcpyDeviceToDevice, d->stream));
    at += b;
  }
}

template <typename T>
static void k_slice0(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const Tensor *x = n->in[0];
  if (!n->out[0]->numel) return; /* an empty slice (passes/shard.c) */
  size_t row = (size_t)(x->numel / x->shape[0]) * elem_bytes<T>(x);
  size_t b = (size_t)n->ia[1] * row;
  const char *x0 = (const char *)in[0] + (size_t)n->ia[0] * row;
  if (b && out[0] != x0) /* else a view of its rows (passes/memplan.c find_views) */
    CUDA_CHECK(cudaMemcpyAsync(out[0], x0, b, cudaMemcpyDeviceToDevice, d->stream));
}

/* ---------------------------------------------------------------- table */

template <typename T> static void fill(KernelFn *t) {
  t[OP_NOISE] = k_noise<T>;
  t[OP_NOISE_BWD] = k_noise_bwd<T>;
  t[OP_TOPK] = k_topk<T>;
  t[OP_TOPK_BWD] = k_topk_bwd<T>;
  t[OP_LOAD_SMOOTH] = k_load_smooth<T>;
  t[OP_LOAD_SMOOTH_BWD] = k_load_smooth_bwd<T>;
  t[OP_LOAD_COUNT] = k_load_count<T>;
  t[OP_IMPORTANCE] = k_importance<T>;
  t[OP_GATHER_IDX] = k_gather_idx<T>;
  t[OP_CV2] = k_cv2<T>;
  t[OP_CV2_BWD] = k_cv2_bwd<T>;
  t[OP_DISPATCH] = k_dispatch<T>;
  t[OP_UNDISPATCH] = k_undispatch<T>;
  t[OP_GROUPED_MATMUL] = k_grouped_matmul<T>;
  t[OP_GROUPED_MATMUL_DW] = k_grouped_matmul_dw<T>;
  t[OP_GROUPED_BIAS] = k_grouped_bias<T>;
  t[OP_GROUPED_SUM_ROWS] = k_grouped_sum_rows<T>;
  t[OP_COMBINE] = k_combine<T>;
  t[OP_COMBINE_BWD] = k_combine_bwd<T>;
  t[OP_CONCAT0] = k_concat0<T>;
  t[OP_SLICE0] = k_slice0<T>;
  t[OP_GLOBAL_IDX] = k_global_idx<T>;
  t[OP_SCATTER_POS] = k_scatter_pos<T>;
  t[OP_GATHER_POS] = k_gather_pos<T>;
  t[OP_ROW_SCALE] = k_row_scale<T>;
  t[OP_ROW_DOT] = k_row_dot<T>;
  t[OP_LOAD_SMOOTH_GROUPED] = k_load_smooth_grouped<T>;
  t[OP_LOAD_SMOOTH_GROUPED_BWD] = k_load_smooth_bwd<T>;
  t[OP_DIV_GROUP_ROWS] = k_div_group_rows<T>;
  t[OP_BATCHWISE_ROUTE] = k_batchwise_route<T>;
  t[OP_GATHER_ROWS] = k_gather_rows<T>;
  t[OP_SCATTER_ROWS] = k_scatter_rows<T>;
  t[OP_MASKED_NORM] = k_masked_norm<T>;
  t[OP_MASKED_NORM_BWD] = k_masked_norm<T>;
  t[OP_COMBINE_ROUTES] = k_combine_routes<T>;
  t[OP_COMBINE_ROUTES_BWD] = k_combine_routes_bwd<T>;
  t[OP_THRESHOLD_LOSS] = k_threshold_loss<T>;
  t[OP_THRESHOLD_LOSS_BWD] = k_threshold_loss_bwd<T>;
}

void rt_cuda_moe_register(KernelFn *f32, KernelFn *f64) {
  fill<float>(f32);
  fill<double>(f64);
}
