/* nccl_comm.cu: NCCL communicators: init (in-process, MPI, or a given id),
 * all-reduce, uneven all-to-all as grouped send/recv, on per-rank communication
 * streams ordered against the compute streams with events (nccl_comm.h). */
#include <nccl.h>
#include <string.h>
#ifdef MOEC_HAVE_MPI
#define OMPI_SKIP_MPICXX 1 /* the C API only: no MPI C++ bindings */
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

#include "cuda_internal.cuh"
#include "nccl_comm.h"

#define NCCL_CHECK(call)                                                                  \
  do {                                                                                    \
    ncclResult_t r_ = (call);                                                             \
    if (r_ != ncclSuccess)                                                                \
      mc_fatal_at(__FILE__, __LINE__, "NCCL call %s failed: %s", #call,                   \
                  ncclGetErrorString(r_));                                                \
  } while (0)

static_assert(sizeof(ncclUniqueId) == RT_NCCL_ID_BYTES, "RT_NCCL_ID_BYTES");

struct RtNcclLocal {
  ncclComm_t comm;
  void *gather;          /* device scratch for the ordered all-reduce */
  size_t gather_bytes;
  int gpu, rank;
  cudaStream_t stream;   /* communication stream */
  cudaEvent_t ready;     /* recorded on the compute stream before a collective */
  cudaEvent_t done;      /* recorded on the communication stream after it */
  RtCudaDev *dev;        /* the compute context of this GPU */
};

struct RtNccl {
  int nlocal, nranks;
  RtNcclLocal *loc;
};

static void local_setup(RtNcclLocal *l, int gpu, int rank) {
  l->gpu = gpu;
  l->rank = rank;
  l->dev = rt_cuda_dev(gpu);
  if (!l->dev) mc_die("NCCL: GPU %d is not available", gpu);
  CUDA_CHECK(cudaSetDevice(gpu));
  CUDA_CHECK(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&l->ready, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&l->done, cudaEventDisableTiming));
}

extern "C" void rt_nccl_unique_id(unsigned char id[RT_NCCL_ID_BYTES]) {
  ncclUniqueId u;
  NCCL_CHECK(ncclGetUniqueId(&u));
  memcpy(id, &u, sizeof u);
}

extern "C" RtNccl *rt_nccl_init_rank(const unsigned char id[RT_NCCL_ID_BYTES], int nranks,
                                     int rank, int gpu) {
  RtNccl *c = (RtNccl *)mc_calloc(1, sizeof(RtNccl));
  c->nlocal = 1;
  c->nranks = nranks;
  c->loc = (RtNcclLocal *)mc_calloc(1, sizeof(RtNcclLocal));
  local_setup(&c->loc[0], gpu, rank);
  ncclUniqueId u;
  memcpy(&u, id, sizeof u);
  CUDA_CHECK(cudaSetDevice(gpu));
  NCCL_CHECK(ncclCommInitRank(&c->loc[0].comm, nranks, u, rank));
  return c;
}

extern "C" RtNccl *rt_nccl_init_local(int ngpus) {
  MOEC_ASSERT(ngpus >= 1 && ngpus <= rt_cuda_device_count());
  RtNccl *c = (RtNccl *)mc_calloc(1, sizeof(RtNccl));
  c->nlocal = c->nranks = ngpus;
  c->loc = (RtNcclLocal *)mc_calloc((size_t)ngpus, sizeof(RtNcclLocal));
  ncclComm_t *comms = (ncclComm_t *)mc_calloc((size_t)ngpus, sizeof(ncclComm_t));
  int *devs = (int *)mc_calloc((size_t)ngpus, sizeof(int));
  for (int i = 0; i < ngpus; i++) {
    devs[i] = i;
    local_setup(&c->loc[i], i, i);
  }
  NCCL_CHECK(ncclCommInitAll(comms, ngpus, devs));
  for (int i = 0; i < ngpus; i++) c->loc[i].comm = comms[i];
  mc_free(comms);
  mc_free(devs);
  return c;
}

extern "C" RtNccl *rt_nccl_init_mpi(void) {
#ifdef MOEC_HAVE_MPI
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  /* GPU: this rank's index among the ranks of its node */
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int local = 0;
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  int ngpu = rt_cuda_device_count();
  if (ngpu <= 0) mc_die("NCCL over MPI: rank %d sees no CUDA device", rank);
  unsigned char id[RT_NCCL_ID_BYTES];
  if (rank == 0) rt_nccl_unique_id(id);
  if (MPI_Bcast(id, RT_NCCL_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
    mc_die("NCCL over MPI: MPI_Bcast of the NCCL unique id failed");
  return rt_nccl_init_rank(id, size, rank, local % ngpu);
#else
  return NULL;
#endif
}

extern "C" void rt_nccl_free(RtNccl *c) {
  if (!c) return;
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    CUDA_CHECK(cudaSetDevice(l->gpu));
    CUDA_CHECK(cudaStreamSynchronize(l->stream));
    NCCL_CHECK(ncclCommDestroy(l->comm));
    CUDA_CHECK(cudaEventDestroy(l->ready));
    CUDA_CHECK(cudaEventDestroy(l->done));
    CUDA_CHECK(cudaStreamDestroy(l->stream));
    if (l->gather) CUDA_CHECK(cudaFree(l->gather));
  }
  mc_free(c->loc);
  mc_free(c);
}

extern "C" int rt_nccl_nlocal(const RtNccl *c) { return c->nlocal; }
extern "C" int rt_nccl_nranks(const RtNccl *c) { return c->nranks; }
extern "C" int rt_nccl_rank(const RtNccl *c, int local) { return c->loc[local].rank; }

static ncclDataType_t nccl_type(RtNcclType t) {
  return t == RT_NCCL_F64 ? ncclDouble : t == RT_NCCL_I32 ? ncclInt32 : ncclFloat;
}
static size_t type_bytes(RtNcclType t) { return t == RT_NCCL_F64 ? 8 : 4; }

/* The communication streams wait for the compute queued so far. */
static void after_compute(RtNccl *c) {
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    CUDA_CHECK(cudaSetDevice(l->gpu));
    CUDA_CHECK(cudaEventRecord(l->ready, l->dev->stream));
    CUDA_CHECK(cudaStreamWaitEvent(l->stream, l->ready, 0));
  }
}

static void mark_done(RtNccl *c) {
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    CUDA_CHECK(cudaSetDevice(l->gpu));
    CUDA_CHECK(cudaEventRecord(l->done, l->stream));
  }
}

extern "C" void rt_nccl_allreduce_sum(RtNccl *c, void *const *bufs, int64_t count, RtNcclType t) {
  after_compute(c);
  NCCL_CHECK(ncclGroupStart());
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    NCCL_CHECK(ncclAllReduce(bufs[i], bufs[i], (size_t)count, nccl_type(t), ncclSum, l->comm,
                             l->stream));
  }
  NCCL_CHECK(ncclGroupEnd());
  mark_done(c);
}

/* buf[i] = sum over ranks r in order of all[r*n + i] */
template <typename T> __global__ void rank_order_sum_kernel(const T *all, T *buf, int64_t n, int R) {
  GRID_STRIDE(i, n) {
    T acc = all[i];
    for (int r = 1; r < R; r++) acc += all[(int64_t)r * n + i];
    buf[i] = acc;
  }
}

extern "C" void rt_nccl_allreduce_sum_ordered(RtNccl *c, void *const *bufs, int64_t count,
                                              RtNcclType t) {
  MOEC_ASSERT(t == RT_NCCL_F32 || t == RT_NCCL_F64);
  size_t eb = type_bytes(t), need = (size_t)count * eb * (size_t)c->nranks;
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    if (need <= l->gather_bytes) continue;
    CUDA_CHECK(cudaSetDevice(l->gpu));
    CUDA_CHECK(cudaStreamSynchronize(l->stream));
    if (l->gather) CUDA_CHECK(cudaFree(l->gather));
    l->gather = NULL;
    l->gather_bytes = 0;
    if (cudaMalloc(&l->gather, need) != cudaSuccess) {
      (void)cudaGetLastError();
      mc_die("out of memory on GPU %d: the ordered all-reduce needs %.1f MiB", l->gpu,
             (double)need / 1048576.0);
    }
    l->gather_bytes = need;
  }
  after_compute(c);
  NCCL_CHECK(ncclGroupStart());
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    NCCL_CHECK(ncclAllGather(bufs[i], l->gather, (size_t)count, nccl_type(t), l->comm, l->stream));
  }
  NCCL_CHECK(ncclGroupEnd());
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    CUDA_CHECK(cudaSetDevice(l->gpu));
    if (t == RT_NCCL_F32)
      rank_order_sum_kernel<float><<<rt_cuda_blocks(count), RT_CUDA_THREADS, 0, l->stream>>>(
          (const float *)l->gather, (float *)bufs[i], count, c->nranks);
    else
      rank_order_sum_kernel<double><<<rt_cuda_blocks(count), RT_CUDA_THREADS, 0, l->stream>>>(
          (const double *)l->gather, (double *)bufs[i], count, c->nranks);
    CUDA_LAUNCH_CHECK();
  }
  mark_done(c);
}

extern "C" void rt_nccl_alltoallv(RtNccl *c, const void *const *send, const int64_t *const *scount,
                                  const int64_t *const *sdispl, void *const *recv,
                                  const int64_t *const *rcount, const int64_t *const *rdispl,
                                  RtNcclType t) {
  after_compute(c);
  size_t eb = type_bytes(t);
  NCCL_CHECK(ncclGroupStart());
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    for (int p = 0; p < c->nranks; p++) {
      if (scount[i][p] > 0)
        NCCL_CHECK(ncclSend((const char *)send[i] + (size_t)sdispl[i][p] * eb, (size_t)scount[i][p],
                            nccl_type(t), p, l->comm, l->stream));
      if (rcount[i][p] > 0)
        NCCL_CHECK(ncclRecv((char *)recv[i] + (size_t)rdispl[i][p] * eb, (size_t)rcount[i][p],
                            nccl_type(t), p, l->comm, l->stream));
    }
  }
  NCCL_CHECK(ncclGroupEnd());
  mark_done(c);
}

extern "C" void rt_nccl_join(RtNccl *c) {
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    CUDA_CHECK(cudaSetDevice(l->gpu));
    CUDA_CHECK(cudaStreamWaitEvent(l->dev->stream, l->done, 0));
  }
}
