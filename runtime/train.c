/* train.c: the training loop and the programs around it.
 *
 *   rt_train           : moec run: build -> passes (with autodiff) -> bind -> lower,
 *                        init params from the seed, then per step: batch, forward +
 *                        backward, optimizer, carry LSTM state; evaluation on
 *                        valid/test with a forward-only program; progress,
 *                        metrics (JSON lines), checkpoints, resume
 *   rt_eval_checkpoint : moec eval: test perplexity of a checkpoint
 *   rt_grad            : moec grad: loss and gradients of one batch
 *
 * Resume is exact: a checkpoint holds the params, the optimizer state, the
 * carried LSTM state and the step; the data position and every random draw are
 * functions of (seed, step), so N steps, or k steps + save + load + N-k steps,
 * give the same losses bit for bit. docs/training.md describes it all. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../passes/passes.h"
#include "multidev.h"
#include "train.h"
#include "train_dev.h"

/* ---------------------------------------------------------------- compiled programs */

typedef struct Compiled {
  Graph *g;
  Program *p;
  Tensor *ids, *targets;
  int vocab; /* ids and targets must be below it */
} Compiled;

static const Tensor *through_reshapes(const Tensor *t) {
  while (t->producer && (t->producer->op == OP_RESHAPE || t->producer->op == OP_RESHARD))
    t = t->producer->in[0];
  return t;
}

/* Finds the two i32[B, T] inputs: the one softmax_xent reads as targets and the
 * other (token ids); and the model's vocabulary. */
static void find_inputs(Compiled *c) {
  Graph *g = c->g;
  const Tensor *tg = NULL;
  int vin = 0, vout = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_XENT && !tg) {
      tg = through_reshapes(n->in[1]);
      vout = (int)n->in[0]->shape[n->in[0]->ty.rank - 1];
    }
  }
  if (!tg || tg->kind != TK_INPUT)
    mc_die("model '%s' cannot be trained: no softmax_xent reads its targets from a model input",
           g->name);
  for (int i = 0; i < g->ninputs; i++) {
    Tensor *t = g->inputs[i];
    if (t->ty.dtype != DT_I32 || t->ty.rank != 2 || t->shape[0] != g->B || t->shape[1] != g->T) {
      char buf[128];
      mc_die("model input '%s' is %s: training feeds two i32[B, T] inputs, token ids and targets",
             t->name, type_str(&t->ty, buf, sizeof buf));
    }
    if (t == tg)
      c->targets = t;
    else if (!c->ids)
      c->ids = t;
    else
      mc_die("model '%s' has more than two inputs ('%s', '%s', ...): training feeds token ids "
             "and targets",
             g->name, c->ids->name, t->name);
  }
  if (!c->ids) mc_die("model '%s' has no input for token ids besides the targets", g->name);
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_EMBEDDING && through_reshapes(n->in[0]) == c->ids)
      vin = vin ? MC_MIN(vin, (int)n->in[1]->shape[0]) : (int)n->in[1]->shape[0];
  }
  c->vocab = vin ? MC_MIN(vin, vout) : vout;
  if (c->vocab > 65536) c->vocab = 65536;
}

/* Device `rank` of P: its B/P rows; on P > 1 only its experts (rt_md_prepare). */
static Graph *build_on(AstFile *f, const Config *cfg, bool training, int B, int T, int P,
                       int rank) {
  Graph *g = ir_build(f, cfg);
  PassCtx pc = {cfg, P, training};
  pass_run_all(g, &pc, NULL, NULL);
  if (!g->loss) mc_die("model '%s' has no loss: training needs a softmax_xent output", g->name);
  rt_md_prepare(g, rank, P); /* its experts only */
  rt_md_bind(g, B, T, P);    /* B/P rows (on(...) subsets: B/|set|), expert rows widened */
  rt_md_check_graph(g, cfg, P);
  return g;
}

static Graph *build(AstFile *f, const Config *cfg, bool training, int B, int T) {
  return build_on(f, cfg, training, B, T, 1, 0);
}

static Compiled lower(Graph *g, Precision prec, const Backend *be) {
  Compiled c = {0};
  c.g = g;
  find_inputs(&c);
  c.p = rt_dev_lower(g, prec, be); /* cpu, or cuda with its device context (train_dev.c) */
  return c;
}

static void compiled_free(Compiled *c) {
  cg_program_free(c->p);
  ir_graph_free(c->g);
}

static size_t graph_bytes(const Graph *g, size_t elem) {
  size_t n = 0;
  for (int i = 0; i < g->ntensors; i++)
    n += (size_t)g->tensors[i]->numel * (g->tensors[i]->ty.dtype == DT_I32 ? 4 : elem);
  return n;
}

static size_t param_bytes(const Graph *g) {
  size_t n = 0;
  for (int i = 0; i < g->nparams; i++)
    n += (size_t)g->params[i]->numel * sizeof(float);
  return n;
}

/* Available memory (MemAvailable), or 0 when unknown. */
static double mem_available(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024.0;
}

static void check_memory(const char *what, double need, double params, double acts, double optim) {
  double avail = mem_available();
  const char *env = getenv("MOEC_MEMORY_LIMIT"); /* bytes; for tests and shared machines */
  if (env && *env) avail = strtod(env, NULL);
  if (avail > 0 && need > avail)
    mc_die("%s needs about %.2f GiB (parameters %.2f GiB, activations and gradients %.2f GiB, "
           "optimizer state %.2f GiB) but only %.2f GiB of memory is available; reduce batch, "
           "unroll or the model's size",
           what, need / 1073741824.0, params / 1073741824.0, acts / 1073741824.0,
           optim / 1073741824.0, avail / 1073741824.0);
}

static void upload_ids(Program *p, const Tensor *t, const int32_t *ids) {
  rt_dev_upload_input(p, p->buf[t->id], ids, (size_t)t->numel * sizeof(int32_t));
}

static double read_scalar(Program *p, const Tensor *t) {
  if (!t) return 0;
  if (p->prec == PREC_F64) {
    double v;
    p->be->download(&v, p->buf[t->id], sizeof v);
    return v;
  }
  float v;
  p->be->download(&v, p->buf[t->id], sizeof v);
  return v;
}

static void zero_state(Program *p) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state;
    size_t nb = (size_t)s->numel * p->elem;
    void *z = mc_calloc(1, nb);
    p->be->upload(p->buf[s->id], z, nb);
    mc_free(z);
  }
}

/* Copies every param of `from` into the same-named param of `to`. */
static void copy_params(Program *to, Program *from) {
  for (int i = 0; i < to->g->nparams; i++) {
    const Tensor *t = to->g->params[i], *s = NULL;
    for (int k = 0; k < from->g->nparams && !s; k++) {
      int j = (i + k) % from->g->nparams; /* same order: found at k = 0 */
      if (!strcmp(from->g->params[j]->name, t->name)) s = from->g->params[j];
    }
    MOEC_ASSERT(s && s->numel == t->numel && to->elem == from->elem);
    to->be->copy(to->buf[t->id], from->buf[s->id], (size_t)t->numel * to->elem);
  }
}

/* Mean cross-entropy over one pass of a split, from zero state. */
static double evaluate(Compiled *ev, const Corpus *corpus, Split split, int64_t *tokens) {
  Graph *g = ev->g;
  Batcher b;
  rt_batcher_init(&b, corpus, split, (int)g->B, (int)g->T);
  int64_t steps = rt_batcher_eval_steps(&b);
  size_t n = (size_t)(g->B * g->T);
  int32_t *ids = mc_malloc(n * sizeof(int32_t)), *tg = mc_malloc(n * sizeof(int32_t));
  zero_state(ev->p);
  KernelCtx ctx = {.training = false,
                   .seed = 0,
                   .step = 0,
                   .batch0 = 0,
                   .batch_local = g->B,
                   .device = 0,
                   .ndevices = 1,
                   .dev = ev->p->dev};
  double sum = 0;
  for (int64_t s = 0; s < steps; s++) {
    rt_batcher_next(&b, ids, tg);
    upload_ids(ev->p, ev->ids, ids);
    upload_ids(ev->p, ev->targets, tg);
    rt_exec(ev->p, &ctx, 0, ev->p->first_backward);
    sum += read_scalar(ev->p, g->xent);
    rt_carry_state(ev->p);
  }
  mc_free(ids);
  mc_free(tg);
  rt_batcher_free(&b);
  if (tokens) *tokens = steps * (int64_t)n;
  return sum / (double)steps;
}

/* Mean cross-entropy over one pass of a split on N devices: the forward part of the
 * training program tr (this device's rows of each global batch, its experts, the
 * all-to-alls), from zero state; the training state is put back after. The sum over
 * devices of each device's xent is the global batch's mean (xent's 1/(rows*P)). */
static double evaluate_md(Comm *c, Compiled *tr, const Corpus *corpus, Split split,
                          int64_t *tokens) {
  Graph *g = tr->g;
  Program *p = tr->p;
  const int P = c->size, Bl = (int)g->B, B = Bl * P, T = (int)g->T;
  Batcher b; /* this device's rows of the global batch only */
  rt_batcher_init_rows(&b, corpus, split, B, T, c->rank * Bl, Bl);
  int64_t steps = rt_batcher_eval_steps(&b);
  size_t n = (size_t)B * (size_t)T, nl = (size_t)Bl * (size_t)T;
  int32_t *ids = mc_malloc(nl * sizeof(int32_t)), *tg = mc_malloc(nl * sizeof(int32_t));
  void **saved = mc_calloc((size_t)g->nstates + 1, sizeof(void *));
  for (int i = 0; i < g->nstates; i++) { /* the training state, put back below */
    const Tensor *s = g->states[i].state;
    saved[i] = mc_malloc((size_t)s->numel * p->elem);
    p->be->download(saved[i], p->buf[s->id], (size_t)s->numel * p->elem);
  }
  zero_state(p);
  double comm_s[2] = {0, 0}; /* the collectives' time is training's: not evaluation's */
  if (c->rank < RT_INPROC_MAX) memcpy(comm_s, rt_md_comm_seconds[c->rank], sizeof comm_s);
  KernelCtx ctx = {.training = false,
                   .seed = 0,
                   .step = 0,
                   .batch0 = (int64_t)c->rank * Bl,
                   .batch_local = Bl,
                   .device = c->rank,
                   .ndevices = P,
                   .comm = c,
                   .graph = g};
  double sum = 0;
  for (int64_t s = 0; s < steps; s++) {
    rt_batcher_next(&b, ids, tg);
    upload_ids(p, tr->ids, ids);
    upload_ids(p, tr->targets, tg);
    rt_exec(p, &ctx, 0, p->first_backward);
    /* the loss on(...) other devices: this one has no rows of it */
    if (!g->xent->producer || rt_md_runs(g->xent->producer, c->rank, P))
      sum += read_scalar(p, g->xent);
    rt_carry_state(p);
  }
  c->all_reduce_sum_f64(c, &sum, 1);
  if (c->rank < RT_INPROC_MAX) memcpy(rt_md_comm_seconds[c->rank], comm_s, sizeof comm_s);
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state;
    p->be->upload(p->buf[s->id], saved[i], (size_t)s->numel * p->elem);
    mc_free(saved[i]);
  }
  mc_free(saved);
  mc_free(ids);
  mc_free(tg);
  rt_batcher_free(&b);
  if (tokens) *tokens = steps * (int64_t)n;
  return sum / (double)steps;
}

/* ---------------------------------------------------------------- MoE monitoring */

typedef struct MoeStat {
  double cv, load_ratio;
} MoeStat;

static MoeStat moe_stat(Program *p, int i) {
  Graph *g = p->g;
  MoeStat st = {0, 0};
  const Tensor *imp = g->moe_importance ? g->moe_importance[i] : NULL;
  const Tensor *load = g->moe_load ? g->moe_load[i] : NULL;
  if (imp && imp->numel > 0) {
    double *v = mc_malloc((size_t)imp->numel * sizeof(double));
    float *f = mc_malloc((size_t)imp->numel * p->elem);
    p->be->download(f, p->buf[imp->id], (size_t)imp->numel * p->elem);
    double mean = 0, var = 0;
    for (int64_t k = 0; k < imp->numel; k++) {
      v[k] = p->prec == PREC_F64 ? ((double *)(void *)f)[k] : f[k];
      mean += v[k] / (double)imp->numel;
    }
    for (int64_t k = 0; k < imp->numel; k++)
      var += (v[k] - mean) * (v[k] - mean) / (double)imp->numel;
    st.cv = mean > 0 ? sqrt(var) / mean : 0;
    mc_free(v);
    mc_free(f);
  }
  if (load && load->numel > 0) {
    float *f = mc_malloc((size_t)load->numel * p->elem);
    p->be->download(f, p->buf[load->id], (size_t)load->numel * p->elem);
    double mean = 0, mx = 0;
    for (int64_t k = 0; k < load->numel; k++) {
      double v = p->prec == PREC_F64 ? ((double *)(void *)f)[k] : f[k];
      mean += v / (double)load->numel;
      mx = fmax(mx, v);
    }
    st.load_ratio = mean > 0 ? mx / mean : 0;
    mc_free(f);
  }
  return st;
}

/* ---------------------------------------------------------------- checkpoints */

typedef struct Meta {
  const char *kv[64];
  int n;
  McArena a;
} Meta;

__attribute__((format(printf, 3, 4))) static void meta_add(Meta *m, const char *key,
                                                           const char *fmt, ...) {
  MOEC_ASSERT(m->n < 32);
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int len = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *v = mc_arena_alloc(&m->a, (size_t)len + 1);
  vsnprintf(v, (size_t)len + 1, fmt, ap2);
  va_end(ap2);
  m->kv[2 * m->n] = key;
  m->kv[2 * m->n + 1] = v;
  m->n++;
}

static char *join_words(const Corpus *c) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  for (int i = 0; i < c->nwords; i++)
    mc_buf_printf(&b, "%s%s", i ? "\n" : "", c->words[i]);
  return b.data;
}

/* Words of "data.vocab" (newline-separated); NULL if absent. */
static char **split_words(const char *s, int *n) {
  *n = 0;
  if (!s) return NULL;
  int cap = 1;
  for (const char *p = s; *p; p++)
    cap += *p == '\n';
  char **w = mc_malloc((size_t)cap * sizeof(char *));
  const char *p = s;
  for (;;) {
    const char *e = strchr(p, '\n');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    w[*n] = mc_malloc(len + 1);
    memcpy(w[*n], p, len);
    w[(*n)++][len] = 0;
    if (!e) break;
    p = e + 1;
  }
  return w;
}

static void free_words(char **w, int n) {
  for (int i = 0; i < n; i++)
    mc_free(w[i]);
  mc_free(w);
}

/* whole: on N devices, the whole tensors of the sharded expert parameters (by parameter
 * index, NULL for the others: the program's), o the whole model's optimizer. */
static void save_checkpoint(const char *path, Compiled *tr, const Optim *o, const Config *cfg,
                            const Corpus *corpus, int64_t step, void *const *states, int P,
                            float *const *whole) {
  Graph *g = tr->g;
  Program *p = tr->p;
  int cap = g->nparams * 4 + g->nstates + 1;
  StTensor *t = mc_calloc((size_t)cap, sizeof(StTensor));
  void **owned = mc_calloc((size_t)cap, sizeof(void *)); /* host copies of device buffers */
  McArena names = {0};
  int n = 0;
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *x = g->params[i];
    bool w = whole && whole[i];
    t[n] = (StTensor){
        x->name, ST_F32, x->ty.rank, {0}, w ? (void *)whole[i] : rt_dev_host_view(p, x, &owned[n])};
    for (int d = 0; d < x->ty.rank; d++)
      t[n].shape[d] = x->shape[d];
    if (w) t[n].shape[0] = o->shape[i][0]; /* o: the whole model's shapes */
    n++;
  }
  n += rt_optim_tensors(o, t + n, &names);
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *x = g->states[i].state;
    t[n] = (StTensor){mc_arena_printf(&names, "state.%s", x->name),
                      ST_F32,
                      x->ty.rank,
                      {0},
                      states ? states[i] : rt_dev_host_view(p, x, &owned[n])};
    for (int d = 0; d < x->ty.rank; d++)
      t[n].shape[d] = x->shape[d];
    t[n].shape[0] *= P; /* states are batch rows: every device's */
    n++;
  }
  Meta m = {0};
  meta_add(&m, "format", "pt");
  meta_add(&m, "moec.model", "%s", g->name);
  meta_add(&m, "train.step", "%lld", (long long)step);
  meta_add(&m, "train.seed", "%llu", (unsigned long long)cfg->seed);
  meta_add(&m, "train.batch", "%lld", (long long)g->B * P);
  meta_add(&m, "train.unroll", "%lld", (long long)g->T);
  meta_add(&m, "optim.step", "%lld", (long long)o->t);
  meta_add(&m, "optim.kind", "%s", o->kind == OPT_ADAM ? "adam" : "factored");
  if (corpus->kind == DATA_SYNTHETIC)
    meta_add(&m, "data", "synthetic(topics=%d, vocab=%d, seed=%llu)", cfg->topics, cfg->vocab,
             (unsigned long long)cfg->data_seed);
  else
    meta_add(&m, "data", "%s", corpus->path);
  char *vocab = NULL;
  if (corpus->words) {
    vocab = join_words(corpus);
    meta_add(&m, "data.vocab", "%s", vocab);
  }
  rt_st_save(path, t, n, m.kv, m.n);
  mc_free(vocab);
  mc_arena_free(&m.a);
  mc_arena_free(&names);
  for (int i = 0; i < cap; i++)
    mc_free(owned[i]);
  mc_free(owned);
  mc_free(t);
}

static void load_state(const StFile *f, Program *p, int rank, int P) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *x = g->states[i].state;
    char key[512];
    snprintf(key, sizeof key, "state.%s", x->name);
    const StEntry *e = rt_st_find(f, key);
    if (!e) continue; /* weights only (e.g. from PyTorch): state starts at zero */
    if (e->dtype != ST_F32 || e->numel != x->numel * P)
      mc_die("checkpoint '%s': '%s' has %lld elements, this run's batch needs %lld (resume with "
             "the same batch size)",
             f->path, key, (long long)e->numel, (long long)x->numel * P);
    /* this device's rows of the global batch */
    p->be->upload(p->buf[x->id], e->data + (size_t)rank * (e->nbytes / (size_t)P),
                  e->nbytes / (size_t)P);
  }
}

static int64_t meta_int(const StFile *f, const char *key, int64_t def) {
  const char *s = rt_st_meta(f, key);
  if (!s) return def;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (*end || errno || v < 0) mc_die("checkpoint '%s': bad %s '%s'", f->path, key, s);
  return v;
}

/* ---------------------------------------------------------------- training */

/* rows: the rows each parameter holds of the whole (NULL: whole), so a device's experts
 * start with the values one device gives them. */
static void init_params(Program *p, uint64_t seed, const RowSel *rows) {
  Graph *g = p->g;
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    if (!t->numel) continue; /* none of its rows on this device (E_r = 0) */
    float *h = mc_malloc((size_t)t->numel * sizeof(float));
    rt_init_param_rows(t, seed, rows ? &rows[i] : NULL, h);
    if (p->prec == PREC_F64) {
      double *d = mc_malloc((size_t)t->numel * sizeof(double));
      for (int64_t k = 0; k < t->numel; k++)
        d[k] = h[k];
      p->be->upload(p->buf[t->id], d, (size_t)t->numel * sizeof(double));
      mc_free(d);
    } else {
      p->be->upload(p->buf[t->id], h, (size_t)t->numel * sizeof(float));
    }
    mc_free(h);
  }
}

static const char *human_rate(double v, char *buf, size_t n) {
  if (v >= 1e6)
    snprintf(buf, n, "%.2fM", v / 1e6);
  else if (v >= 1e3)
    snprintf(buf, n, "%.1fk", v / 1e3);
  else
    snprintf(buf, n, "%.0f", v);
  return buf;
}

/* digits: 9 (float32 values), 17 (--f64: every bit of a double) */
static void json_num_digits(McBuf *b, const char *key, double v, int digits) {
  if (isfinite(v))
    mc_buf_printf(b, ",\"%s\":%.*g", key, digits, v);
  else
    mc_buf_printf(b, ",\"%s\":null", key);
}

static void json_num(McBuf *b, const char *key, double v) {
  json_num_digits(b, key, v, 9);
}

typedef struct Run {
  const Config *cfg;
  const TrainOpts *o;
  Compiled tr, ev;
  Corpus *corpus;
  Optim *opt;
  FILE *metrics, *out; /* progress goes to out */
  bool tty;
  double floor_nats;
  Comm *comm;     /* rt_comm_self() on one device */
  DevOptim *dopt; /* the optimizer on the device (cuda); NULL: rt_optim_step on the host */
} Run;

static void log_eval(Run *r, int64_t step, const char *split, double loss, int64_t tokens,
                     double secs) {
  if (r->tty) fprintf(r->out, "\r\033[K");
  fprintf(r->out, "step %lld: %s loss %.4f ppl %.3f (%lld tokens, %.1fs)", (long long)step, split,
          loss, exp(loss), (long long)tokens, secs);
  if (r->floor_nats > 0) fprintf(r->out, "; floor ppl %.3f", exp(r->floor_nats));
  fprintf(r->out, "\n");
  fflush(r->out);
  if (r->metrics) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"event\":\"eval\",\"step\":%lld,\"split\":\"%s\"", (long long)step, split);
    json_num_digits(&b, "loss", loss, r->o->f64 ? 17 : 9);
    json_num(&b, "ppl", exp(loss));
    mc_buf_printf(&b, ",\"tokens\":%lld", (long long)tokens);
    json_num(&b, "seconds", secs);
    mc_buf_printf(&b, "}\n");
    fputs(b.data, r->metrics);
    fflush(r->metrics);
    mc_buf_free(&b);
  }
}

static double run_eval(Run *r, Split split, int64_t step, double *secs_total) {
  double t0 = mc_now();
  Comm *c = r->comm;
  double loss = 0;
  int64_t tokens = 0;
  if (c->size > 1) { /* every device: its rows, its experts (forward of the training program) */
    loss = evaluate_md(c, &r->tr, r->corpus, split, &tokens);
  } else {
    copy_params(r->ev.p, r->tr.p);
    loss = evaluate(&r->ev, r->corpus, split, &tokens);
  }
  double secs = mc_now() - t0;
  *secs_total += secs;
  if (c->rank == 0) log_eval(r, step, split == SPLIT_VALID ? "valid" : "test", loss, tokens, secs);
  return loss;
}

/* Every device's rows of the states (rank order = batch order); NULL on one device. */
static void **gather_states(Comm *c, Program *p) {
  Graph *g = p->g;
  if (c->size <= 1) return NULL;
  void **st = mc_calloc((size_t)g->nstates + 1, sizeof(void *));
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *x = g->states[i].state;
    size_t nb = (size_t)x->numel * p->elem;
    st[i] = mc_malloc(nb * (size_t)c->size);
    c->all_gather(c, p->buf[x->id], st[i], nb);
  }
  return st;
}

/* Collective on N devices: rank 0 writes one checkpoint with the names and shapes of
 * one device (experts and optimizer moments gathered from their owners into temporary
 * whole tensors on rank 0, every device's state rows). */
static void save_run(Run *r, const char *path, int64_t step) {
  Comm *c = r->comm;
  if (r->dopt) rt_devopt_download(r->dopt, r->opt); /* the host copy is what is written */
  if (c->size <= 1) {
    save_checkpoint(path, &r->tr, r->opt, r->cfg, r->corpus, step, NULL, 1, NULL);
    return;
  }
  float **whole = rt_md_gather_params(c, r->tr.p, 0);
  Optim *ow = rt_md_optim_gather(c, r->tr.g, r->opt, 0);
  void **st = gather_states(c, r->tr.p);
  if (c->rank == 0) save_checkpoint(path, &r->tr, ow, r->cfg, r->corpus, step, st, c->size, whole);
  rt_md_optim_gathered_free(ow, r->opt);
  rt_md_gathered_free(r->tr.g, whole);
  for (int i = 0; i < r->tr.g->nstates; i++)
    mc_free(st[i]);
  mc_free(st);
  c->barrier(c); /* the file is complete before any rank goes on */
}

/* Fails before training, not after it, when a checkpoint could not be written. */
static void check_writable_dir(const char *path) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash)
    *(slash == dir ? slash + 1 : slash) = 0;
  else
    snprintf(dir, sizeof dir, ".");
  if (access(dir, W_OK) != 0)
    mc_die("cannot save '%s': directory '%s': %s", path, dir, strerror(errno));
}

int rt_train(AstFile *f, const Config *cfg, const TrainOpts *o) {
  return rt_train_comm(rt_comm_self(), f, cfg, o);
}

/* A hash of the model file and the run's settings (comm_check_same across devices). */
static uint64_t run_hash(const Config *cfg, const TrainOpts *o) {
  uint64_t h = comm_hash_bytes(&cfg->seed, sizeof cfg->seed, 0);
  int v[5] = {cfg->batch, cfg->unroll, cfg->steps, cfg->eval_every, o->f64};
  h = comm_hash_bytes(v, sizeof v, h);
  FILE *fp = o->model_path ? fopen(o->model_path, "rb") : NULL;
  if (fp) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
      h = comm_hash_bytes(buf, n, h);
    fclose(fp);
  }
  return h;
}

int rt_train_comm(Comm *comm, AstFile *f, const Config *cfg, const TrainOpts *o0) {
  Run r = {0};
  const int P = comm->size, rank = comm->rank;
  TrainOpts olocal = *o0;
  if (rank > 0) { /* rank 0 prints and writes files */
    olocal.quiet = true;
    olocal.json = false;
    olocal.metrics = NULL;
  }
  const TrainOpts *o = &olocal;
  r.cfg = cfg;
  r.o = o;
  r.comm = comm;
  r.out = o->json ? stderr : stdout;
  FILE *devnull = NULL;
  if (rank > 0) r.out = devnull = fopen("/dev/null", "w");
  if (!r.out) r.out = stderr;
  r.tty = !o->quiet && isatty(fileno(r.out));
  const int B = cfg->batch, T = cfg->unroll;
  if (B < 1 || T < 1) mc_die("batch and unroll must be positive (got %d and %d)", B, T);
  if (P > 1) {
    if (B < P)
      mc_die("%d devices but a batch has %d rows: each device needs at least one row", P, B);
    if (B % P)
      mc_die("batch %d does not split evenly over %d devices: use a batch that is a multiple "
             "of the device count",
             B, P);
    comm_check_same(comm, "model file and settings hash", run_hash(cfg, o0));
  }
  const Backend *be = rt_dev_backend(cfg); /* N GPUs: comm takes device buffers (comm_dev.h) */
  if (o->save && rank == 0) check_writable_dir(o->save);
  /* one device evaluates on a forward-only program; N devices on the training program's
   * forward part (evaluate_md): no second copy of the parameters */
  Graph *gt = build_on(f, cfg, true, B, T, P, rank),
        *ge = P == 1 ? build(f, cfg, false, B, T) : NULL;
  /* --f64: everything in double (equivalence checks); checkpoints are float32 */
  const Precision prec = o->f64 ? PREC_F64 : PREC_F32;
  const size_t elem = o->f64 ? sizeof(double) : sizeof(float);
  if (o->f64 && (o->save || o->load)) mc_die("--f64 runs cannot --save or --load checkpoints");
  double pb = (double)param_bytes(gt) * (double)(elem / 4), tb = (double)graph_bytes(gt, elem),
         eb = ge ? (double)graph_bytes(ge, elem) : 0;
  double ob = cfg->optimizer == OPT_ADAM ? 2 * pb : 0.05 * pb + 1e6;
  check_memory("training this model", tb + eb + ob, pb, tb + eb - 2 * pb, ob);
  r.tr = lower(gt, prec, be);
  if (ge) r.ev = lower(ge, prec, be);
  StFile *ck = o->load ? rt_st_open(o->load) : NULL;
  int nv = 0;
  char **vocab = ck ? split_words(rt_st_meta(ck, "data.vocab"), &nv) : NULL;
  r.corpus = rt_corpus_load(cfg, r.tr.vocab, vocab, nv);
  free_words(vocab, nv);
  if (r.corpus->syn) r.floor_nats = r.corpus->syn->floor_nats;
  r.opt = rt_md_optim_new(cfg, gt, prec);
  RowSel *rows = rt_md_param_rows(gt); /* this device's rows of each parameter */
  init_params(r.tr.p, cfg->seed, rows);
  int64_t start = 0;
  if (ck) {
    rt_st_load_params_rows(ck, r.tr.p, rows); /* a device takes its experts' rows */
    if (rt_md_optim_load(gt, r.opt, ck)) {
      start = meta_int(ck, "train.step", r.opt->t);
      load_state(ck, r.tr.p, rank, P);
      int64_t ckseed = meta_int(ck, "train.seed", (int64_t)cfg->seed);
      if ((uint64_t)ckseed != cfg->seed)
        fprintf(stderr, "moec: note: '%s' was trained with seed %lld, this run uses %llu\n",
                o->load, (long long)ckseed, (unsigned long long)cfg->seed);
    } else {
      fprintf(stderr,
              "moec: note: '%s' holds weights only: training starts at step 0 with a "
              "fresh optimizer\n",
              o->load);
    }
    rt_st_close(ck);
  }
  r.dopt = rt_devopt_new(r.tr.p, r.opt, comm); /* after loading: the checkpoint's state */
  if (o->metrics) {
    r.metrics = fopen(o->metrics, "w");
    if (!r.metrics) mc_die("cannot write metrics file '%s': %s", o->metrics, strerror(errno));
  }
  const int64_t steps = cfg->steps;
  /* header */
  int64_t nparams = 0; /* the whole model's (a device holds its experts' rows) */
  for (int i = 0; i < gt->nparams; i++) {
    const Tensor *t = gt->params[i];
    int64_t per = 1; /* elements per row (a device may hold none of its rows: E_r = 0) */
    for (int d = 1; d < t->ty.rank; d++)
      per *= t->shape[d];
    nparams += rows[i].list ? per * rows[i].global : t->numel;
  }
  fprintf(r.out, "moec: training '%s': %lld parameters, batch %d x unroll %d, %s lr %g%s%s",
          gt->name, (long long)nparams, B, T, cfg->optimizer == OPT_ADAM ? "adam" : "factored",
          cfg->lr, o->f64 ? ", float64" : "", start ? "" : "\n");
  if (start) fprintf(r.out, ", resuming at step %lld\n", (long long)start);
  if (r.corpus->syn)
    fprintf(r.out,
            "moec: data: synthetic(topics=%d, vocab=%d, seed=%llu): entropy floor %.4f "
            "nats/token (ppl %.3f), unigram ppl %.1f\n",
            cfg->topics, cfg->vocab, (unsigned long long)cfg->data_seed, r.floor_nats,
            exp(r.floor_nats), exp(r.corpus->syn->unigram_nats));
  else
    fprintf(r.out, "moec: data: '%s': %lld / %lld / %lld tokens (train / valid / test)%s\n",
            r.corpus->path, (long long)r.corpus->ntok[0], (long long)r.corpus->ntok[1],
            (long long)r.corpus->ntok[2], r.corpus->words ? "" : " of uint16 ids");
  fflush(r.out);

  const int Bl = B / P; /* this device's rows: streams [rank*Bl, (rank+1)*Bl) */
  Batcher bt;           /* reads or generates only those streams */
  rt_batcher_init_rows(&bt, r.corpus, SPLIT_TRAIN, B, T, rank * Bl, Bl);
  rt_batcher_seek(&bt, start);
  size_t nt = (size_t)B * (size_t)T, ntl = (size_t)Bl * (size_t)T;
  int32_t *ids = mc_malloc(ntl * sizeof(int32_t)), *tg = mc_malloc(ntl * sizeof(int32_t));
  float **pp = mc_calloc((size_t)MC_MAX(gt->nparams, 1), sizeof(float *));
  float **gg = mc_calloc((size_t)MC_MAX(gt->nparams, 1), sizeof(float *));
  for (int i = 0; i < gt->nparams; i++) {
    const Tensor *t = gt->params[i];
    pp[i] = cg_f32(r.tr.p, t);
    /* float pointers; under --f64 they point to doubles (the optimizer's elem is 8) */
    gg[i] = t->grad ? cg_f32(r.tr.p, t->grad) : mc_calloc((size_t)t->numel, elem);
  }
  const int64_t every = MC_MAX(1, (steps - start) / 20);
  double t_train = 0, t_eval = 0, t_data = 0, last_loss = NAN, tail_sum = 0, tail_xent = 0;
  int64_t tail_n = 0, done = 0;
  double valid = NAN, test = NAN;
  for (int64_t s = start; s < steps; s++) {
    double t0 = mc_now();
    rt_batcher_next(&bt, ids, tg);
    upload_ids(r.tr.p, r.tr.ids, ids);
    upload_ids(r.tr.p, r.tr.targets, tg);
    t_data += mc_now() - t0;
    KernelCtx ctx = {.training = true,
                     .seed = cfg->seed,
                     .step = (uint64_t)s,
                     .batch0 = (int64_t)rank * Bl,
                     .batch_local = Bl,
                     .device = rank,
                     .ndevices = P,
                     .comm = P > 1 ? comm : NULL,
                     .graph = P > 1 ? gt : NULL,
                     .dev = r.tr.p->dev};
    rt_exec(r.tr.p, &ctx, 0, r.tr.p->ninstrs);
    double loss = read_scalar(r.tr.p, gt->loss), xent = read_scalar(r.tr.p, gt->xent),
           aux = read_scalar(r.tr.p, gt->aux);
    if (P > 1) { /* xent: each device's share of the global mean; aux: replicated */
      if (gt->xent && gt->xent->producer && !rt_md_runs(gt->xent->producer, rank, P))
        xent = 0; /* the loss on(...) other devices: this one has no rows of it */
      if (gt->aux && gt->aux->producer &&
          rt_md_node_mask(gt->aux->producer, P) != comm_all_mask(comm))
        comm->broadcast(comm, &aux, sizeof aux,
                        __builtin_ctzll(rt_md_node_mask(gt->aux->producer, P)));
      comm->all_reduce_sum_f64(comm, &xent, 1);
      loss = gt->aux ? xent + aux : xent;
    }
    if (!isfinite(loss))
      mc_die("the loss is %g at step %lld: training diverged (try a smaller lr, or clip)", loss,
             (long long)s + 1);
    if (r.dopt)
      rt_devopt_step(r.dopt, r.opt);
    else
      rt_md_optim_step(comm, gt, r.opt, pp, gg);
    rt_carry_state(r.tr.p);
    t_train += mc_now() - t0;
    done++;
    last_loss = loss;
    if (steps - s <= 100) {
      tail_sum += loss;
      tail_xent += xent;
      tail_n++;
    }
    double tps = (double)done * (double)nt / fmax(t_train, 1e-9);
    /* progress */
    bool show = r.tty || (s + 1) % every == 0 || s + 1 == steps || s == start;
    if (show && !o->quiet) {
      char rate[32];
      fprintf(r.out, "%sstep %lld/%lld  loss %.4f  ppl %.2f  %s tok/s", r.tty ? "\r\033[K" : "",
              (long long)s + 1, (long long)steps, loss, exp(xent),
              human_rate(tps, rate, sizeof rate));
      if (gt->aux) fprintf(r.out, "  aux %.4f", aux);
      for (int i = 0; i < gt->nmoe; i++) {
        MoeStat ms = moe_stat(r.tr.p, i);
        fprintf(r.out, "  %s: cv %.2f load %.2f", gt->moe_names ? gt->moe_names[i] : "moe", ms.cv,
                ms.load_ratio);
      }
      fprintf(r.out, r.tty ? "" : "\n");
      fflush(r.out);
    }
    if (r.metrics) {
      McBuf b = {0};
      mc_buf_printf(&b, "{\"event\":\"step\",\"step\":%lld", (long long)s + 1);
      const int dg = o->f64 ? 17 : 9;
      json_num_digits(&b, "loss", loss, dg);
      json_num_digits(&b, "xent", xent, dg);
      json_num_digits(&b, "aux", aux, dg);
      json_num(&b, "ppl", exp(xent));
      json_num_digits(&b, "grad_norm", r.opt->last_norm, dg);
      json_num(&b, "tokens_per_s", tps);
      mc_buf_printf(&b, ",\"moe\":[");
      for (int i = 0; i < gt->nmoe; i++) {
        MoeStat ms = moe_stat(r.tr.p, i);
        mc_buf_printf(&b, "%s{\"name\":", i ? "," : "");
        mc_buf_json_string(&b, gt->moe_names ? gt->moe_names[i] : "moe");
        json_num(&b, "importance_cv", ms.cv);
        json_num(&b, "load_max_over_mean", ms.load_ratio);
        const Tensor *lt = gt->moe_load ? gt->moe_load[i] : NULL;
        if (lt && lt->numel > 0 && r.tr.p->prec == PREC_F32) { /* per expert: experts = balanced */
          float *lv = mc_malloc((size_t)lt->numel * sizeof(float));
          r.tr.p->be->download(lv, r.tr.p->buf[lt->id], (size_t)lt->numel * sizeof(float));
          mc_buf_printf(&b, ",\"load\":[");
          for (int64_t e = 0; e < lt->numel; e++)
            mc_buf_printf(&b, "%s%.6g", e ? "," : "", (double)lv[e]);
          mc_buf_putc(&b, ']');
          mc_free(lv);
        }
        mc_buf_putc(&b, '}');
      }
      mc_buf_printf(&b, "]}\n");
      fputs(b.data, r.metrics);
      mc_buf_free(&b);
    }
    if (cfg->eval_every > 0 && (s + 1) % cfg->eval_every == 0 && s + 1 < steps) {
      valid = run_eval(&r, SPLIT_VALID, s + 1, &t_eval);
      if (o->save) save_run(&r, o->save, s + 1);
    }
  }
  if (r.tty && done) fprintf(r.out, "\n");
  double reshard_bytes = 0; /* every device's reshard kernels (on(...) sets), summed */
  if (P > 1) {
    reshard_bytes = rank < RT_INPROC_MAX ? (double)rt_md_reshard_bytes[rank] : 0;
    comm->all_reduce_sum_f64(comm, &reshard_bytes, 1);
  }
  valid = run_eval(&r, SPLIT_VALID, MC_MAX(steps, start), &t_eval);
  test = run_eval(&r, SPLIT_TEST, MC_MAX(steps, start), &t_eval);
  if (o->save) save_run(&r, o->save, MC_MAX(steps, start));
  double tps = done ? (double)done * (double)nt / fmax(t_train, 1e-9) : 0;
  char rate[32];
  fprintf(r.out, "test ppl %.3f", exp(test));
  if (r.floor_nats > 0)
    fprintf(r.out, " (floor %.3f, %.1f%% above)", exp(r.floor_nats),
            100.0 * (exp(test - r.floor_nats) - 1.0));
  fprintf(r.out, "; valid ppl %.3f\n", exp(valid));
  fprintf(r.out, "%lld steps in %.1fs (%s tokens/s), evaluation %.1fs%s%s\n", (long long)done,
          t_train, human_rate(tps, rate, sizeof rate), t_eval, o->save ? "; saved " : "",
          o->save ? o->save : "");
  /* memory each device allocated for the model: parameters, their gradients, optimizer
   * state (what `moec plan` prints per device), and the program's two regions */
  enum { MEM_PARAMS, MEM_GRADS, MEM_OPTIM, MEM_PERSIST, MEM_ARENA, MEM_N };
  int64_t mem[MEM_N] = {0}, *mem_all = mc_calloc((size_t)P * MEM_N, sizeof(int64_t));
  for (int i = 0; i < gt->nparams; i++) {
    mem[MEM_PARAMS] += gt->params[i]->numel * (int64_t)r.tr.p->elem;
    mem[MEM_GRADS] += gt->params[i]->numel * (int64_t)r.tr.p->elem;
  }
  mem[MEM_OPTIM] = (int64_t)rt_md_optim_bytes(r.opt);
  mem[MEM_PERSIST] = (int64_t)r.tr.p->persist_bytes;
  mem[MEM_ARENA] = (int64_t)r.tr.p->arena_bytes;
  comm->all_gather(comm, mem, mem_all, sizeof mem);
  int64_t mem_max = 0;
  for (int d = 0; d < P; d++)
    mem_max = MC_MAX(mem_max, mem_all[d * MEM_N + MEM_PARAMS] + mem_all[d * MEM_N + MEM_GRADS] +
                                  mem_all[d * MEM_N + MEM_OPTIM]);
  fprintf(r.out,
          "memory per device: params %.3f + grads %.3f + optimizer %.3f MiB (device 0; largest "
          "%.3f MiB); program %.3f MiB persistent + %.3f MiB arena\n",
          mem[MEM_PARAMS] / 1048576.0, mem[MEM_GRADS] / 1048576.0, mem[MEM_OPTIM] / 1048576.0,
          mem_max / 1048576.0, mem[MEM_PERSIST] / 1048576.0, mem[MEM_ARENA] / 1048576.0);
  if (P > 1)
    fprintf(r.out,
            "%d devices: %s tokens/s per device; rank 0 in all-to-all %.1f%% and all-reduce "
            "%.1f%% of the training time\n",
            P, human_rate(tps / P, rate, sizeof rate),
            100.0 * rt_md_comm_seconds[0][0] / fmax(t_train, 1e-9),
            100.0 * rt_md_comm_seconds[0][1] / fmax(t_train, 1e-9));
  fflush(r.out);
  if (o->json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"steps\":%lld", (long long)MC_MAX(steps, start));
    if (P > 1) {
      mc_buf_printf(&b, ",\"devices\":%d", P);
      json_num(&b, "all_to_all_seconds", rt_md_comm_seconds[0][0]);
      json_num(&b, "all_reduce_seconds", rt_md_comm_seconds[0][1]);
      json_num(&b, "reshard_bytes", reshard_bytes); /* the plan's reshard expected x steps */
    }
    json_num(&b, "train_loss", tail_n ? tail_sum / (double)tail_n : last_loss);
    json_num(&b, "train_ppl", tail_n ? exp(tail_xent / (double)tail_n) : NAN);
    json_num(&b, "last_loss", last_loss);
    json_num(&b, "valid_ppl", exp(valid));
    json_num(&b, "test_ppl", exp(test));
    json_num(&b, "tokens_per_s", tps);
    json_num(&b, "train_seconds", t_train);
    json_num(&b, "data_seconds", t_data); /* rank 0: batches read or generated, uploaded */
    json_num(&b, "floor_ppl", r.floor_nats > 0 ? exp(r.floor_nats) : NAN);
    json_num(&b, "unigram_ppl", r.corpus->syn ? exp(r.corpus->syn->unigram_nats) : NAN);
    mc_buf_printf(&b, ",\"memory\":[");
    for (int d = 0; d < P; d++) {
      const int64_t *m = mem_all + d * MEM_N;
      mc_buf_printf(&b,
                    "%s{\"device\":%d,\"param_bytes\":%lld,\"grad_bytes\":%lld,"
                    "\"optimizer_bytes\":%lld,\"model_bytes\":%lld,\"persist_bytes\":%lld,"
                    "\"arena_bytes\":%lld}",
                    d ? "," : "", d, (long long)m[MEM_PARAMS], (long long)m[MEM_GRADS],
                    (long long)m[MEM_OPTIM],
                    (long long)(m[MEM_PARAMS] + m[MEM_GRADS] + m[MEM_OPTIM]),
                    (long long)m[MEM_PERSIST], (long long)m[MEM_ARENA]);
    }
    mc_buf_printf(&b, "]}\n");
    fputs(b.data, stdout);
    fflush(stdout);
    mc_buf_free(&b);
  }
  if (r.metrics) fclose(r.metrics);
  for (int i = 0; i < gt->nparams; i++)
    if (!gt->params[i]->grad) mc_free(gg[i]);
  mc_free(pp);
  mc_free(gg);
  mc_free(ids);
  mc_free(tg);
  rt_batcher_free(&bt);
  mc_free(mem_all);
  rt_md_rows_free(gt, rows);
  rt_devopt_free(r.dopt);
  rt_optim_free(r.opt);
  rt_corpus_free(r.corpus);
  compiled_free(&r.tr);
  if (ge) compiled_free(&r.ev);
  if (devnull) fclose(devnull);
  return 0;
}

/* ---------------------------------------------------------------- moec eval */

int rt_eval_checkpoint(AstFile *f, const Config *cfg, const char *ckpt, const char *data_path,
                       bool json) {
  const int B = cfg->batch, T = cfg->unroll;
  Graph *g = build(f, cfg, false, B, T);
  double gb = (double)graph_bytes(g, 4), pb = (double)param_bytes(g);
  check_memory("evaluating this model", gb, pb, gb - pb, 0);
  Compiled ev = lower(g, PREC_F32, rt_dev_backend(cfg));
  StFile *ck = rt_st_open(ckpt);
  rt_st_load_params(ck, ev.p);
  int nv = 0;
  char **vocab = split_words(rt_st_meta(ck, "data.vocab"), &nv);
  Corpus *c = data_path ? rt_corpus_load_file(data_path, ev.vocab, vocab, nv)
                        : rt_corpus_load(cfg, ev.vocab, vocab, nv);
  free_words(vocab, nv);
  rt_st_close(ck);
  double t0 = mc_now();
  int64_t tokens = 0;
  double loss = evaluate(&ev, c, SPLIT_TEST, &tokens);
  double secs = mc_now() - t0;
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"tokens\":%lld", (long long)tokens);
    json_num(&b, "test_loss", loss);
    json_num(&b, "test_ppl", exp(loss));
    json_num(&b, "floor_ppl", c->syn ? exp(c->syn->floor_nats) : NAN);
    json_num(&b, "seconds", secs);
    mc_buf_printf(&b, "}\n");
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("test ppl %.3f (loss %.4f nats/token over %lld tokens of %s, %.1fs)", exp(loss), loss,
           (long long)tokens, data_path ? data_path : "the test split", secs);
    if (c->syn) printf("; floor ppl %.3f", exp(c->syn->floor_nats));
    printf("\n");
  }
  rt_corpus_free(c);
  compiled_free(&ev);
  return 0;
}

/* ---------------------------------------------------------------- moec grad */

int rt_grad(AstFile *f, const Config *cfg, const char *weights, const char *tokens, const char *out,
            bool json, bool f64) {
  const int B = cfg->batch, T = cfg->unroll;
  Graph *g = build(f, cfg, true, B, T);
  size_t elem = f64 ? 8 : 4;
  double gb = (double)graph_bytes(g, elem);
  check_memory("this model's gradients", gb, (double)param_bytes(g) * (double)elem / 4, gb, 0);
  Compiled c = lower(g, f64 ? PREC_F64 : PREC_F32, rt_dev_backend(cfg));
  StFile *w = rt_st_open(weights);
  rt_st_load_params(w, c.p);
  rt_st_close(w);
  size_t len = 0;
  unsigned char *raw = (unsigned char *)mc_read_file(tokens, &len);
  if (!raw) mc_die("cannot read token file '%s': %s", tokens, strerror(errno));
  size_t need = (size_t)B * (size_t)(T + 1);
  if (len != 2 * need)
    mc_die("token file '%s' has %zu bytes: batch %d x (unroll %d + 1) needs %zu uint16 ids "
           "(%zu bytes)",
           tokens, len, B, T, need, 2 * need);
  int32_t *ids = mc_malloc((size_t)B * T * sizeof(int32_t)),
          *tg = mc_malloc((size_t)B * T * sizeof(int32_t));
  for (int b = 0; b < B; b++)
    for (int t = 0; t <= T; t++) {
      size_t k = (size_t)b * (T + 1) + (size_t)t;
      int v = raw[2 * k] | (raw[2 * k + 1] << 8);
      if (v >= c.vocab)
        mc_die("token file '%s': id %d at position %zu is outside the model's vocabulary (%d ids)",
               tokens, v, k, c.vocab);
      if (t < T) ids[b * T + t] = v;
      if (t > 0) tg[b * T + t - 1] = v;
    }
  mc_free(raw);
  upload_ids(c.p, c.ids, ids);
  upload_ids(c.p, c.targets, tg);
  KernelCtx ctx = {.training = false,
                   .seed = cfg->seed,
                   .step = 0,
                   .batch0 = 0,
                   .batch_local = B,
                   .device = 0,
                   .ndevices = 1,
                   .dev = c.p->dev};
  rt_exec(c.p, &ctx, 0, c.p->ninstrs);
  double loss = read_scalar(c.p, g->loss), xent = read_scalar(c.p, g->xent),
         aux = read_scalar(c.p, g->aux);
  if (out) {
    StTensor *t = mc_calloc((size_t)MC_MAX(g->nparams, 1), sizeof(StTensor));
    void **zeros = mc_calloc((size_t)MC_MAX(g->nparams, 1), sizeof(void *));
    for (int i = 0; i < g->nparams; i++) {
      const Tensor *x = g->params[i];
      const void *data;
      if (x->grad) {
        data = rt_dev_host_view(c.p, x->grad, &zeros[i]); /* device: a host copy, freed below */
      } else {
        zeros[i] = mc_calloc((size_t)x->numel, elem);
        data = zeros[i];
      }
      t[i] = (StTensor){x->name, f64 ? ST_F64 : ST_F32, x->ty.rank, {0}, data};
      for (int d = 0; d < x->ty.rank; d++)
        t[i].shape[d] = x->shape[d];
    }
    Meta m = {0};
    meta_add(&m, "format", "pt");
    meta_add(&m, "moec.model", "%s", g->name);
    meta_add(&m, "loss", "%.17g", loss);
    meta_add(&m, "xent", "%.17g", xent);
    meta_add(&m, "aux", "%.17g", aux);
    rt_st_save(out, t, g->nparams, m.kv, m.n);
    mc_arena_free(&m.a);
    for (int i = 0; i < g->nparams; i++)
      mc_free(zeros[i]);
    mc_free(zeros);
    mc_free(t);
  }
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"loss\":%.17g,\"xent\":%.17g,\"aux\":%.17g}\n", loss, xent, aux);
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("loss %.8g (xent %.8g, aux %.8g)", loss, xent, aux);
    if (out) printf("; gradients of %d parameters written to %s", g->nparams, out);
    printf("\n");
  }
  mc_free(ids);
  mc_free(tg);
  compiled_free(&c);
  return 0;
}
