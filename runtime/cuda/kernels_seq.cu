/* kernels_seq.cu: CUDA kernels of the sequence ops of ir/ops.def (pad masks, bmm,
 * attention scores and weights, columns; the padded cross-entropy shares the plain one's
 * kernels in kernels_dense.cu), float32 and float64
 * (template on the element type T). Semantics: each op's comment in ops.def; the CPU
 * kernels (runtime/kernels_seq.inc) are the reference tests/gpu/test_cuda_ops.c compares
 * against. bmm is one strided-batched cuBLAS GEMM; every sum runs in a fixed order (no
 * float atomics), so the same inputs give the same bits. */
#include "cuda_internal.cuh"

#define IN(i, T) ((const T *)in[i])
#define OUT(j, T) ((T *)out[j])
#define I32IN(i) ((const int32_t *)in[i])

static int row_threads(int64_t K) { return K >= 1024 ? 512 : K >= 256 ? 256 : K >= 64 ? 64 : 32; }

/* ---------------------------------------------------------------- masks, counts */

template <typename T>
__global__ void pad_mask_kernel(const int32_t *ids, T *m, int64_t n, int32_t pad) {
  GRID_STRIDE(i, n) m[i] = ids[i] != pad ? T(1) : T(0);
}

template <typename T>
static void k_pad_mask(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  if (ne == 0) return;
  pad_mask_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      I32IN(0), OUT(0, T), ne, (int32_t)n->ia[0]);
  CUDA_LAUNCH_CHECK();
}

/* one block: the count of ids != pad */
template <typename T>
__global__ void count_nonpad_kernel(const int32_t *ids, int64_t n, int32_t pad, T *y) {
  double c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) c += ids[i] != pad;
  c = rt_d_block_sum<double>(c);
  if (threadIdx.x == 0) y[0] = (T)c;
}

template <typename T>
static void k_count_nonpad(const KernelCtx *ctx, const Node *n, void *const *in,
                           void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  count_nonpad_kernel<T><<<1, 1024, 0, d->stream>>>(I32IN(0), rt_numel_in(n, 0),
                                                     (int32_t)n->ia[0], OUT(0, T));
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- bmm */

/* Row-major C_i = op(A_i) op(B_i) as column-major C_i^T = op(B_i)^T op(A_i)^T, one
 * strided-batched call (as rt_cuda_gemm does for one matrix). */
static void gemm_batched(RtCudaDev *d, bool ta, bool tb, int M, int N, int K, const float *A,
                         int lda, long long sa, const float *B, int ldb, long long sb, float *C,
                         int ldc, long long sc, int batch) {
  const float one = 1, zero = 0;
  CUBLAS_CHECK(cublasSgemmStridedBatched(d->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &one, B, ldb, sb,
                                         A, lda, sa, &zero, C, ldc, sc, batch));
}
static void gemm_batched(RtCudaDev *d, bool ta, bool tb, int M, int N, int K, const double *A,
                         int lda, long long sa, const double *B, int ldb, long long sb, double *C,
                         int ldc, long long sc, int batch) {
  const double one = 1, zero = 0;
  CUBLAS_CHECK(cublasDgemmStridedBatched(d->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &one, B, ldb, sb,
                                         A, lda, sa, &zero, C, ldc, sc, batch));
}

template <typename T>
static void k_bmm(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  const Tensor *A = n->in[0], *Bm = n->in[1], *Y = n->out[0];
  bool ta = n->ia[0] != 0, tb = n->ia[1] != 0;
  int64_t Bt = A->shape[0], M = Y->shape[1], N = Y->shape[2], K = ta ? A->shape[1] : A->shape[2];
  if (Bt == 0 || M == 0 || N == 0) return;
  gemm_batched(d, ta, tb, (int)M, (int)N, (int)K, IN(0, T), (int)A->shape[2],
               (long long)(A->shape[1] * A->shape[2]), IN(1, T), (int)Bm->shape[2],
               (long long)(Bm->shape[1] * Bm->shape[2]), OUT(0, T), (int)N, (long long)(M * N),
               (int)Bt);
}

/* ---------------------------------------------------------------- attention */

/* one thread per (b, t, s): s = sum_d v[d] tanh(qw[b,t,d] + mu[b,s,d]) in double, d in order */
template <typename T>
__global__ void attn_score_kernel(const T *qw, const T *mu, const T *v, T *sc, int64_t Bt,
                                  int64_t Tn, int64_t S, int64_t A) {
  GRID_STRIDE(i, Bt * Tn * S) {
    int64_t s = i % S, bt = i / S, b = bt / Tn;
    const T *q = qw + bt * A, *m = mu + (b * S + s) * A;
    double acc = 0;
    for (int64_t dd = 0; dd < A; dd++) acc += (double)(v[dd] * tanh(q[dd] + m[dd]));
    sc[i] = (T)acc;
  }
}

template <typename T>
static void k_attn_score(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t Bt = n->in[0]->shape[0], Tn = n->in[0]->shape[1], S = n->in[1]->shape[1],
          A = n->in[2]->shape[0], ne = Bt * Tn * S;
  if (ne == 0) return;
  attn_score_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), IN(2, T), OUT(0, T), Bt, Tn, S, A);
  CUDA_LAUNCH_CHECK();
}

/* dqw[b,t,d] = sum_s g[b,t,s] v[d] (1 - th^2), th = tanh(qw[b,t,d] + mu[b,s,d]) */
template <typename T>
__global__ void attn_dq_kernel(const T *g, const T *qw, const T *mu, const T *v, T *dq, int64_t Bt,
                               int64_t Tn, int64_t S, int64_t A) {
  GRID_STRIDE(i, Bt * Tn * A) {
    int64_t dd = i % A, bt = i / A, b = bt / Tn;
    double acc = 0;
    for (int64_t s = 0; s < S; s++) {
      T gs = g[bt * S + s];
      if (gs == T(0)) continue;
      T th = tanh(qw[i] + mu[(b * S + s) * A + dd]);
      acc += (double)(gs * v[dd] * (T(1) - th * th));
    }
    dq[i] = (T)acc;
  }
}

/* dmu[b,s,d] = sum_t g[b,t,s] v[d] (1 - th^2) */
template <typename T>
__global__ void attn_dm_kernel(const T *g, const T *qw, const T *mu, const T *v, T *dm, int64_t Bt,
                               int64_t Tn, int64_t S, int64_t A) {
  GRID_STRIDE(i, Bt * S * A) {
    int64_t dd = i % A, bs = i / A, b = bs / S, s = bs % S;
    double acc = 0;
    for (int64_t t = 0; t < Tn; t++) {
      T gs = g[(b * Tn + t) * S + s];
      if (gs == T(0)) continue;
      T th = tanh(qw[(b * Tn + t) * A + dd] + mu[i]);
      acc += (double)(gs * v[dd] * (T(1) - th * th));
    }
    dm[i] = (T)acc;
  }
}

/* part[b,d] = sum_{t,s} g[b,t,s] th; then dv[d] = sum_b part[b,d] in order */
template <typename T>
__global__ void attn_dv_part_kernel(const T *g, const T *qw, const T *mu, double *part, int64_t Bt,
                                    int64_t Tn, int64_t S, int64_t A) {
  GRID_STRIDE(i, Bt * A) {
    int64_t dd = i % A, b = i / A;
    double acc = 0;
    for (int64_t t = 0; t < Tn; t++)
      for (int64_t s = 0; s < S; s++) {
        T gs = g[(b * Tn + t) * S + s];
        if (gs == T(0)) continue;
        acc += (double)(gs * tanh(qw[(b * Tn + t) * A + dd] + mu[(b * S + s) * A + dd]));
      }
    part[i] = acc;
  }
}

template <typename T>
__global__ void attn_dv_sum_kernel(const double *part, int64_t Bt, int64_t A, T *dv) {
  GRID_STRIDE(dd, A) {
    double acc = 0;
    for (int64_t b = 0; b < Bt; b++) acc += part[b * A + dd];
    dv[dd] = (T)acc;
  }
}

template <typename T>
static void k_attn_score_bwd(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t Bt = n->in[1]->shape[0], Tn = n->in[1]->shape[1], S = n->in[2]->shape[1],
          A = n->in[3]->shape[0];
  const T *g = IN(0, T), *qw = IN(1, T), *mu = IN(2, T), *v = IN(3, T);
  if (Bt * Tn * A > 0) {
    attn_dq_kernel<T><<<rt_cuda_blocks(Bt * Tn * A), RT_CUDA_THREADS, 0, d->stream>>>(
        g, qw, mu, v, OUT(0, T), Bt, Tn, S, A);
    CUDA_LAUNCH_CHECK();
  }
  if (Bt * S * A > 0) {
    attn_dm_kernel<T><<<rt_cuda_blocks(Bt * S * A), RT_CUDA_THREADS, 0, d->stream>>>(
        g, qw, mu, v, OUT(1, T), Bt, Tn, S, A);
    CUDA_LAUNCH_CHECK();
  }
  double *part = (double *)rt_cuda_scratch(d, (size_t)(Bt * A > 0 ? Bt * A : 1) * sizeof(double));
  if (Bt * A > 0) {
    attn_dv_part_kernel<T><<<rt_cuda_blocks(Bt * A), RT_CUDA_THREADS, 0, d->stream>>>(
        g, qw, mu, part, Bt, Tn, S, A);
    CUDA_LAUNCH_CHECK();
  }
  attn_dv_sum_kernel<T><<<rt_cuda_blocks(A), RT_CUDA_THREADS, 0, d->stream>>>(part, Bt, A,
                                                                              OUT(2, T));
  CUDA_LAUNCH_CHECK();
}

/* one block per (b, t) row: softmax over the positions with mask != 0, 0 elsewhere */
template <typename T>
__global__ void masked_softmax_kernel(const T *x, const T *mask, T *y, int64_t Tn, int64_t S) {
  int64_t row = blockIdx.x, b = row / Tn;
  const T *xr = x + row * S, *mk = mask + b * S;
  T *yr = y + row * S;
  T m = -INFINITY;
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x)
    if (mk[i] != T(0)) m = max(m, xr[i]);
  m = rt_d_block_max<T>(m);
  double s = 0;
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x)
    if (mk[i] != T(0)) s += (double)exp(xr[i] - m);
  s = rt_d_block_sum<double>(s);
  T inv = s > 0 ? (T)(1.0 / s) : T(0);
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x)
    yr[i] = mk[i] != T(0) ? exp(xr[i] - m) * inv : T(0);
}

template <typename T>
static void k_masked_softmax(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t Bt = n->in[0]->shape[0], Tn = n->in[0]->shape[1], S = n->in[0]->shape[2];
  if (Bt * Tn == 0) return;
  masked_softmax_kernel<T><<<(unsigned)(Bt * Tn), row_threads(S), 0, d->stream>>>(
      IN(0, T), IN(1, T), OUT(0, T), Tn, S);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- columns */

template <typename T>
__global__ void col_scale_kernel(const T *x, const T *v, T *y, int64_t n, int64_t N) {
  GRID_STRIDE(i, n) y[i] = x[i] * v[i % N];
}

template <typename T>
static void k_col_scale(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0), N = n->in[1]->numel;
  if (ne == 0) return;
  col_scale_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), OUT(0, T), ne, N);
  CUDA_LAUNCH_CHECK();
}

template <typename T>
__global__ void concat_last_kernel(const T *a, const T *b, T *y, int64_t n, int64_t Na,
                                   int64_t Nb) {
  GRID_STRIDE(i, n) {
    int64_t r = i / (Na + Nb), c = i % (Na + Nb);
    y[i] = c < Na ? a[r * Na + c] : b[r * Nb + c - Na];
  }
}

template <typename T>
static void k_concat_last(const KernelCtx *ctx, const Node *n, void *const *in,
                          void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  if (ne == 0) return;
  concat_last_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), IN(1, T), OUT(0, T), ne, rt_last_dim(n->in[0]), rt_last_dim(n->in[1]));
  CUDA_LAUNCH_CHECK();
}

template <typename T>
__global__ void slice_last_kernel(const T *x, T *y, int64_t n, int64_t N, int64_t s0,
                                  int64_t len) {
  GRID_STRIDE(i, n) y[i] = x[(i / len) * N + s0 + i % len];
}

template <typename T>
static void k_slice_last(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  RtCudaDev *d = rt_cuda_of(ctx);
  int64_t ne = rt_numel_out(n, 0);
  if (ne == 0) return;
  slice_last_kernel<T><<<rt_cuda_blocks(ne), RT_CUDA_THREADS, 0, d->stream>>>(
      IN(0, T), OUT(0, T), ne, rt_last_dim(n->in[0]), n->ia[0], n->ia[1]);
  CUDA_LAUNCH_CHECK();
}

/* ---------------------------------------------------------------- table */

template <typename T> static void fill(KernelFn *t) {
  t[OP_PAD_MASK] = k_pad_mask<T>;
  t[OP_COUNT_NONPAD] = k_count_nonpad<T>;
  t[OP_BMM] = k_bmm<T>;
  t[OP_ATTN_SCORE] = k_attn_score<T>;
  t[OP_ATTN_SCORE_BWD] = k_attn_score_bwd<T>;
  t[OP_MASKED_SOFTMAX] = k_masked_softmax<T>;
  t[OP_COL_SCALE] = k_col_scale<T>;
  t[OP_CONCAT_LAST] = k_concat_last<T>;
  t[OP_SLICE_LAST] = k_slice_last<T>;
}

void rt_cuda_seq_register(KernelFn *f32, KernelFn *f64) {
  fill<float>(f32);
  fill<double>(f64);
}
