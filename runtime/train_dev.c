/* train_dev.c: the training loop's device side (train_dev.h): the backend a run
 * uses, the device context, input uploads, host copies of device
 * tensors, and the device optimizer's dispatch. The CUDA work is in
 * runtime/cuda/train_cuda.cu; built without CUDA, cuda is never chosen here (its
 * reason says why) and the optimizer functions are never reached. */
#include <string.h>

#include "train_dev.h"
#ifdef MOEC_HAVE_CUDA
#include "cuda/cuda.h"
#endif

const char *rt_dev_cuda_unavailable(void) {
#ifdef MOEC_HAVE_CUDA
  if (rt_backend_cuda()) return NULL;
  const char *why = rt_cuda_unavailable_reason();
  return why && *why ? why : "the CUDA device could not be opened";
#else
  return "moec was built without CUDA (configure with -DMOEC_CUDA=ON where nvcc and the CUDA "
         "toolkit are installed)";
#endif
}

const KernelFn *rt_dev_kernels(BackendKind bk, Precision p) {
  if (bk != BK_CUDA) return rt_cpu_kernels(p);
#ifdef MOEC_HAVE_CUDA
  return rt_cuda_kernel_table(p);
#else
  return NULL;
#endif
}

const Backend *rt_dev_backend(const Config *cfg) {
  /* auto: cpu for now (docs/cuda.md, "What ran on a GPU") */
  if (cfg->backend != BK_CUDA) return &rt_backend_cpu;
  const char *why = rt_dev_cuda_unavailable();
  if (why) mc_die("backend cuda: %s", why);
  return rt_backend_cuda();
}

void rt_dev_configure(const Backend *be, const DevOpts *o) {
#ifdef MOEC_HAVE_CUDA
  if (be != &rt_backend_cpu) {
    rt_cuda_set_tf32(o->tf32);
    rt_cuda_set_alloc_limit(o->alloc_limit > 0 ? (size_t)o->alloc_limit : 0);
  }
#endif
  (void)be, (void)o;
}

void *rt_dev_context(const Backend *be) {
#ifdef MOEC_HAVE_CUDA
  if (be != &rt_backend_cpu) return rt_cuda_thread_dev();
#endif
  (void)be;
  return NULL;
}

void rt_dev_upload_input(Program *p, void *dst, const void *src, size_t bytes) {
#ifdef MOEC_HAVE_CUDA
  if (!rt_dev_on_host(p)) {
    rt_cuda_upload_input(p->dev, dst, src, bytes);
    return;
  }
#endif
  p->be->upload(dst, src, bytes);
}

const void *rt_dev_host_view(Program *p, const Tensor *t, void **owned) {
  *owned = NULL;
  if (rt_dev_on_host(p)) return p->buf[t->id];
  size_t nb = (size_t)t->numel * (t->ty.dtype == DT_I32 ? sizeof(int32_t) : p->elem);
  *owned = mc_malloc(nb ? nb : 1);
  p->be->download(*owned, p->buf[t->id], nb);
  return *owned;
}

#ifdef MOEC_HAVE_CUDA
struct DevOptim {
  RtCudaOptim *cu;
};

DevOptim *rt_devopt_new(Program *p, const Optim *o, struct Comm *comm) {
  if (rt_dev_on_host(p)) return NULL;
  MOEC_ASSERT(p->prec == PREC_F32); /* training is float32 */
  DevOptim *d = mc_calloc(1, sizeof(DevOptim));
  d->cu = rt_cuda_optim_new_comm(p->dev, p, o, comm);
  return d;
}

void rt_devopt_step(DevOptim *d, Optim *o) {
  rt_cuda_optim_step(d->cu, o);
}
void rt_devopt_download(DevOptim *d, Optim *o) {
  rt_cuda_optim_download(d->cu, o);
}

void rt_devopt_free(DevOptim *d) {
  if (!d) return;
  rt_cuda_optim_free(d->cu);
  mc_free(d);
}
#else
/* Without CUDA every program is in host memory: rt_devopt_new returns NULL and the
 * loop never calls the others. */
DevOptim *rt_devopt_new(Program *p, const Optim *o, struct Comm *comm) {
  (void)o, (void)comm;
  MOEC_ASSERT(rt_dev_on_host(p));
  return NULL;
}
void rt_devopt_step(DevOptim *d, Optim *o) {
  (void)d;
  (void)o;
  mc_fatal("rt_devopt_step without CUDA");
}
void rt_devopt_download(DevOptim *d, Optim *o) {
  (void)d;
  (void)o;
  mc_fatal("rt_devopt_download without CUDA");
}
void rt_devopt_free(DevOptim *d) {
  (void)d;
}
#endif
