/* trace.h: a Chrome / Perfetto trace of a few training steps (moec run --trace FILE):
 * every kernel and collective a span ("complete" event, ph X) on its device's track,
 * inside the step's data, forward, backward and optimizer spans. trace.c; the trace-event
 * format: docs/training.md, "Tracing a step". Prefix: rt_trace_. */
#ifndef MOEC_RUNTIME_TRACE_H
#define MOEC_RUNTIME_TRACE_H

#include "runtime.h"

#define RT_TRACE_STEPS 3 /* steps a trace holds */

typedef struct RtTrace {
  McBuf ev;          /* the events so far: JSON objects, comma-separated */
  int n;             /* how many */
  int tid;           /* the track: this device's rank */
  double epoch;      /* mc_now() at time 0, the same on every device of the run */
  const Backend *be; /* synchronised after each kernel when not the cpu (asynchronous launches) */
} RtTrace;

/* A span [t0, t1] (mc_now() seconds) named `name` in category `cat` on t's track; args: a
 * JSON object's members ("\"layer\":\"m\"") or NULL. */
void rt_trace_span(RtTrace *t, const char *name, const char *cat, double t0, double t1,
                   const char *args);
/* The traced interpreter loop over [from, to) (exec.c calls it when ctx->trace is set). */
void rt_trace_exec(Program *p, const KernelCtx *ctx, int from, int to);

#endif
