/* train_dev.h: the training loop's device side, so that train.c drives a program
 * whose buffers live on a GPU the same way it drives one in host memory.
 *
 *   train_dev.c            : which backend a run uses and why cuda cannot run here,
 *                            the device context of a device, input uploads, host
 *                            copies of device tensors (checkpoints, gradients), and
 *                            the dispatch of the device optimizer (stubs without CUDA)
 *   cuda/train_cuda.cu     : the device optimizer: global-norm clipping with a
 *                            deterministic reduction, Adam and the factored optimizer
 *                            as kernels with optim.c's arithmetic (bit for bit)
 *
 * The host Optim (optim.c) stays the checkpoint's copy of the optimizer state: a
 * device optimizer is created from it after a checkpoint was loaded, and
 * rt_devopt_download refreshes it before a checkpoint is written, so checkpoints
 * have the same names and format on every backend and resume across backends.
 * docs/cuda.md ("Training on a GPU"). Prefix: rt_dev. */
#ifndef MOEC_TRAIN_DEV_H
#define MOEC_TRAIN_DEV_H

#include "train.h"

/* NULL when the cuda backend can run here; else why not: "moec was built without
 * CUDA ..." or "no CUDA device (cudaGetDeviceCount: ...)". */
const char *rt_dev_cuda_unavailable(void);

/* The kernel table of backend bk (BK_AUTO: the cpu's), with no device needed; NULL for
 * cuda in a build without CUDA. */
const KernelFn *rt_dev_kernels(BackendKind bk, Precision p);

/* The backend of a run: cfg->backend (auto: cpu for now, docs/cuda.md). Dies with
 * the reason when cuda is asked for and cannot run. */
const Backend *rt_dev_backend(const Config *cfg);

/* What the device backend takes from the command line and the plan, as data
 * (driver/options.c), set once before the devices start (rt_dev_configure). */
typedef struct DevOpts {
  bool tf32;          /* plan.tf32: float32 GEMMs on TF32 tensor cores */
  bool no_nccl;       /* --no-nccl: several GPUs' collectives staged through host memory */
  double alloc_limit; /* --cuda-alloc-limit: device allocations above it fail (tests); 0: none */
} DevOpts;
/* Applies o to backend be (nothing on the cpu). */
void rt_dev_configure(const Backend *be, const DevOpts *o);

/* The device context the kernels of the calling thread's device need on backend be
 * (Program.dev): a device thread's own GPU (the launcher bound it: comm.h's
 * rt_comm_nccl_*), else GPU 0; NULL on the cpu. */
void *rt_dev_context(const Backend *be);

/* True when p's buffers are host memory (cpu backend). */
static inline bool rt_dev_on_host(const Program *p) {
  return p->be == &rt_backend_cpu;
}

/* Host -> device copy of a step's input batch: a memcpy on cpu; on cuda an
 * asynchronous copy on the program's stream through pinned memory (src may be
 * reused at once). */
void rt_dev_upload_input(Program *p, void *dst, const void *src, size_t bytes);

/* A host copy of tensor t's buffer: the buffer itself on cpu (*owned = NULL); on
 * another device a downloaded copy that the caller frees with mc_free(*owned). */
const void *rt_dev_host_view(Program *p, const Tensor *t, void **owned);

/* The optimizer on p's device, its state uploaded from o (which must have been
 * loaded from the checkpoint already); NULL for a program in host memory. Dies,
 * naming the tensor and its bytes, when device memory runs out. comm: the run's (one
 * device of several: the global gradient norm, as rt_md_optim_step). */
typedef struct DevOptim DevOptim;
struct Comm;
DevOptim *rt_devopt_new(Program *p, const Optim *o, struct Comm *comm);
/* One update of every parameter of p from its gradient in p, as rt_optim_step does
 * on the host (global-norm clipping first); sets o->t and o->last_norm. */
void rt_devopt_step(DevOptim *d, Optim *o);
/* o's host state = the device state (before a checkpoint is written). */
void rt_devopt_download(DevOptim *d, Optim *o);
void rt_devopt_free(DevOptim *d);

#endif
