/* profile.h: each instruction's time over training steps of a program on the cpu (moec
 * calibrate's in-situ kernel factors, bench/op_profile). */
#ifndef MOEC_PROFILE_H
#define MOEC_PROFILE_H

#include "train.h"

typedef struct RtProfile {
  int steps;       /* timed steps (after one warm-up step) */
  double *instr_s; /* [p->ninstrs]: seconds of each instruction, summed over the steps */
  double optim_s;  /* the optimizer's update (cfg's optimizer), summed */
  /* the same, each its median over the steps: a time slice lost to another process
   * (a shared machine) moves a mean by milliseconds, a median not */
  double *instr_med, optim_med;
  double step_med; /* the median step (its instructions and the optimizer) */
} RtProfile;

/* Initialises p's parameters from cfg's seed and fills its i32 inputs with random ids
 * below its vocabulary, then runs one warm-up training step and `steps` timed ones,
 * each instruction timed alone by `clock` (mc_now, or mc_cpu_now: the process's CPU
 * time). p: a training program in host memory (drv_compile): of one device (comm NULL),
 * or of device comm->rank of comm->size, every rank profiling at once (its collectives
 * run; the optimizer updates its own parameters without the global norm). */
struct Comm;
RtProfile rt_profile_steps(Program *p, const Config *cfg, int steps, double (*clock)(void),
                           struct Comm *comm);
/* best <- the least of best and r (profiles of one program of ninstrs instructions), each
 * field on its own: every instruction's median and sum, the optimizer's, the median step.
 * Repeats on a shared machine: another process only ever adds time, so the least of a
 * few is what the machine can do. best empty (instr_med NULL): a copy of r. */
void rt_profile_keep_min(RtProfile *best, const RtProfile *r, int ninstrs);
void rt_profile_free(RtProfile *r);

#endif
