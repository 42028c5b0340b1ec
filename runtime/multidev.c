/* multidev.c: the state of one model over N devices: gathers of sharded expert
 * parameters, of parameters trained on a device subset, and of optimizer state for
 * checkpoints; the optimizer of one device and its step with the global gradient norm.
 * What a device holds is its program's shard tables (Program.rows, .param_set), made by
 * the compiler. docs/multidev.md. */
#include "multidev.h"
#include "train_dev.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t all_devices(int P) {
  return P >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << P) - 1;
}

int rt_md_param_owner(const Program *p, int i) {
  const int P = p->g->ndev;
  if (P <= 1 || !p->param_set || p->param_set[i] == all_devices(P)) return -1;
  return __builtin_ctzll(p->param_set[i]);
}

/* Does this device train parameter i (its gradient is made here)? */
static bool trains_here(const Program *p, int i) {
  return !p->param_set || (p->param_set[i] >> p->g->rank & 1);
}

/* Is parameter i sharded by rows over the devices (an expert parameter)? */
static bool sharded(const Program *p, int i) {
  return p->rows && p->rows[i].list;
}

/* Collective: on root, a copy of a whole-held buffer (n floats) of parameter i, trained
 * on a device set: each device contributes it only if it is the set's first device (zero
 * otherwise), summed; NULL elsewhere or for src NULL. */
static float *owned_sum(Comm *c, const Program *p, int i, const float *src, int64_t n,
                        int root) {
  if (!src) return NULL;
  float *b = mc_malloc((size_t)MC_MAX(n, 1) * sizeof(float));
  memcpy(b, src, (size_t)n * sizeof(float));
  if (rt_md_param_owner(p, i) != c->rank) memset(b, 0, (size_t)n * sizeof(float));
  c->all_reduce_sum_f32(c, b, n);
  if (c->rank == root) return b;
  mc_free(b);
  return NULL;
}

/* ---------------------------------------------------------------- sharded experts */

/* Collective: the whole tensor of a sharded parameter's rows (`per` elements of `elem`
 * bytes each) from every device's local rows (rs: owner[r] holds row r), into full
 * (rs->global * per elements) on root, or on every device when root < 0. Rows arrive in
 * rank order and go to their global place. */
static void gather_rows(Comm *c, const RowSel *rs, const void *local, int64_t per, size_t elem,
                        void *full, int root) {
  int P = c->size;
  size_t row = (size_t)per * elem;
  int64_t *counts = mc_calloc((size_t)P, sizeof(int64_t)), total = 0;
  for (int64_t r = 0; r < rs->global; r++)
    counts[rs->owner[r]] += (int64_t)row;
  for (int q = 0; q < P; q++)
    total += counts[q];
  bool me = root < 0 || c->rank == root;
  char *recv = me ? mc_malloc((size_t)MC_MAX(total, 1)) : NULL;
  comm_gatherv(c, local, recv, counts, root);
  if (me) {
    int64_t at = 0;
    for (int q = 0; q < P; q++)
      for (int64_t r = 0; r < rs->global; r++)
        if (rs->owner[r] == q) {
          memcpy((char *)full + (size_t)r * row, recv + at, row);
          at += (int64_t)row;
        }
    MOEC_ASSERT(at == total);
  }
  mc_free(recv);
  mc_free(counts);
}

float **rt_md_gather_params(Comm *c, Program *p, int root) {
  const Graph *g = p->g;
  MOEC_ASSERT(p->prec == PREC_F32);
  float **full = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  for (int i = 0; i < g->nparams && c->size > 1; i++) {
    const Tensor *t = g->params[i];
    void *owned = NULL;                 /* a host copy of a device program's tensor */
    if (rt_md_param_owner(p, i) >= 0) { /* whole here, trained on a set */
      full[i] = owned_sum(c, p, i, rt_dev_host_view(p, t, &owned), t->numel, root);
      mc_free(owned);
      continue;
    }
    if (!sharded(p, i)) continue;
    int64_t per = 1; /* elements per expert row (a device may hold none: E_r = 0) */
    for (int d = 1; d < t->ty.rank; d++)
      per *= t->shape[d];
    if (c->rank == root) full[i] = mc_malloc((size_t)(p->rows[i].global * per) * sizeof(float));
    gather_rows(c, &p->rows[i], rt_dev_host_view(p, t, &owned), per, sizeof(float), full[i], root);
    mc_free(owned);
  }
  return full;
}

void rt_md_gathered_free(const Program *p, float **full) {
  for (int i = 0; full && i < p->g->nparams; i++)
    mc_free(full[i]);
  mc_free(full);
}

/* ---------------------------------------------------------------- optimizer */

/* An entry the optimizer keeps whole on every device although its parameter is
 * sharded: the factored second moment of a matrix whose rows are experts ([E, H]
 * biases): its column moments average over every expert, so each device updates the
 * whole matrix from the all-gathered gradient (the same arithmetic as one device) and
 * keeps its rows. [E, a, b] weights are E matrices: sharded like Adam's moments. */
static bool whole_entry(const Program *p, const Optim *o, int i) {
  return sharded(p, i) && o->kind == OPT_FACTORED && o->prank[i] == 2;
}

Optim *rt_md_optim_new(const Config *cfg, const Program *p) {
  Optim *o = rt_optim_new_prec(cfg, p->g, p->prec);
  for (int i = 0; i < o->n; i++) {
    if (!whole_entry(p, o, i)) continue;
    int64_t E = p->rows[i].global;
    o->shape[i][0] = E;
    o->numel[i] = E * o->shape[i][1];
    mc_free(o->vr[i]);
    o->vr[i] = mc_calloc((size_t)E, o->elem);
    mc_free(o->vc[i]); /* one matrix (a device with E_r = 0 had none) */
    o->vc[i] = mc_calloc((size_t)o->shape[i][1], o->elem);
  }
  return o;
}

size_t rt_md_optim_layout_bytes(const Config *cfg, const Graph *g, const RowSel *rows,
                                size_t elem) {
  size_t b = 0;
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    const int r = t->ty.rank;
    if (cfg->optimizer != OPT_FACTORED || r < 2) {
      b += (size_t)t->numel * (cfg->optimizer == OPT_ADAM ? 2 : 1);
      continue;
    }
    int64_t rw = t->shape[r - 2], cl = t->shape[r - 1];
    if (r == 2 && rows && rows[i].list) { /* an [E, H] expert matrix: kept whole */
      b += (size_t)(rows[i].global + cl);
      continue;
    }
    b += (size_t)(t->numel / MC_MAX(1, rw * cl)) * (size_t)(rw + cl);
  }
  return b * elem;
}

size_t rt_md_optim_bytes(const Optim *o) {
  size_t b = 0;
  for (int i = 0; i < o->n; i++) {
    bool f = o->kind == OPT_FACTORED && o->prank[i] >= 2;
    int64_t rows = f ? o->shape[i][o->prank[i] - 2] : 0,
            cols = f ? o->shape[i][o->prank[i] - 1] : 0;
    int64_t lead = f ? o->numel[i] / MC_MAX(1, rows * cols) : 0;
    b += (size_t)(o->m[i] ? o->numel[i] : 0) + (size_t)(o->v[i] ? o->numel[i] : 0) +
         (size_t)(o->vr[i] ? lead * rows : 0) + (size_t)(o->vc[i] ? lead * cols : 0);
  }
  return b * o->elem;
}

void rt_md_optim_step(Comm *c, const Program *p, Optim *o, float *const *params,
                      float *const *grads) {
  if (c->size <= 1) {
    rt_optim_step(o, params, grads);
    return;
  }
  const Graph *g = p->g;
  MOEC_ASSERT(o->n == g->nparams);
  /* the global norm: replicated gradients (the same everywhere) once, plus every
   * device's own experts' squares and those of the parameters trained on(...) a device
   * subset (by the set's first device), summed over the devices */
  double ss[2] = {0, 0};
  float **pp = mc_calloc((size_t)o->n + 1, sizeof(float *)),
        **gg = mc_calloc((size_t)o->n + 1, sizeof(float *));
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    pp[i] = params[i];
    gg[i] = grads[i];
    int own = rt_md_param_owner(p, i);
    if (own >= 0 && !trains_here(p, i)) {
      gg[i] = NULL; /* trained on(...) devices without this one: not updated here */
      continue;
    }
    int x = own >= 0 || sharded(p, i);
    if (own >= 0 && own != c->rank) continue;
    ss[x] += rt_sumsq(grads[i], t->numel, o->elem); /* the update's 8-lane sum (optim.c) */
  }
  c->all_reduce_sum_f64(c, &ss[1], 1);
  for (int i = 0; i < o->n; i++) {
    if (!whole_entry(p, o, i)) continue;
    int64_t per = o->shape[i][1];
    pp[i] = mc_malloc((size_t)o->numel[i] * o->elem);
    gg[i] = mc_malloc((size_t)o->numel[i] * o->elem);
    gather_rows(c, &p->rows[i], params[i], per, o->elem, pp[i], -1);
    gather_rows(c, &p->rows[i], grads[i], per, o->elem, gg[i], -1);
  }
  rt_optim_apply(o, pp, gg, sqrt(ss[0] + ss[1]));
  for (int i = 0; i < o->n; i++) {
    if (pp[i] == params[i]) continue;
    const RowSel *rs = &p->rows[i];
    size_t row = (size_t)o->shape[i][1] * o->elem;
    for (int64_t j = 0; j < rs->n; j++) /* this device's rows of the updated whole */
      memcpy((char *)params[i] + (size_t)j * row, (char *)pp[i] + (size_t)rs->list[j] * row, row);
    mc_free(pp[i]);
    mc_free(gg[i]);
  }
  mc_free(pp);
  mc_free(gg);
}

/* A gathered copy of a sharded entry's state buffer (`per` floats per expert row),
 * whole on root. */
static float *gather_state(Comm *c, const RowSel *rs, const float *local, int64_t per, int root) {
  if (!local) return NULL;
  float *full = c->rank == root ? mc_malloc((size_t)(per * rs->global) * sizeof(float)) : NULL;
  gather_rows(c, rs, local, per, sizeof(float), full, root);
  return full;
}

Optim *rt_md_optim_gather(Comm *c, const Program *p, const Optim *o, int root) {
  bool me = c->rank == root;
  Optim *w = NULL;
  if (me) {
    w = mc_malloc(sizeof(Optim));
    *w = *o;
    size_t n = (size_t)MC_MAX(o->n, 1);
    w->names = mc_malloc(n * sizeof(char *));
    w->numel = mc_malloc(n * sizeof(int64_t));
    w->prank = mc_malloc(n * sizeof(int));
    w->shape = mc_malloc(n * sizeof *w->shape);
    w->m = mc_calloc(n, sizeof(float *));
    w->v = mc_calloc(n, sizeof(float *));
    w->vr = mc_calloc(n, sizeof(float *));
    w->vc = mc_calloc(n, sizeof(float *));
    memcpy(w->names, o->names, (size_t)o->n * sizeof(char *));
    memcpy(w->numel, o->numel, (size_t)o->n * sizeof(int64_t));
    memcpy(w->prank, o->prank, (size_t)o->n * sizeof(int));
    memcpy(w->shape, o->shape, (size_t)o->n * sizeof *w->shape);
  }
  for (int i = 0; i < o->n; i++) {
    bool by_rows = sharded(p, i) && !whole_entry(p, o, i);
    if (!by_rows && rt_md_param_owner(p, i) >= 0) { /* whole, trained on a set */
      int64_t lead = 0, rows = 0, cols = 0;
      if (o->vr[i]) {
        int r = o->prank[i];
        rows = o->shape[i][r - 2];
        cols = o->shape[i][r - 1];
        lead = o->numel[i] / MC_MAX(1, rows * cols);
      }
      float *m = owned_sum(c, p, i, o->m[i], o->numel[i], root),
            *v = owned_sum(c, p, i, o->v[i], o->numel[i], root),
            *vr = owned_sum(c, p, i, o->vr[i], lead * rows, root),
            *vc = owned_sum(c, p, i, o->vc[i], lead * cols, root);
      if (me) {
        w->m[i] = m;
        w->v[i] = v;
        w->vr[i] = vr;
        w->vc[i] = vc;
      }
      continue;
    }
    if (!by_rows) { /* whole on every device: root's own */
      if (me) {
        w->m[i] = o->m[i];
        w->v[i] = o->v[i];
        w->vr[i] = o->vr[i];
        w->vc[i] = o->vc[i];
      }
      continue;
    }
    /* per expert row (a device may hold none: E_r = 0) */
    int r = o->prank[i];
    int64_t per = 1, lead = 0, rows = 0, cols = 0;
    for (int d = 1; d < r; d++)
      per *= o->shape[i][d];
    if (o->vr[i]) { /* [E_r, ..., rows, cols] (r >= 3: an [E, H] matrix is kept whole) */
      rows = o->shape[i][r - 2];
      cols = o->shape[i][r - 1];
      lead = per / MC_MAX(1, rows * cols);
    }
    const RowSel *rs = &p->rows[i];
    float *m = gather_state(c, rs, o->m[i], per, root), *v = gather_state(c, rs, o->v[i], per, root),
          *vr = gather_state(c, rs, o->vr[i], lead * rows, root),
          *vc = gather_state(c, rs, o->vc[i], lead * cols, root);
    if (me) {
      w->m[i] = m;
      w->v[i] = v;
      w->vr[i] = vr;
      w->vc[i] = vc;
      w->shape[i][0] = rs->global;
      w->numel[i] = per * rs->global;
    }
  }
  return w;
}

void rt_md_optim_gathered_free(Optim *w, const Optim *o) {
  if (!w) return;
  for (int i = 0; i < w->n; i++) {
    if (w->m[i] != o->m[i]) mc_free(w->m[i]);
    if (w->v[i] != o->v[i]) mc_free(w->v[i]);
    if (w->vr[i] != o->vr[i]) mc_free(w->vr[i]);
    if (w->vc[i] != o->vc[i]) mc_free(w->vc[i]);
  }
  mc_free(w->names);
  mc_free(w->numel);
  mc_free(w->prank);
  mc_free(w->shape);
  mc_free(w->m);
  mc_free(w->v);
  mc_free(w->vr);
  mc_free(w->vc);
  mc_free(w);
}

bool rt_md_optim_load(const Program *p, Optim *o, const StFile *f) {
  if (!p->rows) return rt_optim_load(o, f);
  RowSel *rows = mc_calloc((size_t)o->n + 1, sizeof(RowSel));
  for (int i = 0; i < o->n; i++)
    if (!whole_entry(p, o, i)) rows[i] = p->rows[i]; /* kept whole: the file's as it is */
  bool ok = rt_optim_load_rows(o, f, rows);
  mc_free(rows);
  return ok;
}

