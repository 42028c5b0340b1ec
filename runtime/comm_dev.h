/* comm_dev.h: collectives on device buffers behind runtime/comm.h's Comm, and the
 * collective ops' kernels of a backend whose buffers are device memory.
 *
 *   comm_dev.c         : the device Comm (host buffers -> the host Comm; device buffers
 *                        -> a transport such as NCCL, or staged through host memory),
 *                        and the collective ops' kernels written once over a DevMem
 *   cuda/comm_cuda.cu  : the CUDA DevMem, the cuda table's collectives, the launcher API
 *                        of comm.h (rt_comm_nccl_*)
 *   cuda/nccl_comm.cu  : the NCCL transport
 *
 * A device Comm keeps comm.h's contract: every rank calls the same collectives in the
 * same order, all_reduce_sum is the rank-order sum (the same bits as the in-process and
 * MPI communicators), failures stop every rank. Which way a call goes depends on its
 * buffers: all of them device memory (DevMem.is_device) -> the transport; otherwise
 * (host buffers, NULL, or host and device mixed) -> the host Comm, device buffers
 * copied through host memory. Every rank must pass the same kinds of buffer (the
 * runtime does: kernels pass device tensors, the training loop host values), since
 * a rank on the transport and a rank on the host Comm would wait for each other.
 * docs/multidev.md, "Several GPUs". Prefix: rt_comm_dev_, rt_kern_comm_dev_. */
#ifndef MOEC_RUNTIME_COMM_DEV_H
#define MOEC_RUNTIME_COMM_DEV_H

#include "comm.h"
#include "runtime.h"

/* One block copy: bytes from src + src_off to dst + dst_off. */
typedef struct RtSeg {
  int64_t dst, src, bytes;
} RtSeg;

/* A backend's device memory, on the device of a context `dev` (KernelCtx.dev; NULL:
 * the calling thread's device). Every call is ordered after the work queued on that
 * device before it, and the work queued after it after it. */
typedef struct DevMem {
  const char *name;
  bool (*is_device)(const void *p);
  /* host dst <- device src, once the queued work that writes src has run (blocks) */
  void (*download)(void *dev, void *dst, const void *src, size_t bytes);
  /* device dst <- host src (queued; src may be reused when it returns) */
  void (*upload)(void *dev, void *dst, const void *src, size_t bytes);
  /* the segments from device src to device dst (queued) */
  void (*copy_segs)(void *dev, void *dst, const void *src, const RtSeg *segs, int n);
  void (*zero)(void *dev, void *dst, size_t bytes); /* queued */
  /* device memory of at least `bytes` for slot 0 or 1, valid until the next call for
   * that slot on this device (later uses are queued after earlier ones) */
  void *(*scratch)(void *dev, int slot, size_t bytes);
  /* optional: the host copy of offsets a collective kernel wrote (count int32 at
   * off_dev, by node `producer`), for the grouped GEMMs that read them next */
  void (*offsets)(void *dev, const Node *producer, const void *off_dev, const int32_t *host,
                  int64_t count);
  /* optional: download of offsets tensor t (count int32 at off_dev), from a host copy
   * its producer published when there is one (download otherwise) */
  void (*download_offsets)(void *dev, const Tensor *t, int32_t *dst, const void *off_dev,
                           int64_t count);
} DevMem;

/* How a device Comm moves device buffers between the ranks (NCCL). st is one rank's
 * state. Each call is queued on that rank's device and ordered with its compute both
 * ways (the compute queued before it first, the compute queued after it after it). */
typedef struct CommTransport {
  const char *name;
  /* buf (n elements of elem bytes, 4: float, 8: double) becomes the rank-order sum */
  void (*all_reduce_sum)(void *st, void *buf, int64_t n, size_t elem);
  void (*all_to_allv)(void *st, const void *send, const int64_t *scount, const int64_t *sdispl,
                      void *recv, const int64_t *rcount, const int64_t *rdispl);
  void (*all_gather)(void *st, const void *send, void *recv, size_t bytes);
  void (*broadcast)(void *st, void *buf, size_t bytes, int root);
  /* the state of the sub-communicator whose host Comm is sub (collective over sub's
   * ranks; sub->rank is this rank's index in it) */
  void *(*subset)(void *st, Comm *sub);
  void (*free)(void *st);
} CommTransport;

/* A device Comm of host's rank: host buffers through host, device buffers (mem, on
 * context dev) through t (state st, owned: freed with the Comm), or, t NULL, through
 * host with copies to and from host memory (several ranks on one GPU, where NCCL
 * cannot run). host stays the caller's and must outlive the Comm. Subsets
 * (comm_subset) are device Comms over host's subsets, made on first use, freed with c. */
Comm *rt_comm_dev_new(Comm *host, const DevMem *mem, void *dev, const CommTransport *t, void *st);
void rt_comm_dev_free(Comm *c);
/* The host Comm under a device Comm (c itself for any other Comm). */
Comm *rt_comm_dev_host(Comm *c);

/* The collective ops of ir/ops.def (all_reduce, all_to_all, all_to_all_back, reshard,
 * all_gather_topm) on device buffers: the same results as runtime/kernels_comm.c's
 * CPU kernels, bit for bit, with the rows moved by one all_to_allv of device buffers
 * (packed and unpacked on the device where the layouts differ) and the small host
 * work (offsets, counts, the batchwise cut) on host copies. ctx->comm must accept
 * device buffers (a device Comm). n->op is one of those five. */
void rt_kern_comm_dev(const DevMem *mem, const KernelCtx *ctx, const Node *n, void *const *in,
                      void *const *out, Precision prec);
/* Fills a kernel table's collective entries with kernels that call
 * rt_kern_comm_dev(mem, ...): f32 and f64 are the table's wrappers for the two
 * precisions, each of the form
 *   static void k_f32(const KernelCtx *c, const Node *n, void *const *i, void *const *o) {
 *     rt_kern_comm_dev(&my_mem, c, n, i, o, PREC_F32);
 *   }                                                                                */
void rt_kern_comm_dev_register(KernelFn *t32, KernelFn *t64, KernelFn f32, KernelFn f64);

#endif
