/* checkpoint.c: a run's parameters from the seed, and checkpoints: written atomically
 * with the names and shapes of one device (safetensors: parameters, optimizer state,
 * carried state of every row of the step's batch, step, seed, batch, data and its
 * tokenizer, moec's version), resumed exactly on any device count. docs/training.md. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run.h"

void rt_init_params(Program *p, uint64_t seed) {
  Graph *g = p->g;
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    if (!t->numel) continue; /* none of its rows on this device (E_r = 0) */
    float *h = mc_malloc((size_t)t->numel * sizeof(float));
    rt_init_param_rows(t, seed, p->rows ? &p->rows[i] : NULL, h);
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

/* ---------------------------------------------------------------- metadata */

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

static int64_t meta_int(const StFile *f, const char *key, int64_t def) {
  const char *s = rt_st_meta(f, key);
  if (!s) return def;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (*end || errno || v < 0) mc_die("checkpoint '%s': bad %s '%s'", f->path, key, s);
  return v;
}

/* ---------------------------------------------------------------- writing */

/* whole: on N devices, the whole tensors of the sharded or elsewhere-trained parameters
 * (by parameter index, NULL for the others: the program's); o the whole model's
 * optimizer; states every device's rows (NULL: the program's). */
static void write_file(Run *r, const char *path, const Optim *o, int64_t step,
                       void *const *states, float *const *whole) {
  Program *p = r->p;
  Graph *g = p->g;
  const Config *cfg = r->cfg;
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
    t[n].shape[0] *= r->P * r->K; /* states are batch rows: every device's, every micro-batch's */
    n++;
  }
  Meta m = {0};
  meta_add(&m, "format", "pt");
  meta_add(&m, "moec.model", "%s", g->name);
  meta_add(&m, "moec.version", "%s", mc_version());
  meta_add(&m, "moec.features", "%s", mc_features());
  meta_add(&m, "train.step", "%lld", (long long)step);
  meta_add(&m, "train.seed", "%llu", (unsigned long long)cfg->seed);
  meta_add(&m, "train.batch", "%lld", (long long)r->Bl * r->P);
  meta_add(&m, "train.unroll", "%lld", (long long)r->T);
  meta_add(&m, "optim.step", "%lld", (long long)o->t);
  meta_add(&m, "optim.kind", "%s", o->kind == OPT_ADAM ? "adam" : "factored");
  if (r->K > 1) meta_add(&m, "train.accumulate", "%d", r->K);
  const Corpus *corpus = r->corpus;
  char *vocab = NULL;
  if (r->pairs) { /* a translation model: its shared BPE vocabulary */
    meta_add(&m, "data", "%s", r->pairs->path);
    vocab = rt_bpe_to_string(r->pairs->bpe);
    meta_add(&m, "data.bpe", "%s", vocab);
  } else if (corpus->kind == DATA_SYNTHETIC)
    meta_add(&m, "data", "synthetic(topics=%d, vocab=%d, seed=%llu)", cfg->topics, cfg->vocab,
             (unsigned long long)cfg->data_seed);
  else
    meta_add(&m, "data", "%s", corpus->path);
  char *desc = NULL;
  if (corpus && corpus->tk) { /* how text becomes ids: eval, score, sample and resuming need it */
    const char *key;
    desc = rt_tok_describe(corpus->tk);
    MOEC_ASSERT(!vocab); /* a corpus or parallel data, not both */
    vocab = rt_tok_serialize(corpus->tk, &key);
    meta_add(&m, "data.tokenizer", "%s", desc);
    meta_add(&m, key, "%s", vocab);
  }
  rt_st_save(path, t, n, m.kv, m.n);
  mc_free(desc);
  mc_free(vocab);
  mc_arena_free(&m.a);
  mc_arena_free(&names);
  for (int i = 0; i < cap; i++)
    mc_free(owned[i]);
  mc_free(owned);
  mc_free(t);
}

/* Every row of the states, in the order of the step's whole batch: micro-batch by
 * micro-batch, each in rank order (collective); NULL on one device without accumulation
 * (the program's own buffers are the rows). */
static void **gather_states(Run *r) {
  Comm *c = r->comm;
  Program *p = r->p;
  Graph *g = p->g;
  if (c->size <= 1 && r->K <= 1) return NULL;
  void **st = mc_calloc((size_t)g->nstates + 1, sizeof(void *));
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *x = g->states[i].state;
    size_t nb = (size_t)x->numel * p->elem;
    st[i] = mc_malloc(nb * (size_t)c->size * (size_t)r->K);
    for (int j = 0; j < r->K; j++) {
      const void *src = r->K > 1 ? r->kstate[j * g->nstates + i] : p->buf[x->id];
      char *dst = (char *)st[i] + (size_t)j * nb * (size_t)c->size;
      if (c->size > 1) {
        void *h = mc_malloc(nb);
        p->be->download(h, src, nb);
        c->all_gather(c, h, dst, nb);
        mc_free(h);
      } else {
        p->be->download(dst, src, nb);
      }
    }
  }
  return st;
}

void rt_ckpt_save(Run *r, const char *path, int64_t step) {
  Comm *c = r->comm;
  if (r->dopt) rt_devopt_download(r->dopt, r->opt); /* the host copy is what is gathered */
  rt_guard_params(r, step); /* never a checkpoint of a diverged run */
  if (c->size <= 1) {
    void **st = gather_states(r);
    write_file(r, path, r->opt, step, st, NULL);
    for (int i = 0; st && i < r->p->g->nstates; i++)
      mc_free(st[i]);
    mc_free(st);
    return;
  }
  float **whole = rt_md_gather_params(c, r->p, 0);
  Optim *ow = rt_md_optim_gather(c, r->p, r->opt, 0);
  void **st = gather_states(r);
  if (c->rank == 0) write_file(r, path, ow, step, st, whole);
  rt_md_optim_gathered_free(ow, r->opt);
  rt_md_gathered_free(r->p, whole);
  for (int i = 0; i < r->p->g->nstates; i++)
    mc_free(st[i]);
  mc_free(st);
  c->barrier(c); /* the file is complete before any rank goes on */
}

void rt_ckpt_check_path(const char *path) {
  char err[1024];
  if (!rt_st_check_save_path(path, err, sizeof err)) mc_die("%s", err);
}

/* ---------------------------------------------------------------- resuming */

/* This device's rows of the checkpoint's states: of every micro-batch j, the rows of
 * chunk j * P + rank (gather_states' order). */
static void load_state(const StFile *f, Run *r) {
  Program *p = r->p;
  Graph *g = p->g;
  const int64_t chunks = (int64_t)r->P * r->K;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *x = g->states[i].state;
    char key[512];
    snprintf(key, sizeof key, "state.%s", x->name);
    /* the optimizer's state is there: a resume, exact only with the carried state too;
     * its rows: every device's of every micro-batch (a shape of another batch size or
     * accumulate is an error naming both shapes) */
    int64_t shape[MAX_RANK];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] *= chunks;
    const StEntry *e = rt_st_expect(f, key, ST_F32, x->ty.rank, shape);
    if (!e)
      mc_die("checkpoint '%s' has optimizer state but lacks '%s', the carried state: the resume "
             "would not be exact (a file written by moec run has it)",
             f->path, key);
    size_t nb = e->nbytes / (size_t)chunks;
    for (int j = 0; j < r->K; j++) {
      void *dst = r->K > 1 ? r->kstate[j * g->nstates + i] : p->buf[x->id];
      p->be->upload(dst, e->data + (size_t)(j * r->P + r->rank) * nb, nb);
    }
  }
}

int64_t rt_ckpt_resume(Run *r, const StFile *f) {
  Program *p = r->p;
  rt_st_load_params_rows(f, p, p->rows); /* a device takes its experts' rows */
  if (!rt_md_optim_load(p, r->opt, f)) {
    if (r->rank == 0)
      fprintf(stderr,
              "moec: note: '%s' holds weights only: training starts at step 0 with a fresh "
              "optimizer\n",
              f->path);
    return 0;
  }
  int64_t start = meta_int(f, "train.step", r->opt->t);
  load_state(f, r);
  int64_t ckseed = meta_int(f, "train.seed", (int64_t)r->cfg->seed);
  if ((uint64_t)ckseed != r->cfg->seed && r->rank == 0)
    fprintf(stderr, "moec: note: '%s' was trained with seed %lld, this run uses %llu\n", f->path,
            (long long)ckseed, (unsigned long long)r->cfg->seed);
  return start;
}
