/* run.h: the parts a run is made of, shared by train_loop.c, evaluate.c, checkpoint.c,
 * report.c and grad.c (train.h has the entry points). */
#ifndef MOEC_RUN_H
#define MOEC_RUN_H

#include "multidev.h"
#include "train_dev.h"

/* One device's run: its program, data, optimizer, outputs and statistics. */
typedef struct Run {
  const Config *cfg;
  RunOpts o; /* rank > 0: quiet, no files */
  Comm *comm;
  Program *p;
  int rank, P;
  int Bl, T;      /* this device's batch rows, the unroll */
  Corpus *corpus;
  Optim *opt;
  DevOptim *dopt; /* the optimizer on the device (cuda); NULL: the host's */
  float **params, **grads; /* host views for the host optimizer, by parameter */
  FILE *out;      /* progress and summary lines (stdout; stderr under --json) */
  FILE *devnull;  /* out of ranks > 0 */
  FILE *metrics;
  bool tty;
  double floor_nats; /* the synthetic corpus's entropy rate; 0: unknown */
  CommStats stats;   /* this device's collectives (training steps only) */
  double t_train, t_eval, t_data;
} Run;

/* ---- evaluate.c */
/* Copies ids (the tensor's numel int32 values) into the program's input t. */
void rt_feed(Program *p, const Tensor *t, const int32_t *ids);
/* A scalar tensor's value (0 for NULL). */
double rt_read_scalar(Program *p, const Tensor *t);
/* Mean cross-entropy over one pass of a split, from zero state, with the forward part
 * of p (its training state put back after): this device's rows of every global batch on
 * comm (the sum over devices of each device's xent is the global batch's mean). Tokens
 * counted: the whole batch's. Collective. */
double rt_evaluate(Comm *c, Program *p, const Corpus *corpus, Split split, int64_t *tokens);

/* ---- checkpoint.c */
/* Every parameter's initial values from the seed (a device's rows of the sharded ones:
 * the values one device gives them). */
void rt_init_params(Program *p, uint64_t seed);
/* The text vocabulary a checkpoint stores (data.vocab), or NULL; free with rt_words_free. */
char **rt_ckpt_vocab(const StFile *f, int *n);
void rt_words_free(char **w, int n);
/* Resumes r from f: parameters (this device's rows), optimizer state, carried state;
 * returns the step to start from (0, with a note, for a weights-only file). */
int64_t rt_ckpt_resume(Run *r, const StFile *f);
/* Collective on N devices: rank 0 writes one checkpoint with the names and shapes of one
 * device (experts and optimizer moments gathered from their owners, every device's
 * state rows), atomically. */
void rt_ckpt_save(Run *r, const char *path, int64_t step);
/* Dies before training, not after it, when a checkpoint could not be written there. */
void rt_ckpt_check_path(const char *path);

/* ---- guard.c: every one collective on several devices */
/* The kernel context of training step `step` (0-based). */
KernelCtx rt_train_ctx(Run *r, int64_t step);
/* After a step's forward and backward, before the optimizer: a loss or gradient that is
 * not finite stops the run (exit 1) naming the step and the first op whose output went
 * non-finite (the step replayed op by op). */
void rt_guard_step(Run *r, int64_t step, double loss);
/* After an evaluation at `step` steps done: a loss that is not finite, or whose
 * perplexity is not (over ~709.78 nats), stops the run. */
void rt_guard_eval(Run *r, int64_t step, Split split, double loss);
/* Before a checkpoint: a parameter that is not finite stops the run (none is written). */
void rt_guard_params(Run *r, int64_t step);
/* Rank 0: a write error so far on stdout, the progress stream or the metrics file
 * stops the run. */
void rt_guard_outputs(Run *r);
/* Closes the metrics file and flushes stdout, dying on a write error (a full disk). */
void rt_guard_close(Run *r);
/* Several devices: the ranks' data (tokens, vocabulary) and --load file are the same. */
void rt_guard_inputs(Run *r, const StFile *ck);

/* ---- report.c */
void rt_report_header(Run *r, int64_t start);
/* The progress line (when due) and the step's metrics line. */
void rt_report_step(Run *r, int64_t step, int64_t steps, double loss, double xent, double aux,
                    double tokens_per_s, bool show);
void rt_report_eval(Run *r, int64_t step, Split split, double loss, int64_t tokens, double secs);
/* The end: test and valid perplexity, timings, memory per device, collectives; one JSON
 * object with --json. Collective (memory and statistics are gathered). */
typedef struct RunTotals {
  int64_t steps, done;
  double valid, test;             /* losses */
  double train_loss, train_xent;  /* over the last 100 steps */
  double last_loss, tokens_per_s;
} RunTotals;
void rt_report_summary(Run *r, const RunTotals *t);

#endif
