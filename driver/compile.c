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
#include "../runtime/text.h"
#include "../runtime/train_dev.h"
#include "driver.h"

const Backend *drv_backend(const Config *cfg, const Options *o) {
  if (cfg->backend != BK_CUDA) return &rt_backend_cpu; /* auto: cpu (docs/cuda.md) */
  const char *why = rt_dev_cuda_unavailable();
  if (why) {
    bool flag = cfg->backend_loc.src && cfg->backend_loc.src->cmdline;
    fprintf(stderr, "moec %s: error: %s: %s\n", o->cmd,
            flag ? "--backend cuda" : "backend = cuda (plan block)", why);
    return NULL;
  }
  const Backend *be = rt_backend_cuda();
  DevOpts d = o->dev;
  d.tf32 = cfg->tf32;
  rt_dev_configure(be, &d);
  return be;
}

/* ---------------------------------------------------------------- the graph */

static const Tensor *through_reshapes(const Tensor *t) {
  while (t->producer && (t->producer->op == OP_RESHAPE || t->producer->op == OP_RESHARD))
    t = t->producer->in[0];
  return t;
}

/* What a run feeds each step (docs/ir.md, "Inputs and their roles"). */
typedef struct Feeds {
  const Tensor *ids, *targets;      /* a language model's token ids and targets */
  const Tensor *source, *target_in; /* a translation model's (targets: its labels) */
  int vocab;                        /* every id below it */
} Feeds;

/* The smallest vocabulary of the embeddings reading `ids` and of the loss's softmax. */
static int vocab_of(const Graph *g, const Tensor *ids, int vout) {
  int vin = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_EMBEDDING && through_reshapes(n->in[0]) == ids) {
      int v = (int)n->in[1]->ty.dim[0].c;
      vin = vin ? MC_MIN(vin, v) : v;
    }
  }
  int vocab = vin ? MC_MIN(vin, vout) : vout;
  return vocab > 65536 ? 65536 : vocab;
}

static bool input_is(const Tensor *t, char second) {
  return t->ty.dtype == DT_I32 && t->ty.rank == 2 && dim_eq(t->ty.dim[0], dim_sym('B')) &&
         dim_eq(t->ty.dim[1], dim_sym(second));
}

/* A translation model's three inputs by role: source ids i32[B, S], target inputs and
 * labels i32[B, T] with a pad id; its data must be parallel pairs. */
static bool find_translation_inputs(Graph *g, Diag *d, Loc model_loc, const Config *cfg,
                                    const Tensor *labels, Feeds *fd) {
  /* batches come from the data, unless the command gives their shapes (moec grad) */
  char buf[128];
  for (int i = 0; i < g->ninputs; i++) {
    Tensor *t = g->inputs[i];
    const char *want = NULL;
    if (t->role == IN_SOURCE) {
      if (!fd->source && input_is(t, 'S') && t->pad >= 0)
        fd->source = t;
      else
        want = "the source ids, i32[B, S] with a pad id";
    } else if (t->role == IN_TARGET) {
      if (input_is(t, 'T'))
        fd->target_in = t;
      else
        want = "the target inputs, i32[B, T]";
    } else if (t == labels) {
      if (input_is(t, 'T') && t->pad >= 0)
        fd->targets = t;
      else
        want = "the labels, i32[B, T] with a pad id (pad 0)";
    } else {
      want = "one of the source ids, the target inputs (an embedding's ids) and the labels "
             "(softmax_xent's targets)";
    }
    if (want) {
      fe_error(d, t->loc, "model input '%s' is %s: a translation model's run feeds %s", t->name,
               type_str(&t->ty, buf, sizeof buf), want);
      return false;
    }
  }
  if (!fd->target_in || !fd->targets) {
    fe_error(d, model_loc,
             "translation model '%s' needs %s: an embedding of target inputs i32[B, T] (<s> y_1 "
             ".. y_n) and softmax_xent's labels i32[B, T] pad 0 (y_1 .. y_n </s>)",
             g->name, !fd->target_in ? "its target inputs" : "its labels");
    return false;
  }
  if (cfg->data != DATA_PARALLEL && !g->nshapes) {
    fe_error(d, model_loc,
             "translation model '%s' trains on pairs of sentences: set data = "
             "parallel(\"train.tsv\", valid=\"valid.tsv\") (or --data 'parallel(...)')",
             g->name);
    return false;
  }
  return true;
}

/* The inputs a run feeds: a language model's two i32[B, T] inputs (the one softmax_xent
 * reads as targets and the token ids), or a translation model's three; and the vocabulary
 * every id must be below. False after reporting what the runtime could not feed, at the
 * input's or model's location. */
static bool find_inputs(Graph *g, Diag *d, Loc model_loc, const Config *cfg, Feeds *fd) {
  const Tensor *tg = NULL;
  int vout = 0;
  *fd = (Feeds){0};
  for (int k = 0; k < g->nnodes && !tg; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_XENT || n->op == OP_XENT_PAD || n->op == OP_SAMPLED_XENT) {
      bool s = n->op == OP_SAMPLED_XENT; /* (x, W[V, D], b, targets) */
      tg = through_reshapes(n->in[s ? 3 : 1]);
      vout = (int)(s ? n->in[1]->ty.dim[0].c : n->in[0]->ty.dim[n->in[0]->ty.rank - 1].c);
    } else if (n->op == OP_SAMPLED_XENT_ROWS) { /* its table sharded: V = ia[2] */
      tg = through_reshapes(n->in[4]);
      vout = (int)n->ia[2];
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
  if (ir_input_role(g, IN_SOURCE)) {
    if (!find_translation_inputs(g, d, model_loc, cfg, tg, fd)) return false;
    fd->vocab = MC_MIN(vocab_of(g, fd->source, vout), vocab_of(g, fd->target_in, vout));
    return true;
  }
  if (g->xent_count) {
    fe_error(d, tg->loc,
             "model '%s' averages its loss over targets with a pad id ('%s'), but has no source "
             "over S: a language model's targets have no padding (drop 'pad')",
             g->name, tg->name);
    return false;
  }
  for (int i = 0; i < g->ninputs; i++) {
    Tensor *t = g->inputs[i];
    char buf[128];
    if (!input_is(t, 'T')) {
      fe_error(d, t->loc,
               "model input '%s' is %s: training feeds two i32[B, T] inputs, token ids and "
               "targets",
               t->name, type_str(&t->ty, buf, sizeof buf));
      return false;
    }
    if (t == tg)
      fd->targets = t;
    else if (!fd->ids)
      fd->ids = t;
    else {
      fe_error(d, t->loc,
               "model '%s' has more than two inputs ('%s', '%s', ...): training feeds token ids "
               "and targets",
               g->name, fd->ids->name, t->name);
      return false;
    }
  }
  if (!fd->ids) {
    fe_error(d, model_loc, "model '%s' has no input for token ids besides the targets", g->name);
    return false;
  }
  fd->vocab = vocab_of(g, fd->ids, vout);
  return true;
}

/* The batch shapes of a translation model's run on P devices: one per length bucket, the
 * rows of its full batch (runtime/parallel.c's rule, so that every batch the run makes fits
 * one of them). */
static void parallel_shapes(Graph *g, const Config *cfg, int P) {
  const int w = RT_PAR_WIDTH, top = (cfg->max_len + w - 1) / w * w, q = rt_par_quantum(P);
  g->nshapes = 0;
  g->shapes = mc_arena_alloc(&g->arena, sizeof(BatchShape) * (size_t)(top / w) * (size_t)(top / w));
  for (int S = w; S <= top; S += w)
    for (int T = w; T <= top; T += w)
      g->shapes[g->nshapes++] = (BatchShape){rt_par_rows(S, T, cfg->batch_tokens, q), T, S};
}

/* Whether the chosen backend has a kernel for every op of g, as compiled (the passes
 * chose ops for it); else an error at the op's layer, so that `plan` and `check` say so
 * too, not only the run. A build without CUDA has no cuda table: its runs stop earlier
 * (drv_backend), its plans are not checked. */
static bool backend_runs(const Graph *g, const Config *cfg, Precision prec, Diag *d) {
  if (cfg->backend != BK_CUDA) return true; /* the cpu runs every op */
  const KernelFn *table = rt_dev_kernels(cfg->backend, prec);
  if (!table) return true;
  bool ok = true;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    const char *layer = n->layer ? n->layer : "?";
    if (n->op == OP_FUSED) continue; /* NVRTC, or the interpreter kernel */
    if (n->op == OP_LSTM && n->nin == 5) /* the cuda LSTM kernels have no projection */
      fe_error(d, n->loc,
               "lstm '%s' has proj=, which the cuda backend does not run yet (use --backend cpu)",
               layer);
    else if (n->op == OP_TABLE_GATHER || n->op == OP_TABLE_SCATTER ||
             n->op == OP_SAMPLE_LOG_UNIFORM || n->op == OP_SAMPLED_XENT_ROWS)
      fe_error(d, n->loc,
               "layer '%s': tables = sharded needs op %s, which the cuda backend does not run "
               "yet (use --tables replicated or --backend cpu)",
               layer, ir_ops[n->op].name);
    else if (!table[n->op])
      fe_error(d, n->loc,
               "layer '%s' needs op %s, which the cuda backend does not run yet (use --backend "
               "cpu)",
               layer, ir_ops[n->op].name);
    else
      continue;
    ok = false;
    break; /* one error: the first op says what to change */
  }
  return ok;
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
  MOEC_ASSERT(t->part == BUILD_ALL || !t->training);
  Graph *g = ir_build_part(f, cfg, t->part, &d);
  if (!g) return NULL;
  if (t->nshapes) { /* the batches it runs (moec grad's, decoding's) */
    g->shapes = mc_arena_alloc(&g->arena, sizeof(BatchShape) * (size_t)t->nshapes);
    memcpy(g->shapes, t->shapes, sizeof(BatchShape) * (size_t)t->nshapes);
    g->nshapes = t->nshapes;
  } else if (ir_input_role(g, IN_SOURCE) && cfg->data == DATA_PARALLEL) {
    parallel_shapes(g, cfg, MC_MAX(t->devices, 1)); /* a run's length buckets */
  }
  PassCtx pc = {.cfg = cfg,
                .devices = t->devices,
                .training = t->training,
                .device_graph = t->rank >= 0,
                .rank = t->rank,
                .elem = t->prec == PREC_F64 ? sizeof(double) : sizeof(float),
                .loads = loads,
                .zipf = o->zipf,
                .notes = notes,
                .diag = &d,
                .fold_dw = t->fold_dw};
  bool ok = pass_run_all(g, &pc, t->print_after, t->print_to) && d.errors == 0;
  plan_free_loads(loads);
  if (ok && !t->print_after) ok = backend_runs(g, cfg, t->prec, &d);
  Feeds fd;
  if (ok && t->training && !t->print_after) ok = find_inputs(g, &d, f->model->loc, cfg, &fd);
  if (!ok) {
    ir_graph_free(g);
    return NULL;
  }
  return g;
}

/* ---------------------------------------------------------------- what a device holds */

/* The rows this device holds of each parameter: its experts' rows of the sharded ones,
 * its range of a table sharded by rows, with every row's owner; NULL when it holds every
 * parameter whole. */
static RowSel *param_rows(const Graph *g) {
  if (!g->experts_local) return NULL;
  RowSel *r = mc_calloc((size_t)g->nparams + 1, sizeof(RowSel));
  ExpertShard *shards = mc_calloc((size_t)g->nparams + 1, sizeof(ExpertShard));
  bool *sharded = mc_calloc((size_t)g->nparams + 1, sizeof(bool));
  ir_expert_shards(g, shards, sharded);
  for (int i = 0; i < g->nparams; i++) {
    ExpertShard s = shards[i];
    if (!sharded[i]) continue;
    int64_t *list = mc_malloc(sizeof(int64_t) * (size_t)MC_MAX(s.count, 1)), n = 0;
    int *owner = mc_malloc(sizeof(int) * (size_t)MC_MAX(s.count, 1));
    for (int64_t e = 0; e < s.count; e++) {
      owner[e] = g->moe_expert_dev[s.moe][s.first + e];
      if (owner[e] == g->experts_rank) list[n++] = e; /* rows of this parameter */
    }
    MOEC_ASSERT(n == g->params[i]->shape[0]);
    r[i] = (RowSel){s.count, n, list, owner};
  }
  for (int i = 0; i < g->nparams; i++) { /* tables sharded by rows: a contiguous range */
    int64_t V, lo, hi;
    int P;
    if (!ir_table_shard(g, g->params[i], &V, &P)) continue;
    lo = ir_table_first(V, P, g->experts_rank);
    hi = ir_table_first(V, P, g->experts_rank + 1);
    int64_t *list = mc_malloc(sizeof(int64_t) * (size_t)MC_MAX(hi - lo, 1));
    int *owner = mc_malloc(sizeof(int) * (size_t)V);
    for (int64_t v = lo; v < hi; v++)
      list[v - lo] = v;
    for (int q = 0; q < P; q++)
      for (int64_t v = ir_table_first(V, P, q); v < ir_table_first(V, P, q + 1); v++)
        owner[v] = q;
    MOEC_ASSERT(hi - lo == g->params[i]->shape[0]);
    r[i] = (RowSel){V, hi - lo, list, owner};
  }
  mc_free(shards);
  mc_free(sharded);
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

DeviceMemory drv_device_memory(Graph *g, const Config *cfg, const Options *o, int d, int devices,
                               const double *rows_scale) {
  (void)o;
  PassCtx pc = {.cfg = cfg, .devices = devices, .training = g->has_backward, .elem = 4};
  Type *save = pass_device_view(g, &pc, d);
  DeviceMemory m = {.persist = g->mem.persist, .arena = g->mem.arena, .live_max = g->mem.live_max};
  m.rows_fair = plan_rows_bytes(g, 0, NULL, sizeof(float));
  m.rows_expected = plan_rows_bytes(g, 0, rows_scale, sizeof(float));
  m.rows_worst = plan_rows_bytes(g, 1, NULL, sizeof(float));
  m.rows_outgrow = plan_rows_outgrow(g, rows_scale);
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

void drv_memory_top(Graph *g, const Config *cfg, int d, int devices, int top, FILE *out) {
  PassCtx pc = {.cfg = cfg, .devices = devices, .training = g->has_backward, .elem = 4};
  Type *save = pass_device_view(g, &pc, d);
  fprintf(out, "\nthe arena of device %d: %.3f MiB (lower bound %.3f MiB)\n", d,
          (double)g->mem.arena / 1048576.0, (double)g->mem.live_max / 1048576.0);
  pass_memplan_top(g, top, out);
  pass_device_view_end(g, &pc, save);
}

/* ---------------------------------------------------------------- the program */

/* A graph with shapes runs batches of any of them: the tensors whose sizes follow the batch,
 * which the runtime sets for each (rt_program_bind). Every shape's sizes were checked when
 * the memory plan took them all (passes/memplan.c), and no layer runs on a device subset
 * (passes/bind.c), so a tensor's size is its type's at the batch's B / P, T, S. */
static void shape_table(Program *p) {
  const Graph *g = p->g;
  if (!g->nshapes) return;
  p->var = mc_malloc(sizeof(Tensor *) * (size_t)(g->ntensors + 1));
  for (int i = 0; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    bool follows = false;
    for (int d = 0; d < t->ty.rank; d++)
      follows |= !dim_is_const(t->ty.dim[d]);
    if (follows) p->var[p->nvar++] = t;
  }
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
  Feeds fd = {0};
  bool ok = true;
  if (t->part == BUILD_ALL) {
    ok = find_inputs(g, &d, f->model->loc, cfg, &fd);
  } else { /* decoding: the source ids, and a step's previous target ids */
    fd.source = ir_input_role(g, IN_SOURCE);
    fd.target_in = ir_input_role(g, IN_TARGET);
    fd.vocab = g->logits ? (int)g->logits->ty.dim[1].c : 0;
  }
  RowSel *rows = ok ? param_rows(g) : NULL;
  if (!ok || !check_memory(g, cfg, o, t, rows)) {
    rows_free(g, rows);
    ir_graph_free(g);
    return NULL;
  }
  CgOpts cg = o->cg;
  cg.dev = rt_dev_context(t->be); /* the thread's device (launch.c binds it) */
  Program *p = cg_lower_on(g, t->prec, t->be, &cg);
  p->ids = fd.ids;
  p->targets = fd.targets;
  p->source = fd.source;
  p->target_in = fd.target_in;
  p->vocab = fd.vocab;
  p->rows = rows;
  p->param_set = param_sets(g);
  shape_table(p);
  return p;
}

int drv_model_vocab(const AstFile *f) {
  int v = 0;
  for (const Stmt *s = f->model ? f->model->stmts : NULL; s; s = s->next) {
    const Expr *e = s->value;
    if (s->kind != ST_ASSIGN || !e || e->kind != EX_CALL) continue;
    if (e->layer == L_EMBEDDING || e->layer == L_SOFTMAX_XENT) {
      int x = (int)e->argv[LA_VOCAB];
      v = v ? MC_MIN(v, x) : x;
    }
  }
  return MC_MIN(v, 65536);
}

Program *drv_compile_forward(AstFile *f, const Config *cfg, const Options *o, int B, int T) {
  const Backend *be = drv_backend(cfg, o);
  if (!be) return NULL;
  Config c = *cfg; /* one device, B streams of T steps */
  c.batch = B;
  c.unroll = T;
  c.devices = 1;
  c.accumulate = 1;
  Target t = {.devices = 1, .rank = 0, .training = false, .prec = PREC_F32, .be = be};
  return drv_compile(f, &c, o, &t);
}

void drv_program_free(Program *p) {
  if (!p) return;
  Graph *g = p->g;
  cg_program_free(p);
  ir_graph_free(g);
}
