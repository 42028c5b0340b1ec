/* cuda_backend.cu: the CUDA device: contexts (a stream and a cuBLAS handle per
 * device or virtual device), device discipline (thread binding, RtDevScope), memory,
 * the pinned upload ring, the Backend rt_backend_cuda(), the kernel tables, row-major
 * GEMM wrappers, optimizer steps on device buffers.
 *
 * Memory: one cudaMalloc per program (its memory plan) or per tensor (hand-built
 * graphs), and one for expert rows that outgrow their slots (runtime/rows.c), on the
 * current GPU (a device thread's own). Out of memory returns NULL
 * (cg_lower_on then reports the plan's figures), never aborts. */
#include <mutex>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

#define RT_CUDA_MAX_GPUS 16
#define RT_CUDA_MAX_VIRT 16

static std::mutex g_lock;
static int g_ngpus = -1; /* -1: not probed yet */
static char g_reason[256];
static RtCudaDev *g_devs[RT_CUDA_MAX_GPUS][RT_CUDA_MAX_VIRT];
static bool g_tf32_default;

static int probe_locked(void) {
  if (g_ngpus >= 0) return g_ngpus;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    snprintf(g_reason, sizeof g_reason, "no CUDA device (cudaGetDeviceCount: %s)",
             cudaGetErrorString(e));
    (void)cudaGetLastError(); /* clear it: nothing else may see it */
    n = 0;
  } else if (n == 0) {
    snprintf(g_reason, sizeof g_reason, "no CUDA device (cudaGetDeviceCount returned 0)");
  } else {
    g_reason[0] = 0;
  }
  g_ngpus = n > RT_CUDA_MAX_GPUS ? RT_CUDA_MAX_GPUS : n;
  return g_ngpus;
}

extern "C" int rt_cuda_device_count(void) {
  std::lock_guard<std::mutex> lk(g_lock);
  return probe_locked();
}

extern "C" const char *rt_cuda_unavailable_reason(void) {
  std::lock_guard<std::mutex> lk(g_lock);
  probe_locked();
  return g_reason;
}

static void apply_math_mode(RtCudaDev *d) {
  CUBLAS_CHECK(cublasSetMathMode(d->blas, d->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

static RtCudaDev *dev_create(int gpu, int virt) {
  RtDevScope on(gpu);
  RtCudaDev *d = (RtCudaDev *)mc_calloc(1, sizeof(RtCudaDev));
  d->gpu = gpu;
  d->virt = virt;
  d->tf32 = g_tf32_default;
  /* A blocking stream: the Backend's copies on the legacy default stream are
   * ordered with every context's kernels. */
  CUDA_CHECK(cudaStreamCreate(&d->stream));
  CUBLAS_CHECK(cublasCreate(&d->blas));
  CUBLAS_CHECK(cublasSetStream(d->blas, d->stream));
  CUBLAS_CHECK(cublasSetPointerMode(d->blas, CUBLAS_POINTER_MODE_HOST));
  apply_math_mode(d);
  CUDA_CHECK(cudaHostAlloc((void **)&d->err_host, 4 * sizeof(int), cudaHostAllocMapped));
  memset(d->err_host, 0, 4 * sizeof(int));
  CUDA_CHECK(cudaHostGetDevicePointer((void **)&d->err_dev, d->err_host, 0));
  return d;
}

extern "C" RtCudaDev *rt_cuda_dev_virtual(int gpu, int virt) {
  std::lock_guard<std::mutex> lk(g_lock);
  int n = probe_locked();
  if (gpu < 0 || gpu >= n || virt < 0 || virt >= RT_CUDA_MAX_VIRT) return NULL;
  if (!g_devs[gpu][virt]) g_devs[gpu][virt] = dev_create(gpu, virt);
  return g_devs[gpu][virt];
}

extern "C" RtCudaDev *rt_cuda_dev(int gpu) { return rt_cuda_dev_virtual(gpu, 0); }

extern "C" void *rt_cuda_stream(RtCudaDev *d) { return (void *)d->stream; }
extern "C" int rt_cuda_gpu(RtCudaDev *d) { return d->gpu; }

/* ---------------------------------------------------------------- device discipline */

static thread_local RtCudaDev *t_bound; /* this thread's context (rt_cuda_bind_thread) */

RtCudaDev *rt_cuda_bound(void) {
  return t_bound;
}

void rt_cuda_check_gpu(int gpu, const char *what) {
  if (t_bound && t_bound->gpu != gpu)
    mc_fatal("%s on GPU %d from a device thread bound to GPU %d", what, gpu, t_bound->gpu);
}

extern "C" void rt_cuda_bind_thread(RtCudaDev *d) {
  t_bound = d;
  if (d) CUDA_CHECK(cudaSetDevice(d->gpu));
}

extern "C" RtCudaDev *rt_cuda_thread_dev(void) {
  return t_bound ? t_bound : rt_cuda_dev(0);
}

extern "C" void rt_cuda_use(RtCudaDev *d) {
  rt_cuda_check_gpu(d->gpu, "rt_cuda_use");
  CUDA_CHECK(cudaSetDevice(d->gpu));
}

extern "C" int rt_cuda_pointer_gpu(const void *p) {
  if (!p) return -1;
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError(); /* not a pointer CUDA knows: host memory */
    return -1;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}

/* The Backend's calls act on the current GPU: a bound thread's must be its own. */
static void backend_check(const char *what) {
  if (!t_bound) return;
  int cur = -1;
  CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != t_bound->gpu)
    mc_fatal("Backend.%s on GPU %d from a device thread bound to GPU %d (a call left another "
             "GPU current)",
             what, cur, t_bound->gpu);
}

extern "C" void rt_cuda_set_tf32(bool on) {
  std::lock_guard<std::mutex> lk(g_lock);
  probe_locked();
  g_tf32_default = on;
  for (int i = 0; i < RT_CUDA_MAX_GPUS; i++)
    for (int v = 0; v < RT_CUDA_MAX_VIRT; v++)
      if (g_devs[i][v]) {
        RtDevScope g(i);
        g_devs[i][v]->tf32 = on;
        apply_math_mode(g_devs[i][v]);
      }
}

/* Dies with the first user error a kernel of d flagged. */
static void check_flags(RtCudaDev *d) {
  volatile int *e = d->err_host;
  if (!e[0]) return;
  int code = e[0], op = e[1], val = e[2];
  const char *opname = op >= 0 && op < OP_COUNT ? ir_ops[op].name : "?";
  switch (code) {
  case RT_CUDA_ERR_EMBED_ID:
    mc_die("op '%s' on the cuda device: token id %d is outside the vocabulary", opname, val);
  case RT_CUDA_ERR_TARGET:
    mc_die("op '%s' on the cuda device: target id %d is outside the vocabulary", opname, val);
  case RT_CUDA_ERR_EXPERT_ID:
    mc_die("op '%s' on the cuda device: expert index %d is out of range", opname, val);
  default: mc_die("op '%s' on the cuda device: error code %d (value %d)", opname, code, val);
  }
}

extern "C" void rt_cuda_sync_dev(RtCudaDev *d) {
  RtDevScope on(d->gpu);
  CUDA_CHECK(cudaStreamSynchronize(d->stream));
  check_flags(d);
}

/* The flags of every context on the current GPU (a download or sync there). */
static void check_current_flags(void) {
  int cur = 0;
  CUDA_CHECK(cudaGetDevice(&cur));
  RtCudaDev *ds[RT_CUDA_MAX_VIRT];
  int n = 0;
  {
    std::lock_guard<std::mutex> lk(g_lock);
    for (int v = 0; cur >= 0 && cur < RT_CUDA_MAX_GPUS && v < RT_CUDA_MAX_VIRT; v++)
      if (g_devs[cur][v]) ds[n++] = g_devs[cur][v];
  }
  for (int i = 0; i < n; i++)
    check_flags(ds[i]); /* dies outside the lock */
}

/* ---------------------------------------------------------------- scratch */

void *rt_cuda_scratch(RtCudaDev *d, size_t bytes) {
  if (bytes <= d->scratch_bytes) return d->scratch;
  RtDevScope on(d->gpu);
  size_t nb = bytes < (1u << 20) ? (1u << 20) : bytes + bytes / 4;
  if (d->scratch) {
    CUDA_CHECK(cudaStreamSynchronize(d->stream));
    CUDA_CHECK(cudaFree(d->scratch));
  }
  d->scratch = NULL;
  d->scratch_bytes = 0;
  cudaError_t e = cudaMalloc(&d->scratch, nb);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    mc_die("out of memory on cuda device %d: a kernel needs %.1f MiB of scratch (%s)", d->gpu,
           (double)nb / 1048576.0, cudaGetErrorString(e));
  }
  d->scratch_bytes = nb;
  return d->scratch;
}

void *rt_cuda_stage(RtCudaDev *d, size_t bytes) {
  RtDevScope on(d->gpu);
  CUDA_CHECK(cudaStreamSynchronize(d->stream));
  if (bytes <= d->stage_bytes) return d->stage;
  size_t nb = bytes < 65536 ? 65536 : 2 * bytes;
  if (d->stage) CUDA_CHECK(cudaFreeHost(d->stage));
  CUDA_CHECK(cudaMallocHost(&d->stage, nb));
  d->stage_bytes = nb;
  return d->stage;
}

/* A ring slot whose previous copy has run: the next one in order, or a new one inserted
 * before it while the ring can grow (the order of the others is kept). */
static RtCudaRingSlot *ring_take(RtCudaDev *d) {
  if (d->ring_n == 0) d->ring_n = 1;
  int k = d->ring_next;
  RtCudaRingSlot *s = &d->ring[k];
  if (s->ev) {
    cudaError_t q = cudaEventQuery(s->ev);
    if (q == cudaErrorNotReady) {
      (void)cudaGetLastError(); /* "not ready" is not an error: clear it */
      if (d->ring_n < RT_CUDA_RING_MAX) {
        memmove(&d->ring[k + 1], &d->ring[k], (size_t)(d->ring_n - k) * sizeof(RtCudaRingSlot));
        d->ring_n++;
        s = &d->ring[k];
        memset(s, 0, sizeof *s);
      } else {
        CUDA_CHECK(cudaEventSynchronize(s->ev));
      }
    } else {
      CUDA_CHECK(q);
    }
  }
  d->ring_next = (k + 1) % d->ring_n;
  return s;
}

void rt_cuda_upload_async(RtCudaDev *d, void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  RtDevScope on(d->gpu);
  if (bytes > RT_CUDA_RING_BYTES) { /* staged by the driver before it returns */
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d->stream));
    return;
  }
  RtCudaRingSlot *s = ring_take(d);
  if (!s->ev) CUDA_CHECK(cudaEventCreateWithFlags(&s->ev, cudaEventDisableTiming));
  if (s->bytes < bytes) {
    if (s->host) CUDA_CHECK(cudaFreeHost(s->host));
    s->bytes = bytes < 16384 ? 16384 : 2 * bytes;
    CUDA_CHECK(cudaMallocHost(&s->host, s->bytes));
  }
  memcpy(s->host, src, bytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, s->host, bytes, cudaMemcpyHostToDevice, d->stream));
  CUDA_CHECK(cudaEventRecord(s->ev, d->stream));
}

extern "C" int rt_cuda_ring_slots(RtCudaDev *d) {
  return d->ring_n;
}

void *rt_cuda_ptrs(RtCudaDev *d, size_t bytes) {
  if (bytes <= d->ptrs_bytes) return d->ptrs;
  RtDevScope on(d->gpu);
  size_t nb = bytes < 65536 ? 65536 : 2 * bytes;
  if (d->ptrs) {
    CUDA_CHECK(cudaStreamSynchronize(d->stream));
    CUDA_CHECK(cudaFree(d->ptrs));
  }
  CUDA_CHECK(cudaMalloc(&d->ptrs, nb));
  d->ptrs_bytes = nb;
  return d->ptrs;
}

/* ---------------------------------------------------------------- GEMM (row-major) */

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands. */
void rt_cuda_gemm_f32(RtCudaDev *d, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                      int64_t ldc) {
  if (M == 0 || N == 0) return;
  CUBLAS_CHECK(cublasSgemm_64(d->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                              N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

void rt_cuda_gemm_f64(RtCudaDev *d, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                      double alpha, const double *A, int64_t lda, const double *B, int64_t ldb,
                      double beta, double *C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  CUBLAS_CHECK(cublasDgemm_64(d->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                              N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

/* ---------------------------------------------------------------- the Backend */

static KernelFn g_table_f32[OP_COUNT], g_table_f64[OP_COUNT];
static bool g_tables_filled;

static const KernelFn *cuda_kernels(Precision p) {
  {
    std::lock_guard<std::mutex> lk(g_lock);
    if (!g_tables_filled) {
      rt_cuda_dense_register(g_table_f32, g_table_f64);
      rt_cuda_moe_register(g_table_f32, g_table_f64);
      rt_cuda_seq_register(g_table_f32, g_table_f64);
      rt_cuda_comm_register(g_table_f32, g_table_f64);
      g_tables_filled = true;
    }
  }
  return p == PREC_F64 ? g_table_f64 : g_table_f32;
}

extern "C" const KernelFn *rt_cuda_kernel_table(Precision p) {
  return cuda_kernels(p);
}

/* Memory calls act on the current CUDA device (device 0 unless the caller set
 * another) through the legacy default stream, which orders them with every
 * context's (blocking) stream. */
/* Larger allocations fail as if the device were out of memory (--cuda-alloc-limit:
 * tests/gpu/test_cuda_train.sh checks the message and that a checkpoint on disk
 * survives). Set before the devices start. */
static size_t g_alloc_limit = (size_t)-1;

extern "C" void rt_cuda_set_alloc_limit(size_t bytes) {
  g_alloc_limit = bytes ? bytes : (size_t)-1;
}

static void *cuda_alloc(size_t bytes) {
  backend_check("alloc");
  void *p = NULL;
  size_t nb = bytes ? (bytes + 255) & ~(size_t)255 : 256;
  if (nb > g_alloc_limit) return NULL;
  cudaError_t e = cudaMalloc(&p, nb);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); /* OOM is not sticky: clear it and report */
    return NULL;
  }
  CUDA_CHECK(cudaMemset(p, 0, nb));
  return p;
}

static void cuda_release(void *p) {
  backend_check("release");
  if (p) CUDA_CHECK(cudaFree(p));
}

static void cuda_upload(void *dst, const void *src, size_t bytes) {
  backend_check("upload");
  if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

static void cuda_download(void *dst, const void *src, size_t bytes) {
  backend_check("download");
  if (bytes) CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  check_current_flags();
}

static void cuda_copy(void *dst, const void *src, size_t bytes) {
  backend_check("copy");
  if (bytes && dst != src) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
}

static void cuda_sync(void) {
  backend_check("sync");
  CUDA_CHECK(cudaDeviceSynchronize());
  check_current_flags();
}

static const Backend g_backend = {"cuda",      cuda_kernels,  cuda_alloc, cuda_release,
                                  cuda_upload, cuda_download, cuda_copy,  cuda_sync};

/* Leaves the current GPU as it is: a device thread's is its own. */
extern "C" const Backend *rt_backend_cuda(void) {
  if (rt_cuda_device_count() <= 0) return NULL;
  if (!rt_cuda_dev(0)) return NULL;
  return &g_backend;
}

/* ---------------------------------------------------------------- optimizers */

__global__ void adam_kernel(float *p, const float *g, float *m, float *v, int64_t n, RtAdamCoef c) {
  GRID_STRIDE(i, n) { rt_adam_elem(&p[i], g[i], &m[i], &v[i], c); }
}

extern "C" void rt_cuda_adam_f32(RtCudaDev *d, float *p, const float *g, float *m, float *v,
                                 int64_t n, double lr, double b1, double b2, double eps, int64_t t,
                                 double gscale) {
  if (n <= 0) return;
  RtDevScope on(d->gpu);
  double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
  adam_kernel<<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, d->stream>>>(
      p, g, m, v, n, rt_adam_coef(lr, b1, b2, eps, bc1, bc2, gscale));
  CUDA_LAUNCH_CHECK();
}

__global__ void sgd_kernel(float *p, const float *g, int64_t n, float lr) {
  GRID_STRIDE(i, n) p[i] -= lr * g[i];
}

extern "C" void rt_cuda_sgd_f32(RtCudaDev *d, float *p, const float *g, int64_t n, double lr) {
  if (n <= 0) return;
  RtDevScope on(d->gpu);
  sgd_kernel<<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, d->stream>>>(p, g, n, (float)lr);
  CUDA_LAUNCH_CHECK();
}

/* One block, fixed-order tree: deterministic. */
__global__ void sumsq_kernel(const float *x, int64_t n, double *out) {
  __shared__ double s[1024];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += (double)x[i] * (double)x[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = s[0];
}

extern "C" double rt_cuda_sumsq_f32(RtCudaDev *d, const float *x, int64_t n) {
  RtDevScope on(d->gpu);
  double *tmp = (double *)rt_cuda_scratch(d, sizeof(double));
  sumsq_kernel<<<1, 1024, 0, d->stream>>>(x, n, tmp);
  CUDA_LAUNCH_CHECK();
  double *h = (double *)rt_cuda_stage(d, sizeof(double));
  CUDA_CHECK(cudaMemcpyAsync(h, tmp, sizeof(double), cudaMemcpyDeviceToHost, d->stream));
  CUDA_CHECK(cudaStreamSynchronize(d->stream));
  return *h;
}
