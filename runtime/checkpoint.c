/* checkpoint.c: a run's parameters from the seed, and checkpoints: written atomically
 * with the names and shapes of one device (safetensors: parameters, optimizer state,
 * carried state, step, seed, batch, data and its vocabulary, moec's version), resumed
 * exactly on any device count. docs/training.md. */
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

static char *join_words(const Corpus *c) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  for (int i = 0; i < c->nwords; i++)
    mc_buf_printf(&b, "%s%s", i ? "\n" : "", c->words[i]);
  return b.data;
}

char **rt_ckpt_vocab(const StFile *f, int *n) {
  const char *s = f ? rt_st_meta(f, "data.vocab") : NULL;
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

void rt_words_free(char **w, int n) {
  for (int i = 0; i < n; i++)
    mc_free(w[i]);
  mc_free(w);
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
    t[n].shape[0] *= r->P; /* states are batch rows: every device's */
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
  const Corpus *corpus = r->corpus;
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

void rt_ckpt_save(Run *r, const char *path, int64_t step) {
  Comm *c = r->comm;
  rt_guard_params(r, step); /* never a checkpoint of a diverged run */
  if (c->size <= 1) {
    if (r->dopt) rt_devopt_download(r->dopt, r->opt); /* the host copy is what is written */
    write_file(r, path, r->opt, step, NULL, NULL);
    return;
  }
  float **whole = rt_md_gather_params(c, r->p, 0);
  Optim *ow = rt_md_optim_gather(c, r->p, r->opt, 0);
  void **st = gather_states(c, r->p);
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

static void load_state(const StFile *f, Program *p, int rank, int P) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *x = g->states[i].state;
    char key[512];
    snprintf(key, sizeof key, "state.%s", x->name);
    /* the optimizer's state is there: a resume, exact only with the carried state too */
    int64_t shape[MAX_RANK];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] *= P; /* every device's rows */
    const StEntry *e = rt_st_expect(f, key, ST_F32, x->ty.rank, shape);
    if (!e)
      mc_die("checkpoint '%s' has optimizer state but lacks '%s', the carried state: the resume "
             "would not be exact (a file written by moec run has it)",
             f->path, key);
    /* this device's rows of the global batch */
    p->be->upload(p->buf[x->id], e->data + (size_t)rank * (e->nbytes / (size_t)P),
                  e->nbytes / (size_t)P);
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
  load_state(f, p, r->rank, r->P);
  int64_t ckseed = meta_int(f, "train.seed", (int64_t)r->cfg->seed);
  if ((uint64_t)ckseed != r->cfg->seed && r->rank == 0)
    fprintf(stderr, "moec: note: '%s' was trained with seed %lld, this run uses %llu\n", f->path,
            (long long)ckseed, (unsigned long long)r->cfg->seed);
  return start;
}
