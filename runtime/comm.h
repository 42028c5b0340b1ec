/* comm.h: the communicator the multi-device runtime runs on.
 *
 *   comm_inproc.c : N in-process CPU devices, one pthread each, barrier-based
 *                   collectives on a shared context (rt_inproc_run)
 *   comm_mpi.c    : one device per MPI rank (mpirun -np N moec run ...); a stub that
 *                   returns NULL with a reason when moec is built without MPI
 *   comm_util.c   : backend-independent helpers (counts exchange, displacements,
 *                   comm_check_same, the timeout setting, rt_comm_self)
 *   comm_dev.c    : a Comm for device buffers over a host Comm (comm_dev.h)
 *   cuda/comm_cuda.cu: several GPUs: the device threads' and MPI ranks' Comms through
 *                   NCCL (cuda/nccl_comm.h), declared at the end of this file
 *
 * A Comm is a small table of function pointers, like Backend in runtime.h. Every
 * rank calls the same collectives in the same order with consistent arguments.
 * Buffers are host memory (a device Comm, comm_dev.h, also takes device memory).
 *
 * Determinism: all_reduce_sum gives every rank the same bits, and the bits do not
 * depend on arrival order, the backend or how the vector is split internally:
 * element i of the result is the rank-order sum
 *     ((x_0[i] + x_1[i]) + x_2[i]) + ... + x_{n-1}[i]
 * evaluated in the element type (float or double). Both backends compute exactly
 * this (each rank owns a segment of the vector and sums it in rank order), so runs
 * on N threads and on N MPI ranks agree bit for bit, and reruns are bit-identical.
 *
 * Errors never hang and never return: a collective that fails (a peer aborted,
 * died, returned early or did not arrive within the timeout, counts that do not
 * match) prints "moec: error: rank R: ..." and stops this rank:
 *   in-process: the thread records the error in the shared context, sets the
 *               shared abort flag (so the other ranks stop at once, not after their
 *               timeout) and exits; rt_inproc_run returns the first failure.
 *   MPI:        MPI_Abort (or, from the watchdog, _exit(1), which mpirun turns into
 *               the end of the job); the exit status is non-zero.
 * The timeout is CommOpts.timeout (default 60 s), given when a communicator is made.
 * Prefix: comm_ (helpers), rt_inproc_ / rt_comm_mpi_ (backends).
 */
#ifndef MOEC_RUNTIME_COMM_H
#define MOEC_RUNTIME_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Comm Comm;

struct Comm {
  const char *name; /* "inproc", "mpi" */
  int rank, size;
  void *impl; /* backend state */

  /* In place: buf (n elements, the same n on every rank) becomes the rank-order sum
   * over all ranks (see above). */
  void (*all_reduce_sum_f32)(Comm *c, float *buf, int64_t n);
  void (*all_reduce_sum_f64)(Comm *c, double *buf, int64_t n);

  /* All-to-all with uneven counts, in bytes: this rank sends scount[p] bytes from
   * send + sdispl[p] to rank p and receives rcount[p] bytes from rank p at
   * recv + rdispl[p] (arrays of size entries; zeros allowed). rcount[p] must equal
   * rank p's scount[rank]: exchange counts first with comm_all_to_all_counts.
   * Send and receive ranges must not overlap. */
  void (*all_to_allv)(Comm *c, const void *send, const int64_t *scount, const int64_t *sdispl,
                      void *recv, const int64_t *rcount, const int64_t *rdispl);

  /* recv (size * bytes) gets every rank's `bytes` bytes of send, in rank order. For
   * small data (counts, hashes). */
  void (*all_gather)(Comm *c, const void *send, void *recv, size_t bytes);

  /* buf (bytes, the same on every rank) gets root's contents. */
  void (*broadcast)(Comm *c, void *buf, size_t bytes, int root);

  void (*barrier)(Comm *c);

  /* Stops this rank with "moec: error: rank R: <reason>" and makes every other rank
   * stop in its next (or current) collective. Never returns. */
  void (*abort)(Comm *c, const char *reason);

  /* The communicator of the ranks of c in `mask` (bit q = rank q of c; this rank must be
   * one of them), numbered in ascending order of their rank in c (so the rank-order
   * sums and the row orders stay those of c). Collective over those ranks only (ranks
   * outside never call it); made on a rank's first call for that mask and kept: later
   * calls return the same Comm, freed with c. Failures anywhere stop every rank of every
   * subset (one abort flag per launch / MPI job). Call comm_subset, not this. */
  Comm *(*subset)(Comm *c, uint64_t mask);
};

/* What the collective kernels of one device did (kernels_comm.c counts them through
 * KernelCtx.stats), by kind. payload: bytes of the rows the collective moves on this
 * device (an all_to_all: the rows dispatched from here; an all_reduce: the vector); sent:
 * bytes this device sent to other devices (an all_reduce of a float vector 2(n-1)/n of
 * it, the communicators' segment-wise sum; an i32 one (n-1) of it, all-gathered).
 * Summed over devices they are the plan's payload and expected bytes (passes/comm.c). */
typedef enum CommKind {
  CK_ALL_TO_ALL,
  CK_ALL_TO_ALL_BACK,
  CK_ALL_REDUCE,
  CK_RESHARD,
  CK_ALL_GATHER_TOPM,
  CK_ALL_GATHER_ROWS,
  CK_SPARSE_ALL_REDUCE,
  CK_TABLE_GATHER,
  CK_TABLE_SCATTER,
  CK_COUNT
} CommKind;
extern const char *const comm_kind_names[CK_COUNT]; /* "all_to_all", ... */
typedef struct CommStats {
  double seconds[CK_COUNT]; /* in collective kernels, waiting for peers included */
  double payload[CK_COUNT], sent[CK_COUNT];
  int64_t calls[CK_COUNT];
} CommStats;

/* ------------------------------------------------------------ helpers (comm_util.c) */

/* recv_counts[p] = what rank p passed as send_counts[rank]: the counts exchange
 * before an all_to_allv (one all-to-all of size int64 values). */
void comm_all_to_all_counts(Comm *c, const int64_t *send_counts, int64_t *recv_counts);

/* Variable-size gather: rank p contributes counts[p] bytes (send; counts the same array
 * on every rank), and recv gets them all in rank order (counts[0] bytes of rank 0,
 * then rank 1's...) on rank `root`, or on every rank when root < 0 (all_gatherv).
 * recv is unused (may be NULL) on other ranks. One all_to_allv, so both backends
 * have it. */
void comm_gatherv(Comm *c, const void *send, void *recv, const int64_t *counts, int root);

/* displs[p] = counts[0] + ... + counts[p-1] (n entries); returns the total. */
int64_t comm_displs(const int64_t *counts, int n, int64_t *displs);

/* All ranks compare one value (a hash of the model file, a parameter count...). 0
 * when all agree; otherwise the number of ranks that differ from rank 0, with a
 * message in msg naming `what`, every differing rank and its value. Collective. */
int comm_find_mismatch(Comm *c, const char *what, uint64_t value, char *msg, size_t msglen);
/* The same, but a mismatch stops every rank: rank 0 calls c->abort with the message,
 * the others wait in a barrier until that stops them. */
void comm_check_same(Comm *c, const char *what, uint64_t value);

/* c itself when mask names all of its ranks, else c->subset(c, mask) (device subsets:
 * place ... : on(...)). The mask of all ranks of c is comm_all_mask(c). */
Comm *comm_subset(Comm *c, uint64_t mask);
uint64_t comm_all_mask(const Comm *c);

/* FNV-1a over bytes: for comm_check_same of files and shapes. */
uint64_t comm_hash_bytes(const void *p, size_t n, uint64_t h0);

/* How a communicator behaves: given when it is made. */
typedef struct CommOpts {
  double timeout;    /* seconds a collective may wait for its peers */
  bool check;        /* MPI: before every collective the ranks compare (op, sequence) */
  int64_t mpi_chunk; /* MPI: largest message in bytes (0: 2^31-1; a test knob) */
} CommOpts;
/* timeout 60 s, no checks. */
CommOpts comm_opts_default(void);
/* The defaults overridden by the environment (read once, by the command line at
 * startup): MOEC_COMM_TIMEOUT (seconds), MOEC_COMM_CHECK=1, MOEC_COMM_MPI_CHUNK
 * (bytes). A malformed value is a user error (mc_die). */
CommOpts comm_opts_from_env(void);

/* The communicator of a single device (rank 0 of 1) with no threads and no MPI: the
 * collectives are copies, so a 1-device run takes the same code path as N devices.
 * abort prints and exits 1. One static instance; never freed. */
Comm *rt_comm_self(void);

/* Prints "moec: error: rank R: <reason>" (one write, so lines of ranks do not mix). */
void comm_print_error(int rank, const char *reason);

/* ------------------------------------------------------------ in-process (comm_inproc.c) */

#define RT_INPROC_MAX 64

/* How one rank of rt_inproc_run ended. */
typedef enum InprocStatus {
  INPROC_OK,      /* fn returned */
  INPROC_FAILED,  /* a collective failed (peer failure, timeout, mismatch) */
  INPROC_ABORTED, /* this rank called c->abort */
  INPROC_STUCK,   /* did not stop within the timeout after another rank failed */
} InprocStatus;

typedef struct InprocReport {
  int n;
  InprocStatus status[RT_INPROC_MAX];
  char message[RT_INPROC_MAX][256]; /* per rank: its error, "" when ok */
  int first_rank;                   /* the rank that failed first (the root cause), -1 if none */
  char first[256];                  /* its message */
  double seconds;                   /* wall time of the whole run */
} InprocReport;

/* Runs fn on n threads (1 <= n <= RT_INPROC_MAX), thread r with its own Comm of rank
 * r, and joins them. 0 when every rank returned normally; otherwise 1, after the
 * failing ranks printed their errors (the first failure is the root cause). After a
 * failure it waits at most the timeout for the other threads to stop; a thread
 * still running then is left detached and reported as stuck. rep may be NULL.
 * fn may call any function of the Comm; other threads' Comms are off limits. */
int rt_inproc_run_opts(int n, void (*fn)(Comm *c, void *arg), void *arg, const CommOpts *o,
                       InprocReport *rep);
/* The same with comm_opts_default(). */
int rt_inproc_run_report(int n, void (*fn)(Comm *c, void *arg), void *arg, InprocReport *rep);
int rt_inproc_run(int n, void (*fn)(Comm *c, void *arg), void *arg);

/* Quiet mode (for tests of failures): the ranks do not print their errors. */
void rt_inproc_set_quiet(bool quiet);

/* ------------------------------------------------------------ MPI (comm_mpi.c) */

/* True when this process was started by an MPI launcher (OMPI_COMM_WORLD_SIZE,
 * PMI_SIZE or PMIX_RANK in the environment), so a plain `moec run` never touches MPI. */
bool rt_comm_mpi_launched(void);

/* MPI_Init (unless already initialised; thread level FUNNELED), a duplicate of
 * MPI_COMM_WORLD with MPI_ERRORS_RETURN, and the watchdog thread. NULL with *why set
 * when moec was built without MPI or MPI cannot start. */
Comm *rt_comm_mpi_init(int *argc, char ***argv, const CommOpts *o, const char **why);
/* Frees the communicator; MPI_Finalize when rt_comm_mpi_init initialised MPI. */
void rt_comm_mpi_finalize(Comm *c);

/* ------------------------------------------------------------ several GPUs (cuda/comm_cuda.cu) */

/* What a launcher of cuda devices calls (driver/launch.c; docs/multidev.md, "Several
 * GPUs"). Each device runs in its own host thread (in-process) or process (MPI), bound
 * to its GPU, with a Comm whose collectives take device buffers (through NCCL when every
 * device has a GPU of its own, else copied through host memory and the host Comm) and
 * host buffers (through the host Comm, as before): the training loop and the collective
 * kernels run unchanged on it. A device thread's Comm must be freed (rt_comm_nccl_free)
 * before its host Comm. nccl false (--no-nccl): staged even where NCCL could run.
 *
 * In-process, N device threads:
 *   RtNcclGroup *g = rt_comm_nccl_init_all(N, nccl);  launcher thread, before the
 *                                                threads: ncclCommInitAll over GPUs
 *                                                0..N-1 (N <= GPUs), or, N > GPUs or
 *                                                !nccl, virtual devices r / G on GPU
 *                                                r % G, staged
 *   in thread r, with its host Comm c (rt_inproc_run):
 *     Comm *dc = rt_comm_nccl_attach(g, c);      binds the thread to its GPU
 *     ... compile and train on dc ...
 *     rt_comm_nccl_free(dc);
 *   rt_comm_nccl_group_free(g);                  after every thread
 * MPI (one process per device):
 *   Comm *c = rt_comm_mpi_init(...);
 *   Comm *dc = rt_comm_nccl_init_rank(c, local, nccl);  GPU = local rank % GPUs; the
 *                                                NCCL unique id of rank 0 sent over c
 *                                                (MPI_Bcast), ncclCommInitRank; ranks
 *                                                sharing a GPU: staged
 *     ... compile and train on dc ...
 *   rt_comm_nccl_free(dc); rt_comm_mpi_finalize(c);
 * Without CUDA these die with the reason (moec was built without CUDA); without a GPU
 * with "no CUDA device ...". */
typedef struct RtNcclGroup RtNcclGroup;
RtNcclGroup *rt_comm_nccl_init_all(int ndevices, bool nccl);
Comm *rt_comm_nccl_attach(RtNcclGroup *g, Comm *host);
void rt_comm_nccl_group_free(RtNcclGroup *g);
Comm *rt_comm_nccl_init_rank(Comm *host, int local_rank, bool nccl);
void rt_comm_nccl_free(Comm *c);

#endif
