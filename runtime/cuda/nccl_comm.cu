/* nccl_comm.cu: NCCL communicators: init (every GPU of the process, or one rank from
 * a unique id), all-reduce, uneven all-to-all as grouped send/recv, on per-rank
 * communication streams ordered against the compute streams with events both ways
 * (nccl_comm.h); and the transport of the device Comm (runtime/comm_dev.h) over one
 * local rank. */
#include <nccl.h>
#include <string.h>

#include "cuda_internal.cuh"
#include "nccl_comm.h"
extern "C" {
#include "../comm_dev.h"
}

#define NCCL_CHECK(call)                                                                           \
  do {                                                                                             \
    ncclResult_t r_ = (call);                                                                      \
    if (r_ != ncclSuccess)                                                                         \
      mc_fatal_at(__FILE__, __LINE__, "NCCL call %s failed: %s", #call, ncclGetErrorString(r_));   \
  } while (0)

static_assert(sizeof(ncclUniqueId) == RT_NCCL_ID_BYTES, "RT_NCCL_ID_BYTES");

/* The ordered all-reduce gathers every rank's vector: at most this many bytes of
 * gathered copies at a time (longer vectors go in chunks). */
#define RT_NCCL_GATHER_BYTES ((size_t)64 << 20)

struct RtNcclLocal {
  ncclComm_t comm;
  void *gather; /* device scratch for the ordered all-reduce */
  size_t gather_bytes;
  int gpu, rank;
  cudaStream_t stream; /* communication stream */
  cudaEvent_t ready;   /* recorded on the compute stream before a collective */
  cudaEvent_t done;    /* recorded on the communication stream after it */
  RtCudaDev *dev;      /* the compute context of this GPU */
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
  RtDevScope on(gpu);
  CUDA_CHECK(cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&l->ready, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&l->done, cudaEventDisableTiming));
}

extern "C" void rt_nccl_unique_id(unsigned char id[RT_NCCL_ID_BYTES]) {
  ncclUniqueId u;
  NCCL_CHECK(ncclGetUniqueId(&u));
  memcpy(id, &u, sizeof u);
}

extern "C" RtNccl *rt_nccl_init_rank(const unsigned char id[RT_NCCL_ID_BYTES], int nranks, int rank,
                                     int gpu) {
  RtNccl *c = (RtNccl *)mc_calloc(1, sizeof(RtNccl));
  c->nlocal = 1;
  c->nranks = nranks;
  c->loc = (RtNcclLocal *)mc_calloc(1, sizeof(RtNcclLocal));
  local_setup(&c->loc[0], gpu, rank);
  ncclUniqueId u;
  memcpy(&u, id, sizeof u);
  RtDevScope on(gpu); /* NCCL binds the rank to the current GPU */
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
  int cur = 0;
  CUDA_CHECK(cudaGetDevice(&cur));
  NCCL_CHECK(ncclCommInitAll(comms, ngpus, devs)); /* the GPUs are named: none made current */
  CUDA_CHECK(cudaSetDevice(cur));
  for (int i = 0; i < ngpus; i++)
    c->loc[i].comm = comms[i];
  mc_free(comms);
  mc_free(devs);
  return c;
}

extern "C" void rt_nccl_free(RtNccl *c) {
  if (!c) return;
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    RtDevScope on(l->gpu);
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

extern "C" int rt_nccl_nlocal(const RtNccl *c) {
  return c->nlocal;
}
extern "C" int rt_nccl_nranks(const RtNccl *c) {
  return c->nranks;
}
extern "C" int rt_nccl_rank(const RtNccl *c, int local) {
  return c->loc[local].rank;
}

static ncclDataType_t nccl_type(RtNcclType t) {
  return t == RT_NCCL_F64 ? ncclDouble : t == RT_NCCL_I32 ? ncclInt32 : ncclFloat;
}
static size_t type_bytes(RtNcclType t) {
  return t == RT_NCCL_F64 ? 8 : 4;
}

/* Local rank l's communication stream waits for the compute queued so far on stream
 * compute (its GPU current). */
static void before_one(RtNcclLocal *l, cudaStream_t compute) {
  CUDA_CHECK(cudaEventRecord(l->ready, compute));
  CUDA_CHECK(cudaStreamWaitEvent(l->stream, l->ready, 0));
}
static void after_one(RtNcclLocal *l) {
  CUDA_CHECK(cudaEventRecord(l->done, l->stream));
}

static void after_compute(RtNccl *c) {
  for (int i = 0; i < c->nlocal; i++) {
    RtDevScope on(c->loc[i].gpu);
    before_one(&c->loc[i], c->loc[i].dev->stream);
  }
}

static void mark_done(RtNccl *c) {
  for (int i = 0; i < c->nlocal; i++) {
    RtDevScope on(c->loc[i].gpu);
    after_one(&c->loc[i]);
  }
}

extern "C" void rt_nccl_allreduce_sum(RtNccl *c, void *const *bufs, int64_t count, RtNcclType t) {
  after_compute(c);
  NCCL_CHECK(ncclGroupStart());
  for (int i = 0; i < c->nlocal; i++) {
    RtNcclLocal *l = &c->loc[i];
    NCCL_CHECK(
        ncclAllReduce(bufs[i], bufs[i], (size_t)count, nccl_type(t), ncclSum, l->comm, l->stream));
  }
  NCCL_CHECK(ncclGroupEnd());
  mark_done(c);
}

/* buf[i] = sum over ranks r in order of all[r*n + i] */
template <typename T>
__global__ void rank_order_sum_kernel(const T *all, T *buf, int64_t n, int R) {
  GRID_STRIDE(i, n) {
    T acc = all[i];
    for (int r = 1; r < R; r++)
      acc += all[(int64_t)r * n + i];
    buf[i] = acc;
  }
}

/* Room for `need` bytes of gathered copies on l's GPU (current). */
static void gather_room(RtNcclLocal *l, size_t need) {
  if (need <= l->gather_bytes) return;
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

/* Elements of one chunk of the ordered all-reduce over R ranks. */
static int64_t gather_chunk(int64_t count, size_t eb, int R) {
  int64_t c = (int64_t)(RT_NCCL_GATHER_BYTES / (eb * (size_t)R));
  return c < 1 ? 1 : c > count ? count : c;
}

static void rank_order_sum(RtNcclLocal *l, void *buf, int64_t n, size_t eb, int R) {
  if (eb == 4)
    rank_order_sum_kernel<float><<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, l->stream>>>(
        (const float *)l->gather, (float *)buf, n, R);
  else
    rank_order_sum_kernel<double><<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, l->stream>>>(
        (const double *)l->gather, (double *)buf, n, R);
  CUDA_LAUNCH_CHECK();
}

extern "C" void rt_nccl_allreduce_sum_ordered(RtNccl *c, void *const *bufs, int64_t count,
                                              RtNcclType t) {
  MOEC_ASSERT(t == RT_NCCL_F32 || t == RT_NCCL_F64);
  size_t eb = type_bytes(t);
  int64_t chunk = gather_chunk(count, eb, c->nranks);
  for (int i = 0; i < c->nlocal; i++) {
    RtDevScope on(c->loc[i].gpu);
    gather_room(&c->loc[i], (size_t)chunk * eb * (size_t)c->nranks);
  }
  after_compute(c);
  for (int64_t at = 0; at < count; at += chunk) {
    int64_t n = count - at < chunk ? count - at : chunk;
    NCCL_CHECK(ncclGroupStart());
    for (int i = 0; i < c->nlocal; i++) {
      RtNcclLocal *l = &c->loc[i];
      NCCL_CHECK(ncclAllGather((const char *)bufs[i] + (size_t)at * eb, l->gather, (size_t)n,
                               nccl_type(t), l->comm, l->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    for (int i = 0; i < c->nlocal; i++) {
      RtDevScope on(c->loc[i].gpu);
      rank_order_sum(&c->loc[i], (char *)bufs[i] + (size_t)at * eb, n, eb, c->nranks);
    }
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
    RtDevScope on(l->gpu);
    CUDA_CHECK(cudaStreamWaitEvent(l->dev->stream, l->done, 0));
  }
}

/* ---------------------------------------------------------------- the Comm transport */

/* One rank of a device Comm: local rank `local` of c, driven by its own thread, whose
 * compute runs on dev's stream. Every collective is queued on the communication stream
 * after the compute queued before it, and the compute queued after it waits for it
 * (events both ways), so a buffer the collective reads or writes is reused by the
 * memory plan's later kernels only once the collective is done. Asynchronous to the
 * host: the next host read of a result (a download) waits for it. */
struct NcclT {
  RtNccl *c;
  int local;
  bool owns; /* c is this rank's own (rt_nccl_init_rank): freed with it */
  RtCudaDev *dev;
};

static RtNcclLocal *t_begin(NcclT *s) {
  RtNcclLocal *l = &s->c->loc[s->local]; /* its GPU current (RtDevScope in the callers) */
  before_one(l, s->dev->stream);
  return l;
}
static void t_end(NcclT *s, RtNcclLocal *l) {
  after_one(l);
  CUDA_CHECK(cudaStreamWaitEvent(s->dev->stream, l->done, 0));
}

static void t_all_reduce(void *st, void *buf, int64_t n, size_t eb) {
  NcclT *s = (NcclT *)st;
  RtDevScope on(s->dev->gpu);
  int R = s->c->nranks;
  int64_t chunk = gather_chunk(n, eb, R);
  RtNcclLocal *l = &s->c->loc[s->local];
  gather_room(l, (size_t)chunk * eb * (size_t)R); /* before the events: it may sync */
  l = t_begin(s);
  for (int64_t at = 0; at < n; at += chunk) {
    int64_t k = n - at < chunk ? n - at : chunk;
    NCCL_CHECK(ncclAllGather((const char *)buf + (size_t)at * eb, l->gather, (size_t)k,
                             eb == 8 ? ncclDouble : ncclFloat, l->comm, l->stream));
    rank_order_sum(l, (char *)buf + (size_t)at * eb, k, eb, R);
  }
  t_end(s, l);
}

static void t_all_to_allv(void *st, const void *send, const int64_t *sc, const int64_t *sd,
                          void *recv, const int64_t *rc, const int64_t *rd) {
  NcclT *s = (NcclT *)st;
  RtDevScope on(s->dev->gpu);
  RtNcclLocal *l = t_begin(s);
  int me = l->rank, P = s->c->nranks;
  if (sc[me] != rc[me])
    mc_die("all_to_allv: rank %d sends itself %lld bytes but expects %lld", me, (long long)sc[me],
           (long long)rc[me]);
  if (sc[me] > 0)
    CUDA_CHECK(cudaMemcpyAsync((char *)recv + rd[me], (const char *)send + sd[me], (size_t)sc[me],
                               cudaMemcpyDeviceToDevice, l->stream));
  NCCL_CHECK(ncclGroupStart());
  for (int p = 0; p < P; p++) {
    if (p == me) continue;
    if (sc[p] > 0)
      NCCL_CHECK(
          ncclSend((const char *)send + sd[p], (size_t)sc[p], ncclUint8, p, l->comm, l->stream));
    if (rc[p] > 0)
      NCCL_CHECK(ncclRecv((char *)recv + rd[p], (size_t)rc[p], ncclUint8, p, l->comm, l->stream));
  }
  NCCL_CHECK(ncclGroupEnd());
  t_end(s, l);
}

static void t_all_gather(void *st, const void *send, void *recv, size_t bytes) {
  NcclT *s = (NcclT *)st;
  RtDevScope on(s->dev->gpu);
  RtNcclLocal *l = t_begin(s);
  NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclUint8, l->comm, l->stream));
  t_end(s, l);
}

static void t_broadcast(void *st, void *buf, size_t bytes, int root) {
  NcclT *s = (NcclT *)st;
  RtDevScope on(s->dev->gpu);
  RtNcclLocal *l = t_begin(s);
  NCCL_CHECK(ncclBroadcast(buf, buf, bytes, ncclUint8, root, l->comm, l->stream));
  t_end(s, l);
}

/* A sub-communicator: an id made by the subset's rank 0, sent over its host Comm, and
 * ncclCommInitRank on every rank of the subset (collective over those ranks only, as
 * comm_subset is; ncclCommSplit would need every rank of the parent). */
static void *t_subset(void *st, Comm *sub) {
  NcclT *s = (NcclT *)st;
  unsigned char id[RT_NCCL_ID_BYTES];
  if (sub->rank == 0) rt_nccl_unique_id(id);
  sub->broadcast(sub, id, sizeof id, 0);
  return rt_nccl_transport_state(rt_nccl_init_rank(id, sub->size, sub->rank, s->dev->gpu), 0,
                                 s->dev, true);
}

static void t_free(void *st) {
  NcclT *s = (NcclT *)st;
  if (s->owns) rt_nccl_free(s->c);
  mc_free(s);
}

extern "C" const CommTransport rt_nccl_transport = {
    "nccl", t_all_reduce, t_all_to_allv, t_all_gather, t_broadcast, t_subset, t_free};

extern "C" void *rt_nccl_transport_state(RtNccl *c, int local, RtCudaDev *dev, bool owns) {
  MOEC_ASSERT(c && local >= 0 && local < c->nlocal && dev && dev->gpu == c->loc[local].gpu);
  NcclT *s = (NcclT *)mc_calloc(1, sizeof(NcclT));
  s->c = c;
  s->local = local;
  s->owns = owns;
  s->dev = dev;
  return s;
}
