/* cuda.h: the CUDA backend's C interface (runtime/cuda/). Host code (C11) and the
 * .cu files include it. The Backend itself is rt_backend_cuda() in runtime.h.
 *
 *   cuda_backend.cu : devices, streams, cuBLAS handles, memory, the Backend,
 *                     the kernel tables, optimizer steps on device buffers
 *   kernels_dense.cu: the dense ops of ir/ops.def (cuBLAS GEMMs, LSTM, softmax, xent...)
 *   kernels_moe.cu  : the MoE ops (noise, top-k, load, dispatch, grouped GEMMs, combine...)
 *   comm_cuda.cu    : the collective ops' kernels on device buffers, the device Comm
 *                     (runtime/comm.h's rt_comm_nccl_*: NCCL, or staged)
 *   nccl_comm.cu    : NCCL communicators (nccl_comm.h)
 *
 * A kernel's KernelCtx.dev is a RtCudaDev* (rt_cuda_dev(i)); NULL means the calling
 * thread's context (rt_cuda_bind_thread), else device 0.
 * Every kernel is asynchronous on that device's stream; Backend.sync / download
 * wait for it. Prefix: rt_cuda_. */
#ifndef MOEC_RUNTIME_CUDA_H
#define MOEC_RUNTIME_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct RtCudaDev RtCudaDev; /* defined in cuda_internal.cuh */

/* Number of usable GPUs (0 when none or the driver fails; never prints). */
int rt_cuda_device_count(void);
/* Why rt_backend_cuda() returned NULL, e.g. "no CUDA device (cudaGetDeviceCount:
 * no CUDA-capable device is detected)"; "" when it did not. */
const char *rt_cuda_unavailable_reason(void);
/* The context of GPU i (created on first use: stream, cuBLAS handle, scratch):
 * what KernelCtx.dev must hold for kernels running on GPU i. NULL if i is not a GPU. */
RtCudaDev *rt_cuda_dev(int i);
/* Several virtual devices on one GPU: context v (v >= 1 gets its own stream and
 * cuBLAS handle) on GPU i. */
RtCudaDev *rt_cuda_dev_virtual(int i, int v);
/* Makes d's GPU the current one: Backend.alloc (and copies on the legacy stream)
 * act on the current GPU. Dies on a thread bound to another GPU. */
void rt_cuda_use(RtCudaDev *d);
/* Several GPUs in one process: binds the calling thread to context d (its GPU made
 * current). From then on the kernels of a KernelCtx without .dev run on d, and the
 * Backend's calls and every kernel check that the thread is still on d's GPU (fatal
 * otherwise); calls naming another context or GPU (NCCL set-up, rt_cuda_set_tf32, ...)
 * make it current only for their duration. NULL unbinds. */
void rt_cuda_bind_thread(RtCudaDev *d);
/* The calling thread's context: the bound one, else GPU 0's. */
RtCudaDev *rt_cuda_thread_dev(void);
/* The GPU whose memory p is (cudaMalloc'd or managed), or -1 (host memory, NULL). */
int rt_cuda_pointer_gpu(const void *p);
/* Slots the pinned upload ring of d has grown to (tests). */
int rt_cuda_ring_slots(RtCudaDev *d);
/* Device d's stream (a cudaStream_t), for event timing (bench/) and launches of
 * kernels compiled elsewhere (codegen/nvrtc.c), and its GPU number. */
void *rt_cuda_stream(RtCudaDev *d);
int rt_cuda_gpu(RtCudaDev *d);
/* TF32 tensor-core math for float32 GEMMs, on every context and those made later: off
 * by default (results then match the CPU to float32 rounding); plan.tf32 turns it on. */
void rt_cuda_set_tf32(bool on);
/* Every device allocation larger than `bytes` fails as out of memory (0: no limit):
 * the --cuda-alloc-limit test hook. */
void rt_cuda_set_alloc_limit(size_t bytes);
/* Blocks until every queued kernel of device d has finished; then dies with a clear
 * message if a kernel flagged a user error (a token id outside the vocabulary...). */
void rt_cuda_sync_dev(RtCudaDev *d);

/* Optimizer steps on device float32 buffers of n elements, on device d's stream.
 * Adam at step t >= 1, the same arithmetic as runtime/optim.c (in float32, the
 * gradient first multiplied by gscale: 1, or the clipping factor):
 *   m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) */
void rt_cuda_adam_f32(RtCudaDev *d, float *p, const float *g, float *m, float *v, int64_t n,
                      double lr, double b1, double b2, double eps, int64_t t, double gscale);
void rt_cuda_sgd_f32(RtCudaDev *d, float *p, const float *g, int64_t n, double lr);
/* sum of squares of a device buffer (for gradient clipping), deterministic; blocks. */
double rt_cuda_sumsq_f32(RtCudaDev *d, const float *x, int64_t n);

/* Training on a GPU (train_cuda.cu; runtime/train_dev.h is the loop's interface).
 * The optimizer of program p (every parameter of p->g, its gradient in p or zeros)
 * with its state on device d, uploaded from o's host state: Adam or the factored
 * optimizer, global-norm clipping with a fixed-order reduction, the arithmetic of
 * optim.c (no FMA contraction: the same bits as the host). Dies naming the tensor
 * and its bytes when device memory runs out. */
struct Program;
struct Optim;
typedef struct RtCudaOptim RtCudaOptim;
RtCudaOptim *rt_cuda_optim_new(RtCudaDev *d, struct Program *p, const struct Optim *o);
/* The same as one device of comm (comm->size > 1; NULL or 1: the above): the global
 * gradient norm is rt_md_optim_step's (replicated gradients counted once, this device's
 * experts and subset-owned parameters summed over the devices through comm), and
 * parameters trained on(...) devices without this one are not updated here. The
 * factored optimizer's whole [E, H] expert entries are refused (mc_die). */
struct Comm;
RtCudaOptim *rt_cuda_optim_new_comm(RtCudaDev *d, struct Program *p, const struct Optim *o,
                                    struct Comm *comm);
/* One update; sets o->t, o->last_norm (dies when the norm is not finite). */
void rt_cuda_optim_step(RtCudaOptim *c, struct Optim *o);
/* Copies the device state into o's host arrays (for a checkpoint). */
void rt_cuda_optim_download(RtCudaOptim *c, struct Optim *o);
void rt_cuda_optim_free(RtCudaOptim *c);
/* Host -> device copy on d's stream through pinned memory; src may be reused at once. */
void rt_cuda_upload_input(RtCudaDev *d, void *dst, const void *src, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
