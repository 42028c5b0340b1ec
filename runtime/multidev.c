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

void rt_md_zero_nonlocal(const Graph *g, const Tensor *t, int rank, float *buf) {
  int first, m = rt_md_param_experts(g, t, &first);
  if (m < 0) return;
  const int *map = g->moe_expert_dev[m] + first;
  int64_t E = t->shape[0], per = t->numel / E;
  for (int64_t e = 0; e < E; e++)
    if (map[e] != rank) memset(buf + e * per, 0, (size_t)per * sizeof(float));
}

void rt_md_gather_experts(Comm *c, Program *p) {
  const Graph *g = p->g;
  if (c->size <= 1) return;
  MOEC_ASSERT(p->prec == PREC_F32 && p->be == &rt_backend_cpu);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    if (t->part != PART_EXPERTS) continue;
    float *b = cg_f32(p, t);
    rt_md_zero_nonlocal(g, t, c->rank, b);
    c->all_reduce_sum_f32(c, b, t->numel);
  }
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
  w->o.m[k] = o->m[i] ? o->m[i] + at : NULL;
  w->o.v[k] = o->v[i] ? o->v[i] + at : NULL;
  w->o.vr[k] = o->vr[i];
  w->o.vc[k] = o->vc[i];
  w->p[k] = params[i] + at;
  w->g[k] = grads[i] + at;
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
    if (m < 0) {
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
    int x = g->params[i]->part == PART_EXPERTS;
    for (int64_t j = 0; j < w.o.numel[k]; j++)
      ss[x] += (double)w.g[k][j] * w.g[k][j];
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
  rt_md_zero_nonlocal(g, t, c->rank, b);
  c->all_reduce_sum_f32(c, b, t->numel);
  return b;
}

void rt_md_optim_gather(Comm *c, const Graph *g, Optim *o, MdOptimSave *s) {
  s->m = mc_calloc((size_t)o->n + 1, sizeof(float *));
  s->v = mc_calloc((size_t)o->n + 1, sizeof(float *));
  for (int i = 0; i < o->n; i++) {
    const Tensor *t = g->params[i];
    if (t->part != PART_EXPERTS || c->size <= 1) continue;
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
  ir_bind(g, cfg->batch / P, cfg->unroll);
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
