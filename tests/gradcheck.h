/* gradcheck.h: finite-difference gradient checks (float64) and float32-vs-float64
 * agreement for small graphs built in C. Header-only; every op's test uses it.
 *
 * The graph's params (TK_PARAM) are what is checked. gc_check reduces the given
 * outputs to a scalar loss = sum_j sum(out_j * R_j) with fixed random R_j (f32
 * inputs "gc.R<j>"), binds B, T and S, runs pass_autodiff, lowers in PREC_F64, fills
 * every param, input and state with fixed random values, runs forward + backward,
 * and compares each param's gradient with central differences of the loss:
 *
 *   rel = max_i |analytic_i - numeric_i| / max(max_i |analytic_i|, max_i |numeric_i|, 1e-8)
 *
 * Then (unless tol_f32 < 0) it lowers the same graph in PREC_F32, fills the same
 * values, runs forward + backward and compares every float tensor with its f64
 * twin: max|a32 - a64| / max(max|a64|, 1e-8); i32 tensors must agree exactly.
 *
 * Usage:
 *   Graph *g = ir_graph_new("tanh");
 *   Tensor *x = ir_param(g, "x", ty, INIT_ZERO, 0, (Loc){0});  // checked
 *   Tensor *y = ir_op1(g, OP_TANH, x);
 *   GcOpts o = gc_opts();                 // B = T = 1, eps 1e-6, tol 1e-6, f32 tol 1e-5
 *   GcResult r = gc_check(g, 1, &y, &o);  // prints one summary line
 *   CHECK(r.ok);
 *   ir_graph_free(g);
 * With nouts == 0 the graph's own g->loss (a scalar) is the loss.
 * i32 inputs (ids, targets) must be filled by opts.fill_i32. Random ops see
 * KernelCtx{training = opts.training, seed = opts.seed, step = 0}: their draws
 * are the same in every forward run, so finite differences stay valid.
 */
#ifndef MOEC_GRADCHECK_H
#define MOEC_GRADCHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../codegen/codegen.h"
#include "../passes/passes.h"

typedef struct GcOpts {
  int64_t B, T;   /* values bound to the symbols (default 1, 1) */
  int64_t S;      /* the source length (default 0: S = T) */
  bool training;  /* KernelCtx.training: dropout masks, gate noise (default false) */
  uint64_t seed;  /* KernelCtx.seed and the seed of the default fills (default 1) */
  double eps;     /* central-difference step (default 1e-6) */
  double tol;     /* largest relative error allowed per param (default 1e-6) */
  double tol_f32; /* largest relative f32-vs-f64 difference per tensor (default 1e-5);
                     negative: skip the f32 comparison */
  int max_elems;  /* per param: check at most this many elements, a fixed random
                     subset (default 0: all) */
  double scale;   /* default fill of params/inputs/state: U(-scale, scale) (default 1) */
  /* i32 inputs (ids, targets): required when the graph has any. */
  void (*fill_i32)(const Tensor *t, int32_t *buf, void *user);
  /* Optional: fill an f32 param/input/state (values in double); return false to
   * keep the default fill for that tensor. */
  bool (*fill_f64)(const Tensor *t, double *buf, void *user);
  void *user;
  bool verbose; /* one line per param and per f32 tensor */
} GcOpts;

typedef struct GcResult {
  bool ok;                      /* every param within tol and every tensor within tol_f32 */
  double worst_rel;             /* worst finite-difference error over params */
  const char *worst_param;      /* its name */
  double worst_f32;             /* worst f32-vs-f64 difference over tensors (0 if skipped) */
  const char *worst_f32_tensor; /* its name */
  int nparams;                  /* params checked */
  int64_t nelems;               /* elements checked by finite differences */
} GcResult;

static inline GcOpts gc_opts(void) {
  GcOpts o;
  memset(&o, 0, sizeof o);
  o.B = 1;
  o.T = 1;
  o.seed = 1;
  o.eps = 1e-6;
  o.tol = 1e-6;
  o.tol_f32 = 1e-5;
  o.scale = 1.0;
  return o;
}

/* ---------------------------------------------------------------- internals */

/* Builds loss = sum_j sum(outs[j] * R_j) (nouts > 0) and returns it. */
static inline Tensor *gc_build_loss_(Graph *g, int nouts, Tensor *const *outs) {
  ir_set_context(g, "gc", "loss", (Loc){0});
  Tensor *loss = NULL;
  for (int j = 0; j < nouts; j++) {
    MOEC_ASSERT(outs[j]->ty.dtype == DT_F32);
    char nm[32];
    snprintf(nm, sizeof nm, "gc.R%d", j);
    Tensor *r = ir_input(g, nm, outs[j]->ty, (Loc){0});
    Tensor *s = ir_op1(g, OP_SUM, ir_op2(g, OP_MUL, outs[j], r));
    loss = loss ? ir_op2(g, OP_ADD, loss, s) : s;
  }
  return loss;
}

static inline bool gc_is_leaf_(const Tensor *t) {
  return t->kind == TK_PARAM || t->kind == TK_INPUT || t->kind == TK_STATE;
}

/* Fixed values of every leaf tensor, in double (i32 leaves: in vals_i32). */
typedef struct GcVals_ {
  double **f;
  int32_t **i;
} GcVals_;

static inline GcVals_ gc_fill_(Graph *g, const GcOpts *o) {
  GcVals_ v = {mc_calloc((size_t)g->ntensors, sizeof(double *)),
               mc_calloc((size_t)g->ntensors, sizeof(int32_t *))};
  for (int k = 0; k < g->ntensors; k++) {
    const Tensor *t = g->tensors[k];
    if (!gc_is_leaf_(t)) continue;
    if (t->ty.dtype == DT_I32) {
      if (!o->fill_i32) mc_fatal("gradcheck: i32 input '%s' needs GcOpts.fill_i32", t->name);
      v.i[k] = mc_calloc((size_t)t->numel, sizeof(int32_t));
      o->fill_i32(t, v.i[k], o->user);
      continue;
    }
    v.f[k] = mc_calloc((size_t)t->numel, sizeof(double));
    if (o->fill_f64 && o->fill_f64(t, v.f[k], o->user)) continue;
    uint64_t key = mc_rng_key(o->seed ^ 0x6763u, (uint64_t)k, 0);
    for (int64_t i = 0; i < t->numel; i++)
      v.f[k][i] = o->scale * (2.0 * mc_rng_uniform(key, (uint64_t)i) - 1.0);
  }
  return v;
}

static inline void gc_vals_free_(Graph *g, GcVals_ *v) {
  for (int k = 0; k < g->ntensors; k++) {
    mc_free(v->f[k]);
    mc_free(v->i[k]);
  }
  mc_free(v->f);
  mc_free(v->i);
}

static inline void gc_load_(Program *p, const GcVals_ *v) {
  Graph *g = p->g;
  for (int k = 0; k < g->ntensors; k++) {
    const Tensor *t = g->tensors[k];
    if (v->i[k]) memcpy(p->buf[k], v->i[k], (size_t)t->numel * sizeof(int32_t));
    if (!v->f[k]) continue;
    for (int64_t i = 0; i < t->numel; i++) {
      if (p->prec == PREC_F64)
        ((double *)p->buf[k])[i] = v->f[k][i];
      else
        ((float *)p->buf[k])[i] = (float)v->f[k][i];
    }
  }
}

static inline double gc_get_(const Program *p, const Tensor *t, int64_t i) {
  return p->prec == PREC_F64 ? ((double *)p->buf[t->id])[i] : (double)((float *)p->buf[t->id])[i];
}

/* ---------------------------------------------------------------- the check */

static inline GcResult gc_check(Graph *g, int nouts, Tensor *const *outs, const GcOpts *o) {
  GcResult r = {.ok = true, .worst_param = "", .worst_f32_tensor = ""};
  if (nouts > 0) g->loss = gc_build_loss_(g, nouts, outs);
  MOEC_ASSERT(g->loss && g->loss->ty.rank == 0);
  PassCtx pc = {.cfg = NULL, .devices = 1, .training = true};
  pass_autodiff(g, &pc);
  ir_bind_seq(g, o->B, o->T, o->S > 0 ? o->S : o->T);
  ir_verify(g);

  GcVals_ v = gc_fill_(g, o);
  KernelCtx kc = {.training = o->training,
                  .seed = o->seed,
                  .step = 0,
                  .batch0 = 0,
                  .batch_local = o->B,
                  .device = 0,
                  .ndevices = 1};
  Program *p = cg_lower(g, PREC_F64);
  gc_load_(p, &v);
  rt_exec(p, &kc, 0, p->ninstrs);

  /* analytic gradients, copied before the finite-difference runs */
  for (int k = 0; k < g->nparams; k++) {
    Tensor *w = g->params[k];
    MOEC_ASSERT(w->grad && w->grad->numel == w->numel);
    double *an = mc_malloc((size_t)w->numel * sizeof(double));
    memcpy(an, p->buf[w->grad->id], (size_t)w->numel * sizeof(double));
    double *x = (double *)p->buf[w->id];
    int64_t m = w->numel;
    bool subset = o->max_elems > 0 && m > o->max_elems;
    if (subset) m = o->max_elems;
    double maxa = 0, maxn = 0, maxd = 0, worst_num = 0;
    int64_t worst_i = 0;
    uint64_t key = mc_rng_key(o->seed ^ 0x7375u, (uint64_t)k, 0);
    for (int64_t s = 0; s < m; s++) {
      int64_t i = subset ? (int64_t)(mc_rng_uniform(key, (uint64_t)s) * (double)w->numel) : s;
      if (i >= w->numel) i = w->numel - 1;
      double x0 = x[i];
      x[i] = x0 + o->eps;
      rt_exec(p, &kc, 0, p->first_backward);
      double lp = ((double *)p->buf[g->loss->id])[0];
      x[i] = x0 - o->eps;
      rt_exec(p, &kc, 0, p->first_backward);
      double lm = ((double *)p->buf[g->loss->id])[0];
      x[i] = x0;
      double num = (lp - lm) / (2 * o->eps);
      maxa = fmax(maxa, fabs(an[i]));
      maxn = fmax(maxn, fabs(num));
      double d = fabs(an[i] - num);
      if (d > maxd || d != d) {
        maxd = d != d ? INFINITY : d;
        worst_i = i;
        worst_num = num;
      }
    }
    double rel = maxd / fmax(fmax(maxa, maxn), 1e-8);
    r.nparams++;
    r.nelems += m;
    if (r.nparams == 1 || rel > r.worst_rel) {
      r.worst_rel = rel;
      r.worst_param = w->name;
    }
    bool bad = !(rel <= o->tol);
    if (bad) r.ok = false;
    if (bad || o->verbose)
      fprintf(stderr, "  gradcheck %s/%s: %lld elems, rel err %.3g (max |grad| %.3g)%s\n", g->name,
              w->name, (long long)m, rel, maxa, bad ? "  <-- FAIL" : "");
    if (bad)
      fprintf(stderr, "    worst element %lld: analytic %.10g, numeric %.10g\n", (long long)worst_i,
              an[worst_i], worst_num);
    mc_free(an);
  }
  /* restore the reference run (the finite differences overwrote activations) */
  rt_exec(p, &kc, 0, p->ninstrs);

  if (o->tol_f32 >= 0) {
    Program *q = cg_lower(g, PREC_F32);
    gc_load_(q, &v);
    rt_exec(q, &kc, 0, q->ninstrs);
    for (int k = 0; k < g->ntensors; k++) {
      const Tensor *t = g->tensors[k];
      double maxd = 0, maxr = 0;
      if (t->ty.dtype == DT_I32) {
        if (memcmp(p->buf[k], q->buf[k], (size_t)t->numel * sizeof(int32_t)) != 0) maxd = 1;
        maxr = 1;
      } else {
        for (int64_t i = 0; i < t->numel; i++) {
          double a = gc_get_(p, t, i), b = gc_get_(q, t, i);
          maxd = fmax(maxd, fabs(a - b));
          maxr = fmax(maxr, fabs(a));
          if (a != a || b != b) maxd = INFINITY;
        }
      }
      double rel = maxd / fmax(maxr, 1e-8);
      if (rel > r.worst_f32) {
        r.worst_f32 = rel;
        r.worst_f32_tensor = t->name;
      }
      bool bad = !(rel <= o->tol_f32);
      if (bad) r.ok = false;
      if (bad || (o->verbose && !gc_is_leaf_(t)))
        fprintf(stderr, "  f32 vs f64 %s/%s: rel diff %.3g%s\n", g->name, t->name, rel,
                bad ? "  <-- FAIL" : "");
    }
    cg_program_free(q);
  }
  printf("gradcheck %-24s %2d params %6lld elems  fd rel err %.2e (%s)", g->name, r.nparams,
         (long long)r.nelems, r.worst_rel, r.worst_param);
  if (o->tol_f32 >= 0) printf("  f32/f64 %.2e (%s)", r.worst_f32, r.worst_f32_tensor);
  printf("%s\n", r.ok ? "" : "  FAIL");
  cg_program_free(p);
  gc_vals_free_(g, &v);
  return r;
}

#endif
