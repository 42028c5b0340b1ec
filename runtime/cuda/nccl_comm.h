/* nccl_comm.h: NCCL communicators for the CUDA backend (runtime/cuda/nccl_comm.cu).
 *
 * One RtNccl holds the ranks this process drives: every GPU of the process
 * (in-process, ncclCommInitAll), or one GPU per MPI rank (the ncclUniqueId made by
 * rank 0 and broadcast over MPI), or any bootstrap that passes the id itself.
 * Each local rank has its own communication stream, so collectives overlap the
 * compute stream of its device context (rt_cuda_dev) until rt_nccl_join:
 *
 *   compute ... | rt_nccl_allreduce_sum(...)   (waits for the compute queued so far)
 *   compute that does not need the result ...   (runs beside the collective)
 *   rt_nccl_join(c)                              (compute waits for the collective)
 *
 * Buffers are device pointers, one per local rank. In-process, a call covers every
 * local rank at once (inside one ncclGroupStart/End), so one host thread drives all
 * GPUs. Errors die with the NCCL call's text, file and line (NCCL_CHECK).
 * runtime/comm.h is the generic communicator on host buffers; these calls
 * are its device-buffer counterparts (all_reduce_sum -> rt_nccl_allreduce_sum_ordered
 * for its bit-exact contract, or rt_nccl_allreduce_sum when a ring's order will do;
 * all_to_allv -> rt_nccl_alltoallv with element counts). NCCL's own all-reduce is
 * deterministic for a fixed configuration but does not sum in rank order.
 * Prefix: rt_nccl_. */
#ifndef MOEC_RUNTIME_NCCL_COMM_H
#define MOEC_RUNTIME_NCCL_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct RtNccl RtNccl;
typedef enum RtNcclType { RT_NCCL_F32, RT_NCCL_F64, RT_NCCL_I32 } RtNcclType;

#define RT_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

/* Rank 0 of any bootstrap calls this and hands the bytes to every rank. */
void rt_nccl_unique_id(unsigned char id[RT_NCCL_ID_BYTES]);
/* One rank of nranks on GPU `gpu`, from an id made by rt_nccl_unique_id. */
RtNccl *rt_nccl_init_rank(const unsigned char id[RT_NCCL_ID_BYTES], int nranks, int rank, int gpu);
/* Every GPU 0..ngpus-1 of this process, ranks = GPU numbers (ncclCommInitAll). */
RtNccl *rt_nccl_init_local(int ngpus);
/* One GPU per MPI rank (MPI_COMM_WORLD, GPU = local rank modulo the GPU count); NULL
 * when moec was built without MPI. */
RtNccl *rt_nccl_init_mpi(void);
void rt_nccl_free(RtNccl *c);

int rt_nccl_nlocal(const RtNccl *c);        /* ranks driven by this process */
int rt_nccl_nranks(const RtNccl *c);        /* ranks in all */
int rt_nccl_rank(const RtNccl *c, int local); /* global rank of local rank i */

/* In place: bufs[i] (device, count elements) of local rank i becomes the sum over
 * all ranks. */
void rt_nccl_allreduce_sum(RtNccl *c, void *const *bufs, int64_t count, RtNcclType t);

/* The same result with runtime/comm.h's determinism contract: element i is the
 * rank-order sum ((x_0 + x_1) + x_2) + ... in the element type, the same bits as the
 * in-process and MPI communicators. An ncclAllGather of every rank's vector, then a
 * kernel summing the N copies in rank order: N times the traffic of a ring
 * all-reduce, for bit-identical losses on 1 and N devices. float32 or float64. */
void rt_nccl_allreduce_sum_ordered(RtNccl *c, void *const *bufs, int64_t count, RtNcclType t);

/* All-to-all with uneven counts, local rank i: sends send[i] + sdispl[i][p] (counts
 * scount[i][p] elements) to rank p and receives rcount[i][p] elements from rank p at
 * recv[i] + rdispl[i][p]; grouped ncclSend/ncclRecv. Arrays are indexed by local rank,
 * then by global peer rank (nranks entries each). */
void rt_nccl_alltoallv(RtNccl *c, const void *const *send, const int64_t *const *scount,
                       const int64_t *const *sdispl, void *const *recv,
                       const int64_t *const *rcount, const int64_t *const *rdispl, RtNcclType t);

/* The compute streams (rt_cuda_dev(gpu)) wait for every collective queued so far. */
void rt_nccl_join(RtNccl *c);

#ifdef __cplusplus
}
#endif
#endif
