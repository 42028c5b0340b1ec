/* fastmath.h: the float32 exp, sigmoid, tanh, log, sine/cosine and softplus of the CPU
 * kernels (kernels_dense.c, kernels_moe.c), polynomials without libm calls so loops
 * vectorise, and the gate noise's normal draws. Shared with the tests that check
 * generated code against the CPU kernels bit for bit (tests/test_nvrtc.c compiles
 * codegen/nvrtc.c's kernels as host C with these); codegen/jit.c writes exp, sigmoid
 * and tanh out in LLVM IR; runtime/cuda/kernels_moe.cu compiles the noise's functions
 * for the device (-fmad=false there: the same bits). Prefix: rt_. */
#ifndef MOEC_RUNTIME_FASTMATH_H
#define MOEC_RUNTIME_FASTMATH_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* host and device (the noise's functions are compiled by nvcc too) */
#ifdef __CUDACC__
#define RT_HD __host__ __device__
#else
#define RT_HD
#endif

/* the bits of a float and back (memcpy: no aliasing; the device has the intrinsics) */
static inline RT_HD uint32_t rt_f2u(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}
static inline RT_HD float rt_u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/* exp(x) in float32 without a libm call (so loops vectorise): Cody-Waite reduction
 * x = n*ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes expf's), then
 * 2^n through the exponent bits. Within 2 ulp of expf on [-87, 88]; x is clamped
 * there (exp(-87) = 1.6e-38, exp(88) = 1.7e38); NaN stays NaN. */
static inline RT_HD float rt_expf(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float nf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln2) */
  float r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * rt_u2f((uint32_t)((int32_t)nf + 127) << 23);
}

static inline RT_HD float rt_sigmoidf(float x) {
  return 1.0f / (1.0f + rt_expf(-x));
}

/* tanh: an odd polynomial for |x| < 0.625 (Cephes tanhf's), 1 - 2/(e^2x + 1) beyond */
static inline float rt_tanhf(float x) {
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = x + x * z * p;
  float big = 1.0f - 2.0f / (rt_expf(2.0f * x) + 1.0f);
  return z < 0.390625f ? small : big;
}

/* log(x) for a positive normal float (Cephes logf's reduction and polynomial):
 * x = m * 2^e, m in [sqrt(1/2), sqrt(2)), log(m) = a degree-9 polynomial in m - 1.
 * Within 1 ulp of log() on [1e-30, 1e30] (tests/test_fastmath.c); 0, negative, subnormal,
 * infinite and NaN arguments are not handled (the callers never pass them). */
static inline RT_HD float rt_logf(float x) {
  uint32_t b = rt_f2u(x);
  float e = (float)((int32_t)(b >> 23) - 126);
  float m = rt_u2f((b & 0x007fffffu) | 0x3f000000u); /* [0.5, 1) */
  bool lo = m < 0.707106781186547524f;
  e = lo ? e - 1.0f : e;
  m = lo ? (m + m) - 1.0f : m - 1.0f;
  float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (m + y) + e * 0.693359375f;
}

/* cos(2 pi u) and sin(2 pi u) for u in [0, 1): u = q/4 + t exactly (|t| <= 1/8), then
 * Cephes' sinf/cosf polynomials on 2 pi t in [-pi/4, pi/4] and the quadrant q's
 * symmetry. Within 1e-7 of cos/sin (absolute) for every u on the 2^-24 grid in [0, 1)
 * (the noise's) (tests/test_fastmath.c checks them all). */
static inline RT_HD void rt_cossin2pif(float u, float *c, float *s) {
  float q = (u * 4.0f + 12582912.0f) - 12582912.0f; /* round(4u): 0..4 */
  float a = (u - q * 0.25f) * 6.28318530717958647692f;
  float z = a * a;
  float sn = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * a + a;
  float cs =
      ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
      0.5f * z + 1.0f;
  int qi = (int)q & 3;
  float c1 = (qi & 1) ? sn : cs, s1 = (qi & 1) ? cs : sn;
  *c = (qi == 1 || qi == 2) ? -c1 : c1;
  *s = (qi >= 2) ? -s1 : s1;
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(y) = log(1 + y) * y / ((1 + y) - 1)
 * keeps the relative accuracy for small y (Goldberg's trick). Within 3 ulp of the double
 * softplus on [-80, 80] (tests/test_fastmath.c). */
static inline RT_HD float rt_softplusf(float x) {
  float y = rt_expf(x < 0 ? x : -x), u = 1.0f + y;
  float l = rt_logf(u) * (y / (u - 1.0f)); /* both sides computed: the loop vectorises */
  float l1p = u == 1.0f ? y : l;
  return (x > 0 ? x : 0.0f) + l1p;
}

/* The standard normal cdf Phi(z) = erfc(-z / sqrt 2) / 2 in float32: erfc by Numerical
 * Recipes' Chebyshev fit (erfcc: relative error < 1.2e-7), one exp and one division.
 * Within 2e-7 of the double Phi (absolute) on [-20, 20], and within 3e-5 relative for
 * z in [-12, 0] (tests/test_fastmath.c); Phi(+inf) = 1, Phi(-inf) = 0. */
static inline RT_HD float rt_normcdff(float z) {
  float x = fabsf(z) * 0.70710678118654752f;
  float t = 1.0f / (1.0f + 0.5f * x);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  float h = 0.5f * t * rt_expf(p - x * x); /* erfc(x) / 2 */
  return z < 0 ? h : 1.0f - h;
}

/* the standard normal density in float32: within 1e-5 relative on [-13, 13] (the
 * rounding of z^2 / 2 dominates); tiny, not 0, past |z| = 13.2 (rt_expf's clamp) */
static inline RT_HD float rt_normpdff(float z) {
  return 0.398942280401432678f * rt_expf(-0.5f * z * z);
}

/* ---- the gate noise's normal draws ----
 * Element c (a global counter: row * E + expert) takes half of pair p = c / 2's draw:
 * one 64-bit hash (splitmix64's, of key + p * golden gamma) gives two 24-bit uniforms,
 * u1 = (a + 1) / 2^24 in (0, 1] and u2 = b / 2^24 in [0, 1), exact in float, and
 * Box-Muller both outputs: element 2p gets sqrt(-2 log u1) cos(2 pi u2), element 2p + 1
 * the sine. The tails stop at 5.77 sigma (u1 >= 2^-24). float32: the polynomials
 * above; float64: libm on the same u1, u2 (kernels_moe.c). */
static inline RT_HD uint64_t rt_noise_bits(uint64_t key, uint64_t pair) {
  uint64_t x = key + pair * 0x9e3779b97f4a7c15ull + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
static inline RT_HD float rt_noise_u1(uint64_t r) {
  return (float)((uint32_t)(r >> 40) + 1u) * 5.9604644775390625e-8f;
}
static inline RT_HD float rt_noise_u2(uint64_t r) {
  return (float)((uint32_t)(r >> 16) & 0xffffffu) * 5.9604644775390625e-8f;
}
/* the pair's two normal draws in float32 */
static inline RT_HD void rt_noise_pairf(uint64_t r, float *z0, float *z1) {
  float rad = sqrtf(-2.0f * rt_logf(rt_noise_u1(r))), c, s;
  rt_cossin2pif(rt_noise_u2(r), &c, &s);
  *z0 = rad * c;
  *z1 = rad * s;
}
/* the pair's two normal draws in float64 (libm; the float64 kernels', for gradcheck) */
static inline RT_HD void rt_noise_pair(uint64_t r, double *z0, double *z1) {
  double rad = sqrt(-2.0 * log((double)rt_noise_u1(r))),
         a = 6.283185307179586 * (double)rt_noise_u2(r);
  *z0 = rad * cos(a);
  *z1 = rad * sin(a);
}
/* element c's draw, float32 and float64 */
static inline RT_HD float rt_noise_normalf(uint64_t key, uint64_t c) {
  float z0, z1;
  rt_noise_pairf(rt_noise_bits(key, c >> 1), &z0, &z1);
  return (c & 1) ? z1 : z0;
}
static inline RT_HD double rt_noise_normal(uint64_t key, uint64_t c) {
  double z0, z1;
  rt_noise_pair(rt_noise_bits(key, c >> 1), &z0, &z1);
  return (c & 1) ? z1 : z0;
}

#endif
