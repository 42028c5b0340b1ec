/* optim.c: optimizers (Adam; the paper's factored second moment, appendix D),
 * global gradient-norm clipping, and deterministic parameter initialisation.
 *
 * The factored update is computed in double per element from float state and stored
 * back as float, Adam's in float (both in double under --f64), vectorised and split
 * over threads without changing a bit, so a resumed run (state restored from a
 * checkpoint) repeats an uninterrupted one, with any thread count. Formulas:
 * docs/training.md ("Optimizers"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define OPT_X86 1 /* the AVX-512 and AVX2 row sums below */
#endif

#include "train.h"
#include "train_dev.h"

/* Rows, columns and leading (batch) count of a parameter factored as matrices. */
static void factor_dims(const Optim *o, int i, int64_t *lead, int64_t *rows, int64_t *cols) {
  int r = o->prank[i];
  *rows = o->shape[i][r - 2];
  *cols = o->shape[i][r - 1];
  *lead = o->numel[i] / MC_MAX(1, *rows * *cols);
}

/* A thread's buffer for the folded dW's spans, kept from step to step: no allocation a
 * task (a factored expert matrix's span is 512 KB, which malloc may map and unmap). */
typedef struct OptScratch {
  void *p;
  size_t n;
  char pad[48]; /* a cache line each */
} OptScratch;

static bool factored(const Optim *o, int i) {
  return o->kind == OPT_FACTORED && o->prank[i] >= 2;
}

Optim *rt_optim_new(const Config *cfg, const Graph *g) {
  return rt_optim_new_prec(cfg, g, PREC_F32);
}

Optim *rt_optim_new_prec(const Config *cfg, const Graph *g, Precision prec) {
  Optim *o = mc_calloc(1, sizeof(Optim));
  const size_t e = o->elem = prec == PREC_F64 ? sizeof(double) : sizeof(float);
  o->kind = cfg->optimizer;
  o->lr = cfg->lr;
  o->beta1 = cfg->beta1;
  o->beta2 = cfg->beta2;
  o->eps = cfg->eps;
  o->clip = cfg->clip;
  o->wd = cfg->weight_decay;
  o->n = g->nparams;
  size_t n = (size_t)MC_MAX(o->n, 1);
  o->names = mc_calloc(n, sizeof(char *));
  o->numel = mc_calloc(n, sizeof(int64_t));
  o->prank = mc_calloc(n, sizeof(int));
  o->shape = mc_calloc(n, sizeof *o->shape);
  o->m = mc_calloc(n, sizeof(float *));
  o->v = mc_calloc(n, sizeof(float *));
  o->vr = mc_calloc(n, sizeof(float *));
  o->vc = mc_calloc(n, sizeof(float *));
  o->scratch = mc_calloc(RT_MAX_THREADS, sizeof(OptScratch));
#ifdef OPT_X86
  o->isa = rt_cpu_isa();
#else
  o->isa = RT_ISA_PORTABLE; /* the vector row sums are GCC x86-64 only */
#endif
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    o->names[i] = t->name;
    o->numel[i] = t->numel;
    o->prank[i] = t->ty.rank;
    memcpy(o->shape[i], t->shape, sizeof o->shape[i]);
    if (factored(o, i)) {
      int64_t lead, rows, cols;
      factor_dims(o, i, &lead, &rows, &cols);
      o->vr[i] = mc_calloc_big((size_t)(lead * rows), e);
      o->vc[i] = mc_calloc_big((size_t)(lead * cols), e);
    } else {
      if (o->kind == OPT_ADAM) o->m[i] = mc_calloc_big((size_t)t->numel, e);
      o->v[i] = mc_calloc_big((size_t)t->numel, e);
    }
  }
  return o;
}

void rt_optim_free(Optim *o) {
  if (!o) return;
  for (int i = 0; i < o->n; i++) {
    mc_free(o->m[i]);
    mc_free(o->v[i]);
    mc_free(o->vr[i]);
    mc_free(o->vc[i]);
  }
  mc_free(o->m);
  mc_free(o->v);
  mc_free(o->vr);
  mc_free(o->vc);
  mc_free(o->names);
  mc_free(o->numel);
  mc_free(o->prank);
  mc_free(o->shape);
  mc_free(o->fold);
  for (int k = 0; k < RT_MAX_THREADS; k++)
    mc_free(o->scratch[k].p);
  mc_free(o->scratch);
  mc_free(o);
}

/* ---------------------------------------------------------------- the update
 *
 * The work is a list of tasks fixed by the parameters' shapes (element spans of
 * OPT_SPAN, a factored matrix's rows or columns), run on every thread (threads.c):
 * each task writes its own elements, and the norm's partial sums are added in task
 * order, so any thread count gives the same bits. Phases: the norm when clipping
 * needs it first; the updates (Adam and vectors; a factored matrix's row and column
 * moments); the factored matrices' parameters. Without clipping the norm's squares
 * are summed by the update tasks as they read the gradient: one pass over
 * parameters, gradients and moments. A factored matrix that fits in L2 (an expert's)
 * is done whole in phase 1, all three phases' work on it, so its gradient comes from
 * memory once (12 bytes a parameter rather than 20) with the same arithmetic in the same
 * order; its norm partials keep the row spans' slots, so the norm's bits do not change
 * either. One task (OT_FMAT) takes a run of up to OPT_FMAT_RUN such matrices of a
 * parameter, and updates each beside the next one's row sums (fmat_step). */

#include "vec.h"

#define OPT_SPAN 16384           /* elements per task */
#define OPT_COLS 256             /* columns per column-moment task */
#define OPT_FMAT_BYTES (1 << 20) /* a factored matrix up to this is one task (fits in L2) */
#define OPT_FMAT_RUN 8           /* consecutive such matrices of a parameter in one task */

typedef struct OptCoef {
  double scale, b1, b2, lr, eps, bc1, bc2;
} OptCoef;

typedef enum OptKindT { OT_NORM, OT_ADAM, OT_FVEC, OT_FROWS, OT_FCOLS, OT_FUPD, OT_FMAT } OptKindT;

typedef struct OptTask {
  int i; /* parameter */
  OptKindT kind;
  int64_t lo, hi; /* elements, or a matrix's rows / columns */
  int64_t l, m;   /* factored: matrix l of the parameter, m of the whole list */
  int64_t rows, cols;
  int64_t slot; /* its first norm partial (OT_FMAT: one per span of rows, as OT_FROWS) */
  int64_t nl;   /* OT_FMAT: matrices l, l + 1, ..., l + nl - 1 */
} OptTask;

typedef struct OptJob {
  const Optim *o;
  float *const *params, *const *grads;
  OptCoef c;
  bool fuse_norm; /* update tasks also sum the gradient's squares */
  OptTask *t;
  int64_t nt, ns;
  double *part;           /* [ns]: the tasks' sums of squares, in task order (0 if none) */
  unsigned char *nonzero; /* [factored matrices]: its gradient has a nonzero */
  double *rmean;          /* [factored matrices]: mean row moment */
  double **csqrt;         /* [factored matrices split in spans]: sqrt of each column moment */
  int64_t nfmat;          /* factored matrices */
} OptJob;

/* An OT_FMAT task's matrix whose update waits for the next one's row sums (fmat_step) */
typedef struct FmatPend {
  int64_t l;      /* the matrix (of the parameter), -1: none */
  const void *g;  /* its gradient */
  bool nz;        /* its gradient has a nonzero (else p stays) */
  double rmean;   /* its mean row moment */
  double *sc;     /* [cols]: its sqrt(C_j) */
  double *colsum; /* [cols]: the next matrix's column sums */
  double *sr;     /* [rows]: its rows' frow_scale */
} FmatPend;

/* Rows per task (and per norm partial) of a factored matrix's row moments. */
static int64_t frow_span(int64_t cols) {
  return MC_MAX(1, OPT_SPAN / MC_MAX(cols, 1));
}

/* A factored matrix small enough to be one OT_FMAT task. */
static bool fmat_whole(const Optim *o, int64_t rows, int64_t cols) {
  return (double)rows * (double)cols * (double)o->elem <= OPT_FMAT_BYTES;
}

#ifdef OPT_X86
#define OPT_AVX512 __attribute__((target("avx512f")))
#define OPT_AVX2 __attribute__((target("avx2")))

/* opt_transpose8's 4x4 form for AVX2 */
OPT_AVX2 __attribute__((always_inline)) static inline void opt_transpose4(__m256d r[4]) {
  __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* r[j] = column j of the 8x8 block whose row i was r[i] (lane i of r[j]: row i's
 * element j): moves values, computes nothing */
OPT_AVX512 __attribute__((always_inline)) static inline void opt_transpose8(__m512d r[8]) {
  __m512d t[8], u[8];
#pragma GCC unroll 8
  for (int k = 0; k < 4; k++) { /* t[2k]: rows 2k, 2k+1's even columns; t[2k+1]: odd */
    t[2 * k] = _mm512_unpacklo_pd(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_pd(r[2 * k], r[2 * k + 1]);
  }
#pragma GCC unroll 8
  for (int h = 0; h < 2; h++) /* u[4h + ...]: rows 4h..4h+3, columns {0,4} {2,6} {1,5} {3,7} */
#pragma GCC unroll 8
    for (int k = 0; k < 2; k++) {
      u[4 * h + 2 * k] = _mm512_shuffle_f64x2(t[4 * h + k], t[4 * h + k + 2], 0x88);
      u[4 * h + 2 * k + 1] = _mm512_shuffle_f64x2(t[4 * h + k], t[4 * h + k + 2], 0xdd);
    }
  static const int col[4] = {0, 2, 1, 3}; /* u[k], u[k + 4] hold columns col[k], col[k] + 4 */
#pragma GCC unroll 8
  for (int k = 0; k < 4; k++) {
    r[col[k]] = _mm512_shuffle_f64x2(u[k], u[k + 4], 0x88);
    r[col[k] + 4] = _mm512_shuffle_f64x2(u[k], u[k + 4], 0xdd);
  }
}
#endif

/* the square root in each precision, for optim.inc's K(sqrt) */
static inline float sqrt_f32(float x) {
  return sqrtf(x);
}
static inline double sqrt_f64(double x) {
  return sqrt(x);
}

#define S float
#define K(name) name##_f32
#include "optim.inc"
#undef S
#undef K
#define S double
#define K(name) name##_f64
#include "optim.inc"
#undef S
#undef K

double rt_sumsq(const void *g, int64_t n, size_t elem) {
  return elem == sizeof(double) ? sumsq_f64(g, n) : sumsq_f32(g, n);
}

/* The elements [*a, *b) of its gradient that task t reads. */
static void task_span(const OptTask *t, int64_t *a, int64_t *b) {
  int64_t rc = t->rows * t->cols, m0 = t->l * rc;
  switch (t->kind) {
  case OT_NORM:
  case OT_ADAM:
  case OT_FVEC:
    *a = t->lo, *b = t->hi;
    return;
  case OT_FROWS:
  case OT_FUPD:
    *a = m0 + t->lo * t->cols, *b = m0 + t->hi * t->cols;
    return;
  default: /* OT_FCOLS: the whole matrix (OT_FMAT: opt_fmats, a matrix at a time) */
    *a = m0, *b = m0 + rc;
  }
}

/* Parameter i's folded expert dW (rt_optim_fold), NULL when its gradient is whole: a
 * caller's own gradient array (accumulated, gathered) is always whole. */
static const FoldDW *folded(const OptJob *J, int i) {
  const FoldDW *f = J->o->fold ? &J->o->fold[i] : NULL;
  return f && f->off && J->grads[i] == f->dw ? f : NULL;
}

/* Whether the kernel wrote dW's elements [a, b) (their experts have more than
 * RT_FOLD_ROWS rows): the task reads them where they are, as unfolded. */
static bool written(const FoldDW *f, int64_t a, int64_t b) {
  const int64_t per = f->K * f->M;
  for (int64_t e = a / per; e * per < b; e++)
    if (f->off[e + 1] - f->off[e] <= RT_FOLD_ROWS) return false;
  return true;
}

/* Thread's scratch of at least need bytes */
static void *opt_scratch(const Optim *o, size_t need) {
  OptScratch *s = &o->scratch[rt_thread_index()];
  if (s->n < need) {
    mc_free(s->p);
    s->p = mc_malloc(need);
    s->n = need;
  }
  return s->p;
}

/* An OT_FMAT task: its matrices in order, each's folded dW made (or read where the kernel
 * wrote it) into one half of the thread's scratch, the other half holding the matrix
 * before it, whose update runs beside this one's row sums (fmat_step) */
static void opt_fmats(const OptJob *J, const OptTask *t, double *part) {
  const size_t e = J->o->elem;
  const int64_t rc = t->rows * t->cols,
                spans = (t->rows + frow_span(t->cols) - 1) / frow_span(t->cols);
  const FoldDW *f = folded(J, t->i);
  char *buf = f ? opt_scratch(J->o, 2 * (size_t)rc * e) : NULL;
  double *d = mc_malloc((size_t)(2 * t->cols + t->rows) * sizeof(double));
  FmatPend pd = {.l = -1, .sc = d, .colsum = d + t->cols, .sr = d + 2 * t->cols};
  for (int64_t j = 0; j < t->nl; j++) {
    int64_t a = (t->l + j) * rc;
    const void *g = (const char *)J->grads[t->i] + (size_t)a * e;
    if (f && !written(f, a, a + rc)) {
      g = buf + (size_t)(j & 1) * (size_t)rc * e;
      rt_fold_dw(f, e, a, a + rc, (void *)g);
    }
    if (e == sizeof(double))
      fmat_step_f64(J, t, t->l + j, part + j * spans, g, &pd);
    else
      fmat_step_f32(J, t, t->l + j, part + j * spans, g, &pd);
  }
  if (e == sizeof(double))
    fmat_end_f64(J, t, &pd);
  else
    fmat_end_f32(J, t, &pd);
  mc_free(d);
}

static void opt_task(void *arg, int64_t k) {
  const OptJob *J = arg;
  const OptTask *t = &J->t[k];
  double *part = &J->part[t->slot];
  const size_t e = J->o->elem;
  if (t->kind == OT_FMAT) {
    opt_fmats(J, t, part);
    return;
  }
  const void *gr = J->grads[t->i];
  int64_t a = 0, b = 0;
  const FoldDW *f = folded(J, t->i);
  if (f && !(t->kind == OT_FUPD && !J->nonzero[t->m])) task_span(t, &a, &b);
  if (a < b && !written(f, a, b)) { /* its dW span, made here */
    void *buf = opt_scratch(J->o, (size_t)(b - a) * e);
    rt_fold_dw(f, e, a, b, buf);
    gr = buf;
  } else {
    a = 0; /* the whole gradient: the kernel wrote the span */
  }
  if (e == sizeof(double))
    task_f64(J, t, part, gr, a);
  else
    task_f32(J, t, part, gr, a);
}

void rt_optim_fold(Optim *o, Program *p) {
  const Graph *g = p->g;
  mc_free(o->fold);
  o->fold = NULL;
  if (!rt_dev_on_host(p)) return; /* the device optimizer (train_dev.c): no fold */
  MOEC_ASSERT(o->n == g->nparams);
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op != OP_GROUPED_MATMUL_DW || !n->ia[0]) continue;
    for (int i = 0; i < g->nparams; i++) {
      if (g->params[i]->grad != n->out[0]) continue;
      if (!o->fold) o->fold = mc_calloc((size_t)o->n, sizeof(FoldDW));
      o->fold[i] = (FoldDW){.xs = p->buf[n->in[0]->id],
                            .g = p->buf[n->in[1]->id],
                            .off = p->buf[n->in[2]->id],
                            .dw = p->buf[n->out[0]->id],
                            .E = n->out[0]->shape[0],
                            .K = n->in[0]->shape[1],
                            .M = n->in[1]->shape[1]};
      /* its pages now: the kernel writes another set of experts each step, and a page
       * first written inside a step costs that step a fault (unfused, step 1 wrote all) */
      memset(p->buf[n->out[0]->id], 0, (size_t)n->out[0]->numel * p->elem);
    }
  }
}

/* Appends the tasks of one phase: 0 the norm, 1 updates and factored moments, 2 the
 * factored matrices' parameters. Returns the number of factored matrices seen. */
static int64_t opt_tasks(OptJob *J, float *const *grads, int phase) {
  const Optim *o = J->o;
  int64_t cap = 64, m = 0;
  J->nt = J->ns = 0;
  J->t = mc_malloc((size_t)cap * sizeof(OptTask));
  for (int i = 0; i < o->n; i++) {
    if (!grads[i] || o->numel[i] == 0) continue; /* not updated on this device (multidev.c) */
    bool fm = phase > 0 && factored(o, i);
    if (phase == 2 && !fm) continue;
    int64_t lead = 1, rows = 1, cols = o->numel[i];
    if (fm) factor_dims(o, i, &lead, &rows, &cols);
    bool whole = fm && fmat_whole(o, rows, cols);
    for (int64_t l = 0; l < lead; l++, m += fm) {
      if (whole) { /* phase 1 does it all; slots as its OT_FROWS tasks', matrix by matrix */
        if (phase == 2) continue;
        if (l % OPT_FMAT_RUN == 0) {
          if (J->nt == cap) J->t = mc_realloc(J->t, (size_t)(cap *= 2) * sizeof(OptTask));
          J->t[J->nt++] = (OptTask){i, OT_FMAT, 0,    rows,  l,
                                    m, rows,    cols, J->ns, MC_MIN(OPT_FMAT_RUN, lead - l)};
        }
        J->ns += (rows + frow_span(cols) - 1) / frow_span(cols);
        continue;
      }
      int64_t spans[2] = {fm ? rows : cols, fm && phase == 1 ? cols : 0};
      for (int part = 0; part < 2; part++) {
        int64_t len = spans[part];
        /* rows per task: about OPT_SPAN elements; columns: OPT_COLS */
        int64_t per = !fm ? OPT_SPAN : part ? OPT_COLS : frow_span(cols);
        for (int64_t lo = 0; lo < len; lo += per) {
          if (J->nt == cap) J->t = mc_realloc(J->t, (size_t)(cap *= 2) * sizeof(OptTask));
          OptKindT k = phase == 0   ? OT_NORM
                       : !fm        ? (o->kind == OPT_ADAM ? OT_ADAM : OT_FVEC)
                       : phase == 2 ? OT_FUPD
                       : part == 0  ? OT_FROWS
                                    : OT_FCOLS;
          J->t[J->nt++] = (OptTask){i, k, lo, MC_MIN(len, lo + per), l, m, rows, cols, J->ns++, 1};
        }
      }
    }
  }
  return m;
}

/* Runs one phase; returns its tasks' sum of squares (in task order). */
static double opt_phase(OptJob *J, int phase) {
  int64_t nm = opt_tasks(J, J->grads, phase);
  if (phase == 1) {
    J->nonzero = mc_calloc((size_t)MC_MAX(nm, 1), 1);
    J->rmean = mc_calloc((size_t)MC_MAX(nm, 1), sizeof(double));
    J->csqrt = mc_calloc((size_t)MC_MAX(nm, 1), sizeof(double *));
    J->nfmat = nm;
  }
  J->part = mc_calloc((size_t)MC_MAX(J->ns, 1), sizeof(double));
  rt_parallel(J->nt, opt_task, J);
  double ss = 0;
  for (int64_t k = 0; k < J->ns; k++)
    ss += J->part[k];
  if (phase == 1) /* the split factored matrices' row means and sqrt(C_j), for phase 2 */
    for (int64_t k = 0; k < J->nt; k++) {
      const OptTask *t = &J->t[k];
      if (t->kind != OT_FROWS || t->lo != 0) continue;
      bool f64 = J->o->elem == sizeof(double);
      J->rmean[t->m] =
          f64 ? rmean_f64(J->o, t->i, t->l, t->rows) : rmean_f32(J->o, t->i, t->l, t->rows);
      double *sc = J->csqrt[t->m] = mc_malloc((size_t)t->cols * sizeof(double));
      const void *vc = (const char *)J->o->vc[t->i] + (size_t)(t->l * t->cols) * J->o->elem;
      if (f64)
        fcol_sqrt_f64(sc, vc, t->cols);
      else
        fcol_sqrt_f32(sc, vc, t->cols);
    }
  mc_free(J->t);
  mc_free(J->part);
  return ss;
}

/* Weight decay applies to weight matrices: rank >= 2, but not the experts' biases (m.b1,
 * m.b2: a bias per expert), as it never applies to biases and vectors. */
static bool decays(const Optim *o, int i) {
  const char *dot = strrchr(o->names[i], '.'), *last = dot ? dot + 1 : o->names[i];
  return o->prank[i] >= 2 && last[0] != 'b';
}

/* Decoupled weight decay (Loshchilov & Hutter's AdamW), before the update and apart from
 * it: p *= 1 - lr * wd for the weight matrices this device updates. */
static void decay_weights(Optim *o, float *const *params, float *const *grads) {
  const double f = 1.0 - o->lr * o->wd;
  for (int i = 0; i < o->n; i++) {
    if (!grads[i] || !decays(o, i)) continue;
    if (o->elem == sizeof(double))
      for (int64_t k = 0; k < o->numel[i]; k++)
        ((double *)(void *)params[i])[k] *= f;
    else
      for (int64_t k = 0; k < o->numel[i]; k++)
        params[i][k] = (float)(params[i][k] * f);
  }
}

/* The update with norm given (norm < 0: computed here, in the update's pass when no
 * clipping needs it first). */
static void opt_update(Optim *o, float *const *params, float *const *grads, double norm) {
  OptJob J = {.o = o, .params = params, .grads = grads};
  if (o->wd > 0 && isfinite(norm)) decay_weights(o, params, grads); /* norm -1: not known yet */
  bool have = norm >= 0;
  if (!have && o->clip > 0) {
    norm = sqrt(opt_phase(&J, 0));
    have = true;
  }
  double scale = 1.0;
  if (have) {
    o->last_norm = norm;
    if (!isfinite(norm))
      mc_die("the gradient norm is %g at step %lld: training diverged (try a smaller lr or clip)",
             norm, (long long)o->t + 1);
    if (o->clip > 0 && norm > o->clip) scale = o->clip / norm;
  }
  o->t++;
  const double b1 = o->beta1, b2 = o->beta2;
  J.c = (OptCoef){
      scale, b1, b2, o->lr, o->eps, 1.0 - pow(b1, (double)o->t), 1.0 - pow(b2, (double)o->t)};
  J.fuse_norm = !have;
  double ss = opt_phase(&J, 1);
  if (o->kind == OPT_FACTORED) opt_phase(&J, 2);
  for (int64_t m = 0; J.csqrt && m < J.nfmat; m++)
    mc_free(J.csqrt[m]);
  mc_free(J.csqrt);
  mc_free(J.nonzero);
  mc_free(J.rmean);
  if (!have) {
    o->last_norm = sqrt(ss);
    if (!isfinite(o->last_norm)) /* the parameters are lost: the run stops here */
      mc_die("the gradient norm is %g at step %lld: training diverged (try a smaller lr or clip)",
             o->last_norm, (long long)o->t);
  }
}

void rt_optim_step(Optim *o, float *const *params, float *const *grads) {
  opt_update(o, params, grads, -1);
}

void rt_optim_apply(Optim *o, float *const *params, float *const *grads, double norm) {
  opt_update(o, params, grads, norm);
}

/* ---------------------------------------------------------------- checkpoint state */

int rt_optim_tensors(const Optim *o, StTensor *t, McArena *names) {
  MOEC_ASSERT(o->elem == sizeof(float)); /* --f64 runs refuse checkpoints */
  int n = 0;
  for (int i = 0; i < o->n; i++) {
    int r = o->prank[i];
    if (factored(o, i)) {
      StTensor a = {
          mc_arena_printf(names, "optim.vr.%s", o->names[i]), ST_F32, r - 1, {0}, o->vr[i]};
      StTensor b = {
          mc_arena_printf(names, "optim.vc.%s", o->names[i]), ST_F32, r - 1, {0}, o->vc[i]};
      for (int d = 0; d < r - 2; d++)
        a.shape[d] = b.shape[d] = o->shape[i][d];
      a.shape[r - 2] = o->shape[i][r - 2];
      b.shape[r - 2] = o->shape[i][r - 1];
      t[n++] = a;
      t[n++] = b;
      continue;
    }
    StTensor v = {mc_arena_printf(names, "optim.v.%s", o->names[i]), ST_F32, r, {0}, o->v[i]};
    memcpy(v.shape, o->shape[i], sizeof(int64_t) * (size_t)r);
    if (o->kind == OPT_ADAM) {
      StTensor m = v;
      m.name = mc_arena_printf(names, "optim.m.%s", o->names[i]);
      m.data = o->m[i];
      t[n++] = m;
    }
    t[n++] = v;
  }
  return n;
}

/* The state tensor of shape[0..rank) into dst; with sel (rows of a tensor sharded
 * along dim 0) the file holds all sel->global rows of dim 0 and dst gets rows
 * sel->list, in that order. The file's entry must have exactly that shape (dim 0:
 * the global rows) and dtype F32. */
static void load_one(const StFile *f, const char *prefix, const char *name, float *dst, int rank,
                     const int64_t *shape, const RowSel *sel) {
  char key[1024];
  snprintf(key, sizeof key, "optim.%s.%s", prefix, name);
  if (!rt_st_find(f, key))
    mc_die("checkpoint '%s' has optimizer state but lacks '%s' (saved with another optimizer "
           "or model?)",
           f->path, key);
  if (sel && sel->list && sel->n == 0) return; /* none of its rows here (E_r = 0) */
  bool rows = sel && sel->list;
  int64_t want[MAX_RANK + 1], numel = 1;
  for (int d = 0; d < rank; d++) {
    want[d] = shape[d];
    numel *= shape[d];
  }
  if (rows) {
    MOEC_ASSERT(rank >= 1 && shape[0] % sel->n == 0);
    want[0] = shape[0] / sel->n * sel->global;
  }
  const StEntry *e = rt_st_expect(f, key, ST_F32, rank, want);
  if (!rows) {
    memcpy(dst, e->data, (size_t)numel * sizeof(float));
    return;
  }
  int64_t per = numel / sel->n;
  for (int64_t j = 0; j < sel->n; j++) {
    MOEC_ASSERT(sel->list[j] >= 0 && sel->list[j] < sel->global);
    memcpy(dst + j * per, e->data + (size_t)(sel->list[j] * per) * sizeof(float),
           (size_t)per * sizeof(float));
  }
}

bool rt_optim_load(Optim *o, const StFile *f) {
  return rt_optim_load_rows(o, f, NULL);
}

bool rt_optim_load_rows(Optim *o, const StFile *f, const RowSel *sel) {
  const char *step = rt_st_meta(f, "optim.step"), *kind = rt_st_meta(f, "optim.kind");
  if (!step || !kind) return false;
  const char *want = o->kind == OPT_ADAM ? "adam" : "factored";
  if (strcmp(kind, want))
    mc_die("checkpoint '%s' holds %s optimizer state, the train block asks for %s", f->path, kind,
           want);
  MOEC_ASSERT(o->elem == sizeof(float));
  int64_t t = rt_parse_step(f->path, "optim.step", step);
  for (int i = 0; i < o->n; i++) {
    const RowSel *si = sel ? &sel[i] : NULL;
    int r = o->prank[i];
    if (factored(o, i)) { /* vr [..., rows], vc [..., cols]: rt_optim_tensors' shapes */
      int64_t vs[MAX_RANK];
      memcpy(vs, o->shape[i], sizeof vs);
      load_one(f, "vr", o->names[i], o->vr[i], r - 1, vs, si);
      vs[r - 2] = o->shape[i][r - 1];
      load_one(f, "vc", o->names[i], o->vc[i], r - 1, vs, si);
      continue;
    }
    if (o->kind == OPT_ADAM) load_one(f, "m", o->names[i], o->m[i], r, o->shape[i], si);
    load_one(f, "v", o->names[i], o->v[i], r, o->shape[i], si);
  }
  o->t = t;
  return true;
}

/* ---------------------------------------------------------------- initialisation */

void rt_init_param(const Tensor *t, uint64_t seed, float *out) {
  rt_init_param_rows(t, seed, NULL, out);
}

void rt_init_param_rows(const Tensor *t, uint64_t seed, const RowSel *sel, float *out) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char *c = (const unsigned char *)t->name; *c; c++)
    h = (h ^ *c) * 1099511628211ull;
  uint64_t key = mc_rng_key(seed, mc_hash64(h), 0x494e4954ull /* "INIT" */);
  bool rows = sel && sel->list && sel->n > 0;
  int64_t per = rows ? t->numel / sel->n : t->numel;
  for (int64_t k = 0; k < t->numel; k++) {
    /* the element's index in the whole tensor: the same value on 1 or N devices */
    uint64_t at = rows ? (uint64_t)(sel->list[k / per] * per + k % per) : (uint64_t)k;
    switch (t->init) {
    case INIT_ZERO:
      out[k] = 0.0f;
      break;
    case INIT_UNIFORM:
      out[k] = (float)((2.0 * mc_rng_uniform(key, at) - 1.0) * t->init_scale);
      break;
    case INIT_NORMAL:
      out[k] = (float)(mc_rng_normal(key, at) * t->init_scale);
      break;
    }
  }
}
