/* kernels_sampled.c: the sampled softmax's log-uniform candidate sampler (runtime.h); its
 * kernels are kernels_sampled.inc, instantiated by kernels_dense.c. docs/moe.md ("Sampled
 * softmax") has the maths. Prefix: rt_. */
#include <math.h>
#include <string.h>

#include "runtime.h"

/* ---------------------------------------------------------------- the sampler */

double rt_log_uniform_p(int64_t c, int64_t V) {
  return log1p(1.0 / (double)(c + 1)) / log((double)V + 1.0);
}

double rt_log_uniform_expected(int64_t c, int64_t V, int64_t tries) {
  if (tries <= 0) return 1; /* every class is among the samples */
  return -expm1((double)tries * log1p(-rt_log_uniform_p(c, V)));
}

int64_t rt_sample_log_uniform(uint64_t key, int64_t V, int64_t S, int32_t *cand) {
  MOEC_ASSERT(V >= 1 && S >= 1 && S <= V && V <= INT32_MAX);
  if (S == V) { /* all of them: the exact softmax */
    for (int64_t c = 0; c < V; c++)
      cand[c] = (int32_t)c;
    return 0;
  }
  uint8_t *seen = mc_calloc((size_t)(V + 7) / 8, 1);
  double lv = log((double)V + 1.0);
  /* rare classes can take many draws when S is close to V; this bound is never near for
   * S <= V/2 (the expected draws are a few times S) */
  int64_t cap = 64 * V + 1000000, tries = 0, m = 0;
  while (m < S) {
    if (tries == cap)
      mc_die("sampled_softmax_xent: %lld distinct of %lld classes took more than %lld draws "
             "from the log-uniform proposal: use samples = vocab (all classes: the exact "
             "softmax) or fewer samples",
             (long long)S, (long long)V, (long long)cap);
    double u = mc_rng_uniform(key, (uint64_t)tries++);
    int64_t c = (int64_t)floor(exp(u * lv)) - 1;
    c = c < 0 ? 0 : c >= V ? V - 1 : c;
    if (seen[c >> 3] >> (c & 7) & 1) continue;
    seen[c >> 3] |= (uint8_t)(1u << (c & 7));
    cand[m++] = (int32_t)c;
  }
  mc_free(seen);
  return tries;
}

void rt_sample_candidates(const KernelCtx *ctx, const Node *n, int64_t V, int64_t S, int32_t *cand,
                          int32_t *tries) {
  uint64_t key = mc_rng_key(ctx->seed, (uint64_t)n->ia[0], ctx->step);
  int64_t nt = rt_sample_log_uniform(key, V, S, cand);
  tries[0] = (int32_t)(nt > INT32_MAX ? INT32_MAX : nt);
}
