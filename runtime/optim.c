/* optim.c: optimizers (Adam; the paper's factored second moment, appendix D),
 * global gradient-norm clipping, and deterministic parameter initialisation.
 *
 * All updates are computed in double per element from float state and stored
 * back as float, in a fixed order, so a resumed run (state restored from a
 * checkpoint) repeats an uninterrupted one bit for bit. Formulas:
 * docs/training.md ("Optimizers"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

/* Rows, columns and leading (batch) count of a parameter factored as matrices. */
static void factor_dims(const Optim *o, int i, int64_t *lead, int64_t *rows, int64_t *cols) {
  int r = o->prank[i];
  *rows = o->shape[i][r - 2];
  *cols = o->shape[i][r - 1];
  *lead = o->numel[i] / MC_MAX(1, *rows * *cols);
}

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
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    o->names[i] = t->name;
    o->numel[i] = t->numel;
    o->prank[i] = t->ty.rank;
    memcpy(o->shape[i], t->shape, sizeof o->shape[i]);
    if (factored(o, i)) {
      int64_t lead, rows, cols;
      factor_dims(o, i, &lead, &rows, &cols);
      o->vr[i] = mc_calloc((size_t)(lead * rows), e);
      o->vc[i] = mc_calloc((size_t)(lead * cols), e);
    } else {
      if (o->kind == OPT_ADAM) o->m[i] = mc_calloc((size_t)t->numel, e);
      o->v[i] = mc_calloc((size_t)t->numel, e);
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
  mc_free(o);
}

/* The arrays of an elem-8 optimizer: doubles behind float pointers. */
static double *dbl(float *p) {
  return (double *)(void *)p;
}

/* rt_optim_apply in double (moec run --f64): the same formulas, nothing rounded to
 * float, so runs that differ only in summation order agree to double rounding. */
static void apply_f64(Optim *o, float *const *params, float *const *grads, double norm) {
  double scale = 1.0;
  o->last_norm = norm;
  if (!isfinite(norm))
    mc_die("the gradient norm is %g at step %lld: training diverged (try a smaller lr or clip)",
           norm, (long long)o->t + 1);
  if (o->clip > 0 && norm > o->clip) scale = o->clip / norm;
  o->t++;
  const double b1 = o->beta1, b2 = o->beta2, lr = o->lr, eps = o->eps;
  const double bc1 = 1.0 - pow(b1, (double)o->t), bc2 = 1.0 - pow(b2, (double)o->t);
  for (int i = 0; i < o->n; i++) {
    if (!grads[i]) continue; /* not updated on this device (multidev.c) */
    double *p = dbl(params[i]);
    const double *gr = dbl(grads[i]);
    if (o->kind == OPT_ADAM) {
      double *m = dbl(o->m[i]), *v = dbl(o->v[i]);
      for (int64_t k = 0; k < o->numel[i]; k++) {
        double g = gr[k] * scale;
        m[k] = b1 * m[k] + (1.0 - b1) * g;
        v[k] = b2 * v[k] + (1.0 - b2) * g * g;
        p[k] -= lr * (m[k] / bc1) / (sqrt(v[k] / bc2) + eps);
      }
    } else if (!factored(o, i)) {
      double *v = dbl(o->v[i]);
      for (int64_t k = 0; k < o->numel[i]; k++) {
        double g = gr[k] * scale;
        v[k] = b2 * v[k] + (1.0 - b2) * g * g;
        p[k] -= lr * g / (sqrt(v[k] / bc2) + eps);
      }
    } else {
      int64_t lead, rows, cols;
      factor_dims(o, i, &lead, &rows, &cols);
      double *colsum = mc_malloc((size_t)cols * sizeof(double));
      for (int64_t l = 0; l < lead; l++) {
        double *pl = p + l * rows * cols, *vr = dbl(o->vr[i]) + l * rows,
               *vc = dbl(o->vc[i]) + l * cols;
        const double *gl = gr + l * rows * cols;
        for (int64_t c = 0; c < cols; c++)
          colsum[c] = 0;
        double rsum = 0;
        for (int64_t r = 0; r < rows; r++) {
          double s = 0;
          for (int64_t c = 0; c < cols; c++) {
            double g = gl[r * cols + c] * scale, g2 = g * g;
            s += g2;
            colsum[c] += g2;
          }
          vr[r] = b2 * vr[r] + (1.0 - b2) * (s / (double)cols);
          rsum += vr[r];
        }
        for (int64_t c = 0; c < cols; c++)
          vc[c] = b2 * vc[c] + (1.0 - b2) * (colsum[c] / (double)rows);
        double rmean = rsum / (double)rows;
        for (int64_t r = 0; r < rows; r++)
          for (int64_t c = 0; c < cols; c++) {
            double g = gl[r * cols + c] * scale;
            double vhat = rmean > 0 ? vr[r] * vc[c] / rmean : 0.0;
            pl[r * cols + c] -= lr * g / (sqrt(vhat / bc2) + eps);
          }
      }
      mc_free(colsum);
    }
  }
}

void rt_optim_step(Optim *o, float *const *params, float *const *grads) {
  double ss = 0;
  for (int i = 0; i < o->n; i++)
    for (int64_t k = 0; k < o->numel[i]; k++)
      ss += o->elem == sizeof(double) ? dbl(grads[i])[k] * dbl(grads[i])[k]
                                      : (double)grads[i][k] * grads[i][k];
  rt_optim_apply(o, params, grads, sqrt(ss));
}

void rt_optim_apply(Optim *o, float *const *params, float *const *grads, double norm) {
  if (o->elem == sizeof(double)) {
    apply_f64(o, params, grads, norm);
    return;
  }
  double scale = 1.0;
  o->last_norm = norm;
  if (!isfinite(norm))
    mc_die("the gradient norm is %g at step %lld: training diverged (try a smaller lr or clip)",
           norm, (long long)o->t + 1);
  if (o->clip > 0 && norm > o->clip) scale = o->clip / norm;
  o->t++;
  const double b1 = o->beta1, b2 = o->beta2, lr = o->lr, eps = o->eps;
  const double bc1 = 1.0 - pow(b1, (double)o->t), bc2 = 1.0 - pow(b2, (double)o->t);
  for (int i = 0; i < o->n; i++) {
    if (!grads[i]) continue; /* not updated on this device (multidev.c) */
    float *p = params[i];
    const float *gr = grads[i];
    if (o->kind == OPT_ADAM) {
      float *m = o->m[i], *v = o->v[i];
      for (int64_t k = 0; k < o->numel[i]; k++) {
        double g = gr[k] * scale;
        double mk = b1 * m[k] + (1.0 - b1) * g, vk = b2 * v[k] + (1.0 - b2) * g * g;
        m[k] = (float)mk;
        v[k] = (float)vk;
        p[k] = (float)(p[k] - lr * (mk / bc1) / (sqrt(vk / bc2) + eps));
      }
    } else if (!factored(o, i)) {
      float *v = o->v[i];
      for (int64_t k = 0; k < o->numel[i]; k++) {
        double g = gr[k] * scale, vk = b2 * v[k] + (1.0 - b2) * g * g;
        v[k] = (float)vk;
        p[k] = (float)(p[k] - lr * g / (sqrt(vk / bc2) + eps));
      }
    } else {
      int64_t lead, rows, cols;
      factor_dims(o, i, &lead, &rows, &cols);
      double *colsum = mc_malloc((size_t)cols * sizeof(double));
      for (int64_t l = 0; l < lead; l++) {
        float *pl = p + l * rows * cols, *vr = o->vr[i] + l * rows, *vc = o->vc[i] + l * cols;
        const float *gl = gr + l * rows * cols;
        for (int64_t c = 0; c < cols; c++)
          colsum[c] = 0;
        double rsum = 0;
        for (int64_t r = 0; r < rows; r++) {
          double s = 0;
          for (int64_t c = 0; c < cols; c++) {
            double g = gl[r * cols + c] * scale, g2 = g * g;
            s += g2;
            colsum[c] += g2;
          }
          vr[r] = (float)(b2 * vr[r] + (1.0 - b2) * (s / (double)cols));
          rsum += vr[r];
        }
        for (int64_t c = 0; c < cols; c++)
          vc[c] = (float)(b2 * vc[c] + (1.0 - b2) * (colsum[c] / (double)rows));
        double rmean = rsum / (double)rows;
        for (int64_t r = 0; r < rows; r++)
          for (int64_t c = 0; c < cols; c++) {
            double g = gl[r * cols + c] * scale;
            double vhat = rmean > 0 ? (double)vr[r] * vc[c] / rmean : 0.0;
            pl[r * cols + c] = (float)(pl[r * cols + c] - lr * g / (sqrt(vhat / bc2) + eps));
          }
      }
      mc_free(colsum);
    }
  }
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
