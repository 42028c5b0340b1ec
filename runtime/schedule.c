/* schedule.c: the learning rate of each optimizer step (docs/training.md, "Learning-rate
 * schedules"): a linear warm-up, a hold at the peak, then a decay (1/sqrt(step) as the
 * paper's appendices C and E, cosine or linear to min_lr at the last step, or none). The
 * training loop sets Optim.lr from it before each update; the update formulas only read
 * Optim.lr. */
#include <math.h>

#include "train.h"

double rt_lr_at(const Config *c, int64_t t) {
  const double lr = c->lr, lo = c->min_lr;
  const int64_t W = c->warmup, H = c->hold, peak = W + H;
  if (t < 1) t = 1;
  if (t <= W) return lr * (double)t / (double)W;
  if (t <= peak || c->decay == DECAY_NONE) return lr;
  const int64_t D = (int64_t)c->steps - peak; /* the decay's length: to the last step */
  const double s = D > 0 ? fmin(1.0, (double)(t - peak) / (double)D) : 1.0;
  switch (c->decay) {
  case DECAY_RSQRT: /* continuous at the peak: lr there, proportional to 1/sqrt(t) after */
    return fmax(lo, lr * sqrt((double)MC_MAX(peak, 1) / (double)t));
  case DECAY_COSINE:
    return lo + (lr - lo) * 0.5 * (1.0 + cos(M_PI * s));
  case DECAY_LINEAR:
    return lr - (lr - lo) * s;
  case DECAY_NONE:
    break;
  }
  return lr;
}
