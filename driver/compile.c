/* compile.c: the one compile path: a checked AST -> graph -> every pass (placement,
 * comm, recompute, fusion, and for one device of N its shard and its binding) -> memory
 * plan -> lowering with every fused kernel and the host program compiled -> the Program
 * the runtime runs. `moec plan`, `moec check` and the runs all come through here, so a
 * plan's figures are those of the programs that run. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/multidev.h"
#include "../runtime/train_dev.h"
#include "driver.h"

const Backend *drv_backend(const Config *cfg, const char *cmd) {
  if (cfg->backend != BK_CUDA) return &rt_backend_cpu; /* auto: cpu (docs/cuda.md) */
  const char *why = rt_dev_cuda_unavailable();
  if (why) {
    bool flag = cfg->backend_loc.src && cfg->backend_loc.src->cmdline;
    fprintf(stderr, "moec %s: error: %s: %s\n", cmd,
            flag ? "--backend cuda" : "backend = cuda (plan block)", why);
    return NULL;
  }
  return rt_backend_cuda();
}

/* ---------------------------------------------------------------- the graph */

static const Tensor *through_reshapes(const Tensor *t) {
  while (t->producer && (t->producer->op == OP_RESHAPE || t->producer->op == OP_RESHARD))
    t = t->producer->in[0];
  return t;
}

/* The inputs a run feeds: the two i32[B, T] inputs, the one softmax_xent reads as targets
 * and the other (token ids); and the vocabulary every id must be below. False after
 * reporting what the runtime could not feed, at the input's or model's location. */
static bool find_inputs(Graph *g, Diag *d, Loc model_loc, const Tensor **ids,
                        const Tensor **targets, int *vocab) {
  const Tensor *tg = NULL;
  int vin = 0, vout = 0;
  *ids = *targets = NULL;
  if (ir_input_role(g, IN_SOURCE) || g->xent_count) {
    fe_error(d, model_loc, "model '%s' %s: the training loop does not run such models yet", g->name,
             ir_input_role(g, IN_SOURCE) ? "is a translation model (source ids over S)"
                                         : "averages its loss over targets with a pad id");
    return false;
  }
  for (int k = 0; k < g->nnodes && !tg; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_XENT || n->op == OP_SAMPLED_XENT) {
      bool s = n->op == OP_SAMPLED_XENT; /* (x, W[V, D], b, targets) */
      tg = through_reshapes(n->in[s ? 3 : 1]);
      vout = (int)(s ? n->in[1]->ty.dim[0].c : n->in[0]->ty.dim[n->in[0]->ty.rank - 1].c);
    }
  }
  if (!g->loss) {
    fe_error(d, model_loc, "model '%s' has no loss: training needs a softmax_xent output", g->name);
    return false;
  }
  if (!tg || tg->kind != TK_INPUT) {
    fe_error(d, model_loc,
             "model '%s' cannot be trained: no softmax_xent reads its targets from a model input",
             g->name);
    return false;
  }
  for (int i = 0; i < g->ninputs; i++) {
    Tensor *t = g->inputs[i];
    char buf[128];
    Dim b = dim_sym('B'), tt = dim_sym('T');
    if (t->ty.dtype != DT_I32 || t->ty.rank != 2 || !dim_eq(t->ty.dim[0], b) ||
        !dim_eq(t->ty.dim[1], tt)) {
      fe_error(d, t->loc,
               "model input '%s' is %s: training feeds two i32[B, T] inputs, token ids and "
               "targets",
               t->name, type_str(&t->ty, buf, sizeof buf));
      return false;
    }
    if (t == tg)
      *targets = t;
    else if (!*ids)
      *ids = t;
    else {
      fe_error(d, t->loc,
               "model '%s' has more than two inputs ('%s', '%s', ...): training feeds token ids "
               "and targets",
               g->name, (*ids)->name, t->name);
      return false;
    }
  }
  if (!*ids) {
    fe_error(d, model_loc, "model '%s' has no input for token ids besides the targets", g->name);
    return false;
  }
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_EMBEDDING && through_reshapes(n->in[0]) == *ids) {
      int v = (int)n->in[1]->ty.dim[0].c;
      vin = vin ? MC_MIN(vin, v) : v;
    }
  }
  *vocab = vin ? MC_MIN(vin, vout) : vout;
  if (*vocab > 65536) *vocab = 65536;
  return true;
}

Graph *drv_compile_graph(AstFile *f, const Config *cfg, const Options *o, const Target *t,
                         McBuf *notes) {
  Diag d;
  fe_diag_init(&d, &f->src);
  PlanLoads *loads = NULL;
  if (o->loads_path) {
    const char *err = NULL;
    loads = plan_read_loads(o->loads_path, &err);
    if (!loads) {
      fprintf(stderr, "moec %s: error: --loads %s: %s\n", o->cmd, o->loads_path, err);
      return NULL;
    }
  }
  Graph *g = ir_build(f, cfg);
  PassCtx pc = {.cfg = cfg,
                .devices = t->devices,
                .training = t->training,
                .device_graph = t->rank >= 0,
                .rank = t->rank,
                .elem = t->prec == PREC_F64 ? sizeof(double) : sizeof(float),
                .loads = loads,
                .notes = notes,
                .diag = &d};
  bool ok = pass_run_all(g, &pc, t->print_after, t->print_to) && d.errors == 0;
  plan_free_loads(loads);
  const Tensor *ids, *targets;
  int vocab;
  /* what a run feeds (a translation model's inputs are checked by sema; its loop comes) */
  bool translation = ir_input_role(g, IN_SOURCE) || g->xent_count;
  if (ok && t->training && !t->print_after && !translation)
    ok = find_inputs(g, &d, f->model->loc, &ids, &targets, &vocab);
  if (!ok) {
    ir_graph_free(g);
    return NULL;
  }
  return g;
}

/* ---------------------------------------------------------------- what a device holds */

/* The rows this device holds of each parameter: its experts' rows of the sharded ones,
 * with every row's owner; NULL when it holds every parameter whole. */
static RowSel *param_rows(const Graph *g) {
  if (!g->experts_local) return NULL;
  RowSel *r = mc_calloc((size_t)g->nparams + 1, sizeof(RowSel));
  for (int i = 0; i < g->nparams; i++) {
    ExpertShard s;
    if (!ir_expert_shard(g, g->params[i], &s)) continue;
    int64_t *list = mc_malloc(sizeof(int64_t) * (size_t)MC_MAX(s.count, 1)), n = 0;
    int *owner = mc_malloc(sizeof(int) * (size_t)MC_MAX(s.count, 1));
    for (int64_t e = 0; e < s.count; e++) {
      owner[e] = g->moe_expert_dev[s.moe][s.first + e];
      if (owner[e] == g->experts_rank) list[n++] = e; /* rows of this parameter */
    }
    MOEC_ASSERT(n == g->params[i]->shape[0]);
    r[i] = (RowSel){s.count, n, list, owner};
  }
  return r;
}

static void rows_free(const Graph *g, RowSel *r) {
  for (int i = 0; r && i < g->nparams; i++) {
    mc_free((void *)r[i].list);
    mc_free((void *)r[i].owner);
  }
  mc_free(r);
}

/* The devices that train each parameter (its gradient's device set); NULL on one device. */
static uint64_t *param_sets(const Graph *g) {
  if (g->ndev <= 1) return NULL;
  uint64_t *m = mc_calloc((size_t)g->nparams + 1, sizeof(uint64_t));
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    m[i] = t->part == PART_EXPERTS || !t->grad || !t->grad->producer
               ? ir_all_mask(g->ndev)
               : ir_node_mask(t->grad->producer, g->ndev);
  }
  return m;
}

DeviceMemory drv_device_memory(Graph *g, const Config *cfg, const Options *o, int d, int devices) {
  (void)o;
  PassCtx pc = {.cfg = cfg, .devices = devices, .training = g->has_backward, .elem = 4};
  Type *save = pass_device_view(g, &pc, d);
  DeviceMemory m = {.persist = g->mem.persist, .arena = g->mem.arena, .live_max = g->mem.live_max};
  for (int i = 0; i < g->nparams; i++)
    m.params += g->params[i]->numel * (int64_t)sizeof(float);
  if (g->has_backward) {
    RowSel *rows = param_rows(g);
    m.optimizer = (int64_t)rt_md_optim_layout_bytes(cfg, g, rows, sizeof(float));
    rows_free(g, rows);
  }
  pass_device_view_end(g, &pc, save);
  return m;
}

/* ---------------------------------------------------------------- the program */

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

/* Before allocating: the memory plan and the optimizer against what is available. */
static bool check_memory(const Graph *g, const Config *cfg, const Options *o, const Target *t,
                         const RowSel *rows) {
  if (t->be != &rt_backend_cpu) return true; /* the device reports its own, naming a tensor */
  size_t elem = t->prec == PREC_F64 ? sizeof(double) : sizeof(float);
  double plan = o->cg.no_memplan ? 0 : (double)(g->mem.persist + g->mem.arena);
  if (o->cg.no_memplan)
    for (int i = 0; i < g->ntensors; i++)
      plan += (double)g->tensors[i]->numel * (double)elem;
  double optim = t->training ? (double)rt_md_optim_layout_bytes(cfg, g, rows, elem) : 0;
  double avail = o->memory_limit > 0 ? o->memory_limit : mem_available();
  if (avail <= 0 || plan + optim <= avail) return true;
  fprintf(stderr,
          "moec %s: error: %s this model needs about %.2f GiB per device (the memory plan: "
          "parameters, inputs and state %.2f GiB, activations and gradients %.2f GiB; "
          "optimizer state %.2f GiB) but only %.2f GiB of memory is available; reduce batch, "
          "unroll or the model's size, or recompute (plan { recompute = auto })\n",
          o->cmd, t->training ? "training" : "evaluating", (plan + optim) / 1073741824.0,
          (double)g->mem.persist / 1073741824.0, (double)g->mem.arena / 1073741824.0,
          optim / 1073741824.0, avail / 1073741824.0);
  return false;
}

Program *drv_compile(AstFile *f, const Config *cfg, const Options *o, const Target *t) {
  Graph *g = drv_compile_graph(f, cfg, o, t, NULL);
  if (!g) return NULL;
  Diag d;
  fe_diag_init(&d, &f->src);
  const Tensor *ids = NULL, *targets = NULL;
  int vocab = 0;
  bool ok = find_inputs(g, &d, f->model->loc, &ids, &targets, &vocab);
  RowSel *rows = ok ? param_rows(g) : NULL;
  if (!ok || !check_memory(g, cfg, o, t, rows)) {
    rows_free(g, rows);
    ir_graph_free(g);
    return NULL;
  }
  CgOpts cg = o->cg;
  cg.dev = rt_dev_context(t->be, MC_MAX(t->rank, 0));
  Program *p = cg_lower_on(g, t->prec, t->be, &cg);
  p->ids = ids;
  p->targets = targets;
  p->vocab = vocab;
  p->rows = rows;
  p->param_set = param_sets(g);
  return p;
}

void drv_program_free(Program *p) {
  if (!p) return;
  Graph *g = p->g;
  cg_program_free(p);
  ir_graph_free(g);
}
