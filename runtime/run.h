/* run.h: the parts a run is made of, shared by train_loop.c, evaluate.c, checkpoint.c,
 * report.c and grad.c (train.h has the entry points). */
#ifndef MOEC_RUN_H
#define MOEC_RUN_H

#include "multidev.h"
#include "text.h"
#include "trace.h"
#include "train_dev.h"

/* A translation model's data (train_nmt.c): the shared BPE vocabulary (learned from the
 * training pairs, or a checkpoint's) and the pairs encoded with it, batched by length. */
typedef struct Pairs {
  const char *path, *valid_path;
  RtBpe *bpe;
  RtParData *train, *valid; /* valid: NULL when the data has none */
  int64_t budget;           /* ids per batch (batch_tokens) */
  int quantum;              /* rows of a batch: a multiple of it (rt_par_quantum) */
} Pairs;

/* One device's run: its program, data, optimizer, outputs and statistics. */
typedef struct Run {
  const Config *cfg;
  RunOpts o; /* rank > 0: quiet, no files */
  Comm *comm;
  Program *p;
  int rank, P;
  int Bl, T;      /* this device's batch rows, the unroll */
  Corpus *corpus; /* a language model's data */
  Pairs *pairs;   /* a translation model's */
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
  /* gradient accumulation (train.accumulate = K > 1) */
  int K;
  void **kstate; /* [K * nstates]: each micro-batch's carried state (device buffers) */
  float **acc;   /* by parameter: the step's gradient summed over its micro-batches */
  int npatch;    /* the instructions after which the summed MoE statistics go in */
  struct AccPatch *patch;
  RtTrace *trace; /* the step being traced, or NULL */
  double t_start; /* mc_now() when the first step began */
} Run;

/* ---- run.c: what every training run sets up and tears down around its data */
/* Fills r (outputs: rank 0 prints and writes) and returns the checkpoint to resume from
 * (--load), or NULL. */
StFile *rt_run_open(Run *r, Comm *comm, Program *p, const Config *cfg, const RunOpts *o);
/* The optimizer, parameters (from the seed, then ck's, which it closes), host views, the
 * metrics file, the header; returns the step to start from. After the data is loaded. */
int64_t rt_run_start(Run *r, StFile *ck);
/* Frees what rt_run_open and rt_run_start made (not the data). */
void rt_run_close(Run *r);
/* The kernel context of step s's micro-batch j (0 without accumulation) on this device. */
KernelCtx rt_run_ctx(Run *r, int64_t s, int j);
/* One training step of the batch fed to this device's r->Bl rows: forward and backward;
 * returns the global loss (*xent, *aux its parts). Collective. */
double rt_run_step(Run *r, int64_t s, double *xent, double *aux, int *stop);
/* A stop that is no signal: the run's train.max_time is spent (a normal end otherwise). */
#define RT_STOP_TIME (-1)
/* The global loss of a step whose forward and backward ran, from this device's share
 * xent of the mean cross-entropy: one all-reduce over the devices, which also agrees on
 * a stop (*stop: SIGINT or SIGTERM when any device got one, else RT_STOP_TIME when any
 * device's clock passed train.max_time since r->t_start, else 0; stop may be NULL).
 * Collective. */
double rt_run_loss(Run *r, double xent, double *xent_out, double *aux_out, int *stop);
/* After step s: dies if the loss diverged; the learning rate of step s + 1 (schedule.c);
 * the optimizer (global gradient norm over the devices; the accumulated gradients with
 * accumulate = K); carried state. Collective. */
void rt_run_update(Run *r, double loss, int64_t s);

/* ---- accumulate.c: train.accumulate = K > 1 */
/* The micro-batches' state buffers and summed gradients (nothing when K = 1). */
void rt_accum_setup(Run *r);
void rt_accum_free(Run *r);
/* Forward and backward of the step's K micro-batches ids[j], tg[j] (this device's rows of
 * each); the gradients add up in r->acc. Returns this device's share of the xent. */
double rt_accum_step(Run *r, int32_t *const *ids, int32_t *const *tg, int64_t s);

/* ---- train_nmt.c */
/* Loads cfg's parallel data for a run of P devices: the BPE vocabulary of the checkpoint
 * ck (may be NULL) or one of `vocab` ids learned from the training pairs; the pairs
 * encoded; what was left out reported on out (NULL: silent). Dies on a bad file. */
Pairs *rt_pairs_load(const Config *cfg, const StFile *ck, int vocab, int P, FILE *out);
void rt_pairs_free(Pairs *d);
/* The BPE vocabulary a checkpoint stores (metadata data.bpe), or NULL when it has none;
 * dies on a malformed one. */
RtBpe *rt_ckpt_bpe(const StFile *f);
/* Feeds the rows [row0, row0 + rows) of a global batch (src[B,S], tgt_in[B,T], tgt_out
 * [B,T]) to a translation program bound at that batch's shape. */
void rt_feed_pairs(Program *p, const RtParBatch *b, const int32_t *src, const int32_t *tgt_in,
                   const int32_t *tgt_out, int row0, int rows);

/* ---- translate.c */
/* Translates the n id sequences src[i] (nsrc[i] ids, </s> last) with the encoder program
 * enc and the decoder step dec; out[i] (mc_free it): nout[i] output ids, </s> left out.
 * Deterministic. */
void rt_decode(Program *enc, Program *dec, const DecodeOpts *o, int32_t *const *src,
               const int64_t *nsrc, int64_t n, int32_t **out, int64_t *nout);

/* ---- evaluate.c */
/* Copies ids (the tensor's numel int32 values) into the program's input t. */
void rt_feed(Program *p, const Tensor *t, const int32_t *ids);
/* A scalar tensor's value (0 for NULL). */
double rt_read_scalar(Program *p, const Tensor *t);
/* One pass over an evaluation split. */
typedef struct EvalResult {
  double loss;      /* mean cross-entropy per predicted token (nats) */
  double nll;       /* the predicted tokens' total -log p */
  int64_t tokens;   /* tokens predicted */
  int64_t left_out; /* file corpora: the split's tokens not predicted (each stream's
                       first but a primed one, and the last N mod B) */
  int64_t words;    /* text: the split's words and line ends (per-word perplexity) */
  double word_ppl;  /* exp(loss * split tokens / words): per word; exact when none is left
                       out; NAN without words */
} EvalResult;
/* Cross-entropy over one pass of a split, from zero state, with the forward part of p
 * (its training state put back after): this device's rows of every global batch on comm
 * (the sum over devices of each device's xent is the global batch's mean), every full
 * batch and the pass's last partial one (its real positions, from the probabilities).
 * Collective. */
EvalResult rt_evaluate(Comm *c, Program *p, const Corpus *corpus, Split split);
/* The softmax probabilities [rows, V] of p's loss (its xent's second output), or NULL. */
const Tensor *rt_probs_tensor(const Program *p);
/* The same for a translation model: mean cross-entropy per target token (padding left
 * out) over the pairs d in length buckets, each batch bound at its shape; *tokens: the
 * target tokens. Collective. */
double rt_evaluate_pairs(Comm *c, Program *p, const Pairs *pairs, const RtParData *d,
                         int64_t *tokens);

/* ---- checkpoint.c */
/* Every parameter's initial values from the seed (a device's rows of the sharded ones:
 * the values one device gives them). */
void rt_init_params(Program *p, uint64_t seed);
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
/* What a step reports. */
typedef struct StepInfo {
  int64_t step, steps; /* 1-based step just done, of steps */
  double loss, xent, aux;
  double lr;           /* the learning rate of this step's update */
  int64_t tokens;      /* trained on so far (every device's), this step's included */
  double rate;         /* tokens/s over the last steps (up to 20) */
  double elapsed, eta; /* seconds since the first step, and to the last (at `rate`) */
} StepInfo;
/* The progress line (when show) and the step's metrics line. */
void rt_report_step(Run *r, const StepInfo *si, bool show);
void rt_report_eval(Run *r, int64_t step, Split split, const EvalResult *e, double secs);
/* The end: test and valid perplexity, timings, memory per device, collectives; one JSON
 * object with --json. Collective (memory and statistics are gathered). */
typedef struct RunTotals {
  int64_t steps, done;
  double valid, test;             /* losses */
  double train_loss, train_xent;  /* over the last 100 steps */
  double last_loss, tokens_per_s;
  double step_s_median; /* of the last steps (the first step left out): a steady step */
} RunTotals;
void rt_report_summary(Run *r, const RunTotals *t);
/* The loop ended after step s of `steps` with `stop` (rt_run_loss's): a signal writes the
 * checkpoint, says how to resume and returns 128 + the signal, as a shell's status;
 * otherwise 0 (a spent max_time said, tot->steps = s) and the caller evaluates and saves
 * as at the last step. */
int rt_run_end(Run *r, int stop, int64_t s, int64_t steps, RunTotals *tot);
/* The losses of a run's last RT_TAIL steps, whichever step ends it (train_loss in the
 * summary: their mean). */
enum { RT_TAIL = 100 };
typedef struct RtTail {
  double loss[RT_TAIL], xent[RT_TAIL];
  int64_t n; /* steps added */
} RtTail;
void rt_tail_add(RtTail *t, double loss, double xent);
/* Fills tot->train_loss and tot->train_xent (no step: tot->last_loss, NAN). */
void rt_tail_totals(const RtTail *t, RunTotals *tot);

#endif
