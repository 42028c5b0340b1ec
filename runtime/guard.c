/* guard.c: what stops a run before it loses work: divergence (a loss, gradient or
 * parameter that is not finite: the run stops naming the step and the first op whose
 * output went non-finite, and writes no checkpoint), write errors on the run's outputs,
 * and ranks that would train on different data or checkpoints. docs/training.md. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "run.h"

/* ---------------------------------------------------------------- finiteness */

/* Whether n floats (elem 4) or doubles (elem 8) at p are all finite: no value with
 * every exponent bit set (inf, NaN). Integer tests OR-ed: vectorised, one pass at
 * memory speed (a gradient check a step costs a fraction of the optimizer's pass). */
static bool all_finite(const void *p, int64_t n, size_t elem) {
  const char *c = p;
  int64_t k = 0;
  if (elem == sizeof(double)) {
    const uint64_t e = 0x7ff0000000000000ull;
    uint64_t bad = 0, u[8], t; /* blocks of a fixed size: vectorised at -O2 */
    for (; k + 8 <= n; k += 8) {
      memcpy(u, c + 8 * k, sizeof u); /* the bits, without breaking aliasing rules */
      for (int j = 0; j < 8; j++)
        bad |= (uint64_t)((u[j] & e) == e);
    }
    for (; k < n; k++) {
      memcpy(&t, c + 8 * k, 8);
      bad |= (uint64_t)((t & e) == e);
    }
    return !bad;
  }
  const uint32_t e = 0x7f800000u;
  uint32_t bad = 0, u[16], t;
  for (; k + 16 <= n; k += 16) {
    memcpy(u, c + 4 * k, sizeof u);
    for (int j = 0; j < 16; j++)
      bad |= (uint32_t)((u[j] & e) == e);
  }
  for (; k < n; k++) {
    memcpy(&t, c + 4 * k, 4);
    bad |= (uint32_t)((t & e) == e);
  }
  return !bad;
}

/* Whether tensor t's values at buf (p's device) are all finite (i32 tensors are). */
static bool buffer_finite(Program *p, const Tensor *t, const void *buf, bool skip_neg_inf) {
  if (t->ty.dtype == DT_I32 || t->numel <= 0) return true;
  void *owned = NULL;
  const void *v = buf;
  if (!rt_dev_on_host(p)) {
    owned = mc_malloc((size_t)t->numel * p->elem);
    p->be->download(owned, buf, (size_t)t->numel * p->elem);
    v = owned;
  }
  bool ok;
  if (!skip_neg_inf) {
    ok = all_finite(v, t->numel, p->elem);
  } else { /* topk's threshold column is -inf by design when k == experts */
    ok = true;
    for (int64_t k = 0; k < t->numel && ok; k++) {
      double x = p->elem == sizeof(double) ? ((const double *)v)[k] : ((const float *)v)[k];
      ok = isfinite(x) || x == -INFINITY;
    }
  }
  mc_free(owned);
  return ok;
}

/* Whether any rank saw bad (one all-reduce on several devices). */
static bool any_rank(Run *r, bool bad) {
  if (r->P <= 1) return bad;
  double f = bad ? 1.0 : 0.0;
  r->comm->all_reduce_sum_f64(r->comm, &f, 1);
  return f > 0;
}

/* Stops every rank with msg: rank 0 reports (the others wait to be stopped by it). */
_Noreturn static void stop(Run *r, const char *msg) {
  Comm *c = r->comm;
  if (r->P <= 1) mc_die("%s", msg);
  if (c->rank != 0) c->barrier(c);
  c->abort(c, msg);
  mc_die("%s", msg); /* abort does not return */
}

/* Replays the training step's program one instruction at a time (every rank in step,
 * for its collectives) and describes the first one whose output is not finite. */
static void first_nonfinite(Run *r, int64_t step, McBuf *b) {
  Program *p = r->p;
  KernelCtx ctx = rt_run_ctx(r, step, 0);
  int first = -1, slot = 0;
  for (int k = 0; k < p->ninstrs; k++) {
    rt_exec(p, &ctx, k, k + 1);
    const Node *n = p->instrs[k].node;
    /* a folded dW is written in part; its xs and g are checked where they are made */
    if (n->op == OP_GROUPED_MATMUL_DW && n->ia[0]) continue;
    for (int j = 0; j < n->nout && first < 0; j++)
      if (!buffer_finite(p, n->out[j], p->instrs[k].out[j], n->op == OP_TOPK)) first = k, slot = j;
  }
  int me = first < 0 ? p->ninstrs : first;
  int rank_first = me, at = r->rank;
  if (r->P > 1) { /* the earliest instruction of any rank (ranks run the same program) */
    int *all = mc_malloc((size_t)r->P * 2 * sizeof(int)), mine[2] = {me, slot};
    r->comm->all_gather(r->comm, mine, all, sizeof mine);
    for (int i = 0; i < r->P; i++)
      if (all[2 * i] < rank_first) rank_first = all[2 * i], slot = all[2 * i + 1], at = i;
    mc_free(all);
  }
  if (rank_first >= p->ninstrs) {
    mc_buf_printf(b, "; replayed op by op, every op's output is finite (the step is not "
                     "reproducible?)");
    return;
  }
  const Node *n = p->instrs[rank_first].node;
  mc_buf_printf(b, "; the first non-finite value: tensor '%s', output of op %s", n->out[slot]->name,
                ir_ops[n->op].name);
  if (n->layer) mc_buf_printf(b, " of layer '%s'", n->layer);
  if (n->loc.line) mc_buf_printf(b, " (%d:%d)", n->loc.line, n->loc.col);
  mc_buf_printf(b, " in the %s pass", n->backward ? "backward" : "forward");
  if (r->P > 1) mc_buf_printf(b, " on device %d", at);
}

/* Stops the run at step (0-based); locate: replay it to find the first non-finite op. */
_Noreturn static void diverged(Run *r, int64_t step, const char *what, double v, bool locate) {
  McBuf b = {0};
  mc_buf_printf(&b, "training diverged at step %lld: %s is ", (long long)step + 1, what);
  if (isnan(v))
    mc_buf_printf(&b, "nan"); /* not "-nan" */
  else if (isinf(v) && !strncmp(what, "the gradient", 12))
    mc_buf_printf(&b, "not finite");
  else
    mc_buf_printf(&b, "%g%s", v, isfinite(v) ? " (its perplexity overflows)" : "");
  if (locate) first_nonfinite(r, step, &b);
  mc_buf_printf(&b, ". No checkpoint was written at this step (try a smaller lr, or clip)");
  static _Thread_local char msg[4096]; /* a device thread's: freed before the run stops */
  snprintf(msg, sizeof msg, "%s", b.data);
  mc_buf_free(&b);
  stop(r, msg);
}

/* Elements of a whole gradient one task of the guard's scan checks: tasks fixed by the
 * shapes, as every kernel's. */
#define GUARD_SPAN ((int64_t)1 << 16)

/* One task of the scan: parameter i's gradient elements [a, b), or (a folded expert dW)
 * its experts [a, b). */
typedef struct GuardTask {
  int i;
  bool fold;
  int64_t a, b;
} GuardTask;

typedef struct GuardJob {
  const Run *r;
  const GuardTask *t;
  unsigned char *bad; /* [task]: it saw a value that is not finite */
} GuardJob;

/* Parameter i's folded expert dW (optim.c's rt_optim_fold), NULL when its gradient is
 * whole. */
static const FoldDW *fold_of(const Run *r, int i) {
  const FoldDW *f = r->opt->fold ? &r->opt->fold[i] : NULL;
  return f && f->off && (const void *)r->grads[i] == f->dw ? f : NULL;
}

/* Whether experts [a, b) of a folded expert dW are finite: the experts the kernel wrote,
 * and the others' factors, their rows of xs and g (finite factors whose product
 * overflows are left to the optimizer's norm, which stops the run). */
static bool fold_finite(const FoldDW *f, size_t e, int64_t a, int64_t b) {
  const char *xs = f->xs, *g = f->g, *dw = f->dw;
  for (int64_t x = a; x < b; x++) {
    int64_t r0 = f->off[x], rows = f->off[x + 1] - r0;
    if (rows > RT_FOLD_ROWS ? !all_finite(dw + (size_t)(x * f->K * f->M) * e, f->K * f->M, e)
                            : !all_finite(xs + (size_t)(r0 * f->K) * e, rows * f->K, e) ||
                                  !all_finite(g + (size_t)(r0 * f->M) * e, rows * f->M, e))
      return false;
  }
  return true;
}

static void guard_task(void *arg, int64_t k) {
  const GuardJob *J = arg;
  const GuardTask *t = &J->t[k];
  const size_t e = J->r->p->elem;
  J->bad[k] = t->fold
                  ? !fold_finite(fold_of(J->r, t->i), e, t->a, t->b)
                  : !all_finite((const char *)J->r->grads[t->i] + (size_t)t->a * e, t->b - t->a, e);
}

/* The first parameter (in order) whose gradient is not finite, or -1: one pass over every
 * gradient, split over the threads (the step waits for it; on one thread it took about
 * 1.7 ms of bench/lm_bench.moe's step). */
static int first_bad_grad(Run *r) {
  const Graph *g = r->p->g;
  int64_t n = 0, cap = 64;
  GuardTask *t = mc_malloc((size_t)cap * sizeof(GuardTask));
  for (int i = 0; i < g->nparams; i++) {
    const FoldDW *f = fold_of(r, i);
    int64_t len = f ? f->E : g->params[i]->numel, per = f ? 1 : GUARD_SPAN;
    for (int64_t a = 0; a < len; a += per) {
      if (n == cap) t = mc_realloc(t, (size_t)(cap *= 2) * sizeof(GuardTask));
      t[n++] = (GuardTask){i, f != NULL, a, MC_MIN(len, a + per)};
    }
  }
  GuardJob J = {r, t, mc_calloc((size_t)MC_MAX(n, 1), 1)};
  rt_parallel(n, guard_task, &J);
  int bad = -1;
  for (int64_t k = 0; k < n && bad < 0; k++)
    if (J.bad[k]) bad = t[k].i;
  mc_free(J.bad);
  mc_free(t);
  return bad;
}

void rt_guard_step(Run *r, int64_t step, double loss) {
  Program *p = r->p;
  bool bad = !isfinite(loss);
  int bad_grad = !bad && rt_dev_on_host(p) ? first_bad_grad(r) : -1;
  if (!any_rank(r, bad || bad_grad >= 0)) return;
  if (bad) diverged(r, step, "the loss", loss, true);
  char what[512];
  snprintf(what, sizeof what, "the gradient of '%s'",
           bad_grad >= 0 ? p->g->params[bad_grad]->name : "a parameter on another device");
  diverged(r, step, what, INFINITY, true); /* printed "not finite" */
}

void rt_guard_eval(Run *r, int64_t step, Split split, double loss) {
  if (isfinite(exp(loss))) return; /* a mean above ~709.78 nats a token is divergence too */
  const char *what = split == SPLIT_TEST ? "the test loss" : "the valid loss";
  if (isfinite(loss)) diverged(r, MC_MAX(step - 1, 0), what, loss, false);
  /* the batch the step replays: this step's (its inputs, as training fed them) */
  Batcher b;
  rt_batcher_init_rows(&b, r->corpus, SPLIT_TRAIN, r->Bl * r->P, r->T, r->rank * r->Bl, r->Bl);
  rt_batcher_seek(&b, MC_MAX(step - 1, 0));
  size_t nl = (size_t)r->Bl * (size_t)r->T;
  int32_t *ids = mc_malloc(nl * sizeof(int32_t)), *tg = mc_malloc(nl * sizeof(int32_t));
  rt_batcher_next(&b, ids, tg);
  rt_feed(r->p, r->p->ids, ids);
  rt_feed(r->p, r->p->targets, tg);
  mc_free(ids);
  mc_free(tg);
  rt_batcher_free(&b);
  diverged(r, MC_MAX(step - 1, 0), what, loss, true);
}

void rt_guard_params(Run *r, int64_t step) {
  Program *p = r->p;
  int bad = -1;
  for (int i = 0; bad < 0 && i < p->g->nparams; i++)
    if (!buffer_finite(p, p->g->params[i], p->buf[p->g->params[i]->id], false)) bad = i;
  if (!any_rank(r, bad >= 0)) return;
  char msg[1024];
  snprintf(msg, sizeof msg,
           "training diverged at step %lld: parameter '%s' is not finite%s. No checkpoint was "
           "written (try a smaller lr, or clip)",
           (long long)step, bad >= 0 ? p->g->params[bad]->name : "?",
           bad < 0 ? " on another device" : "");
  stop(r, msg);
}

/* ---------------------------------------------------------------- outputs */

/* Flushes f (a line a step at most: cheap), dying on a write error with its errno
 * (ENOSPC on a full disk). */
static void check_stream(FILE *f, const char *what, const char *path) {
  if (!f) return;
  errno = 0;
  if (fflush(f) == 0 && !ferror(f)) return;
  int e = errno ? errno : EIO;
  clearerr(f); /* reported here, not again at exit (moec.c) */
  if (path) mc_die("cannot write %s '%s': %s", what, path, strerror(e));
  mc_die("cannot write %s: %s", what, strerror(e));
}

void rt_guard_outputs(Run *r) {
  if (r->rank != 0) return;
  check_stream(stdout, "the standard output", NULL);
  if (r->out != stdout) check_stream(r->out, "the standard error", NULL);
  check_stream(r->metrics, "the metrics file", r->o.metrics);
}

void rt_guard_close(Run *r) {
  if (r->metrics) {
    check_stream(r->metrics, "the metrics file", r->o.metrics);
    errno = 0;
    if (fclose(r->metrics) != 0)
      mc_die("cannot write the metrics file '%s': %s", r->o.metrics, strerror(errno ? errno : EIO));
    r->metrics = NULL;
  }
  if (r->rank != 0) return;
  check_stream(stdout, "the standard output", NULL);
}

/* ---------------------------------------------------------------- ranks */

void rt_guard_inputs(Run *r, const StFile *ck) {
  if (r->P <= 1) return;
  const Corpus *c = r->corpus;
  if (c) { /* a language model's corpus (translation models: the checkpoint only) */
    uint64_t h = comm_hash_bytes(&c->kind, sizeof c->kind, 0);
    for (int s = 0; s < 3; s++)
      if (c->tok[s]) h = comm_hash_bytes(c->tok[s], (size_t)c->ntok[s] * sizeof(int32_t), h);
    if (c->tk) {
      const char *key;
      char *v = rt_tok_serialize(c->tk, &key);
      h = comm_hash_bytes(v, strlen(v), h);
      mc_free(v);
    }
    comm_check_same(r->comm, "data (a digest of its tokens and vocabulary)", h);
  }
  comm_check_same(r->comm, "--load checkpoint (a digest of the file)",
                  ck ? comm_hash_bytes(ck->buf, ck->size, 0) : 0);
}
