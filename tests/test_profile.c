/* test_profile.c: rt_profile_keep_min (runtime/profile.c), how moec calibrate keeps the
 * least of its repeated rounds: every field the least of the profiles seen, instruction by
 * instruction, whichever round it came from; the first profile copied, not shared. And
 * mc_thread_cpu_now, the one-thread kernels' clock: a sleep (a wait for a core) adds wall
 * time, not the thread's CPU time; work adds both. */
#include <time.h>

#include "../runtime/profile.h"
#include "test.h"

/* A profile of 3 instructions: medians m[], sums 12 x those; optimizer and step. */
static RtProfile make(const double m[3], double opt, double step) {
  RtProfile r = {.steps = 12, .optim_med = opt, .optim_s = 12 * opt, .step_med = step};
  r.instr_med = mc_calloc(3, sizeof(double));
  r.instr_s = mc_calloc(3, sizeof(double));
  for (int k = 0; k < 3; k++) {
    r.instr_med[k] = m[k];
    r.instr_s[k] = 12 * m[k];
  }
  return r;
}

int main(void) {
  static const double a[3] = {3e-3, 1e-6, 5e-4}, b[3] = {2e-3, 4e-6, 6e-4},
                      c[3] = {9e-3, 9e-6, 9e-4};
  RtProfile best = {0};
  RtProfile ra = make(a, 2e-3, 7e-3), rb = make(b, 1e-3, 8e-3), rc = make(c, 5e-3, 9e-3);
  rt_profile_keep_min(&best, &ra, 3); /* the first: a copy */
  CHECK(best.instr_med != ra.instr_med && best.instr_s != ra.instr_s);
  for (int k = 0; k < 3; k++)
    CHECK(best.instr_med[k] == a[k] && best.instr_s[k] == 12 * a[k]);
  rt_profile_free(&ra); /* best keeps its own */
  CHECK(best.optim_med == 2e-3 && best.step_med == 7e-3 && best.steps == 12);
  rt_profile_keep_min(&best, &rb, 3); /* the least of each, from either round */
  static const double lo[3] = {2e-3, 1e-6, 5e-4};
  for (int k = 0; k < 3; k++)
    CHECK(best.instr_med[k] == lo[k] && best.instr_s[k] == 12 * lo[k]);
  CHECK(best.optim_med == 1e-3 && best.optim_s == 12e-3 && best.step_med == 7e-3);
  rt_profile_keep_min(&best, &rc, 3); /* a busier round changes nothing */
  for (int k = 0; k < 3; k++)
    CHECK(best.instr_med[k] == lo[k]);
  CHECK(best.optim_med == 1e-3 && best.step_med == 7e-3);
  rt_profile_free(&rb);
  rt_profile_free(&rc);
  rt_profile_free(&best);
  CHECK(!best.instr_med && !best.instr_s);

  double w0 = mc_now(), c0 = mc_thread_cpu_now();
  struct timespec nap = {0, 50 * 1000 * 1000};
  nanosleep(&nap, NULL);
  CHECK(mc_now() - w0 >= 0.049 && mc_thread_cpu_now() - c0 < 0.01);
  w0 = mc_now();
  c0 = mc_thread_cpu_now();
  volatile double x = 0;
  while (mc_thread_cpu_now() - c0 < 0.02)
    x += 1;
  CHECK(x > 0 && mc_now() - w0 >= 0.02 - 1e-4); /* one thread's CPU time within the wall's */
  TEST_DONE();
}
