/* multidev.c: one model over N devices (issue 4, items 4-5): per-device graph
 * preparation (this device's experts only: passes/shard.c; expert rows sized for the
 * global batch; on(...) device subsets bound and run), the rows a device holds of each
 * expert parameter, gathers of expert and subset parameters and optimizer state for
 * checkpoints, the optimizer step with the global gradient norm, and the in-process and
 * MPI drivers. docs/multidev.md. */
#include "multidev.h"

#include "../passes/plan.h"
#include "train_dev.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS: one thread per device thread (no oversubscription). */
void openblas_set_num_threads(int n);

void rt_md_prepare(Graph *g, int rank, int P) {
  if (P <= 1) return;
  mc_free(pass_shard_experts(g, rank)); /* this device's experts only (E_r may be 0) */
}

void rt_md_widen_expert_rows(Graph *g, int P) {
  if (P <= 1) return;
  for (int i = 0; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    if (t->part != PART_EXPERTS || t->ty.rank < 1 || t->ty.dim[0].b <= 0) continue;
    for (int k = 0; k < t->ty.dim[0].b; k++)
      t->ty.dim[0].c *= P;
  }
}

/* ---------------------------------------------------------------- device subsets */

static uint64_t all_mask(int P) {
  return P >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << P) - 1;
}

uint64_t rt_md_node_mask(const Node *n, int P) {
  if (n->device >= 0) return (uint64_t)1 << n->device;
  if (n->ndevices <= 0) return all_mask(P);
  uint64_t m = 0;
  for (int i = 0; i < n->ndevices; i++)
    m |= (uint64_t)1 << n->devices[i];
  return m;
}

uint64_t rt_md_tensor_mask(const Tensor *t, int P) {
  const Node *n = t->producer;
  if (!n) return all_mask(P);
  if (n->op == OP_RESHARD) return (uint64_t)n->ia[3];
  if (n->op == OP_ALL_TO_ALL_BACK && n->ia[2]) return (uint64_t)n->ia[2];
  return rt_md_node_mask(n, P);
}

bool rt_md_runs(const Node *n, int rank, int P) {
  return rt_md_node_mask(n, P) >> rank & 1;
}

bool rt_md_has_subsets(const Graph *g, int P) {
  if (P <= 1) return false;
  for (int k = 0; k < g->nnodes; k++)
    if (rt_md_node_mask(g->nodes[k], P) != all_mask(P)) return true;
  return false;
}

KernelCtx rt_md_node_ctx(const KernelCtx *ctx, const Node *n) {
  KernelCtx c = *ctx;
  int P = ctx->ndevices;
  uint64_t m = rt_md_node_mask(n, P);
  if (P <= 1 || m == all_mask(P)) return c;
  int64_t B = ctx->batch_local * P; /* global rows */
  int k = __builtin_popcountll(m),
      idx = __builtin_popcountll(m & (((uint64_t)1 << ctx->device) - 1));
  c.batch_local = B / k;
  c.batch0 = idx * (B / k);
  c.device = idx;
  c.ndevices = k;
  return c;
}

void rt_md_bind(Graph *g, int64_t B, int64_t T, int P) {
  if (P <= 1) {
    ir_bind(g, B, T);
    return;
  }
  rt_md_widen_expert_rows(g, P); /* room for the rows of every device */
  int n = g->ntensors;
  Dim *orig = mc_calloc((size_t)n + 1, sizeof(Dim));
  int *nset = mc_calloc((size_t)n + 1, sizeof(int));
  for (int i = 0; i < n; i++) {
    Tensor *t = g->tensors[i];
    uint64_t m = rt_md_tensor_mask(t, P);
    if (t->part != PART_BATCH || t->ty.rank < 1 || t->ty.dim[0].b <= 0 || m == all_mask(P))
      continue;
    int k = __builtin_popcountll(m);
    if (B % k)
      mc_die("tensor '%s' is split over %d devices (place ... : on(...)), but batch %lld does not "
             "split evenly over %d: use a batch that every device set's size divides",
             t->name, k, (long long)B, k);
    if (t->ty.dim[0].b != 1)
      mc_die("tensor '%s' on a device subset has rows %s of B: not supported", t->name, "a power");
    nset[i] = k;
    orig[i] = t->ty.dim[0];
    t->ty.dim[0].c *= (P + k - 1) / k; /* the plan's room: at least B/k rows */
  }
  ir_bind(g, B / P, T);
  for (int i = 0; i < n; i++) {
    if (!nset[i]) continue;
    Tensor *t = g->tensors[i];
    t->shape[0] = dim_eval(orig[i], B / nset[i], T); /* the exact rows of one device */
    t->numel = 1;
    for (int d = 0; d < t->ty.rank; d++)
      t->numel *= t->shape[d];
  }
  mc_free(orig);
  mc_free(nset);
}

int rt_md_param_owner(const Graph *g, const Tensor *t, int P) {
  if (P <= 1 || t->part == PART_EXPERTS || !t->grad || !t->grad->producer) return -1;
  (void)g;
  uint64_t m = rt_md_node_mask(t->grad->producer, P);
  return m == all_mask(P) ? -1 : __builtin_ctzll(m);
}

/* Zeroes, in buf (param t's layout, elements of `elem` bytes), a buffer of n elements held
 * whole on a device off the set that trains the parameter (rt_md_param_owner). */
static void zero_nonowned(const Graph *g, const Tensor *t, int rank, int P, void *buf, int64_t n,
                          size_t elem) {
  int o = rt_md_param_owner(g, t, P);
  if (o >= 0 && o != rank) memset(buf, 0, (size_t)n * elem);
}

/* Held whole but trained elsewhere: gathers sum what each device owns. (Expert
 * parameters, hmoe groups included, are sharded: passes/shard.c.) */
static bool summed_param(const Graph *g, const Tensor *t, int P) {
  return rt_md_param_owner(g, t, P) >= 0;
}

/* Collective: on root, a copy of a whole-held buffer (n floats) of parameter t with
 * every device's owned part (zero_nonowned), summed; NULL elsewhere or for src NULL. */
static float *owned_sum(Comm *c, const Graph *g, const Tensor *t, const float *src, int64_t n,
                        int root) {
  if (!src) return NULL;
  float *b = mc_malloc((size_t)MC_MAX(n, 1) * sizeof(float));
  memcpy(b, src, (size_t)n * sizeof(float));
  zero_nonowned(g, t, c->rank, c->size, b, n, sizeof(float));
  c->all_reduce_sum_f32(c, b, n);
  if (c->rank == root) return b;
  mc_free(b);
  return NULL;
}

/* ---------------------------------------------------------------- sharded experts */

RowSel *rt_md_param_rows(const Graph *g) {
  RowSel *r = mc_calloc((size_t)g->nparams + 1, sizeof(RowSel));
  for (int i = 0; i < g->nparams && g->experts_local; i++) {
    const Tensor *t = g->params[i];
    ExpertShard s;
    if (!pass_expert_shard(g, t, &s)) continue;
    int64_t *list = mc_malloc(sizeof(int64_t) * (size_t)s.count);
    int64_t n = pass_expert_local(g, &s, g->experts_rank, list);
    MOEC_ASSERT(n == t->shape[0]);
    for (int64_t j = 0; j < n; j++)
      list[j] -= s.first; /* rows of this parameter */
    r[i] = (RowSel){s.count, n, list};
  }
  return r;
}

void rt_md_rows_free(const Graph *g, RowSel *r) {
  for (int i = 0; r && i < g->nparams; i++)
    mc_free((void *)r[i].list);
  mc_free(r);
}

/* Collective: the whole tensor of an expert parameter's rows (`per` elements of `elem`
 * bytes each) from every device's local rows, into full (s->count * per elements) on
 * root, or on every device when root < 0. Rows arrive in rank order and go to their
 * global place. */
static void gather_rows(Comm *c, const Graph *g, const ExpertShard *s, const void *local,
                        int64_t per, size_t elem, void *full, int root) {
  int P = c->size;
  size_t row = (size_t)per * elem;
  int64_t *counts = mc_calloc((size_t)P, sizeof(int64_t)), total = 0;
  for (int p = 0; p < P; p++) {
    counts[p] = pass_expert_local(g, s, p, NULL) * (int64_t)row;
    total += counts[p];
  }
  bool me = root < 0 || c->rank == root;
  char *recv = me ? mc_malloc((size_t)MC_MAX(total, 1)) : NULL;
  comm_gatherv(c, local, recv, counts, root);
  if (me) {
    int64_t *list = mc_malloc(sizeof(int64_t) * (size_t)s->count), at = 0;
    for (int p = 0; p < P; p++) {
      int64_t n = pass_expert_local(g, s, p, list);
      for (int64_t j = 0; j < n; j++, at += (int64_t)row)
        memcpy((char *)full + (size_t)(list[j] - s->first) * row, recv + at, row);
    }
    MOEC_ASSERT(at == total);
    mc_free(list);
  }
  mc_free(recv);
  mc_free(counts);
}

float **rt_md_gather_params(Comm *c, Program *p, int root) {
  const Graph *g = p->g;
  MOEC_ASSERT(p->prec == PREC_F32);
  float **full = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  for (int i = 0; i < g->nparams && g->experts_local; i++) {
    const Tensor *t = g->params[i];
    ExpertShard s;
    void *owned = NULL;                /* a host copy of a device program's tensor */
    if (summed_param(g, t, c->size)) { /* whole here, owned in part elsewhere */
      full[i] = owned_sum(c, g, t, rt_dev_host_view(p, t, &owned), t->numel, root);
      mc_free(owned);
      continue;
    }
    if (!pass_expert_shard(g, t, &s)) continue;
    int64_t per = 1; /* elements per expert row (a device may hold none: E_r = 0) */
    for (int d = 1; d < t->ty.rank; d++)
      per *= t->shape[d];
    if (c->rank == root) full[i] = mc_malloc((size_t)(s.count * per) * sizeof(float));
    gather_rows(c, g, &s, rt_dev_host_view(p, t, &owned), per, sizeof(float), full[i], root);
    mc_free(owned);
  }
  return full;
}

void rt_md_gathered_free(const Graph *g, float **full) {
  for (int i = 0; full && i < g->nparams; i++)
    mc_free(full[i]);
  mc_free(full);
}

/* ---------------------------------------------------------------- optimizer */

/* An entry the optimizer keeps whole on every device although its parameter is
 * sharded: the factored second moment of a matrix whose rows are experts ([E, H]
 * biases): its column moments average over every expert, so each device updates the
 * whole matrix from the all-gathered gradient (the same arithmetic as one device) and
 * keeps its rows. [E, a, b] weights are E matrices: sharded like Adam's moments. */
static bool whole_entry(const Graph *g, const Optim *o, int i) {
  return g->experts_local && o->kind == OPT_FACTORED && o->prank[i] == 2 &&
         pass_expert_shard(g, g->params[i], NULL);
}

Optim *rt_md_optim_new(const Config *cfg, const Graph *g, Precision prec) {
  Optim *o = rt_optim_new_prec(cfg, g, prec);
  for (int i = 0; i < o->n; i++) {
    if (!whole_entry(g, o, i)) continue;
    ExpertShard s;
    pass_expert_shard(g, g->params[i], &s);
    o->shape[i][0] = s.count;
    o->numel[i] = s.count * o->shape[i][1];
    mc_free(o->vr[i]);
    o->vr[i] = mc_calloc((size_t)s.count, o->elem);
    mc_free(o->vc[i]); /* one matrix (a device with E_r = 0 had none) */
    o->vc[i] = mc_calloc((size_t)o->shape[i][1], o->elem);
  }
  return o;
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

/* Element j of an optimizer array of `elem` bytes (an elem-8 optimizer's are doubles). */
static double elem_get(const float *p, int64_t j, size_t elem) {
  return elem == sizeof(double) ? ((const double *)(const void *)p)[j] : (double)p[j];
}

void rt_md_optim_step(Comm *c, const Graph *g, Optim *o, float *const *params,
                      float *const *grads) {
  if (c->size <= 1) {
    rt_optim_step(o, params, grads);
    return;
  }
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
    int own = rt_md_param_owner(g, t, c->size);
    if (own >= 0 && !rt_md_runs(t->grad->producer, c->rank, c->size)) {
      gg[i] = NULL; /* trained on(...) devices without this one: not updated here */
      continue;
    }
    int x = own >= 0 || (g->experts_local && pass_expert_shard(g, t, NULL));
    if (own >= 0 && own != c->rank) continue;
    for (int64_t j = 0; j < t->numel; j++)
      ss[x] += elem_get(grads[i], j, o->elem) * elem_get(grads[i], j, o->elem);
  }
  c->all_reduce_sum_f64(c, &ss[1], 1);
  for (int i = 0; i < o->n; i++) {
    if (!whole_entry(g, o, i)) continue;
    ExpertShard s;
    pass_expert_shard(g, g->params[i], &s);
    int64_t per = o->shape[i][1];
    pp[i] = mc_malloc((size_t)o->numel[i] * o->elem);
    gg[i] = mc_malloc((size_t)o->numel[i] * o->elem);
    gather_rows(c, g, &s, params[i], per, o->elem, pp[i], -1);
    gather_rows(c, g, &s, grads[i], per, o->elem, gg[i], -1);
  }
  rt_optim_apply(o, pp, gg, sqrt(ss[0] + ss[1]));
  for (int i = 0; i < o->n; i++) {
    if (pp[i] == params[i]) continue;
    ExpertShard s;
    pass_expert_shard(g, g->params[i], &s);
    int64_t per = o->shape[i][1], *list = mc_malloc(sizeof(int64_t) * (size_t)s.count);
    int64_t n = pass_expert_local(g, &s, g->experts_rank, list);
    size_t row = (size_t)per * o->elem;
    for (int64_t j = 0; j < n; j++) /* this device's rows of the updated whole */
      memcpy((char *)params[i] + (size_t)j * row, (char *)pp[i] + (size_t)(list[j] - s.first) * row,
             row);
    mc_free(list);
    mc_free(pp[i]);
    mc_free(gg[i]);
  }
  mc_free(pp);
  mc_free(gg);
}

/* A gathered copy of a sharded entry's state buffer (`per` floats per expert row),
 * whole on root. */
static float *gather_state(Comm *c, const Graph *g, const ExpertShard *s, const float *local,
                           int64_t per, int root) {
  if (!local) return NULL;
  float *full = c->rank == root ? mc_malloc((size_t)(per * s->count) * sizeof(float)) : NULL;
  gather_rows(c, g, s, local, per, sizeof(float), full, root);
  return full;
}

Optim *rt_md_optim_gather(Comm *c, const Graph *g, const Optim *o, int root) {
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
    ExpertShard s;
    bool sharded =
        g->experts_local && !whole_entry(g, o, i) && pass_expert_shard(g, g->params[i], &s);
    const Tensor *t = g->params[i];
    if (!sharded && summed_param(g, t, c->size)) { /* whole, owned in part elsewhere */
      int64_t lead = 0, rows = 0, cols = 0;
      if (o->vr[i]) {
        int r = o->prank[i];
        rows = o->shape[i][r - 2];
        cols = o->shape[i][r - 1];
        lead = o->numel[i] / MC_MAX(1, rows * cols);
      }
      float *m = owned_sum(c, g, t, o->m[i], o->numel[i], root),
            *v = owned_sum(c, g, t, o->v[i], o->numel[i], root),
            *vr = owned_sum(c, g, t, o->vr[i], lead * rows, root),
            *vc = owned_sum(c, g, t, o->vc[i], lead * cols, root);
      if (me) {
        w->m[i] = m;
        w->v[i] = v;
        w->vr[i] = vr;
        w->vc[i] = vc;
      }
      continue;
    }
    if (!sharded) { /* whole on every device: root's own */
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
    float *m = gather_state(c, g, &s, o->m[i], per, root),
          *v = gather_state(c, g, &s, o->v[i], per, root),
          *vr = gather_state(c, g, &s, o->vr[i], lead * rows, root),
          *vc = gather_state(c, g, &s, o->vc[i], lead * cols, root);
    if (me) {
      w->m[i] = m;
      w->v[i] = v;
      w->vr[i] = vr;
      w->vc[i] = vc;
      w->shape[i][0] = s.count;
      w->numel[i] = per * s.count;
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

bool rt_md_optim_load(const Graph *g, Optim *o, const StFile *f) {
  RowSel *rows = rt_md_param_rows(g);
  for (int i = 0; i < o->n; i++)
    if (whole_entry(g, o, i)) { /* kept whole: the file's as it is */
      mc_free((void *)rows[i].list);
      rows[i] = (RowSel){0};
    }
  bool ok = rt_optim_load_rows(o, f, rows);
  rt_md_rows_free(g, rows);
  return ok;
}

/* ---------------------------------------------------------------- drivers */

typedef struct MdArgs {
  AstFile *f;
  const Config *cfg;
  const TrainOpts *o;
  RtNcclGroup *gpus; /* backend cuda: the device threads' GPUs and NCCL */
  int rc[RT_INPROC_MAX];
} MdArgs;

static void md_thread(Comm *c, void *arg) {
  MdArgs *a = arg;
  Comm *dc = a->gpus ? rt_comm_nccl_attach(a->gpus, c) : c; /* device buffers: comm.h */
  a->rc[c->rank] = rt_train_comm(dc, a->f, a->cfg, a->o);
  if (dc != c) rt_comm_nccl_free(dc);
}

bool rt_md_mpi_launched(void) {
  if (!rt_comm_mpi_launched()) return false;
  const char *s = getenv("OMPI_COMM_WORLD_SIZE");
  if (!s) s = getenv("PMI_SIZE");
  return !s || atoi(s) > 1;
}

void rt_md_check_graph(const Graph *g, const Config *cfg, int P) {
  (void)cfg; /* every optimizer shards alike (the factored one with hmoe groups too) */
  if (P <= 1) return;
  /* device subsets: what the runtime cannot split over part of the devices yet */
  uint64_t *pm = mc_calloc((size_t)g->ntensors + 1, sizeof(uint64_t));
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    uint64_t m = rt_md_node_mask(n, P);
    for (int i = 0; i < n->nin; i++) {
      const Tensor *t = n->in[i];
      if (t->kind == TK_STATE && m != all_mask(P))
        mc_die("layer '%s' keeps state from step to step ('%s') and runs on a subset of the "
               "devices (place ... : on(...)): not supported yet (place it on every device)",
               n->layer ? n->layer : "?", t->name);
      if (t->kind != TK_PARAM || n->backward || t->part == PART_EXPERTS) continue;
      if (pm[t->id] && pm[t->id] != m)
        mc_die("parameter '%s' is read by nodes on different device sets (place ... : on(...)): "
               "its gradient would mix them; place its readers on the same devices",
               t->name);
      pm[t->id] = m;
    }
  }
  mc_free(pm);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    if (t->part == PART_EXPERTS && g->moe_expert_dev && !pass_expert_shard(g, t, NULL))
      mc_die("parameter '%s' is expert-sharded but not the expert dimension of a moe or hmoe "
             "layer (use strategy = data_parallel)",
             t->name);
  }
}

/* The errors every device would hit alike (batch split, placement, the checkpoint's
 * file), found once before the devices start: N threads must not all mc_die at once. */
static void precheck(AstFile *f, const Config *cfg, const TrainOpts *o, int P) {
  if (cfg->batch < P)
    mc_die("%d devices but a batch has %d rows: each device needs at least one row", P, cfg->batch);
  if (cfg->batch % P)
    mc_die("batch %d does not split evenly over %d devices: use a batch that is a multiple of "
           "the device count",
           cfg->batch, P);
  Graph *g = ir_build(f, cfg);
  PassCtx pc = {cfg, P, true};
  pass_run_all(g, &pc, NULL, NULL);
  rt_md_bind(g, cfg->batch, cfg->unroll, P); /* also: a batch an on(...) set does not divide */
  rt_md_check_graph(g, cfg, P);
  ir_graph_free(g);
  if (o->load) rt_st_close(rt_st_open(o->load));
}

int rt_md_train(AstFile *f, const Config *cfg, const TrainOpts *o, int devices) {
  MdArgs a = {f, cfg, o, NULL, {0}};
  if (rt_comm_mpi_launched()) {
    const char *why = NULL;
    int argc = 0;
    char **argv = NULL;
    Comm *c = rt_comm_mpi_init(&argc, &argv, &why);
    if (!c) mc_die("started by an MPI launcher, but %s", why ? why : "MPI did not start");
    if (devices > 1 && devices != c->size)
      mc_die("--devices %d, but mpirun started %d ranks (one device per rank)", devices, c->size);
    openblas_set_num_threads(1);
    Comm *dc = rt_dev_backend(cfg) != &rt_backend_cpu ? rt_comm_nccl_init_rank(c) : c;
    int rc = rt_train_comm(dc, f, cfg, o);
    if (dc != c) rt_comm_nccl_free(dc);
    rt_comm_mpi_finalize(c);
    return rc;
  }
  if (devices > RT_INPROC_MAX)
    mc_die("--devices %d: at most %d in-process devices", devices, RT_INPROC_MAX);
  precheck(f, cfg, o, devices);
  openblas_set_num_threads(1); /* once, before the device threads start */
  if (rt_dev_backend(cfg) != &rt_backend_cpu) a.gpus = rt_comm_nccl_init_all(devices);
  int failed = rt_inproc_run(devices, md_thread, &a);
  rt_comm_nccl_group_free(a.gpus);
  if (failed) return 1;
  for (int r = 0; r < devices; r++)
    if (a.rc[r]) return a.rc[r];
  return 0;
}
