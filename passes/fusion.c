/* fusion.c: the elementwise-fusion pass. Groups chains and trees of
 * elementwise ops into one OP_FUSED node per group, whose expression program
 * (fusion.h) codegen/jit.c compiles into one loop (one kernel call instead of
 * one per op, and intermediates kept in registers).
 *
 * Legality (a node n joins the group of one of its inputs' producers only if):
 *   - n is elementwise, not random (dropout draws from the counter RNG: kept
 *     out so the generated code never has to reproduce a draw), not softplus
 *     (a libm call: it would keep the whole group's loop scalar), one output, f32;
 *     activation backward ops need both operands group-shaped, add/sub/mul
 *     accept a scalar second operand (broadcast, as the kernels do);
 *   - n's output has exactly the group's type (same symbolic shape: same numel
 *     once bound);
 *   - same device (no placement boundary inside; collectives are never
 *     elementwise), same recompute segment, same forward/backward side;
 *   - no cycle and no reordering hazard: the fused node runs where the group's
 *     last member ran, so every consumer outside the group of any member's
 *     output must come after that point (a path that leaves the group and
 *     re-enters it has such a consumer before the last member).
 * A member's output stays materialised (an output of the fused node) when a
 * node outside the group reads it, when the graph names it (loss, gradients,
 * state, monitoring), or when nothing reads it; otherwise it lives only in a
 * register. Groups of one node are left alone.
 */
#include <stdlib.h>
#include <string.h>

#include "fusion.h"

/* cpu: fused kernels need LLVM (codegen/jit.c). cuda: codegen/nvrtc.c's generated
 * kernels (or the interpreter kernel without NVRTC), so LLVM is not needed there. */
bool pass_fusion_enabled(const Config *cfg) {
  bool cuda = cfg && cfg->backend == BK_CUDA;
  (void)cuda;
#ifndef MOEC_HAVE_CUDA
  if (cuda) return false; /* no CUDA backend: the run falls back to the cpu kernels */
#endif
#ifndef MOEC_HAVE_LLVM
  if (!cuda) return false; /* no JIT for fused kernels: the unfused kernels run */
#endif
  return cfg ? cfg->fuse : false;
}

/* OP_FUSED nodes are made here only; the rule exists for the op table. */
const char *shape_fused(Graph *g, Node *n) {
  (void)n;
  return mc_arena_strdup(&g->arena, "fused nodes are made by the fusion pass only");
}

/* ---------------------------------------------------------------- legality */

/* softplus is left out: its log1p is a libm call, which no loop vectoriser turns into
 * vector code, so a group holding it would run scalar where its other ops' unfused
 * kernels are vectorised (measured: 2x slower). */
static bool fusable_op(OpKind op) {
  switch (op) {
  case OP_ADD:
  case OP_SUB:
  case OP_MUL:
  case OP_SCALE:
  case OP_RELU:
  case OP_TANH:
  case OP_SIGMOID:
  case OP_RELU_BWD:
  case OP_TANH_BWD:
  case OP_SIGMOID_BWD:
  case OP_SOFTPLUS_BWD:
    return true;
  default:
    return false;
  }
}

/* The same device set: one device, all, or the same on(...) list. */
static bool same_devices(const Node *a, const Node *b) {
  if (a->device != b->device || a->ndevices != b->ndevices) return false;
  for (int i = 0; i < a->ndevices; i++)
    if (a->devices[i] != b->devices[i]) return false;
  return true;
}

static bool same_type(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int d = 0; d < a->rank; d++)
    if (a->dim[d].c != b->dim[d].c || a->dim[d].b != b->dim[d].b || a->dim[d].t != b->dim[d].t)
      return false;
  return true;
}

/* Can n be a member at all? (shape-wise against its own output type) */
static bool candidate(const Node *n) {
  const OpInfo *info = &ir_ops[n->op];
  if (!fusable_op(n->op) || !(info->flags & OPF_ELEMENTWISE) || (info->flags & OPF_RANDOM))
    return false;
  if (n->nout != 1 || n->out[0]->ty.dtype != DT_F32) return false;
  const Type *t = &n->out[0]->ty;
  for (int i = 0; i < n->nin; i++) {
    const Type *it = &n->in[i]->ty;
    if (it->dtype != DT_F32) return false;
    bool scalar_ok = i == 1 && (n->op == OP_ADD || n->op == OP_SUB || n->op == OP_MUL);
    if (!same_type(it, t) && !(scalar_ok && it->rank == 0)) return false;
  }
  return true;
}

typedef struct Fuser {
  Graph *g;
  const Node **keys; /* open-addressing table: node -> position in g->nodes */
  int *pos;
  int maxid;     /* table size - 1 */
  int *group;    /* position -> group id, -1 = none */
  int **members; /* group id -> positions (ascending) */
  int *nmembers;
  int ngroups;
  int **cons; /* tensor id -> consumer positions */
  int *ncons;
  bool *named; /* tensor id -> referenced by the graph itself */
  int max_group; /* members of a group: MAX_GROUP, or the cuda kernels' PASS_FUSED_MAX_CUDA */
} Fuser;

/* Position of a producer in g->nodes, -1 if it is not there (an earlier pass dropped
 * it). Keyed by address: node ids need not be unique after passes that add nodes. */
static int pos_of(const Fuser *F, const Node *p) {
  size_t mask = (size_t)F->maxid; /* table size - 1 (a power of two) */
  for (size_t h = ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull & mask;; h = (h + 1) & mask) {
    if (!F->keys[h]) return -1;
    if (F->keys[h] == p) return F->pos[h];
  }
}

static void pos_put(Fuser *F, const Node *p, int k) {
  size_t mask = (size_t)F->maxid;
  size_t h = ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull & mask;
  while (F->keys[h])
    h = (h + 1) & mask;
  F->keys[h] = p;
  F->pos[h] = k;
}

enum { MAX_GROUP = 64 }; /* keeps generated functions small */

static bool in_set(const int *set, int n, int x) {
  for (int i = 0; i < n; i++)
    if (set[i] == x) return true;
  return false;
}

/* Every consumer outside `set` of a member's output comes after position last. */
static bool order_ok(const Fuser *F, const int *set, int n, int last) {
  for (int i = 0; i < n; i++) {
    const Node *m = F->g->nodes[set[i]];
    for (int j = 0; j < m->nout; j++) {
      int id = m->out[j]->id;
      for (int c = 0; c < F->ncons[id]; c++)
        if (!in_set(set, n, F->cons[id][c]) && F->cons[id][c] < last) return false;
    }
  }
  return true;
}

static void mark_named(Fuser *F, const Tensor *t) {
  if (t) F->named[t->id] = true;
}

static int cmp_int(const void *a, const void *b) {
  return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

/* ---------------------------------------------------------------- the pass */

static void form_groups(Fuser *F) {
  Graph *g = F->g;
  int *set = mc_malloc(sizeof(int) * (MAX_GROUP + 1));
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    F->group[k] = -1;
    if (!candidate(n)) continue;
    int nset = 0;
    set[nset++] = k;
    for (int i = 0; i < n->nin; i++) {
      const Node *p = n->in[i]->producer;
      if (!p) continue;
      int pp = pos_of(F, p);
      if (pp < 0 || F->group[pp] < 0 || in_set(set, nset, pp)) continue;
      int gid = F->group[pp];
      const Node *q = g->nodes[F->members[gid][0]];
      if (!same_devices(q, n) || q->recompute_seg != n->recompute_seg ||
          q->backward != n->backward || !same_type(&q->out[0]->ty, &n->out[0]->ty))
        continue;
      if (nset + F->nmembers[gid] > F->max_group) continue;
      int save = nset;
      for (int m = 0; m < F->nmembers[gid]; m++)
        if (!in_set(set, nset, F->members[gid][m])) set[nset++] = F->members[gid][m];
      if (!order_ok(F, set, nset, k)) nset = save; /* would need a value before it exists */
    }
    /* the new group: n plus every merged group (their old ids are retired) */
    int gid = F->ngroups++;
    F->members[gid] = mc_malloc(sizeof(int) * (size_t)nset);
    qsort(set, (size_t)nset, sizeof(int), cmp_int);
    memcpy(F->members[gid], set, sizeof(int) * (size_t)nset);
    F->nmembers[gid] = nset;
    for (int m = 0; m < nset; m++) {
      int old = F->group[set[m]];
      if (old >= 0 && old != gid) F->nmembers[old] = 0;
      F->group[set[m]] = gid;
    }
  }
  mc_free(set);
}

/* Builds the OP_FUSED node of one group (members ascending, last = its position). */
static Node *build_fused(Fuser *F, const int *mem, int nmem, int group_no) {
  Graph *g = F->g;
  FusedProg *prog = mc_arena_alloc(&g->arena, sizeof(FusedProg));
  Tensor **ins = mc_malloc(sizeof(Tensor *) * (size_t)(2 * nmem + 1));
  Tensor **outs = mc_malloc(sizeof(Tensor *) * (size_t)nmem);
  int *outslot = mc_malloc(sizeof(int) * (size_t)nmem);
  int nin = 0, nout = 0;
  /* inputs: tensors read by members and made outside the group, first-use order */
  for (int m = 0; m < nmem; m++) {
    const Node *n = g->nodes[mem[m]];
    for (int i = 0; i < n->nin; i++) {
      const Node *p = n->in[i]->producer;
      bool inside = p && pos_of(F, p) >= 0 && in_set(mem, nmem, pos_of(F, p));
      bool seen = false;
      for (int s = 0; s < nin; s++)
        seen |= ins[s] == n->in[i];
      if (!inside && !seen) ins[nin++] = n->in[i];
    }
  }
  prog->nin = nin;
  prog->nops = nmem;
  prog->ops = mc_arena_alloc(&g->arena, sizeof(FusedInstr) * (size_t)nmem);
  for (int m = 0; m < nmem; m++) {
    const Node *n = g->nodes[mem[m]];
    FusedInstr *fi = &prog->ops[m];
    fi->op = n->op;
    fi->b = -1;
    fi->f0 = n->fa[0];
    fi->f1 = n->fa[1];
    for (int i = 0; i < n->nin; i++) {
      int slot = -1;
      const Node *p = n->in[i]->producer;
      if (p && pos_of(F, p) >= 0) {
        for (int q = 0; q < m; q++)
          if (mem[q] == pos_of(F, p)) slot = nin + q;
      }
      if (slot < 0)
        for (int s = 0; s < nin; s++)
          if (ins[s] == n->in[i]) slot = s;
      MOEC_ASSERT(slot >= 0);
      if (i == 0)
        fi->a = slot;
      else
        fi->b = slot;
    }
    /* materialised? */
    Tensor *t = n->out[0];
    bool keep = F->named[t->id] || F->ncons[t->id] == 0;
    for (int c = 0; c < F->ncons[t->id] && !keep; c++)
      keep = !in_set(mem, nmem, F->cons[t->id][c]);
    if (keep) {
      outs[nout] = t;
      outslot[nout++] = nin + m;
    }
  }
  MOEC_ASSERT(nout >= 1); /* the last member's output is read outside or named */
  prog->nout = nout;
  prog->outs = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)nout);
  memcpy(prog->outs, outslot, sizeof(int) * (size_t)nout);

  const Node *last = g->nodes[mem[nmem - 1]];
  Node *f = mc_arena_alloc(&g->arena, sizeof(Node));
  *f = *last; /* id, layer, role, loc, backward, device, recompute_seg of the last member */
  f->op = OP_FUSED;
  f->nin = nin;
  f->nout = nout;
  f->in = mc_arena_alloc(&g->arena, sizeof(Tensor *) * (size_t)nin);
  memcpy(f->in, ins, sizeof(Tensor *) * (size_t)nin);
  f->out = mc_arena_alloc(&g->arena, sizeof(Tensor *) * (size_t)nout);
  memcpy(f->out, outs, sizeof(Tensor *) * (size_t)nout);
  memset(f->ia, 0, sizeof f->ia);
  memset(f->fa, 0, sizeof f->fa);
  f->ia[0] = nmem;
  f->fused_group = group_no;
  for (int m = 0; m < nmem; m++) {
    Tensor *t = g->nodes[mem[m]]->out[0];
    t->producer = NULL; /* only in registers now, unless re-attached below */
    t->producer_slot = 0;
  }
  for (int j = 0; j < nout; j++) {
    outs[j]->producer = f;
    outs[j]->producer_slot = j;
  }
  f->fused = prog;
  mc_free(ins);
  mc_free(outs);
  mc_free(outslot);
  return f;
}

/* ---------------------------------------------------------------- folded expert dW
 *
 * An expert weight whose gradient only grouped_matmul_dw makes: with a few rows an expert
 * (hundreds of experts), its dW is a rank-few product written as a whole matrix and read
 * back once by the optimizer. fold=1 leaves the few-row experts' dW to the optimizer,
 * which makes each span from xs and g in the kernel's order inside its update pass
 * (runtime/optim.c, rt_fold_dw): the same bits, 8 bytes a parameter less. Only where
 * the optimizer is dW's one reader: a training program of one device on the cpu, without
 * accumulation (which sums dW); not for moec grad, which writes it (docs/training.md). */
static void fold_expert_dw(Graph *g, const PassCtx *ctx) {
  const Config *cfg = ctx->cfg;
  if (!ctx->fold_dw || !ctx->training || ctx->devices > 1 || cfg->backend == BK_CUDA ||
      cfg->accumulate > 1)
    return;
  bool *read = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++)
      read[g->nodes[k]->in[i]->id] = true;
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (n->op != OP_GROUPED_MATMUL_DW || n->recompute_of || read[n->out[0]->id]) continue;
    for (int i = 0; i < g->nparams; i++)
      if (g->params[i]->grad == n->out[0]) n->ia[0] = 1;
  }
  mc_free(read);
}

/* ---------------------------------------------------------------- the softmax layer
 *
 * The softmax layer's bias on the cpu: xent(bias_add(xw, b), t) becomes xent(xw, t, b)
 * (the kernel adds the bias row by row into probs, in cache, so the [N,V] logits are
 * never stored), and xent_bwd followed by sum_rows of its output (the bias gradient)
 * becomes xent_bias_bwd (dlogits and db in one pass over [N,V]). Both kernels compute
 * the same bits as the pairs they replace (kernels_dense.inc). Legal when the two nodes
 * share device, recompute segment and side, and the bias_add's output has no other
 * reader and is not referenced by the graph; xent_bwd's output may have other readers
 * (the GEMMs of dx and dW). The cuda kernels do not take these forms. Not tied to
 * `fuse`, which is about the elementwise groups: the result is the same either way, and
 * the plan's counts of fused groups and kernel calls stay those of the groups. */

static bool same_place(const Node *a, const Node *b) {
  return same_devices(a, b) && a->recompute_seg == b->recompute_seg && a->backward == b->backward;
}

static bool graph_names(const Graph *g, const Tensor *t) {
  if (t == g->loss || t == g->xent || t == g->aux || t == g->logits) return true;
  for (int i = 0; i < g->nparams; i++)
    if (g->params[i]->grad == t) return true;
  for (int i = 0; i < g->nstates; i++)
    if (g->states[i].next == t) return true;
  return false;
}

/* A copy of node n at position k, its outputs re-attached: the nodes are rewritten as
 * copies, never in place, so recompute's plan_after_fusion can undo the pass by
 * restoring the node list and the producers. */
static Node *replace_node(Graph *g, int k, const Node *n) {
  Node *x = mc_arena_alloc(&g->arena, sizeof(Node));
  *x = *n;
  for (int j = 0; j < x->nout; j++)
    x->out[j]->producer = x;
  g->nodes[k] = x;
  return x;
}

/* The nodes reading each tensor, by tensor id (mc_free it). */
static int *consumers(const Graph *g) {
  int *ncons = mc_calloc((size_t)g->ntensors + 1, sizeof(int));
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++)
      ncons[g->nodes[k]->in[i]->id]++;
  return ncons;
}

/* Removes the nodes marked in drop[nnodes], keeping the others' order; frees drop. */
static void drop_nodes(Graph *g, bool *drop) {
  int nn = 0;
  for (int k = 0; k < g->nnodes; k++)
    if (!drop[k]) g->nodes[nn++] = g->nodes[k];
  g->nnodes = nn;
  mc_free(drop);
}

static void fuse_softmax_bias(Graph *g, const PassCtx *ctx) {
  if (!ctx || !ctx->cfg || ctx->cfg->backend == BK_CUDA) return;
  int *ncons = consumers(g);
  bool *drop = mc_calloc((size_t)g->nnodes + 1, sizeof(bool));
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    Node *p = n->nin > 0 ? n->in[0]->producer : NULL;
    if (n->op == OP_XENT && n->nin == 2 && p && p->op == OP_BIAS_ADD && same_place(p, n) &&
        ncons[p->out[0]->id] == 1 && !graph_names(g, p->out[0]) && p->in[0]->ty.rank == 2 &&
        p->in[0]->ty.dtype == DT_F32) {
      Tensor *in3[3] = {p->in[0], n->in[1], p->in[1]};
      Node *x = replace_node(g, k, n);
      x->in = mc_arena_alloc(&g->arena, sizeof in3);
      memcpy(x->in, in3, sizeof in3);
      x->nin = 3;
      for (int j = 0; j < k; j++)
        drop[j] |= g->nodes[j] == p;
      /* the logits are no longer computed: produced and read by no node, memplan gives
       * them no memory (a scalar type besides, for printing) */
      p->out[0]->producer = NULL;
      p->out[0]->ty = ir_type(DT_F32, 0, NULL);
    }
    Node *w = n->op == OP_SUM_ROWS ? p : NULL; /* n: the bias gradient of w's dlogits? */
    if (w && w->op == OP_XENT_BWD && same_place(w, n) && n->in[0]->ty.dtype == DT_F32 &&
        n->in[0]->ty.rank == 2) {
      int at = k - 1;
      while (at >= 0 && g->nodes[at] != w)
        at--;
      MOEC_ASSERT(at >= 0); /* a producer runs before its readers */
      Node *x = replace_node(g, at, w);
      x->op = OP_XENT_BIAS_BWD;
      x->nout = 2;
      x->out = mc_arena_alloc(&g->arena, 2 * sizeof(Tensor *));
      x->out[0] = w->out[0];
      x->out[1] = n->out[0];
      n->out[0]->producer = x;
      n->out[0]->producer_slot = 1;
      drop[k] = true;
    }
  }
  drop_nodes(g, drop);
  mc_free(ncons);
}

/* ---------------------------------------------------------------- the experts' backward
 *
 * An expert FFN's backward on the cpu: relu_bwd(grouped_matmul(g, W2, off){transW}, h)
 * becomes grouped_matmul_relu_bwd(h, g, W2, off), where the GEMM's output is relu_bwd's
 * only input from it and the graph does not name it. The op runs at relu_bwd's place, after
 * W2's gradient (which reads h), and makes grouped_matmul's blocks then relu_bwd's zeros
 * (the same bits, kernels_moe.inc); the memory plan writes it over h when h dies there
 * (OPF_INPLACE0), so the [rows, hidden] gradient is never stored beside the hidden
 * activation: on a device of Table 7's MoE-143M, 2.86 GiB of expert rows. plan.expert_bwd
 * = split keeps the two ops (the runs the tests compare); the cuda kernels do not take
 * this form. */
static void fuse_expert_bwd(Graph *g, const PassCtx *ctx) {
  const Config *cfg = ctx ? ctx->cfg : NULL;
  if (!cfg || cfg->backend == BK_CUDA || cfg->expert_bwd_split) return;
  int *ncons = consumers(g);
  bool *drop = mc_calloc((size_t)g->nnodes + 1, sizeof(bool));
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    Node *p = n->op == OP_RELU_BWD ? n->in[0]->producer : NULL;
    if (!p || p->op != OP_GROUPED_MATMUL || !p->ia[0] || !same_place(p, n) ||
        ncons[p->out[0]->id] != 1 || graph_names(g, p->out[0]) ||
        !same_type(&n->in[1]->ty, &n->out[0]->ty))
      continue;
    Tensor *in4[4] = {n->in[1], p->in[0], p->in[1], p->in[2]};
    Node *x = replace_node(g, k, n);
    x->op = OP_GROUPED_MATMUL_RELU_BWD;
    x->in = mc_arena_alloc(&g->arena, sizeof in4);
    memcpy(x->in, in4, sizeof in4);
    x->nin = 4;
    for (int j = k - 1; j >= 0; j--)
      if (g->nodes[j] == p) {
        drop[j] = true;
        break;
      }
    /* the hidden gradient is no longer made: produced and read by no node, no memory */
    p->out[0]->producer = NULL;
  }
  drop_nodes(g, drop);
  mc_free(ncons);
}

void pass_fusion(Graph *g, const PassCtx *ctx) {
  fuse_softmax_bias(g, ctx);
  fuse_expert_bwd(g, ctx);
  if (!pass_fusion_enabled(ctx ? ctx->cfg : NULL)) return;
  fold_expert_dw(g, ctx);
  Fuser F = {0};
  F.g = g;
  F.max_group = ctx && ctx->cfg && ctx->cfg->backend == BK_CUDA ? PASS_FUSED_MAX_CUDA : MAX_GROUP;
  size_t cap = 16;
  while (cap < 2 * (size_t)g->nnodes + 2)
    cap *= 2;
  F.maxid = (int)(cap - 1);
  F.keys = mc_calloc(cap, sizeof(Node *));
  F.pos = mc_calloc(cap, sizeof(int));
  for (int k = 0; k < g->nnodes; k++)
    pos_put(&F, g->nodes[k], k);
  F.group = mc_malloc(sizeof(int) * (size_t)(g->nnodes + 1));
  F.members = mc_calloc((size_t)g->nnodes + 1, sizeof(int *));
  F.nmembers = mc_calloc((size_t)g->nnodes + 1, sizeof(int));
  F.ncons = mc_calloc((size_t)g->ntensors + 1, sizeof(int));
  F.cons = mc_calloc((size_t)g->ntensors + 1, sizeof(int *));
  F.named = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++)
      F.ncons[g->nodes[k]->in[i]->id]++;
  for (int t = 0; t < g->ntensors; t++) {
    F.cons[t] = mc_malloc(sizeof(int) * (size_t)(F.ncons[t] + 1));
    F.ncons[t] = 0;
  }
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++) {
      int id = g->nodes[k]->in[i]->id;
      if (!F.ncons[id] || F.cons[id][F.ncons[id] - 1] != k) F.cons[id][F.ncons[id]++] = k;
    }
  mark_named(&F, g->loss);
  mark_named(&F, g->xent);
  mark_named(&F, g->aux);
  for (int i = 0; i < g->nparams; i++)
    mark_named(&F, g->params[i]->grad);
  for (int i = 0; i < g->nstates; i++)
    mark_named(&F, g->states[i].next);
  for (int i = 0; i < g->nmoe; i++) {
    if (g->moe_importance) mark_named(&F, g->moe_importance[i]);
    if (g->moe_load) mark_named(&F, g->moe_load[i]);
  }

  form_groups(&F);

  /* rewrite: each group of >= 2 becomes one node at its last member's position */
  Node **nodes = mc_malloc(sizeof(Node *) * (size_t)(g->nnodes + 1));
  int nn = 0, nfused = 0;
  for (int k = 0; k < g->nnodes; k++) {
    int gid = F.group[k];
    if (gid < 0 || F.nmembers[gid] < 2) {
      nodes[nn++] = g->nodes[k];
      continue;
    }
    if (F.members[gid][F.nmembers[gid] - 1] != k) continue; /* emitted with the last */
    nodes[nn++] = build_fused(&F, F.members[gid], F.nmembers[gid], nfused++);
  }
  memcpy(g->nodes, nodes, sizeof(Node *) * (size_t)nn);
  g->nnodes = nn;
  mc_free(nodes);

  for (int i = 0; i < F.ngroups; i++)
    mc_free(F.members[i]);
  for (int t = 0; t < g->ntensors; t++)
    mc_free(F.cons[t]);
  mc_free(F.pos);
  mc_free(F.keys);
  mc_free(F.group);
  mc_free(F.members);
  mc_free(F.nmembers);
  mc_free(F.ncons);
  mc_free(F.cons);
  mc_free(F.named);
}
