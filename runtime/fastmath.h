/* fastmath.h: the float32 exp, sigmoid and tanh of the CPU kernels
 * (kernels_dense.c), polynomials without libm calls so loops vectorise. Shared with
 * the tests that check generated code against the CPU kernels bit for bit
 * (tests/test_nvrtc.c compiles codegen/nvrtc.c's kernels as host C with these);
 * codegen/jit.c writes the same operations out in LLVM IR. Prefix: rt_. */
#ifndef MOEC_RUNTIME_FASTMATH_H
#define MOEC_RUNTIME_FASTMATH_H

#include <stdint.h>
#include <string.h>

/* exp(x) in float32 without a libm call (so loops vectorise): Cody-Waite reduction
 * x = n*ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes expf's), then
 * 2^n through the exponent bits. Within 2 ulp of expf on [-87, 88]; x is clamped
 * there (exp(-87) = 1.6e-38, exp(88) = 1.7e38); NaN stays NaN. */
static inline float rt_expf(float x) {
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
  uint32_t bits = (uint32_t)((int32_t)nf + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

static inline float rt_sigmoidf(float x) {
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

#endif
