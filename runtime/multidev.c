/* multidev.c: one model over N devices (issue 4, items 4-5): per-device graph
 * preparation, expert ownership, gathers for checkpoints and evaluation, global
 * gradient-norm clipping, and the in-process and MPI drivers. docs/multidev.md. */
#include "multidev.h"

#include "../passes/passes.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS: one thread per device thread (no oversubscription). */
void openblas_set_num_threads(int n);

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

/* gathers (checkpoints, evaluation): zero what another device contributes */
static void zero_nonlocal(const Graph *g, const Tensor *t, int rank, void *buf, size_t elem);
static void zero_nonowner(const Graph *g, const Tensor *t, int rank, int P, void *buf,
                          size_t elem) {
  int o = rt_md_param_owner(g, t, P);
  if (o >= 0 && o != rank) memset(buf, 0, (size_t)t->numel * elem);
  zero_nonlocal(g, t, rank, buf, elem);
}

static bool gathered_param(const Graph *g, const Tensor *t, int P) {
  return t->part == PART_EXPERTS || rt_md_param_owner(g, t, P) >= 0;
}

/* An expert parameter is NAME.PART of a moe (dim 0 = its E experts) or NAME.gJ.PART of
 * an hmoe's group J (dim 0 = the group's experts, J*Eg... of the layer's G*Eg). */
int rt_md_param_experts(const Graph *g, const Tensor *t, int *first) {
  *first = 0;
  if (t->part != PART_EXPERTS) return -1;
  int best = -1, grp = -1;
  size_t bl = 0;
  for (int i = 0; i < g->nmoe; i++) {
    size_t l = strlen(g->moe_names[i]);
    if (strncmp(t->name, g->moe_names[i], l) || t->name[l] != '.' || l < bl) continue;
    const char *rest = t->name + l + 1, *dot = strchr(rest, '.');
    int j = -1, used = 0;
    if (!dot)
      j = -1;
    else if (sscanf(rest, "g%d%n", &j, &used) == 1 && j >= 0 && rest + used == dot &&
             !strchr(dot + 1, '.'))
      ; /* NAME.gJ.PART */
    else
      continue;
    best = i;
    bl = l;
    grp = j;
  }
  int64_t E = best >= 0 && g->moe_nexperts ? g->moe_nexperts[best] : 0;
  int64_t rows = t->ty.rank >= 1 ? t->shape[0] : 0;
  int64_t at = grp >= 0 ? grp * rows : 0;
  if (best < 0 || !g->moe_expert_dev || rows < 1 || at + rows > E || (grp < 0 && rows != E))
    mc_die("parameter '%s' is expert-sharded but not the expert dimension of a moe or hmoe "
           "layer (use strategy = data_parallel)",
           t->name);
  *first = (int)at;
  return best;
}

int rt_md_param_moe(const Graph *g, const Tensor *t) {
  int first;
  return rt_md_param_experts(g, t, &first);
}

/* rt_md_zero_nonlocal for elements of `elem` bytes (float, or double under --f64). */
static void zero_nonlocal(const Graph *g, const Tensor *t, int rank, void *buf, size_t elem) {
  int first, m = rt_md_param_experts(g, t, &first);
  if (m < 0) return;
  const int *map = g->moe_expert_dev[m] + first;
  int64_t E = t->shape[0], per = t->numel / E;
  for (int64_t e = 0; e < E; e++)
    if (map[e] != rank) memset((char *)buf + (size_t)(e * per) * elem, 0, (size_t)per * elem);
}

void rt_md_zero_nonlocal(const Graph *g, const Tensor *t, int rank, float *buf) {
  zero_nonlocal(g, t, rank, buf, sizeof(float));
}

void rt_md_gather_experts(Comm *c, Program *p) {
  const Graph *g = p->g;
  if (c->size <= 1) return;
  MOEC_ASSERT(p->be == &rt_backend_cpu);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    if (!gathered_param(g, t, c->size)) continue;
    void *b = p->buf[t->id];
    zero_nonowner(g, t, c->rank, c->size, b, p->elem);
    if (p->prec == PREC_F64)
      c->all_reduce_sum_f64(c, b, t->numel);
    else
      c->all_reduce_sum_f32(c, b, t->numel);
  }
}

/* p + at elements of `elem` bytes (an elem-8 optimizer's arrays are doubles). */
static float *elem_at(float *p, int64_t at, size_t elem) {
  return p ? (float *)(void *)((char *)p + (size_t)at * elem) : NULL;
}

static double elem_get(const float *p, int64_t j, size_t elem) {
  return elem == sizeof(double) ? ((const double *)(const void *)p)[j] : (double)p[j];
}

/* The optimizer's view of this device's work: replicated parameters whole, expert
 * parameters as the ranges of the experts on `rank` (consecutive local experts merged),
 * so a device updates only its own experts. */
typedef struct OptView {
  Optim o;
  float **p, **g;
} OptView;

static void view_add(OptView *w, const Optim *o, int i, int64_t at, int64_t n, float *const *params,
                     float *const *grads) {
  int k = w->o.n++;
  w->o.names[k] = o->names[i];
  w->o.numel[k] = n;
  w->o.prank[k] = o->prank[i];
  memcpy(w->o.shape[k], o->shape[i], sizeof o->shape[i]);
  w->o.m[k] = elem_at(o->m[i], at, o->elem);
  w->o.v[k] = elem_at(o->v[i], at, o->elem);
  w->o.vr[k] = o->vr[i];
  w->o.vc[k] = o->vc[i];
  w->p[k] = elem_at(params[i], at, o->elem);
  w->g[k] = elem_at(grads[i], at, o->elem);
}

static void view_build(OptView *w, Comm *c, const Graph *g, const Optim *o, float *const *params,
                       float *const *grads) {
  int cap = 0;
  for (int i = 0; i < o->n; i++)
    cap += g->params[i]->part == PART_EXPERTS ? (int)g->params[i]->shape[0] : 1;
  w->o = *o;
  w->o.n = 0;
  w->o.names = mc_calloc((size_t)cap + 1, sizeof(char *));
  w->o.numel = mc_calloc((size_t)cap + 1, sizeof(int64_t));
  w->o.prank = mc_calloc((size_t)cap + 1, sizeof(int));
  w->o.shape = mc_calloc((size_t)cap + 1, sizeof *w->o.shape);
  w->o.m = mc_calloc((size_t)cap + 1, sizeof(float *));
  w->o.v = mc_calloc((size_t)cap + 1, sizeof(float *));
  w->o.vr = mc_calloc((size_t)cap + 1, sizeof(float *));
  w->o.vc = mc_calloc((size_t)cap + 1, sizeof(float *));
  w->p = mc_calloc((size_t)cap + 1, sizeof(float *));
  w->g = mc_calloc((size_t)cap + 1, sizeof(float *));
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    int first, m = rt_md_param_experts(g, t, &first);
    if (m < 0) { /* a parameter trained on(...) a subset: only its devices update it */
      if (!t->grad || !t->grad->producer || rt_md_runs(t->grad->producer, c->rank, c->size))
        view_add(w, o, i, 0, o->numel[i], params, grads);
      continue;
    }
    const int *map = g->moe_expert_dev[m] + first;
    int64_t E = t->shape[0], per = t->numel / E;
    for (int64_t e = 0; e < E;) {
      if (map[e] != c->rank) {
        e++;
        continue;
      }
      int64_t e1 = e;
      while (e1 < E && map[e1] == c->rank)
        e1++;
      view_add(w, o, i, e * per, (e1 - e) * per, params, grads);
      e = e1;
    }
  }
}

static void view_free(OptView *w) {
  mc_free(w->o.names);
  mc_free(w->o.numel);
  mc_free(w->o.prank);
  mc_free(w->o.shape);
  mc_free(w->o.m);
  mc_free(w->o.v);
  mc_free(w->o.vr);
  mc_free(w->o.vc);
  mc_free(w->p);
  mc_free(w->g);
}

void rt_md_optim_step(Comm *c, const Graph *g, Optim *o, float *const *params,
                      float *const *grads) {
  if (c->size <= 1) {
    rt_optim_step(o, params, grads);
    return;
  }
  MOEC_ASSERT(o->n == g->nparams);
  bool experts = false;
  for (int i = 0; i < o->n; i++)
    experts |= g->params[i]->part == PART_EXPERTS;
  if (experts && o->kind != OPT_ADAM)
    mc_die("the factored optimizer with expert-sharded layers on N devices is not supported yet: "
           "use adam");
  OptView w;
  view_build(&w, c, g, o, params, grads);
  double ss[2] = {0, 0}; /* replicated (the same on every device), this device's experts */
  for (int k = 0, i = 0; k < w.o.n; k++) {
    while (strcmp(g->params[i]->name, w.o.names[k])) /* names in order: find k's param */
      i++;
    /* replicated over all: the same everywhere; experts and on(...) parameters: summed
     * over devices, each counted once (a subset's parameter by its first device) */
    int own = rt_md_param_owner(g, g->params[i], c->size);
    if (own >= 0 && own != c->rank) continue;
    int x = g->params[i]->part == PART_EXPERTS || own >= 0;
    for (int64_t j = 0; j < w.o.numel[k]; j++)
      ss[x] += elem_get(w.g[k], j, o->elem) * elem_get(w.g[k], j, o->elem);
  }
  c->all_reduce_sum_f64(c, &ss[1], 1);
  double norm = sqrt(ss[0] + ss[1]), clip = o->clip;
  if (!isfinite(norm))
    mc_die("the gradient norm is %g at step %lld: training diverged (try a smaller lr or clip)",
           norm, (long long)o->t + 1);
  if (clip > 0 && norm > clip) {
    float s = (float)(clip / norm);
    for (int k = 0; k < w.o.n; k++)
      for (int64_t j = 0; j < w.o.numel[k]; j++)
        if (o->elem == sizeof(double))
          ((double *)(void *)w.g[k])[j] *= clip / norm;
        else
          w.g[k][j] *= s;
  }
  w.o.clip = 0;
  rt_optim_step(&w.o, w.p, w.g);
  o->t = w.o.t;
  o->last_norm = norm;
  view_free(&w);
}

static float *gathered(Comm *c, const Graph *g, const Tensor *t, const float *src) {
  if (!src) return NULL;
  float *b = mc_malloc((size_t)t->numel * sizeof(float));
  memcpy(b, src, (size_t)t->numel * sizeof(float));
  zero_nonowner(g, t, c->rank, c->size, b, sizeof(float));
  c->all_reduce_sum_f32(c, b, t->numel);
  return b;
}

void rt_md_optim_gather(Comm *c, const Graph *g, Optim *o, MdOptimSave *s) {
  s->m = mc_calloc((size_t)o->n + 1, sizeof(float *));
  s->v = mc_calloc((size_t)o->n + 1, sizeof(float *));
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    if (!gathered_param(g, t, c->size) || c->size <= 1) continue;
    if (o->kind != OPT_ADAM)
      mc_die("the factored optimizer with expert-sharded layers on N devices is not supported yet: "
             "use adam");
    float *m = gathered(c, g, t, o->m[i]), *v = gathered(c, g, t, o->v[i]);
    s->m[i] = o->m[i];
    s->v[i] = o->v[i];
    o->m[i] = m;
    o->v[i] = v;
  }
}

void rt_md_optim_restore(Optim *o, MdOptimSave *s) {
  for (int i = 0; i < o->n; i++) {
    if (s->m[i]) {
      mc_free(o->m[i]);
      o->m[i] = s->m[i];
    }
    if (s->v[i]) {
      mc_free(o->v[i]);
      o->v[i] = s->v[i];
    }
  }
  mc_free(s->m);
  mc_free(s->v);
}

void rt_md_optim_localize(const Graph *g, Optim *o, int rank) {
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    if (t->part != PART_EXPERTS) continue;
    if (o->m && o->m[i]) rt_md_zero_nonlocal(g, t, rank, o->m[i]);
    if (o->v && o->v[i]) rt_md_zero_nonlocal(g, t, rank, o->v[i]);
  }
}

/* ---------------------------------------------------------------- drivers */

typedef struct MdArgs {
  AstFile *f;
  const Config *cfg;
  const TrainOpts *o;
  int rc[RT_INPROC_MAX];
} MdArgs;

static void md_thread(Comm *c, void *arg) {
  MdArgs *a = arg;
  a->rc[c->rank] = rt_train_comm(c, a->f, a->cfg, a->o);
}

bool rt_md_mpi_launched(void) {
  if (!rt_comm_mpi_launched()) return false;
  const char *s = getenv("OMPI_COMM_WORLD_SIZE");
  if (!s) s = getenv("PMI_SIZE");
  return !s || atoi(s) > 1;
}

void rt_md_check_graph(const Graph *g, const Config *cfg, int P) {
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
  bool experts = false;
  for (int i = 0; i < g->nparams; i++)
    experts |= rt_md_param_moe(g, g->params[i]) >= 0;
  if (experts && cfg->optimizer != OPT_ADAM)
    mc_die("the factored optimizer with experts sharded over %d devices is not supported yet: "
           "use optimizer = adam, or strategy = data_parallel",
           P);
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
  MdArgs a = {f, cfg, o, {0}};
  if (rt_comm_mpi_launched()) {
    const char *why = NULL;
    int argc = 0;
    char **argv = NULL;
    Comm *c = rt_comm_mpi_init(&argc, &argv, &why);
    if (!c) mc_die("started by an MPI launcher, but %s", why ? why : "MPI did not start");
    if (devices > 1 && devices != c->size)
      mc_die("--devices %d, but mpirun started %d ranks (one device per rank)", devices, c->size);
    openblas_set_num_threads(1);
    int rc = rt_train_comm(c, f, cfg, o);
    rt_comm_mpi_finalize(c);
    return rc;
  }
  if (devices > RT_INPROC_MAX)
    mc_die("--devices %d: at most %d in-process devices", devices, RT_INPROC_MAX);
  precheck(f, cfg, o, devices);
  openblas_set_num_threads(1); /* once, before the device threads start */
  if (rt_inproc_run(devices, md_thread, &a)) return 1;
  for (int r = 0; r < devices; r++)
    if (a.rc[r]) return a.rc[r];
  return 0;
}
