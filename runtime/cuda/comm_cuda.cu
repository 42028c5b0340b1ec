/* comm_cuda.cu: several GPUs: the CUDA DevMem (runtime/comm_dev.h: downloads,
 * uploads, a segment-copy kernel, staging buffers, offsets for the grouped GEMMs), the
 * cuda table's collective kernels (rt_kern_comm_dev over it), and comm.h's
 * rt_comm_nccl_* (what a launcher calls: the device threads' or MPI ranks' Comms,
 * NCCL when each rank has a GPU of its own, else staged through host memory). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_internal.cuh"
extern "C" {
#include "../comm_dev.h"
}
#ifdef MOEC_HAVE_NCCL
#include "nccl_comm.h"
#endif

/* ---------------------------------------------------------------- DevMem */

static RtCudaDev *dev_of(void *dev) {
  RtCudaDev *d = dev ? (RtCudaDev *)dev : rt_cuda_thread_dev();
  if (!d) mc_fatal("a collective ran on cuda but no CUDA device is available");
  return d;
}

static bool cm_is_device(const void *p) {
  return rt_cuda_pointer_gpu(p) >= 0;
}

static void cm_download(void *dev, void *dst, const void *src, size_t bytes) {
  RtCudaDev *d = dev_of(dev);
  RtDevScope on(d->gpu);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, d->stream));
  rt_cuda_sync_dev(d); /* the copy is done; a kernel's flagged user error is reported */
}

static void cm_download_offsets(void *dev, const Tensor *t, int32_t *dst, const void *off_dev,
                                int64_t count) {
  RtCudaDev *d = dev_of(dev);
  RtDevScope on(d->gpu);
  if (!rt_cuda_offsets_copy(d, t, off_dev, dst, count)) /* a dispatch published them */
    cm_download(dev, dst, off_dev, (size_t)count * sizeof(int32_t));
}

static void cm_upload(void *dev, void *dst, const void *src, size_t bytes) {
  rt_cuda_upload_async(dev_of(dev), dst, src, bytes);
}

/* One block row per segment (blockIdx.y), its units strided over blockIdx.x. */
template <typename U>
__global__ void copy_segs_kernel(char *dst, const char *src, const RtSeg *segs, int n) {
  for (int s = blockIdx.y; s < n; s += gridDim.y) {
    RtSeg g = segs[s];
    int64_t units = g.bytes / (int64_t)sizeof(U);
    U *o = (U *)(dst + g.dst);
    const U *i = (const U *)(src + g.src);
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < units;
         k += (int64_t)gridDim.x * blockDim.x)
      o[k] = i[k];
  }
}

static void cm_copy_segs(void *dev, void *dst, const void *src, const RtSeg *segs, int n) {
  if (n <= 0) return;
  RtCudaDev *d = dev_of(dev);
  RtDevScope on(d->gpu);
  size_t tb = (size_t)n * sizeof(RtSeg);
  if (tb > d->segs_bytes) { /* the list's device copy; earlier copies may still read it */
    CUDA_CHECK(cudaStreamSynchronize(d->stream));
    if (d->segs) CUDA_CHECK(cudaFree(d->segs));
    d->segs_bytes = tb < 16384 ? 16384 : 2 * tb;
    CUDA_CHECK(cudaMalloc(&d->segs, d->segs_bytes));
  }
  rt_cuda_upload_async(d, d->segs, segs, tb);
  uintptr_t align = (uintptr_t)dst | (uintptr_t)src;
  int64_t most = 0;
  for (int i = 0; i < n; i++) {
    align |= (uintptr_t)(segs[i].dst | segs[i].src | segs[i].bytes);
    most = segs[i].bytes > most ? segs[i].bytes : most;
  }
  int unit = align % 16 == 0 ? 16 : align % 4 == 0 ? 4 : 1;
  int64_t bx = (most / unit + RT_CUDA_THREADS - 1) / RT_CUDA_THREADS;
  dim3 grid((unsigned)(bx < 1 ? 1 : bx > 1024 ? 1024 : bx), (unsigned)(n < 65535 ? n : 65535));
  const RtSeg *ds = (const RtSeg *)d->segs;
  if (unit == 16)
    copy_segs_kernel<int4>
        <<<grid, RT_CUDA_THREADS, 0, d->stream>>>((char *)dst, (const char *)src, ds, n);
  else if (unit == 4)
    copy_segs_kernel<int>
        <<<grid, RT_CUDA_THREADS, 0, d->stream>>>((char *)dst, (const char *)src, ds, n);
  else
    copy_segs_kernel<char>
        <<<grid, RT_CUDA_THREADS, 0, d->stream>>>((char *)dst, (const char *)src, ds, n);
  CUDA_LAUNCH_CHECK();
}

static void cm_zero(void *dev, void *dst, size_t bytes) {
  RtCudaDev *d = dev_of(dev);
  RtDevScope on(d->gpu);
  CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, d->stream));
}

static void *cm_scratch(void *dev, int slot, size_t bytes) {
  RtCudaDev *d = dev_of(dev);
  MOEC_ASSERT(slot == 0 || slot == 1);
  if (bytes <= d->cbuf_bytes[slot] && d->cbuf[slot]) return d->cbuf[slot];
  RtDevScope on(d->gpu);
  /* the compute stream waits for every collective (events), so once it is idle nothing
   * reads the old buffer */
  CUDA_CHECK(cudaStreamSynchronize(d->stream));
  if (d->cbuf[slot]) CUDA_CHECK(cudaFree(d->cbuf[slot]));
  size_t nb = bytes < (1u << 20) ? (1u << 20) : bytes + bytes / 4;
  d->cbuf[slot] = NULL;
  d->cbuf_bytes[slot] = 0;
  if (cudaMalloc(&d->cbuf[slot], nb) != cudaSuccess) {
    (void)cudaGetLastError();
    mc_die("out of memory on cuda device %d: an all-to-all needs %.1f MiB of staging", d->gpu,
           (double)nb / 1048576.0);
  }
  d->cbuf_bytes[slot] = nb;
  return d->cbuf[slot];
}

static void cm_offsets(void *dev, const Node *producer, const void *off_dev, const int32_t *host,
                       int64_t count) {
  rt_cuda_offsets_known(dev_of(dev), producer, off_dev, host, count);
}

static const DevMem cuda_mem = {"cuda",     cm_is_device, cm_download,
                                cm_upload,  cm_copy_segs, cm_zero,
                                cm_scratch, cm_offsets,   cm_download_offsets};

/* ---------------------------------------------------------------- the kernels */

static void need_device_comm(const KernelCtx *ctx, const Node *n) {
  if (ctx->comm && rt_comm_dev_host(ctx->comm) == ctx->comm)
    mc_fatal("op '%s' (layer '%s') runs on cuda with a '%s' communicator, which takes host "
             "buffers: the launcher must give device threads rt_comm_nccl_attach's Comm",
             ir_ops[n->op].name, n->layer ? n->layer : "?", ctx->comm->name);
}

static void k_comm_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  need_device_comm(ctx, n);
  rt_kern_comm_dev(&cuda_mem, ctx, n, in, out, PREC_F32);
}
static void k_comm_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  need_device_comm(ctx, n);
  rt_kern_comm_dev(&cuda_mem, ctx, n, in, out, PREC_F64);
}

void rt_cuda_comm_register(KernelFn *f32, KernelFn *f64) {
  rt_kern_comm_dev_register(f32, f64, k_comm_f32, k_comm_f64);
}

/* ---------------------------------------------------------------- the launcher's API */

/* NCCL unless the launcher says otherwise (--no-nccl) or moec has none. */
static bool nccl_wanted(bool nccl) {
#ifdef MOEC_HAVE_NCCL
  return nccl;
#else
  (void)nccl;
  return false;
#endif
}

static int gpus_or_die(void) {
  int G = rt_cuda_device_count();
  if (G <= 0) mc_die("backend cuda on several devices: %s", rt_cuda_unavailable_reason());
  return G;
}

struct RtNcclGroup {
  int P, G;
  void *nccl; /* RtNccl of GPUs 0..P-1 (ncclCommInitAll), or NULL: staged */
};

extern "C" RtNcclGroup *rt_comm_nccl_init_all(int P, bool nccl) {
  int G = gpus_or_die();
  RtNcclGroup *g = (RtNcclGroup *)mc_calloc(1, sizeof(RtNcclGroup));
  g->P = P;
  g->G = G;
#ifdef MOEC_HAVE_NCCL
  if (P <= G && nccl_wanted(nccl)) g->nccl = rt_nccl_init_local(P);
#endif
  if (!g->nccl && P > 1)
    fprintf(stderr,
            "moec: note: %d devices on %d GPU(s)%s: collectives go through host memory (NCCL "
            "takes one device per GPU)\n",
            P, G, nccl_wanted(nccl) ? "" : " with --no-nccl or without NCCL");
  return g;
}

extern "C" Comm *rt_comm_nccl_attach(RtNcclGroup *g, Comm *host) {
  int r = host->rank;
  MOEC_ASSERT(host->size == g->P && r >= 0 && r < g->P);
  /* device r: GPU r, or with more devices than GPUs virtual device r / G on GPU r % G */
  RtCudaDev *d = g->nccl ? rt_cuda_dev(r) : rt_cuda_dev_virtual(r % g->G, r / g->G);
  if (!d) mc_die("device %d: no CUDA context for GPU %d", r, r % g->G);
  rt_cuda_bind_thread(d);
#ifdef MOEC_HAVE_NCCL
  if (g->nccl)
    return rt_comm_dev_new(host, &cuda_mem, d, &rt_nccl_transport,
                           rt_nccl_transport_state((RtNccl *)g->nccl, r, d, false));
#endif
  return rt_comm_dev_new(host, &cuda_mem, d, NULL, NULL);
}

extern "C" void rt_comm_nccl_group_free(RtNcclGroup *g) {
  if (!g) return;
#ifdef MOEC_HAVE_NCCL
  rt_nccl_free((RtNccl *)g->nccl);
#endif
  mc_free(g);
}

/* A hash of this machine's name: ranks on one machine with the same GPU share it. */
static uint64_t host_id(void) {
  char name[256] = {0};
  if (gethostname(name, sizeof name - 1)) name[0] = 0;
  return comm_hash_bytes(name, strlen(name), 0);
}

extern "C" Comm *rt_comm_nccl_init_rank(Comm *host, int local_rank, bool nccl) {
  int G = gpus_or_die();
  int gpu = (local_rank < 0 ? 0 : local_rank) % G, P = host->size;
  RtCudaDev *d = rt_cuda_dev(gpu);
  if (!d) mc_die("rank %d: no CUDA context for GPU %d", host->rank, gpu);
  rt_cuda_bind_thread(d);
  /* NCCL puts at most one rank on a GPU: where two ranks share one (every rank sees
   * every (machine, GPU), so all decide alike), the collectives are staged instead */
  uint64_t mine[2] = {host_id(), (uint64_t)gpu};
  uint64_t *all = (uint64_t *)mc_malloc((size_t)P * sizeof mine);
  host->all_gather(host, mine, all, sizeof mine);
  bool shared = false;
  for (int p = 0; p < P; p++)
    for (int q = 0; q < p; q++)
      shared |= all[2 * p] == all[2 * q] && all[2 * p + 1] == all[2 * q + 1];
  mc_free(all);
#ifdef MOEC_HAVE_NCCL
  if (!shared && nccl_wanted(nccl)) {
    unsigned char id[RT_NCCL_ID_BYTES];
    if (host->rank == 0) rt_nccl_unique_id(id);
    host->broadcast(host, id, sizeof id, 0); /* MPI_Bcast under MPI */
    RtNccl *c = rt_nccl_init_rank(id, P, host->rank, gpu);
    return rt_comm_dev_new(host, &cuda_mem, d, &rt_nccl_transport,
                           rt_nccl_transport_state(c, 0, d, true));
  }
#endif
  (void)shared;
  return rt_comm_dev_new(host, &cuda_mem, d, NULL, NULL);
}

extern "C" void rt_comm_nccl_free(Comm *c) {
  if (!c) return;
  RtCudaDev *d = rt_cuda_bound();
  if (d) rt_cuda_sync_dev(d); /* nothing queued still reads the Comm's buffers */
  rt_comm_dev_free(c);
  rt_cuda_bind_thread(NULL);
}
