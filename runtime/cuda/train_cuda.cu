/* train_cuda.cu: training on a GPU: the optimizer on device buffers (cuda.h,
 * "Training on a GPU"; the loop's interface is runtime/train_dev.h).
 *
 * Arithmetic is runtime/optim.c's, element by element and in the same order, so
 * the device update equals the host's bit for bit on the same inputs: this file
 * is compiled with -fmad=false (no multiply-add contraction; the host build has no
 * FMA either), every sum that optim.c does sequentially is sequential here too
 * (a factored row's sum of squares is one thread walking the row, a column's one
 * thread walking the column), and the bias corrections are computed on the host
 * with the same pow() calls.
 *
 * Only the global gradient norm is summed in another order than the host's (per
 * parameter: fixed-shape blocks, a fixed tree in each, then the partial sums in
 * order in one thread): deterministic, equal to the host's to rounding; it
 * changes the update only through the clipping factor. */
#include <math.h>
#include <string.h>

#include "cuda_internal.cuh"
extern "C" {
#include "../../passes/plan.h"
#include "../multidev.h"
#include "../train.h"
}

/* How a parameter enters the global gradient norm on several devices (the split of
 * multidev.c's rt_md_optim_step): its square sum counted here (replicated: the same on
 * every device), counted and summed over the devices (this device's experts, or a
 * parameter trained on(...) a device subset, by the set's first device), not counted
 * here (the subset's other devices), or not even updated (trained off this device). */
enum { NORM_LOCAL, NORM_SUMMED, NORM_NOT_COUNTED, NORM_SKIP };

#define NORM_THREADS 256
#define NORM_MAXB 64 /* blocks per parameter in the norm's first stage */

struct RtCudaOptim {
  RtCudaDev *d;
  const Backend *be;
  int n;
  int64_t *numel, *lead, *rows, *cols;
  bool *fact;
  float **p, **g;             /* the program's buffers */
  float **m, **v, **vr, **vc; /* device state (NULL where the kind has none) */
  float **zero;               /* owned zero gradients of parameters without one */
  int *nb, *poff;             /* norm: blocks and partials offset per parameter */
  signed char *cls;           /* per parameter: NORM_* */
  int64_t *nloc;              /* elements of this device's gradient (the norm's share) */
  /* whole entries (several devices, factored: an [E, H] expert matrix whose moments are
   * kept whole, multidev.c's whole_entry): the whole parameter and gradient gathered
   * each step, updated as one device would, this device's rows kept */
  float **wp, **wg;   /* device [E, H] (NULL: not a whole entry) */
  const RowSel **rs;  /* whole entries: the program's shard table (this device's rows) */
  int npart[2];       /* partials of the local and the summed class */
  Comm *comm;         /* several devices: the summed class's all-reduce */
  double *part;       /* device [sum nb]: the local class's, then the summed */
  double *total;      /* device [2] */
  double *total_host; /* pinned [2] */
  double *rmean;      /* device [max lead]: factored row means */
  size_t bytes;       /* device bytes this optimizer holds */
};

static int norm_blocks(int64_t n) {
  int64_t b = (n + NORM_THREADS * 16 - 1) / (NORM_THREADS * 16);
  return (int)(b < 1 ? 1 : b > NORM_MAXB ? NORM_MAXB : b);
}

/* Allocates zeroed device memory for the optimizer or dies naming what it is for. */
static void *dev_alloc(RtCudaOptim *c, size_t bytes, const char *what, const char *name) {
  void *q = c->be->alloc(bytes);
  if (!q)
    mc_die("out of memory on cuda device %d: %s%s%s%s needs %zu bytes (%.1f MiB; the optimizer "
           "holds %.1f MiB so far); reduce the model's size, or use optimizer = factored",
           c->d->gpu, what, name ? " '" : "", name ? name : "", name ? "'" : "", bytes,
           (double)bytes / 1048576.0, (double)c->bytes / 1048576.0);
  c->bytes += bytes;
  return q;
}

static float *state_alloc(RtCudaOptim *c, const char *kind, const char *pname, const float *host,
                          int64_t numel) {
  char name[512];
  snprintf(name, sizeof name, "optim.%s.%s", kind, pname);
  size_t nb = (size_t)numel * sizeof(float);
  float *q = (float *)dev_alloc(c, nb, "optimizer state", name);
  if (host && nb) c->be->upload(q, host, nb);
  return q;
}

/* The norm class of parameter i on this device (see NORM_*). */
static int norm_class(const Program *p, int i, const Comm *comm) {
  if (!comm || comm->size <= 1) return NORM_LOCAL;
  int own = rt_md_param_owner(p, i);
  bool here = !p->param_set || (p->param_set[i] >> p->g->rank & 1); /* trained here */
  if (own >= 0 && !here) return NORM_SKIP;
  if (own >= 0 && own != comm->rank) return NORM_NOT_COUNTED;
  bool summed = own >= 0 || (p->rows && p->rows[i].list);
  return summed ? NORM_SUMMED : NORM_LOCAL;
}

extern "C" RtCudaOptim *rt_cuda_optim_new_comm(RtCudaDev *d, Program *p, const Optim *o,
                                               Comm *comm) {
  MOEC_ASSERT(d && p && o && p->prec == PREC_F32 && o->n == p->g->nparams);
  RtDevScope on(d->gpu);
  RtCudaOptim *c = (RtCudaOptim *)mc_calloc(1, sizeof(RtCudaOptim));
  c->d = d;
  c->be = p->be;
  c->n = o->n;
  c->comm = comm && comm->size > 1 ? comm : NULL;
  size_t n = (size_t)(o->n > 0 ? o->n : 1);
  c->numel = (int64_t *)mc_calloc(4 * n, sizeof(int64_t));
  c->lead = c->numel + n;
  c->rows = c->numel + 2 * n;
  c->cols = c->numel + 3 * n;
  c->fact = (bool *)mc_calloc(n, sizeof(bool));
  c->cls = (signed char *)mc_calloc(n, 1);
  c->nloc = (int64_t *)mc_calloc(2 * n, sizeof(int64_t));
  c->wp = (float **)mc_calloc(2 * n, sizeof(float *));
  c->wg = c->wp + n;
  c->rs = (const RowSel **)mc_calloc(n, sizeof(RowSel *));
  c->p = (float **)mc_calloc(7 * n, sizeof(float *));
  c->g = c->p + n;
  c->m = c->p + 2 * n;
  c->v = c->p + 3 * n;
  c->vr = c->p + 4 * n;
  c->vc = c->p + 5 * n;
  c->zero = c->p + 6 * n;
  c->nb = (int *)mc_calloc(2 * n, sizeof(int));
  c->poff = c->nb + n;
  int64_t maxlead = 1;
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = p->g->params[i];
    /* multidev.c's whole entries: factored [E, H] expert matrices kept whole */
    bool whole =
        c->comm && p->rows && p->rows[i].list && o->kind == OPT_FACTORED && o->prank[i] == 2;
    MOEC_ASSERT(!strcmp(t->name, o->names[i]) && (whole || t->numel == o->numel[i]));
    c->cls[i] = (signed char)norm_class(p, i, c->comm);
    c->numel[i] = o->numel[i]; /* a whole entry's update covers the whole matrix */
    c->nloc[i] = t->numel;
    if (whole) {
      c->wp[i] = (float *)dev_alloc(c, (size_t)o->numel[i] * sizeof(float), "the whole", t->name);
      c->wg[i] = (float *)dev_alloc(c, (size_t)o->numel[i] * sizeof(float), "the whole gradient of",
                                    t->name);
      c->rs[i] = &p->rows[i];
    }
    c->p[i] = (float *)p->buf[t->id];
    if (t->grad) {
      c->g[i] = (float *)p->buf[t->grad->id];
    } else { /* a parameter the loss does not reach: a zero gradient, as on the host */
      c->zero[i] =
          (float *)dev_alloc(c, (size_t)t->numel * sizeof(float), "the zero gradient of", t->name);
      c->g[i] = c->zero[i];
    }
    int r = o->prank[i];
    c->fact[i] = o->kind == OPT_FACTORED && r >= 2;
    if (c->fact[i]) {
      c->rows[i] = o->shape[i][r - 2];
      c->cols[i] = o->shape[i][r - 1];
      int64_t rc = c->rows[i] * c->cols[i];
      c->lead[i] = o->numel[i] / (rc > 1 ? rc : 1);
      if (c->lead[i] > maxlead) maxlead = c->lead[i];
      c->vr[i] = state_alloc(c, "vr", o->names[i], o->vr[i], c->lead[i] * c->rows[i]);
      c->vc[i] = state_alloc(c, "vc", o->names[i], o->vc[i], c->lead[i] * c->cols[i]);
    } else {
      if (o->kind == OPT_ADAM) c->m[i] = state_alloc(c, "m", o->names[i], o->m[i], o->numel[i]);
      c->v[i] = state_alloc(c, "v", o->names[i], o->v[i], o->numel[i]);
    }
    c->nb[i] = norm_blocks(c->nloc[i]);
  }
  /* partials: the local class's in parameter order, then the summed class's */
  int at = 0;
  for (int k = NORM_LOCAL; k <= NORM_SUMMED; k++) {
    for (int i = 0; i < o->n; i++)
      if (c->cls[i] == k) {
        c->poff[i] = at;
        at += c->nb[i];
      }
    c->npart[k] = at - (k ? c->npart[0] : 0);
  }
  c->part = (double *)dev_alloc(c, (size_t)(at > 0 ? at : 1) * sizeof(double),
                                "the gradient norm's partial sums", NULL);
  c->total = (double *)dev_alloc(c, 2 * sizeof(double), "the gradient norm", NULL);
  c->rmean = (double *)dev_alloc(c, (size_t)maxlead * sizeof(double),
                                 "the factored optimizer's row means", NULL);
  CUDA_CHECK(cudaMallocHost((void **)&c->total_host, 2 * sizeof(double)));
  return c;
}

extern "C" RtCudaOptim *rt_cuda_optim_new(RtCudaDev *d, Program *p, const Optim *o) {
  return rt_cuda_optim_new_comm(d, p, o, NULL);
}

extern "C" void rt_cuda_optim_free(RtCudaOptim *c) {
  if (!c) return;
  RtDevScope on(c->d->gpu);
  CUDA_CHECK(cudaStreamSynchronize(c->d->stream));
  for (int i = 0; i < c->n; i++) {
    c->be->release(c->m[i]);
    c->be->release(c->v[i]);
    c->be->release(c->vr[i]);
    c->be->release(c->vc[i]);
    c->be->release(c->zero[i]);
  }
  c->be->release(c->part);
  c->be->release(c->total);
  c->be->release(c->rmean);
  CUDA_CHECK(cudaFreeHost(c->total_host));
  mc_free(c->numel);
  for (int i = 0; i < c->n; i++) {
    c->be->release(c->wp[i]);
    c->be->release(c->wg[i]);
  }
  mc_free(c->fact);
  mc_free(c->cls);
  mc_free(c->nloc);
  mc_free(c->wp);
  mc_free(c->rs);
  mc_free(c->p);
  mc_free(c->nb);
  mc_free(c);
}

static void down(RtCudaOptim *c, float *host, const float *dev, int64_t numel) {
  if (host && dev && numel > 0) c->be->download(host, dev, (size_t)numel * sizeof(float));
}

extern "C" void rt_cuda_optim_download(RtCudaOptim *c, Optim *o) {
  RtDevScope on(c->d->gpu);
  rt_cuda_sync_dev(c->d);
  for (int i = 0; i < c->n; i++) {
    if (c->fact[i]) {
      down(c, o->vr[i], c->vr[i], c->lead[i] * c->rows[i]);
      down(c, o->vc[i], c->vc[i], c->lead[i] * c->cols[i]);
    } else {
      down(c, o->m[i], c->m[i], c->numel[i]);
      down(c, o->v[i], c->v[i], c->numel[i]);
    }
  }
}

/* ---------------------------------------------------------------- kernels */

/* Stage 1 of the norm: block b of a fixed grid sums squares at i = b*T + t + k*grid*T
 * per thread, then a fixed tree. */
__global__ void norm_part_kernel(const float *x, int64_t n, double *out) {
  __shared__ double s[NORM_THREADS];
  double acc = 0;
  for (int64_t i = (int64_t)blockIdx.x * NORM_THREADS + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * NORM_THREADS) {
    double v = (double)x[i];
    acc += v * v;
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = NORM_THREADS / 2; w > 0; w /= 2) {
    if ((int)threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

/* Stage 2: every partial of each class in order, one thread: total[0] the local
 * class's part[0, n0), total[1] the summed class's part[n0, n0 + n1). */
__global__ void norm_finish_kernel(const double *part, int n0, int n1, double *total) {
  for (int k = 0; k < 2; k++) {
    double ss = 0;
    for (int i = k ? n0 : 0; i < (k ? n0 + n1 : n0); i++)
      ss += part[i];
    total[k] = ss;
  }
}

__global__ void adam_update_kernel(float *p, const float *g, float *m, float *v, int64_t n,
                                   RtAdamCoef c) {
  GRID_STRIDE(k, n) { rt_adam_elem(&p[k], g[k], &m[k], &v[k], c); }
}

/* The factored optimizer on a vector (rank < 2): second moment only. */
__global__ void fvec_update_kernel(float *p, const float *g, float *v, int64_t n, double lr,
                                   double b2, double eps, double bc2, double scale) {
  GRID_STRIDE(k, n) {
    double gk = (double)g[k] * scale, vk = b2 * (double)v[k] + (1.0 - b2) * gk * gk;
    v[k] = (float)vk;
    p[k] = (float)((double)p[k] - lr * gk / (sqrt(vk / bc2) + eps));
  }
}

/* Factored matrices [lead, rows, cols]: row second moments (one thread per row,
 * columns in order, as optim.c). */
__global__ void frow_kernel(const float *g, float *vr, int64_t lead, int64_t rows, int64_t cols,
                            double b2, double scale) {
  GRID_STRIDE(i, lead * rows) {
    const float *gl = g + i * cols;
    double s = 0;
    for (int64_t c = 0; c < cols; c++) {
      double gk = (double)gl[c] * scale;
      s += gk * gk;
    }
    vr[i] = (float)(b2 * (double)vr[i] + (1.0 - b2) * (s / (double)cols));
  }
}

/* Column second moments (one thread per column, rows in order). */
__global__ void fcol_kernel(const float *g, float *vc, int64_t lead, int64_t rows, int64_t cols,
                            double b2, double scale) {
  GRID_STRIDE(i, lead * cols) {
    int64_t l = i / cols, c = i % cols;
    const float *gl = g + l * rows * cols + c;
    double s = 0;
    for (int64_t r = 0; r < rows; r++) {
      double gk = (double)gl[r * cols] * scale;
      s += gk * gk;
    }
    vc[i] = (float)(b2 * (double)vc[i] + (1.0 - b2) * (s / (double)rows));
  }
}

/* The mean of each matrix's row moments (rows in order). */
__global__ void frmean_kernel(const float *vr, int64_t lead, int64_t rows, double *rmean) {
  GRID_STRIDE(l, lead) {
    double rsum = 0;
    for (int64_t r = 0; r < rows; r++)
      rsum += (double)vr[l * rows + r];
    rmean[l] = rsum / (double)rows;
  }
}

__global__ void fmat_update_kernel(float *p, const float *g, const float *vr, const float *vc,
                                   const double *rmean, int64_t lead, int64_t rows, int64_t cols,
                                   double lr, double eps, double bc2, double scale) {
  GRID_STRIDE(i, lead * rows * cols) {
    int64_t c = i % cols, lr_ = i / cols, l = lr_ / rows;
    double gk = (double)g[i] * scale, rm = rmean[l];
    double sr = rm > 0 ? sqrt((double)vr[lr_] / (rm * bc2)) : 0.0; /* optim.inc's frow_scale */
    p[i] = (float)((double)p[i] - lr * gk / (sr * sqrt((double)vc[l * cols + c]) + eps));
  }
}

/* whole (device [E, H]) = every device's rows of the sharded local (device [E_r, H]) of
 * whole entry i, each at its expert's row: through host memory (a few kilobytes of
 * biases), the rows in rank order from comm_gatherv, as multidev.c's gather_rows. */
static void gather_whole(RtCudaOptim *c, int i, const float *local, float *whole) {
  Comm *comm = c->comm;
  int P = comm->size;
  const RowSel *rs = c->rs[i];
  int64_t H = c->cols[i], row = H * (int64_t)sizeof(float), E = rs->global;
  int64_t *counts = (int64_t *)mc_calloc((size_t)P, sizeof(int64_t)), total = 0;
  for (int64_t r = 0; r < E; r++)
    counts[rs->owner[r]] += row;
  for (int q = 0; q < P; q++)
    total += counts[q];
  char *mine = (char *)mc_malloc((size_t)(counts[comm->rank] > 0 ? counts[comm->rank] : 1)),
       *all = (char *)mc_malloc((size_t)(total > 0 ? total : 1)),
       *w = (char *)mc_malloc((size_t)(E * row > 0 ? E * row : 1));
  if (counts[comm->rank]) c->be->download(mine, local, (size_t)counts[comm->rank]);
  comm_gatherv(comm, mine, all, counts, -1); /* host buffers: the host Comm */
  int64_t at = 0;
  for (int q = 0; q < P; q++) /* rows in rank order, each to its place in the whole */
    for (int64_t r = 0; r < E; r++)
      if (rs->owner[r] == q) {
        memcpy(w + r * row, all + at, (size_t)row);
        at += row;
      }
  MOEC_ASSERT(at == total);
  c->be->upload(whole, w, (size_t)(E * row));
  mc_free(w);
  mc_free(all);
  mc_free(mine);
  mc_free(counts);
}

extern "C" void rt_cuda_optim_step(RtCudaOptim *c, Optim *o) {
  RtCudaDev *d = c->d;
  RtDevScope on(d->gpu);
  cudaStream_t st = d->stream;
  for (int i = 0; i < c->n; i++) {
    if (c->cls[i] != NORM_LOCAL && c->cls[i] != NORM_SUMMED) continue;
    if (c->nloc[i] > 0) {
      norm_part_kernel<<<c->nb[i], NORM_THREADS, 0, st>>>(c->g[i], c->nloc[i],
                                                          c->part + c->poff[i]);
      CUDA_LAUNCH_CHECK();
    } else {
      CUDA_CHECK(cudaMemsetAsync(c->part + c->poff[i], 0, (size_t)c->nb[i] * sizeof(double), st));
    }
  }
  norm_finish_kernel<<<1, 1, 0, st>>>(c->part, c->npart[0], c->npart[1], c->total);
  CUDA_LAUNCH_CHECK();
  CUDA_CHECK(
      cudaMemcpyAsync(c->total_host, c->total, 2 * sizeof(double), cudaMemcpyDeviceToHost, st));
  rt_cuda_sync_dev(d); /* also reports a user error a kernel of this step flagged */
  double ss[2] = {c->total_host[0], c->total_host[1]};
  if (c->comm) c->comm->all_reduce_sum_f64(c->comm, &ss[1], 1); /* every device's share */
  double norm = sqrt(ss[0] + ss[1]), scale = 1.0;
  o->last_norm = norm;
  if (!isfinite(norm))
    mc_die("the gradient norm is %g at step %lld: training diverged (try a smaller lr or clip)",
           norm, (long long)o->t + 1);
  if (o->clip > 0 && norm > o->clip) scale = o->clip / norm;
  o->t++;
  const double b1 = o->beta1, b2 = o->beta2, lr = o->lr, eps = o->eps;
  const double bc1 = 1.0 - pow(b1, (double)o->t), bc2 = 1.0 - pow(b2, (double)o->t);
  for (int i = 0; i < c->n; i++) {
    int64_t n = c->numel[i];
    if (n <= 0 || c->cls[i] == NORM_SKIP) continue;
    float *pi = c->p[i], *gi = c->g[i];
    if (c->wp[i]) { /* the whole matrix from every device's rows */
      gather_whole(c, i, c->p[i], c->wp[i]);
      gather_whole(c, i, c->g[i], c->wg[i]);
      pi = c->wp[i];
      gi = c->wg[i];
    }
    if (o->kind == OPT_ADAM) {
      adam_update_kernel<<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, st>>>(
          pi, gi, c->m[i], c->v[i], n, rt_adam_coef(lr, b1, b2, eps, bc1, bc2, scale));
    } else if (!c->fact[i]) {
      fvec_update_kernel<<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, st>>>(pi, gi, c->v[i], n, lr, b2,
                                                                        eps, bc2, scale);
    } else {
      int64_t L = c->lead[i], R = c->rows[i], C = c->cols[i];
      frow_kernel<<<rt_cuda_blocks(L * R), RT_CUDA_THREADS, 0, st>>>(gi, c->vr[i], L, R, C, b2,
                                                                     scale);
      CUDA_LAUNCH_CHECK();
      fcol_kernel<<<rt_cuda_blocks(L * C), RT_CUDA_THREADS, 0, st>>>(gi, c->vc[i], L, R, C, b2,
                                                                     scale);
      CUDA_LAUNCH_CHECK();
      frmean_kernel<<<rt_cuda_blocks(L), RT_CUDA_THREADS, 0, st>>>(c->vr[i], L, R, c->rmean);
      CUDA_LAUNCH_CHECK();
      fmat_update_kernel<<<rt_cuda_blocks(n), RT_CUDA_THREADS, 0, st>>>(
          pi, gi, c->vr[i], c->vc[i], c->rmean, L, R, C, lr, eps, bc2, scale);
    }
    CUDA_LAUNCH_CHECK();
    for (int64_t j = 0; c->wp[i] && j < c->rs[i]->n; j++) /* this device's rows, updated */
      CUDA_CHECK(cudaMemcpyAsync(c->p[i] + j * c->cols[i],
                                 c->wp[i] + c->rs[i]->list[j] * c->cols[i],
                                 (size_t)c->cols[i] * sizeof(float), cudaMemcpyDeviceToDevice, st));
  }
}

extern "C" void rt_cuda_upload_input(RtCudaDev *d, void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  rt_cuda_check_gpu(d->gpu, "an input upload");
  rt_cuda_upload_async(d, dst, src, bytes);
}
