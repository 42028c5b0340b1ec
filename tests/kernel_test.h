/* kernel_test.h: what the CPU kernel tests share: fixed pseudo-random values, writing
 * and reading a tensor's buffer in either precision, the relative error against a
 * reference, and the tolerance per precision. */
#ifndef MOEC_TESTS_KERNEL_TEST_H
#define MOEC_TESTS_KERNEL_TEST_H

#include <math.h>

#include "../codegen/codegen.h"

/* Fixed pseudo-random values in [-s, s]. */
static inline double *randv(int64_t n, uint64_t seed, double s) {
  double *v = mc_malloc((size_t)n * sizeof(double));
  uint64_t key = mc_rng_key(seed, 99, 0);
  for (int64_t i = 0; i < n; i++)
    v[i] = s * (2 * mc_rng_uniform(key, (uint64_t)i) - 1);
  return v;
}

static inline void set(Program *p, const Tensor *t, const double *v) {
  for (int64_t i = 0; i < t->numel; i++) {
    if (p->prec == PREC_F64)
      rt_f64(p, t)[i] = v[i];
    else
      rt_f32(p, t)[i] = (float)v[i];
  }
}

static inline double get(Program *p, const Tensor *t, int64_t i) {
  return p->prec == PREC_F64 ? rt_f64(p, t)[i] : (double)rt_f32(p, t)[i];
}

/* max |out - ref| / max(max |ref|, 1e-30) */
static inline double rel_err(Program *p, const Tensor *t, const double *ref) {
  double md = 0, mr = 0;
  for (int64_t i = 0; i < t->numel; i++) {
    double a = get(p, t, i);
    md = fmax(md, fabs(a - ref[i]));
    mr = fmax(mr, fabs(ref[i]));
    if (a != a) md = INFINITY;
  }
  return md / fmax(mr, 1e-30);
}

static inline double tol(Precision pr) {
  return pr == PREC_F64 ? 1e-12 : 2e-6;
}

#endif
