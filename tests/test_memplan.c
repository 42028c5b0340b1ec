/* test_memplan.c: memory planning and recomputation (passes/memplan.c,
 * passes/recompute.c; docs/memory.md).
 *
 *   test_memplan MODEL.moe ...   every model: the plan of the training and eval
 *                                graphs (recompute none, all) passes the validator
 *                                (no two tensors alive at once share a byte), the
 *                                arena is below the sum of the tensors and at least
 *                                the most bytes alive at once; recompute copies
 *                                never repeat a dispatch or a collective; an hmoe's
 *                                expert gradients (slices of the grouped dW) are
 *                                views of its rows, its experts' relu_bwd writes
 *                                over its incoming gradient, its stacked expert
 *                                weights are views of the parameters
 *   test_memplan --lm FILE       on a small LSTM-MoE LM: planned = unplanned =
 *                                NaN-poisoned arena, recompute [m] = all = none, bit
 *                                for bit (loss and every gradient, several steps);
 *                                [m] repeats the experts' first GEMM, bias and ReLU
 *                                only; the arena's drop equals what the report
 *                                prints; auto fits its budget
 *   test_memplan --expert-bwd FILE  plan.expert_bwd = fused against split: both plans
 *                                pass the validator; every expert relu_bwd of the split
 *                                graph is one grouped_matmul_relu_bwd written over the
 *                                hidden activation; the most bytes alive drop by at least
 *                                the split form's hidden gradients, the arena too; the
 *                                loss and every gradient the same bits over several steps
 *                                (planned, and with NaN-poisoned arenas)
 * Prints the figures (arena with recompute none / moe / all) as it goes. */
#include <string.h>

#include "../codegen/codegen.h"
#include "../passes/passes.h"
#include "../runtime/train.h"
#include "test.h"
#include "test_model.h"

/* Source texts: the ASTs keep pointers into them; freed at the end (LeakSanitizer). */
static char *texts[256];
static int ntexts;

static AstFile *load(const char *path, Config *cfg) {
  char *text;
  AstFile *f = test_load_model(path, cfg, &text);
  if (ntexts < (int)MC_ARRAY_LEN(texts)) texts[ntexts++] = text;
  return f;
}

static Graph *build(AstFile *f, const Config *cfg, bool training) {
  Graph *g = ir_build(f, cfg);
  PassCtx pc = {.cfg = cfg, .devices = 1, .training = training};
  pass_run_all(g, &pc, NULL, NULL);
  ir_bind(g, cfg->batch, cfg->unroll);
  return g;
}

static int64_t sum_transient(const Graph *g, size_t elem) {
  int64_t s = 0;
  for (int i = 0; i < g->ntensors; i++)
    if (g->tensors[i]->producer)
      s += g->tensors[i]->numel * (g->tensors[i]->ty.dtype == DT_I32 ? 4 : (int64_t)elem);
  return s;
}

static double optim_bytes(const Graph *g) {
  double b = 0;
  for (int i = 0; i < g->nparams; i++)
    b += 8.0 * (double)g->params[i]->numel; /* adam: m and v */
  return b;
}

static const double MiB = 1048576.0;

/* ---------------------------------------------------------------- every model */

static void check_model(const char *path) {
  Config cfg;
  AstFile *f = load(path, &cfg);
  double arena[2] = {0, 0};
  for (int rc = 0; rc < 2; rc++)
    for (int training = 1; training >= 0; training--) {
      Config c = cfg;
      c.recompute = rc ? RC_ALL : RC_NONE;
      Graph *g = build(f, &c, training);
      MemFigures mf = pass_memplan_assign(g, sizeof(float));
      long pairs = pass_memplan_validate(g);
      int64_t sum = sum_transient(g, sizeof(float));
      CHECK(pairs > 0);
      CHECK(mf.arena < sum);
      CHECK(mf.arena >= mf.live_max);
      for (int k = 0; k < g->nnodes; k++) {
        const Node *n = g->nodes[k];
        if (!n->recompute_of) continue;
        CHECK(n->op != OP_DISPATCH && !(ir_ops[n->op].flags & OPF_COLLECTIVE));
        CHECK(n->backward && n->recompute_seg >= 0);
      }
      /* an hmoe's expert gradients: the slices of the grouped dW (and bias sums) are
       * views of their rows, not copies (passes/memplan.c find_views) */
      int views = 0;
      for (int k = 0; k < g->nnodes; k++) {
        const Node *n = g->nodes[k];
        const Node *p = n->in[0]->producer;
        if (n->op != OP_SLICE0 || n->recompute_of || !p ||
            (p->op != OP_GROUPED_MATMUL_DW && p->op != OP_GROUPED_SUM_ROWS))
          continue;
        int64_t row = n->in[0]->numel / n->in[0]->shape[0] * (int64_t)sizeof(float);
        CHECK(n->out[0]->mem_offset == n->in[0]->mem_offset + n->ia[0] * row);
        views++;
      }
      /* an activation's backward over its incoming gradient, where that dies at it */
      int inplace = 0;
      for (int k = 0; k < g->nnodes; k++) {
        const Node *n = g->nodes[k];
        inplace += (ir_ops[n->op].flags & OPF_INPLACE0) && n->in[0]->mem_offset >= 0 &&
                   n->out[0]->mem_offset == n->in[0]->mem_offset;
      }
      /* the groups' stacked expert weights: views of the parameters, laid one after the
       * other in the persistent region */
      int stacked = 0;
      for (int k = 0; k < g->nnodes; k++) {
        const Node *n = g->nodes[k];
        if (n->op != OP_CONCAT0 || n->in[0]->kind != TK_PARAM) continue;
        CHECK(n->out[0]->mem_offset == n->in[0]->mem_offset && n->out[0]->mem_offset < mf.persist);
        stacked++;
      }
      if (strstr(path, "moe256h")) CHECK(stacked > 0 && (!training || (views > 0 && inplace > 0)));
      if (training) arena[rc] = (double)mf.arena;
      if (training) {
        printf("%-28s %-5s persistent %9.2f MiB  arena %9.2f MiB (live max %9.2f, sum of "
               "tensors %9.2f), %ld pairs checked\n",
               path, rc ? "all" : "none", mf.persist / MiB, mf.arena / MiB, mf.live_max / MiB,
               sum / MiB, pairs);
      }
      ir_graph_free(g);
    }
  CHECK(arena[1] <= arena[0]); /* recomputing every layer never needs more */
  fe_ast_free(f);
}

/* ---------------------------------------------------------------- the LM */

typedef struct Run {
  Graph *g;
  Program *p;
} Run;

static Run lower_with(AstFile *f, const Config *cfg, CgOpts o) {
  Run r;
  r.g = build(f, cfg, true);
  r.p = cg_lower_on(r.g, PREC_F32, &rt_backend_cpu, &o);
  return r;
}

static void init(Run *r, uint64_t seed) {
  for (int i = 0; i < r->g->nparams; i++) {
    const Tensor *t = r->g->params[i];
    float *h = mc_malloc((size_t)t->numel * sizeof(float));
    rt_init_param(t, seed, h);
    for (int64_t k = 0; k < t->numel; k++) /* gates start at zero: give them some signal */
      h[k] += (float)(0.01 * ((k * 7 + i) % 13 - 6));
    memcpy(rt_f32(r->p, t), h, (size_t)t->numel * sizeof(float));
    mc_free(h);
  }
}

/* One training step's loss and gradients; returns the loss. */
static double step(Run *r, int s, int vocab) {
  Graph *g = r->g;
  for (int i = 0; i < g->ninputs; i++) {
    int32_t *x = rt_i32(r->p, g->inputs[i]);
    for (int64_t k = 0; k < g->inputs[i]->numel; k++)
      x[k] = (int32_t)((k * 31 + s * 17 + i * 5) % vocab);
  }
  KernelCtx ctx = {
      .training = true, .seed = 7, .step = (uint64_t)s, .batch_local = g->B, .ndevices = 1};
  rt_exec(r->p, &ctx, 0, r->p->ninstrs);
  return rt_f32(r->p, g->loss)[0];
}

/* Bitwise: same loss, same gradient of every param (and same carried state). */
static bool same(Run *a, Run *b) {
  Graph *g = a->g, *h = b->g;
  bool ok = !memcmp(rt_f32(a->p, g->loss), rt_f32(b->p, h->loss), sizeof(float));
  for (int i = 0; i < g->nparams; i++)
    ok &= !memcmp(rt_f32(a->p, g->params[i]->grad), rt_f32(b->p, h->params[i]->grad),
                  (size_t)g->params[i]->numel * sizeof(float));
  for (int i = 0; i < g->nstates; i++)
    ok &= !memcmp(rt_f32(a->p, g->states[i].next), rt_f32(b->p, h->states[i].next),
                  (size_t)g->states[i].next->numel * sizeof(float));
  return ok;
}

static double total(const Run *r) {
  return (double)(r->p->persist_bytes + r->p->arena_bytes) + optim_bytes(r->g);
}

static void check_lm(const char *path) {
  Config cfg;
  AstFile *f = load(path, &cfg);
  Config moe = cfg, all = cfg;
  const char *names[1] = {"m"};
  moe.recompute = RC_LIST;
  moe.recompute_names = names;
  moe.n_recompute = 1;
  all.recompute = RC_ALL;
  const CgOpts unplanned = {.no_memplan = true}, planned = {0}, poisoned = {.poison = true};
  Run r[5] = {lower_with(f, &cfg, unplanned), lower_with(f, &cfg, planned),
              lower_with(f, &cfg, poisoned), lower_with(f, &moe, poisoned),
              lower_with(f, &all, poisoned)};
  const char *what[5] = {"unplanned", "planned", "poisoned", "recompute [m]", "recompute all"};
  CHECK(!r[0].p->planned && r[1].p->planned && r[2].p->poison);
  int vocab = 64;
  for (int i = 0; i < 5; i++)
    init(&r[i], 3);
  for (int s = 0; s < 3; s++) {
    double loss[5];
    for (int i = 0; i < 5; i++)
      loss[i] = step(&r[i], s, vocab);
    for (int i = 1; i < 5; i++) {
      bool ok = same(&r[0], &r[i]);
      CHECK(ok);
      if (!ok)
        fprintf(stderr, "step %d: %s differs from unplanned (%.9g vs %.9g)\n", s, what[i], loss[i],
                loss[0]);
    }
    CHECK(loss[0] == loss[0] && loss[0] > 0);
  }
  /* [m]: the experts' first GEMM, bias and ReLU are repeated; only m.h is dropped */
  Graph *gm = r[3].g;
  int clones = 0;
  for (int k = 0; k < gm->nnodes; k++) {
    const Node *n = gm->nodes[k];
    if (!n->recompute_of) continue;
    clones++;
    CHECK(n->op == OP_GROUPED_MATMUL || n->op == OP_GROUPED_BIAS || n->op == OP_RELU);
    CHECK(n->role && !strcmp(n->role, "experts") && !strcmp(n->layer, "m"));
  }
  CHECK(clones == 3);
  RecomputeSummary sm = pass_recompute_summary(gm, gm->B, gm->T, sizeof(float));
  const Tensor *mh = NULL;
  for (int i = 0; i < gm->ntensors; i++)
    if (!strcmp(gm->tensors[i]->name, "m.h")) mh = gm->tensors[i];
  CHECK(mh && sm.nseg == 1 && sm.dropped == mh->numel * 4);
  /* the drop the report prints is the drop the runtime allocates */
  for (int i = 3; i < 5; i++) {
    RecomputeSummary s = pass_recompute_summary(r[i].g, r[i].g->B, r[i].g->T, sizeof(float));
    CHECK(s.without.arena == (int64_t)r[1].p->arena_bytes);
    CHECK(s.with.arena == (int64_t)r[i].p->arena_bytes);
    CHECK(s.without.arena - s.with.arena == (int64_t)(r[1].p->arena_bytes - r[i].p->arena_bytes));
    /* [m] may raise the peak: with the activation's backward in place (dpre over dh) the
     * MoE backward holds h and dh, and the copies' GEMM output and h.rc come on top of dh */
    if (i == 4) CHECK(s.with.arena < s.without.arena && s.with.live_max < s.without.live_max);
    pass_recompute_report(r[i].g, r[i].g->B, r[i].g->T, sizeof(float), stdout);
  }
  printf("%s: arena none %.3f MiB, moe %.3f MiB, all %.3f MiB; persistent %.3f MiB\n", path,
         r[1].p->arena_bytes / MiB, r[3].p->arena_bytes / MiB, r[4].p->arena_bytes / MiB,
         r[1].p->persist_bytes / MiB);
  /* auto: half-way between none and all fits; a huge budget recomputes nothing */
  double lo = total(&r[4]), hi = total(&r[1]);
  Config au = cfg;
  au.recompute = RC_AUTO;
  au.memory_budget = (lo + hi) / 2;
  Run ra = lower_with(f, &au, (CgOpts){0});
  RecomputeSummary sa = pass_recompute_summary(ra.g, ra.g->B, ra.g->T, sizeof(float));
  printf("auto, budget %.3f MiB: %.3f MiB, %d segments, %.4g MFLOP recomputed\n",
         au.memory_budget / MiB, total(&ra) / MiB, sa.nseg, sa.flops / 1e6);
  CHECK(total(&ra) <= au.memory_budget);
  CHECK(sa.nseg >= 1);
  init(&ra, 3);
  for (int s = 0; s < 2; s++) {
    step(&ra, s, vocab);
    step(&r[0], s, vocab);
    CHECK(same(&r[0], &ra));
  }
  au.memory_budget = 1e15;
  Run rb = lower_with(f, &au, (CgOpts){0});
  CHECK(pass_recompute_summary(rb.g, rb.g->B, rb.g->T, 4).nseg == 0);
  for (int i = 0; i < 5; i++) {
    cg_program_free(r[i].p);
    ir_graph_free(r[i].g);
  }
  Run *rs[2] = {&ra, &rb};
  for (int i = 0; i < 2; i++) {
    cg_program_free(rs[i]->p);
    ir_graph_free(rs[i]->g);
  }
  fe_ast_free(f);
}

/* ---------------------------------------------------------------- the experts' backward */

/* The expert relu_bwd nodes whose incoming gradient a grouped_matmul (transW) makes: the
 * split form's [rows, hidden] hidden gradients; their bytes in *bytes. */
static int split_expert_bwd(const Graph *g, int64_t *bytes) {
  int n = 0;
  *bytes = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *x = g->nodes[k], *p = x->in[0]->producer;
    if (x->op != OP_RELU_BWD || !p || p->op != OP_GROUPED_MATMUL || !p->ia[0]) continue;
    *bytes += x->in[0]->numel * (int64_t)sizeof(float);
    n++;
  }
  return n;
}

static void check_expert_bwd(const char *path) {
  Config cfg;
  AstFile *f = load(path, &cfg);
  Config split = cfg;
  split.expert_bwd_split = true;
  Graph *gs = build(f, &split, true), *gf = build(f, &cfg, true);
  MemFigures ms = pass_memplan_assign(gs, sizeof(float));
  MemFigures mf = pass_memplan_assign(gf, sizeof(float));
  CHECK(pass_memplan_validate(gs) > 0);
  CHECK(pass_memplan_validate(gf) > 0);
  int64_t dh, none, dw1 = 0;
  int nsplit = split_expert_bwd(gs, &dh), fused = 0, inplace = 0;
  CHECK(nsplit > 0);
  CHECK(split_expert_bwd(gf, &none) == 0);
  for (int k = 0; k < gf->nnodes; k++) {
    const Node *n = gf->nodes[k];
    if (n->op == OP_GROUPED_MATMUL_DW && n->in[1]->producer &&
        n->in[1]->producer->op == OP_GROUPED_MATMUL_RELU_BWD)
      dw1 += n->out[0]->numel * (int64_t)sizeof(float); /* the first layer's dW, made next */
    if (n->op != OP_GROUPED_MATMUL_RELU_BWD) continue;
    fused++;
    inplace += n->out[0]->mem_offset == n->in[0]->mem_offset; /* over h */
  }
  CHECK(fused == nsplit && inplace == fused);
  /* the peak at the experts' backward (expert_bwd.moe): the hidden gradients no longer
   * alive, the first layer's weight gradient (and a few small tensors) alive in their
   * place: at least half the gradients' bytes on this model (dh - dW1 = 3/4 of them) */
  int64_t expect = dh / 2;
  CHECK(dh - dw1 > expect);
  printf("%s: expert_bwd split: arena %.3f MiB (live max %.3f); fused: %.3f (live max %.3f); "
         "hidden gradients %.3f MiB, less W1's gradient %.3f\n",
         path, ms.arena / MiB, ms.live_max / MiB, mf.arena / MiB, mf.live_max / MiB, dh / MiB,
         (dh - dw1) / MiB);
  CHECK(ms.live_max - mf.live_max >= expect);
  CHECK(ms.arena - mf.arena >= expect);
  ir_graph_free(gs);
  ir_graph_free(gf);
  /* the same bits: loss and every gradient, planned and poisoned */
  const CgOpts planned = {0}, poisoned = {.poison = true};
  Run r[4] = {lower_with(f, &split, planned), lower_with(f, &cfg, planned),
              lower_with(f, &split, poisoned), lower_with(f, &cfg, poisoned)};
  for (int i = 0; i < 4; i++)
    init(&r[i], 11);
  for (int s = 0; s < 3; s++) {
    double loss[4];
    for (int i = 0; i < 4; i++)
      loss[i] = step(&r[i], s, 64);
    CHECK(loss[0] == loss[0] && loss[0] > 0); /* finite: the poisoned arena read nothing */
    for (int i = 1; i < 4; i++)
      CHECK(same(&r[0], &r[i]));
  }
  for (int i = 0; i < 4; i++) {
    cg_program_free(r[i].p);
    ir_graph_free(r[i].g);
  }
  fe_ast_free(f);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--lm") && i + 1 < argc)
      check_lm(argv[++i]);
    else if (!strcmp(argv[i], "--expert-bwd") && i + 1 < argc)
      check_expert_bwd(argv[++i]);
    else
      check_model(argv[i]);
  }
  for (int i = 0; i < ntexts; i++)
    mc_free(texts[i]);
  TEST_DONE();
}
