/* test_fastmath.c: runtime/fastmath.h's float32 polynomials against libm (in double)
 * over the ranges the kernels use, the gate noise's draws: their distribution
 * (mean, variance, Kolmogorov-Smirnov against the normal cdf, the two halves of a pair
 * uncorrelated), float32 against float64, and their determinism. */
#include <stdint.h>
#include <string.h>

#include "../common/common.h"
#include "../runtime/fastmath.h"
#include "test.h"

/* |got - want| in units of the float spacing at want */
static double ulps(float got, double want) {
  double sp =
      fabs(want) < 1.1754943508222875e-38 ? 1.4012984643248171e-45 : ldexp(1.0, ilogb(want) - 23);
  return fabs((double)got - want) / sp;
}

/* rt_logf: every u1 of the noise ((a + 1) / 2^24), every float in [1, 2] (softplus's
 * log1p argument), and a sweep over [1e-30, 1e30] */
static void t_logf(void) {
  double worst = 0;
  for (uint32_t a = 0; a < (1u << 24); a++) {
    float u = (float)(a + 1u) * 5.9604644775390625e-8f;
    worst = fmax(worst, ulps(rt_logf(u), log((double)u)));
  }
  for (float x = 1.0f; x <= 2.0f; x = nextafterf(x, 3.0f))
    worst = fmax(worst, ulps(rt_logf(x), log((double)x)));
  for (double x = 1e-30; x < 1e30; x *= 1.0001) {
    float xf = (float)x;
    worst = fmax(worst, ulps(rt_logf(xf), log((double)xf)));
  }
  printf("rt_logf: max error %.2f ulp\n", worst);
  CHECK(worst <= 1.0);
}

/* rt_cossin2pif: every u on the 2^-24 grid of [0, 1), absolute error */
static void t_cossin(void) {
  double worst = 0;
  for (uint32_t b = 0; b < (1u << 24); b++) {
    float u = (float)b * 5.9604644775390625e-8f, c, s;
    rt_cossin2pif(u, &c, &s);
    double a = 6.283185307179586476925 * (double)u;
    worst = fmax(worst, fmax(fabs(c - cos(a)), fabs(s - sin(a))));
  }
  printf("rt_cossin2pif: max |error| %.3g\n", worst);
  CHECK(worst <= 1e-7);
}

/* rt_softplusf on [-80, 80] against the double softplus */
static void t_softplus(void) {
  double worst = 0;
  for (float x = -80.0f; x <= 80.0f; x += 0.000731f) {
    double want = fmax((double)x, 0) + log1p(exp(-fabs((double)x)));
    worst = fmax(worst, ulps(rt_softplusf(x), want));
  }
  printf("rt_softplusf: max error %.2f ulp\n", worst);
  CHECK(worst <= 3.0);
}

/* rt_normcdff and rt_normpdff against the double Phi and density */
static void t_normal(void) {
  double wabs = 0, wrel = 0, wpdf = 0;
  for (float z = -20.0f; z <= 20.0f; z += 0.000377f) {
    double want = 0.5 * erfc(-(double)z / sqrt(2.0)), got = rt_normcdff(z);
    wabs = fmax(wabs, fabs(got - want));
    if (z >= -12.0f && z <= 0.0f) wrel = fmax(wrel, fabs(got - want) / want);
    if (fabsf(z) < 13.0f) {
      double pd = 0.3989422804014327 * exp(-0.5 * (double)z * z);
      wpdf = fmax(wpdf, fabs(rt_normpdff(z) - pd) / pd);
    }
  }
  printf("rt_normcdff: max |error| %.3g, max relative error on [-12, 0] %.3g; rt_normpdff: max "
         "relative error %.3g on [-13, 13]\n",
         wabs, wrel, wpdf);
  CHECK(wabs <= 2e-7);
  CHECK(wrel <= 3e-5);
  CHECK(wpdf <= 1e-5);
  CHECK(rt_normcdff(INFINITY) == 1.0f && rt_normcdff(-INFINITY) == 0.0f);
}

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Kolmogorov-Smirnov statistic sqrt(n) * D of n sorted draws against N(0,1) */
static double ks(const float *z, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; i++) {
    double f = 0.5 * erfc(-(double)z[i] / sqrt(2.0));
    d = fmax(d, fmax(fabs(f - (double)i / n), fabs(f - (double)(i + 1) / n)));
  }
  return sqrt((double)n) * d;
}

/* The draws' distribution: 2^21 pairs of one key, all, even and odd elements */
static void t_noise_distribution(void) {
  const int64_t n = 1 << 22;
  uint64_t key = mc_rng_key(42, 7, 3);
  float *z = malloc((size_t)n * sizeof(float)), *h = malloc((size_t)n / 2 * sizeof(float));
  double s1 = 0, s2 = 0, s4 = 0, cross = 0, maxabs = 0, worst64 = 0;
  for (int64_t c = 0; c < n; c++) {
    z[c] = rt_noise_normalf(key, (uint64_t)c);
    double d = rt_noise_normal(key, (uint64_t)c);
    worst64 = fmax(worst64, fabs(z[c] - d) / (1 + fabs(d)));
    s1 += z[c];
    s2 += (double)z[c] * z[c];
    s4 += (double)z[c] * z[c] * z[c] * z[c];
    maxabs = fmax(maxabs, fabs(z[c]));
    if (c & 1) cross += (double)z[c] * z[c - 1];
  }
  double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n, corr = cross / (n / 2);
  printf("noise: %lld draws: mean %.5f, var %.5f, E z^4 %.4f, corr(pair) %.5f, max |z| %.2f, "
         "|f32 - f64| <= %.2g (1 + |z|)\n",
         (long long)n, mean, var, kurt, corr, maxabs, worst64);
  CHECK(fabs(mean) < 5 / sqrt((double)n));
  CHECK(fabs(var - 1) < 5 * sqrt(2.0 / n));
  CHECK(fabs(kurt - 3) < 5 * sqrt(96.0 / n));
  CHECK(fabs(corr) < 5 / sqrt(n / 2.0));
  CHECK(maxabs > 4.5 && maxabs <= 5.8); /* the tail stops at sqrt(48 ln 2) = 5.77 */
  CHECK(worst64 < 5e-7);
  /* the halves alone (the cosines, the sines), then all: KS at the 0.1% level (1.95) */
  for (int half = 0; half < 2; half++) {
    for (int64_t j = 0; j < n / 2; j++)
      h[j] = z[2 * j + half];
    qsort(h, (size_t)(n / 2), sizeof(float), cmp_f);
    double k = ks(h, n / 2);
    printf("noise: KS sqrt(n) D, %s halves: %.3f\n", half ? "odd" : "even", k);
    CHECK(k < 1.95);
  }
  qsort(z, (size_t)n, sizeof(float), cmp_f);
  double k = ks(z, n);
  printf("noise: KS sqrt(n) D, all: %.3f\n", k);
  CHECK(k < 1.95);
  free(z);
  free(h);
}

/* The draw is a function of (key, counter) alone: the same element drawn again, alone
 * or in its pair, gives the same bits; another step's key gives other values. */
static void t_noise_determinism(void) {
  uint64_t k1 = mc_rng_key(9, 3, 100), k2 = mc_rng_key(9, 3, 101);
  int same = 0;
  for (uint64_t c = 1000; c < 3000; c++) {
    float a = rt_noise_normalf(k1, c), b = rt_noise_normalf(k1, c), z0, z1;
    rt_noise_pairf(rt_noise_bits(k1, c / 2), &z0, &z1);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    CHECK(a == ((c & 1) ? z1 : z0));
    same += a == rt_noise_normalf(k2, c);
  }
  CHECK(same == 0);
}

int main(void) {
  t_logf();
  t_cossin();
  t_softplus();
  t_normal();
  t_noise_distribution();
  t_noise_determinism();
  TEST_DONE();
}
