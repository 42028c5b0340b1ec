/* kernels_dense.cu: CUDA kernels of the dense ops of ir/ops.def, float32 and
 * float64 (template on the element type T). Semantics: the comment of each op in
 * ops.def; the CPU kernels (runtime/kernels_dense.c) are the reference that
 * tests/gpu/test_cuda_ops.c compares against. GEMMs go to cuBLAS (row-major via
 * swapped operands, rt_cuda_gemm); everything else is a moec kernel. Reductions
 * run in a fixed order (no float atomics): the same inputs give the same bits. */
#include <string.h>

#include "cuda_internal.cuh"
extern "C" {
#include "../../passes/fusion.h"
}

#define IN(i, T) ((const T *)in[i])
#define OUT(j, T) ((T *)out[j])
#define I32IN(i) ((const int32_t *)in[i])

template <typename T> static size_t elem_bytes(const Tensor *t) {
  return t->ty.dtype == DT_I32 ? sizeof(int32_t) : sizeof(T);
}

/* ---------------------------------------------------------------- elementwise */

enum { EW_ADD, EW_SUB, EW_MUL, EW_RELU_BWD, EW_TANH_BWD, EW_SIGMOID_BWD, EW_SOFTPLUS_BWD };
enum { UN_SCALE, UN_RELU, UN_TANH, UN_SIGMOID, UN_SOFTPLUS };

template <typename T> __device__ __forceinline__ T d_sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }
template <typename T> __device__ __forceinline__ T d_softplus(T x) {
  return x > T(0) ? x + log1p(exp(-x)) : log1p(exp(x));
}

/* b broadcast when bscalar (a rank-0 second operand). */
template <typename T>
__global__ void binary_kernel(int op, const T *a, const T *b, bool bscalar, T *y, int64_t n) {
  GRID_STRIDE(i, n) {
    T x = a[i], z = bscalar ? b[0] : b[i];
    T r;
    switch (op) {
    case EW_ADD: r = x + z; break;
    case EW_SUB: r = x - z; break;
    case EW_MUL: r = x * z; break;
    case EW_RELU_BWD: r = z > T(0) ? x : T(0); break;        /* (g, y) */
    case EW_TANH_BWD: r = x * (T(1) - z * z); break;          /* (g, y) */
    case EW_SIGMOID_BWD: r = x * z * (T(1) - z); break;       /* (g, y) */
    default: r = x * d_sigmoid(z); break;                     /* softplus_bwd (g, x) */
    }
    y[i] = r;
  }
}

template <typename T>
__global__ void unary_kernel(int op, const T *x, T *y, int64_t n, T s, T c) {
  GRID_STRIDE(i, n) {
    T v = x[i], r;
    switch (op) {
    case UN_SCALE: r = v * s + c; break;
    case UN_RELU: r = v > T(0) ? v : T(0); break;
    case UN_TANH: r = tanh(v); break;
    case UN_SIGMOID: r = d_sigmoid(v); break;
    default: r = d_softplus(v); break;
    }
    y[i] = r;
  }
}

template <typename T, int OPC>
static void k_binary(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  bool bscalar = n->in[1]->ty.rank == 0 && n->in[1]->numel == 1 && ne != 1;
  binary_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(OPC, IN(0, T), IN(1, T),
                                                                          bscalar, OUT(0, T), ne);
  CUDA_LAUNCH_CHECK();
}

template <typename T, int OPC>
static void k_unary(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  unary_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      OPC, IN(0, T), OUT(0, T), ne, (T)n->fa[0], (T)n->fa[1]);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- dropout */

template <typename T>
__global__ void dropout_kernel(const T *x, T *y, T *mask, int64_t n, bool training, double p,
                               uint64_t key, uint64_t c0) {
  T keep = (T)(1.0 / (1.0 - p));
  GRID_STRIDE(i, n) {
    T m = T(1);
    if (training) m = rt_d_uniform(key, c0 + (uint64_t)i) >= p ? keep : T(0);
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

template <typename T>
static void k_dropout(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  uint64_t key = mc_rng_key(ctx->seed, (uint64_t)n->ia[0], ctx->step);
  dropout_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), OUT(0, T), OUT(1, T), ne, ctx->training, n->fa[0], key,
      rt_rng_counter0(ctx, ne));
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- matmul */

template <typename T>
static void k_matmul(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const Tensor *a = n->in[0];
  bool ta = n->ia[0] != 0, tb = n->ia[1] != 0;
  int64_t N = rt_last_dim(n->out[0]);
  if (!ta) {
    /* a rows [R,K] . b [K,N] (or b [N,K]) -> [R,N] */
    int64_t K = rt_last_dim(a), R = a->numel / K;
    rt_cuda_gemm(d, false, tb, R, N, K, (T)1, IN(0, T), K, IN(1, T), tb ? K : N, (T)0, OUT(0, T), N);
  } else {
    /* a rows [R,M] transposed . b [R,N] (or b [N,R]) -> [M,N] */
    int64_t M = rt_last_dim(a), R = a->numel / M;
    rt_cuda_gemm(d, true, tb, M, N, R, (T)1, IN(0, T), M, IN(1, T), tb ? R : N, (T)0, OUT(0, T), N);
  }
}

/* ---------------------------------------------------------------- bias, sums, broadcast */

template <typename T>
__global__ void bias_add_kernel(const T *x, const T *b, T *y, int64_t n, int64_t N) {
  GRID_STRIDE(i, n) y[i] = x[i] + b[i % N];
}

template <typename T>
static void k_bias_add(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0), N = rt_last_dim(n->in[0]);
  bias_add_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(IN(0, T), IN(1, T),
                                                                           OUT(0, T), ne, N);
  CUDA_LAUNCH_CHECK();
}

/* Column sums of x[R,N] in two fixed-order stages, in double: chunk c of
 * SUMROWS_CHUNK rows gives part[c,N] (rows in order), then the chunks in order. */
#define SUMROWS_CHUNK 256
template <typename T>
__global__ void colsum_partial_kernel(const T *x, int64_t R, int64_t N, double *part) {
  int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
  if (col >= N) return;
  int64_t r0 = c * SUMROWS_CHUNK, r1 = min(R, r0 + SUMROWS_CHUNK);
  double acc = 0;
  for (int64_t r = r0; r < r1; r++) acc += (double)x[r * N + col];
  part[c * N + col] = acc;
}
template <typename T>
__global__ void colsum_final_kernel(const double *part, int64_t C, int64_t N, T *y) {
  GRID_STRIDE(col, N) {
    double acc = 0;
    for (int64_t c = 0; c < C; c++) acc += part[c * N + col];
    y[col] = (T)acc;
  }
}

template <typename T>
static void colsum(RtCudaDev *d, const T *x, int64_t R, int64_t N, T *y) {
  int64_t C = (R + SUMROWS_CHUNK - 1) / SUMROWS_CHUNK;
  if (C < 1) C = 1;
  MOEC_ASSERT(C < 65536);
  double *part = (double *)rt_cuda_scratch(d, (size_t)(C * N) * sizeof(double));
  dim3 grid((unsigned)((N + 127) / 128), (unsigned)C);
  colsum_partial_kernel<T><<<grid, 128, 0, d->stream>>>(x, R, N, part);
  CUDA_LAUNCH_CHECK();
  colsum_final_kernel<T><<<rt_cuda_blocks(N), RT_CUDA_THREADS, 0, d->stream>>>(part, C, N, y);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
static void k_sum_rows(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t N = rt_last_dim(n->in[0]), R = n->in[0]->numel / N;
  colsum<T>(d, IN(0, T), R, N, OUT(0, T));
}

/* One block of 1024 threads: fixed strides, fixed tree, accumulated in double. */
template <typename TI, typename TO>
__global__ void sum_all_kernel(const TI *x, int64_t n, TO *y, double scale) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += (double)x[i];
  acc = rt_d_block_sum<double>(acc);
  if (threadIdx.x == 0) y[0] = (TO)(acc * scale);
}

template <typename T>
static void k_sum(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  sum_all_kernel<T, T><<<1, 1024, 0, d->stream>>>(IN(0, T), n->in[0]->numel, OUT(0, T), 1.0);
  CUDA_LAUNCH_CHECK();
}

template <typename T> __global__ void fill_kernel(const T *g, T *y, int64_t n) {
  GRID_STRIDE(i, n) y[i] = g[0];
}

template <typename T>
static void k_broadcast(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  fill_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(IN(0, T), OUT(0, T), ne);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
static void k_zeros(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  CUDA_CHECK(cudaMemsetAsync(out[0], 0, (size_t)rt_numel_out(n, 0) * elem_bytes<T>(n->out[0]),
                             d->stream));
}

template <typename T>
static void k_reshape(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  if (out[0] == in[0]) return;
  CUDA_CHECK(cudaMemcpyAsync(out[0], in[0], (size_t)rt_numel_out(n, 0) * elem_bytes<T>(n->out[0]),
                             cudaMemcpyDeviceToDevice, d->stream));
}

/* ---------------------------------------------------------------- embedding */

template <typename T>
__global__ void embedding_kernel(const int32_t *ids, const T *W, T *y, int64_t n, int64_t D,
                                 int64_t V, int *err) {
  GRID_STRIDE(i, n) {
    int64_t r = i / D, c = i % D;
    int32_t id = ids[r];
    if (id < 0 || id >= V) {
      rt_d_error(err, RT_CUDA_ERR_EMBED_ID, OP_EMBEDDING, id);
      y[i] = T(0);
    } else {
      y[i] = W[(int64_t)id * D + c];
    }
  }
}

template <typename T>
static void k_embedding(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0), V = n->in[1]->shape[0], D = n->in[1]->shape[1];
  embedding_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      I32IN(0), IN(1, T), OUT(0, T), ne, D, V, d->err_dev);
  CUDA_LAUNCH_CHECK();
}

/* Out-of-range ids become key V (sorted last, never summed). */
__global__ void clamp_ids_kernel(const int32_t *ids, int32_t *keys, int64_t n, int32_t V) {
  GRID_STRIDE(i, n) {
    int32_t id = ids[i];
    keys[i] = id < 0 || id >= V ? V : id;
  }
}

template <typename T>
static void k_embedding_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  if (n->nin != 2) /* several (ids, rows) pairs: a sampled softmax's gradient, cpu only */
    mc_die("layer '%s': embedding_bwd of %d (ids, rows) pairs has no cuda kernel yet",
           n->layer ? n->layer : "?", n->nin / 2);
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t R = n->in[0]->numel, V = n->ia[0], D = rt_last_dim(n->in[1]);
  size_t tb = rt_cuda_sort_temp_bytes(R, (int32_t)V);
  size_t need = rt_carve_size(tb) + 4 * rt_carve_size((size_t)R * sizeof(int32_t));
  RtCarve cv = {(char *)rt_cuda_scratch(d, need), 0};
  void *temp = cv.take<char>((int64_t)tb);
  int32_t *keys = cv.take<int32_t>(R), *iota = cv.take<int32_t>(R), *skeys = cv.take<int32_t>(R),
          *perm = cv.take<int32_t>(R);
  clamp_ids_kernel<<<rt_cuda_blocks(R), RT_CUDA_THREADS, 0, d->stream>>>(I32IN(0), keys, R,
                                                                         (int32_t)V);
  CUDA_LAUNCH_CHECK();
  rt_cuda_sort_keys(d, keys, R, (int32_t)V, temp, iota, skeys, perm);
  /* dW[v,c] = sum of g[r,c] over the rows with ids[r] == v, in row order; ids out of
   * range (key V) are skipped: the forward embedding reported them */
  rt_d_segment_sum_rows<T><<<rt_cuda_blocks(V * D), RT_CUDA_THREADS, 0, d->stream>>>(
      skeys, perm, R, IN(1, T), OUT(0, T), V, D);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- LSTM */

/* One time step's gates, fused: pre = G_t (= xproj_t + h_prev W_hh^T from cuBLAS);
 * i,f,o = sigmoid, g = tanh (PyTorch order i,f,g,o); c = f c_prev + i g;
 * h = o tanh(c). Thread per (b,u). */
template <typename T>
__global__ void lstm_step_kernel(T *G, T *H, T *C, const T *c_prev,
                                 int64_t cprev_ld, T *hT, T *cT, int64_t B, int64_t Tn, int64_t U,
                                 int64_t t) {
  GRID_STRIDE(i, B * U) {
    int64_t b = i / U, u = i % U;
    int64_t gb = (b * Tn + t) * 4 * U, sb = (b * Tn + t) * U;
    T gi = d_sigmoid(G[gb + u]);
    T gf = d_sigmoid(G[gb + U + u]);
    T gg = tanh(G[gb + 2 * U + u]);
    T go = d_sigmoid(G[gb + 3 * U + u]);
    G[gb + u] = gi;
    G[gb + U + u] = gf;
    G[gb + 2 * U + u] = gg;
    G[gb + 3 * U + u] = go;
    T c = gf * c_prev[b * cprev_ld + u] + gi * gg;
    T h = go * tanh(c);
    C[sb + u] = c;
    H[sb + u] = h;
    if (t == Tn - 1) {
      hT[b * U + u] = h;
      cT[b * U + u] = c;
    }
  }
}

template <typename T>
static void k_lstm(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  MOEC_ASSERT(n->nin == 4); /* proj= (LSTMP) is refused at compile on cuda */
  RtCudaDev *d = rt_cuda_of(ctx);
  const T *xproj = IN(0, T), *Whh = IN(1, T), *h0 = IN(2, T), *c0 = IN(3, T);
  T *H = OUT(0, T), *C = OUT(1, T), *G = OUT(2, T), *hT = OUT(3, T), *cT = OUT(4, T);
  int64_t B = n->in[0]->shape[0], Tn = n->in[0]->shape[1], U = n->in[1]->shape[1];
  CUDA_CHECK(cudaMemcpyAsync(G, xproj, (size_t)(B * Tn * 4 * U) * sizeof(T),
                             cudaMemcpyDeviceToDevice, d->stream));
  for (int64_t t = 0; t < Tn; t++) {
    const T *hp = t == 0 ? h0 : H + (t - 1) * U;
    int64_t hld = t == 0 ? U : Tn * U;
    /* G_t[B,4U] (row stride T*4U) += h_prev[B,U] . W_hh[4U,U]^T */
    rt_cuda_gemm(d, false, true, B, 4 * U, U, (T)1, hp, hld, Whh, U, (T)1, G + t * 4 * U,
                 Tn * 4 * U);
    const T *cp = t == 0 ? c0 : C + (t - 1) * U;
    lstm_step_kernel<T><<<rt_cuda_blocks(B * U), RT_CUDA_THREADS, 0, d->stream>>>(
        G, H, C, cp, t == 0 ? U : Tn * U, hT, cT, B, Tn, U, t);
    CUDA_LAUNCH_CHECK();
  }
}

/* Backward of one step (thread per (b,u)): dh = gH_t + dh_next, dc = dc_next +
 * dh o (1 - tanh(c)^2); pre-activation gradients into dxproj_t; dc_out = dc f
 * (dc_next of step t-1, or dc0). first: t == T-1, no gradient through hT/cT. */
template <typename T>
__global__ void lstm_bwd_step_kernel(const T *gH, const T *dh_next, const T *dc_next, T *dc_out,
                                     const T *G, const T *C, const T *c_prev, int64_t cprev_ld,
                                     T *dxproj, int64_t B, int64_t Tn, int64_t U, int64_t t,
                                     bool first) {
  GRID_STRIDE(i, B * U) {
    int64_t b = i / U, u = i % U;
    int64_t gb = (b * Tn + t) * 4 * U, sb = (b * Tn + t) * U;
    T gi = G[gb + u], gf = G[gb + U + u], gg = G[gb + 2 * U + u], go = G[gb + 3 * U + u];
    T c = C[sb + u], tc = tanh(c);
    T dh = gH[sb + u] + (first ? T(0) : dh_next[i]);
    T dc = (first ? T(0) : dc_next[i]) + dh * go * (T(1) - tc * tc);
    T cp = c_prev[b * cprev_ld + u];
    dxproj[gb + u] = dc * gg * gi * (T(1) - gi);
    dxproj[gb + U + u] = dc * cp * gf * (T(1) - gf);
    dxproj[gb + 2 * U + u] = dc * gi * (T(1) - gg * gg);
    dxproj[gb + 3 * U + u] = dh * tc * go * (T(1) - go);
    dc_out[i] = dc * gf;
  }
}

/* Hprev[b,t] = h_{t-1} (h0 at t = 0): the right operand of dW_hh. */
template <typename T>
__global__ void lstm_hprev_kernel(const T *H, const T *h0, T *Hp, int64_t B, int64_t Tn, int64_t U) {
  GRID_STRIDE(i, B * Tn * U) {
    int64_t u = i % U, t = (i / U) % Tn, b = i / (U * Tn);
    Hp[i] = t == 0 ? h0[b * U + u] : H[(b * Tn + t - 1) * U + u];
  }
}

template <typename T>
static void k_lstm_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const T *gH = IN(0, T), *Whh = IN(1, T), *h0 = IN(2, T), *c0 = IN(3, T), *H = IN(4, T),
          *C = IN(5, T), *G = IN(6, T);
  T *dxp = OUT(0, T), *dW = OUT(1, T), *dh0 = OUT(2, T), *dc0 = OUT(3, T);
  int64_t B = n->in[0]->shape[0], Tn = n->in[0]->shape[1], U = n->in[1]->shape[1];
  RtCarve cv = {(char *)rt_cuda_scratch(d, 3 * rt_carve_size((size_t)(B * U) * sizeof(T)) +
                                               rt_carve_size((size_t)(B * Tn * U) * sizeof(T))),
                0};
  T *dh = cv.take<T>(B * U), *dcA = cv.take<T>(B * U), *dcB = cv.take<T>(B * U),
    *Hp = cv.take<T>(B * Tn * U);
  T *dc_in = dcA, *dc_out = dcB;
  for (int64_t t = Tn - 1; t >= 0; t--) {
    const T *cp = t == 0 ? c0 : C + (t - 1) * U;
    T *dco = t == 0 ? dc0 : dc_out;
    lstm_bwd_step_kernel<T><<<rt_cuda_blocks(B * U), RT_CUDA_THREADS, 0, d->stream>>>(
        gH, dh, dc_in, dco, G, C, cp, t == 0 ? U : Tn * U, dxp, B, Tn, U, t, t == Tn - 1);
    CUDA_LAUNCH_CHECK();
    /* dh_{t-1}[B,U] = dpre_t[B,4U] (row stride T*4U) . W_hh[4U,U] */
    rt_cuda_gemm(d, false, false, B, U, 4 * U, (T)1, dxp + t * 4 * U, Tn * 4 * U, Whh, U, (T)0,
                 t == 0 ? dh0 : dh, U);
    T *tmp = dc_in;
    dc_in = dc_out;
    dc_out = tmp;
  }
  /* dW_hh[4U,U] = sum over (b,t) of dpre[b,t]^T h_{t-1}[b,t]: one GEMM, K = B*T. */
  lstm_hprev_kernel<T><<<rt_cuda_blocks(B * Tn * U), RT_CUDA_THREADS, 0, d->stream>>>(H, h0, Hp,
                                                                                     B, Tn, U);
  CUDA_LAUNCH_CHECK();
  rt_cuda_gemm(d, true, false, 4 * U, U, B * Tn, (T)1, dxp, 4 * U, Hp, U, (T)0, dW, U);
}

/* ---------------------------------------------------------------- softmax, xent */

static int row_threads(int64_t K) { return K >= 1024 ? 512 : K >= 256 ? 256 : K >= 64 ? 64 : 32; }

template <typename T> __global__ void softmax_kernel(const T *x, T *y, int64_t K) {
  const T *xr = x + (int64_t)blockIdx.x * K;
  T *yr = y + (int64_t)blockIdx.x * K;
  T m = -INFINITY;
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) m = max(m, xr[i]);
  m = rt_d_block_max<T>(m);
  double s = 0;
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) s += (double)exp(xr[i] - m);
  s = rt_d_block_sum<double>(s);
  T inv = (T)(1.0 / s);
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) yr[i] = exp(xr[i] - m) * inv;
}

template <typename T>
static void k_softmax(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t K = rt_last_dim(n->in[0]), R = n->in[0]->numel / K;
  if (R == 0) return;
  softmax_kernel<T><<<(unsigned)R, row_threads(K), 0, d->stream>>>(IN(0, T), OUT(0, T), K);
  CUDA_LAUNCH_CHECK();
}

/* (g, y) -> y (g - sum(g y)) per row */
template <typename T> __global__ void softmax_bwd_kernel(const T *g, const T *y, T *dx, int64_t K) {
  int64_t o = (int64_t)blockIdx.x * K;
  double s = 0;
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) s += (double)g[o + i] * (double)y[o + i];
  T dot = (T)rt_d_block_sum<double>(s);
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) dx[o + i] = y[o + i] * (g[o + i] - dot);
}

template <typename T>
static void k_softmax_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t K = rt_last_dim(n->in[0]), R = n->in[0]->numel / K;
  if (R == 0) return;
  softmax_bwd_kernel<T><<<(unsigned)R, row_threads(K), 0, d->stream>>>(IN(0, T), IN(1, T),
                                                                       OUT(0, T), K);
  CUDA_LAUNCH_CHECK();
}

/* fa[0], or 1/(N * ndevices * accum) when the builder left it 0 (ops.def). */
static double xent_scale(const KernelCtx *ctx, const Node *n) {
  if (n->fa[0] != 0) return n->fa[0];
  int64_t N = n->in[n->op == OP_XENT ? 0 : 1]->shape[0];
  int nd = ctx && ctx->ndevices > 0 ? ctx->ndevices : 1;
  int acc = ctx && ctx->accum > 1 ? ctx->accum : 1;
  return 1.0 / ((double)N * (double)nd * (double)acc);
}

/* Per row: probs, and -log p[target] = logsumexp - x[target] into rowloss (0 for a row
 * whose target is the pad, with has_pad: xent_pad). */
template <typename T>
__global__ void xent_row_kernel(const T *x, const int32_t *tg, T *probs, double *rowloss,
                                int64_t V, int *err, bool has_pad, int32_t pad, int op) {
  int64_t r = blockIdx.x, o = r * V;
  T m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = max(m, x[o + i]);
  m = rt_d_block_max<T>(m);
  double s = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) s += (double)exp(x[o + i] - m);
  s = rt_d_block_sum<double>(s);
  T inv = (T)(1.0 / s);
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) probs[o + i] = exp(x[o + i] - m) * inv;
  if (threadIdx.x == 0) {
    int32_t t = tg[r];
    if (has_pad && t == pad) {
      rowloss[r] = 0;
    } else if (t < 0 || t >= V) {
      rt_d_error(err, RT_CUDA_ERR_TARGET, op, t);
      rowloss[r] = 0;
    } else {
      rowloss[r] = log(s) - ((double)x[o + t] - (double)m);
    }
  }
}

template <typename T>
static void k_xent(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t V = rt_last_dim(n->in[0]), N = n->in[0]->shape[0];
  double *rowloss = (double *)rt_cuda_scratch(d, (size_t)(N > 0 ? N : 1) * sizeof(double));
  if (N > 0) {
    xent_row_kernel<T><<<(unsigned)N, row_threads(V), 0, d->stream>>>(
        IN(0, T), I32IN(1), OUT(1, T), rowloss, V, d->err_dev, false, 0, OP_XENT);
    CUDA_LAUNCH_CHECK();
  }
  sum_all_kernel<double, T><<<1, 1024, 0, d->stream>>>(rowloss, N, OUT(0, T), xent_scale(ctx, n));
  CUDA_LAUNCH_CHECK();
}

/* dx = g * scale * (probs - onehot); xent_pad: scale = 1/max(count, 1) from the device's
 * count, rows whose target is the pad zero */
template <typename T>
__global__ void xent_bwd_kernel(const T *g, const T *probs, const int32_t *tg, T *dx, int64_t n,
                                int64_t V, double scale, const T *count, bool has_pad,
                                int32_t pad) {
  if (count) {
    double c = (double)count[0];
    scale = 1.0 / (c > 1 ? c : 1);
  }
  T gs = (T)((double)g[0] * scale);
  GRID_STRIDE(i, n) {
    int64_t r = i / V, c = i % V;
    T v = gs * probs[i]; /* the CPU's order: s*p, then s subtracted at the target */
    dx[i] = has_pad && tg[r] == pad ? T(0) : c == tg[r] ? v - gs : v;
  }
}

template <typename T>
static void k_xent_bwd(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0), V = rt_last_dim(n->in[1]);
  xent_bwd_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), I32IN(2), OUT(0, T), ne, V, xent_scale(ctx, n), (const T *)NULL, false,
      0);
  CUDA_LAUNCH_CHECK();
}

/* one block: loss = sum(rowloss) / max(count, 1) (xent_pad) */
template <typename T>
__global__ void xent_pad_sum_kernel(const double *rowloss, int64_t N, const T *count, T *y) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s += rowloss[i];
  s = rt_d_block_sum<double>(s);
  double c = (double)count[0];
  if (threadIdx.x == 0) y[0] = (T)(s / (c > 1 ? c : 1));
}

/* (logits, targets, count) -> the mean over targets that are not the pad (ia[0]), probs */
template <typename T>
static void k_xent_pad(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t V = rt_last_dim(n->in[0]), N = n->in[0]->shape[0];
  double *rowloss = (double *)rt_cuda_scratch(d, (size_t)(N > 0 ? N : 1) * sizeof(double));
  if (N > 0) {
    xent_row_kernel<T><<<(unsigned)N, row_threads(V), 0, d->stream>>>(
        IN(0, T), I32IN(1), OUT(1, T), rowloss, V, d->err_dev, true, (int32_t)n->ia[0],
        OP_XENT_PAD);
    CUDA_LAUNCH_CHECK();
  }
  xent_pad_sum_kernel<T><<<1, 1024, 0, d->stream>>>(rowloss, N, IN(2, T), OUT(0, T));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
static void k_xent_pad_bwd(const KernelCtx *ctx, const Node *n, void *const *in,
                           void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0), V = rt_last_dim(n->in[1]);
  if (ne == 0) return;
  xent_bwd_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), I32IN(2), OUT(0, T), ne, V, 1.0, IN(3, T), true, (int32_t)n->ia[0]);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- fused elementwise groups */

/* OP_FUSED (passes/fusion.h): the group's straight-line program, interpreted per
 * element in one pass over memory (inputs read once, outputs written once). The
 * program travels by value in the kernel's parameters: no copy, no sync. */
#define FUSED_MAX_IN 64
#define FUSED_MAX_OPS 64
#define FUSED_MAX_OUT 32
static_assert(2 * PASS_FUSED_MAX_CUDA <= FUSED_MAX_IN && PASS_FUSED_MAX_CUDA <= FUSED_MAX_OPS &&
                  PASS_FUSED_MAX_CUDA <= FUSED_MAX_OUT,
              "the fusion pass's cuda groups must fit the interpreter kernel");
struct FusedArgs {
  int nin, nops, nout;
  unsigned long long scalar; /* bit i: input i is a scalar (broadcast) */
  int64_t n;
  const void *in[FUSED_MAX_IN];
  void *out[FUSED_MAX_OUT];
  short outs[FUSED_MAX_OUT];
  short op[FUSED_MAX_OPS], a[FUSED_MAX_OPS], b[FUSED_MAX_OPS];
  double f0[FUSED_MAX_OPS], f1[FUSED_MAX_OPS];
};

template <typename T> __device__ __forceinline__ T fused_apply(int op, T x, T z, double f0, double f1) {
  switch (op) {
  case OP_ADD: return x + z;
  case OP_SUB: return x - z;
  case OP_MUL: return x * z;
  case OP_SCALE: return x * (T)f0 + (T)f1;
  case OP_RELU: return x > T(0) ? x : T(0);
  case OP_TANH: return tanh(x);
  case OP_SIGMOID: return d_sigmoid(x);
  case OP_SOFTPLUS: return d_softplus(x);
  case OP_RELU_BWD: return z > T(0) ? x : T(0);
  case OP_TANH_BWD: return x * (T(1) - z * z);
  case OP_SIGMOID_BWD: return x * z * (T(1) - z);
  default: return x * d_sigmoid(z); /* OP_SOFTPLUS_BWD (g, x) */
  }
}

template <typename T> __global__ void fused_kernel(const __grid_constant__ FusedArgs f) {
  T slot[FUSED_MAX_IN + FUSED_MAX_OPS];
  GRID_STRIDE(i, f.n) {
    for (int q = 0; q < f.nin; q++)
      slot[q] = ((const T *)f.in[q])[(f.scalar >> q) & 1ull ? 0 : i];
    for (int k = 0; k < f.nops; k++) {
      T x = slot[f.a[k]], z = f.b[k] >= 0 ? slot[f.b[k]] : T(0);
      slot[f.nin + k] = fused_apply<T>(f.op[k], x, z, f.f0[k], f.f1[k]);
    }
    for (int j = 0; j < f.nout; j++) ((T *)f.out[j])[i] = slot[f.outs[j]];
  }
}

/* A fused group interpreted op by op: the kernel lowering uses when NVRTC is absent or
 * turned off (--no-nvrtc), and that NVRTC's kernel falls back to (codegen/nvrtc.c);
 * the same bits either way: the same expression per op, no contraction across ops. */
template <typename T>
static void k_fused(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const FusedProg *pg = ir_fused_prog(n);
  if (!pg) mc_fatal("OP_FUSED node %d has no program", n->id);
  if (pg->nin > FUSED_MAX_IN || pg->nops > FUSED_MAX_OPS || pg->nout > FUSED_MAX_OUT ||
      pg->nin != n->nin || pg->nout != n->nout)
    mc_fatal("fused group of node %d is too large for the cuda kernel (%d inputs, %d ops, %d "
             "outputs; at most %d, %d, %d)",
             n->id, pg->nin, pg->nops, pg->nout, FUSED_MAX_IN, FUSED_MAX_OPS, FUSED_MAX_OUT);
  FusedArgs f;
  memset(&f, 0, sizeof f);
  f.nin = pg->nin;
  f.nops = pg->nops;
  f.nout = pg->nout;
  f.n = rt_numel_out(n, 0);
  for (int q = 0; q < f.nin; q++) {
    f.in[q] = in[q];
    if (n->in[q]->numel == 1 && f.n != 1) f.scalar |= 1ull << q;
  }
  for (int k = 0; k < f.nops; k++) {
    f.op[k] = (short)pg->ops[k].op;
    f.a[k] = (short)pg->ops[k].a;
    f.b[k] = (short)pg->ops[k].b;
    f.f0[k] = pg->ops[k].f0;
    f.f1[k] = pg->ops[k].f1;
  }
  for (int j = 0; j < f.nout; j++) {
    f.out[j] = out[j];
    f.outs[j] = (short)pg->outs[j];
  }
  fused_kernel<T><<<rt_cuda_blocks(f.n), RT_CUDA_THREADS, 0, d->stream>>>(f);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- table */

template <typename T> static void fill(KernelFn *t) {
  t[OP_ADD] = k_binary<T, EW_ADD>;
  t[OP_SUB] = k_binary<T, EW_SUB>;
  t[OP_MUL] = k_binary<T, EW_MUL>;
  t[OP_SCALE] = k_unary<T, UN_SCALE>;
  t[OP_RELU] = k_unary<T, UN_RELU>;
  t[OP_TANH] = k_unary<T, UN_TANH>;
  t[OP_SIGMOID] = k_unary<T, UN_SIGMOID>;
  t[OP_SOFTPLUS] = k_unary<T, UN_SOFTPLUS>;
  t[OP_RELU_BWD] = k_binary<T, EW_RELU_BWD>;
  t[OP_TANH_BWD] = k_binary<T, EW_TANH_BWD>;
  t[OP_SIGMOID_BWD] = k_binary<T, EW_SIGMOID_BWD>;
  t[OP_SOFTPLUS_BWD] = k_binary<T, EW_SOFTPLUS_BWD>;
  t[OP_DROPOUT] = k_dropout<T>;
  t[OP_MATMUL] = k_matmul<T>;
  t[OP_BIAS_ADD] = k_bias_add<T>;
  t[OP_SUM_ROWS] = k_sum_rows<T>;
  t[OP_SUM] = k_sum<T>;
  t[OP_BROADCAST] = k_broadcast<T>;
  t[OP_ZEROS] = k_zeros<T>;
  t[OP_RESHAPE] = k_reshape<T>;
  t[OP_EMBEDDING] = k_embedding<T>;
  t[OP_EMBEDDING_BWD] = k_embedding_bwd<T>;
  t[OP_LSTM] = k_lstm<T>;
  t[OP_LSTM_BWD] = k_lstm_bwd<T>;
  t[OP_SOFTMAX] = k_softmax<T>;
  t[OP_SOFTMAX_BWD] = k_softmax_bwd<T>;
  t[OP_XENT] = k_xent<T>;
  t[OP_XENT_BWD] = k_xent_bwd<T>;
  t[OP_XENT_PAD] = k_xent_pad<T>;
  t[OP_XENT_PAD_BWD] = k_xent_pad_bwd<T>;
  t[OP_FUSED] = k_fused<T>;
}

void rt_cuda_dense_register(KernelFn *f32, KernelFn *f64) {
  fill<float>(f32);
  fill<double>(f64);
}
