/* test_plan.c: the placement and comm passes and the cost model
 * (tests/plan.cmake): collective byte counts against their closed forms over several
 * (B, T, D, E, k, P); expert gradients never all-reduced; every replicated gradient
 * all-reduced; every expert placed exactly once by each policy; memory per device
 * falling as devices grow; one device leaving the graph exactly as it was; place rules;
 * balanced placement from measured loads; hmoe groups kept whole; hmoe load factors and
 * batchwise gating's all_gather_topm over the global batch; a view slice or concat costs
 * no time. */
#include <string.h>

#include "../driver/driver.h"
#include "test.h"

typedef struct Built {
  AstFile *f;
  Config cfg;
  Graph *g;
} Built;

static bool load_text(Built *b, const char *text) {
  Source src = {.path = "test.moe", .text = text, .len = strlen(text)};
  Diag d;
  fe_diag_init(&d, &src);
  b->f = fe_parse(&src, &d);
  fe_config_defaults(&b->cfg);
  if (d.errors == 0) fe_sema(b->f, &b->cfg, &d);
  if (d.errors > 0) {
    fe_ast_free(b->f);
    return false;
  }
  b->g = ir_build(b->f, &b->cfg);
  return true;
}

/* The LM of the issue: embedding, LSTM, MoE, softmax. */
static bool lm(Built *b, int B, int T, int D, int E, int k, const char *plan) {
  char text[2048];
  snprintf(text, sizeof text,
           "model t {\n"
           "  input tokens : i32[B, T]\n"
           "  input targets : i32[B, T]\n"
           "  emb = embedding(tokens, vocab=16, dim=%d)\n"
           "  h = lstm(emb, units=%d)\n"
           "  m = moe(h, experts=%d, k=%d, hidden=8)\n"
           "  loss = softmax_xent(h + m, targets, vocab=16)\n"
           "  output loss\n"
           "}\n"
           "train {\n  batch = %d\n  unroll = %d\n}\n"
           "plan {\n%s}\n",
           D, D, E, k, B, T, plan ? plan : "");
  return load_text(b, text);
}

/* Measured loads the placement pass reads, and the notes it leaves. */
static const PlanLoads *loads;
static McBuf notes;

static void run_passes(Built *b, int P) {
  notes.len = 0;
  mc_buf_printf(&notes, "%s", "");
  PassCtx ctx = {.cfg = &b->cfg, .devices = P, .training = true, .loads = loads, .notes = &notes};
  CHECK(pass_run_all(b->g, &ctx, NULL, NULL));
  CHECK(b->g->B == b->cfg.batch && b->g->T == b->cfg.unroll); /* bound: the global batch */
}

/* plan_cost with each device's allocated memory, as moec plan computes it. */
static PlanCost cost(Built *b, int P, const CostConsts *k) {
  PlanCost c = plan_cost(b->g, P, b->cfg.optimizer, k);
  for (int d = 0; d < P; d++) {
    DeviceMemory m = drv_device_memory(b->g, &b->cfg, NULL, d, P, c.dev[d].rows_scale);
    plan_cost_set_memory(&c, d, (double)m.persist, (double)m.arena, (double)m.optimizer,
                         (double)m.params, (double)m.live_max);
  }
  return c;
}

static void done(Built *b) {
  ir_graph_free(b->g);
  fe_ast_free(b->f);
}

static const Tensor *param(const Graph *g, const char *name) {
  for (int i = 0; i < g->nparams; i++)
    if (!strcmp(g->params[i]->name, name)) return g->params[i];
  return NULL;
}

static int count_op(const Graph *g, OpKind op, int backward) {
  int n = 0;
  for (int k = 0; k < g->nnodes; k++)
    n += g->nodes[k]->op == op && (backward < 0 || g->nodes[k]->backward == backward);
  return n;
}

/* ---------------------------------------------------------------- bytes */

static void test_bytes(void) {
  static const int cases[][6] = {/* B, T, D, E, k, P */
                                 {8, 4, 6, 4, 2, 2}, {12, 5, 10, 8, 1, 4},
                                 {6, 3, 4, 6, 3, 3}, {16, 2, 8, 32, 4, 4},
                                 {4, 7, 5, 5, 2, 4}, {32, 20, 64, 32, 4, 8}};
  for (size_t c = 0; c < MC_ARRAY_LEN(cases); c++) {
    int B = cases[c][0], T = cases[c][1], D = cases[c][2], E = cases[c][3], k = cases[c][4],
        P = cases[c][5];
    Built b;
    CHECK(lm(&b, B, T, D, E, k, NULL));
    run_passes(&b, P);
    Graph *g = b.g;
    /* dispatch, combine and their two mirrors: one each */
    CHECK(count_op(g, OP_ALL_TO_ALL, 0) == 1 && count_op(g, OP_ALL_TO_ALL, 1) == 1);
    CHECK(count_op(g, OP_ALL_TO_ALL_BACK, 0) == 1 && count_op(g, OP_ALL_TO_ALL_BACK, 1) == 1);
    int64_t rows = (int64_t)B * T * k, payload = rows * D * 4;
    int64_t expected = (int64_t)((double)payload * (P - 1) / P + 0.5);
    int nreduce = 0, nsparse = 0;
    for (int q = 0; q < g->nnodes; q++) {
      const Node *n = g->nodes[q];
      if (!(ir_ops[n->op].flags & OPF_COLLECTIVE)) continue;
      CommBytes cb = pass_comm_bytes(g, n);
      if (n->op == OP_ALL_TO_ALL || n->op == OP_ALL_TO_ALL_BACK) {
        CHECK(cb.payload == payload); /* B*T*k rows of D floats */
        CHECK(cb.upper == payload);
        CHECK(cb.expected == expected); /* less the rows that stay: 1/P of them */
        CHECK(cb.per_device == expected / P);
      } else if (n->op == OP_ALL_REDUCE) {
        nreduce++;
        CHECK(cb.payload == n->in[0]->numel * 4);
        CHECK(cb.expected == 2 * (int64_t)(P - 1) * cb.payload); /* ring */
      } else if (n->op == OP_SPARSE_ALL_REDUCE) { /* the embedding's rows: B*T (id, row) pairs */
        nsparse++;
        CHECK(cb.payload == (int64_t)B * T * (D + 1) * 4);
        CHECK(cb.expected == (int64_t)(P - 1) * cb.payload);
      }
    }
    /* importance + load, and every parameter but the four expert tensors; a gradient of
     * row scatters (the embedding's) exchanges its rows instead when they are fewer bytes */
    int repl = 0;
    for (int i = 0; i < g->nparams; i++)
      repl += g->params[i]->part == PART_REPLICATED;
    CHECK(repl == g->nparams - 4);
    CHECK(nreduce + nsparse == 2 + repl);
    const Tensor *imp = g->moe_importance[0];
    CHECK(imp->producer->op == OP_ALL_REDUCE && pass_comm_bytes(g, imp->producer).payload == E * 4);
    done(&b);
  }
}

/* ---------------------------------------------------------------- gradients */

static void test_gradients_stay(void) {
  Built b;
  CHECK(lm(&b, 8, 4, 6, 8, 2, NULL));
  run_passes(&b, 4);
  Graph *g = b.g;
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *p = g->params[i];
    CHECK(p->grad != NULL);
    if (!p->grad) continue;
    bool expert = strstr(p->name, ".w1") || strstr(p->name, ".b1") || strstr(p->name, ".w2") ||
                  strstr(p->name, ".b2");
    CHECK(expert == (p->part == PART_EXPERTS));
    if (expert) {
      CHECK(p->grad->part == PART_EXPERTS);
      CHECK(p->grad->producer->op != OP_ALL_REDUCE);
    } else {
      CHECK(p->grad->producer->op == OP_ALL_REDUCE);
      CHECK(p->grad->part == PART_REPLICATED);
    }
  }
  /* no collective reads an expert gradient, or anything an expert param's grad came from */
  for (int q = 0; q < g->nnodes; q++) {
    const Node *n = g->nodes[q];
    if (n->op != OP_ALL_REDUCE) continue;
    CHECK(n->in[0]->part == PART_PARTIAL);
    for (int i = 0; i < g->nparams; i++)
      if (g->params[i]->part == PART_EXPERTS) CHECK(n->in[0] != g->params[i]->grad);
  }
  done(&b);
}

/* ---------------------------------------------------------------- expert maps */

static void test_policies(void) {
  static const char *pol[] = {"contiguous", "round_robin", "balanced"};
  static const int EP[][2] = {{8, 4}, {10, 4}, {5, 5}, {32, 3}};
  for (int p = 0; p < 3; p++)
    for (size_t c = 0; c < MC_ARRAY_LEN(EP); c++) {
      int E = EP[c][0], P = EP[c][1];
      char plan[128];
      snprintf(plan, sizeof plan, "  experts = %s\n", pol[p]);
      Built b;
      CHECK(lm(&b, 8, 2, 4, E, 1, plan));
      run_passes(&b, P);
      Graph *g = b.g;
      CHECK(g->moe_expert_dev && g->moe_nexperts[0] == E);
      int cnt[8] = {0};
      for (int e = 0; e < E; e++) {
        int d = g->moe_expert_dev[0][e];
        CHECK(d >= 0 && d < P); /* placed exactly once, on a device that exists */
        if (d >= 0 && d < P) cnt[d]++;
        if (p == 1) CHECK(d == e % P);
        if (p == 0 && e > 0) CHECK(d >= g->moe_expert_dev[0][e - 1]);
      }
      for (int d = 0; d < P; d++)
        CHECK(cnt[d] == E / P || cnt[d] == E / P + 1);
      if (p == 2) CHECK(strstr(notes.data, "no measured loads") != NULL); /* fell back */
      done(&b);
    }
}

/* Skewed loads of layer m's 8 experts: experts 0..3 hot (contiguous on 2 devices puts all
 * four on device 0, 340 of 344 rows), for the routing and placement tests. */
static const double skew_load[8] = {100, 90, 80, 70, 1, 1, 1, 1};
static PlanLoads skew_loads(void) {
  static const char *names[1] = {"m"};
  static const double *loads_of[1] = {skew_load};
  static const int ne[1] = {8};
  return (PlanLoads){1, names, (const double **)loads_of, ne};
}

static void test_balanced(void) {
  /* skewed loads: experts 0..3 hot; contiguous would put all four on device 0 */
  PlanLoads pl = skew_loads();
  loads = &pl;
  Built b;
  CHECK(lm(&b, 8, 2, 4, 8, 2, "  experts = balanced\n"));
  run_passes(&b, 2);
  double tot[2] = {0};
  int cnt[2] = {0};
  for (int e = 0; e < 8; e++) {
    int d = b.g->moe_expert_dev[0][e];
    tot[d] += skew_load[e];
    cnt[d]++;
  }
  CHECK(cnt[0] == 4 && cnt[1] == 4);
  CHECK(fabs(tot[0] - tot[1]) <= 20); /* contiguous: 340 vs 4 */
  CHECK(strstr(notes.data, "no measured loads") == NULL);
  loads = NULL;
  done(&b);
}

/* ---------------------------------------------------------------- memory */

static void test_memory_falls(void) {
  double prev = 0;
  for (int P = 1; P <= 8; P *= 2) {
    Built b;
    CHECK(lm(&b, 16, 4, 16, 16, 2, NULL));
    run_passes(&b, P);
    PlanCost c = plan_cost(b.g, P, OPT_ADAM, &plan_consts_cpu);
    double mx = 0, fl = 0;
    for (int d = 0; d < P; d++) {
      const DeviceCost *dc = &c.dev[d];
      double m = dc->param_bytes + dc->grad_bytes + dc->optim_bytes + dc->act_bytes;
      mx = m > mx ? m : mx;
      fl = dc->flops > fl ? dc->flops : fl;
      CHECK(dc->optim_bytes == 2 * dc->param_bytes); /* adam */
    }
    if (P > 1) CHECK(mx < prev);
    prev = mx;
    CHECK(c.step_s > 0 && (P == 1) == (c.comm_s == 0));
    plan_cost_free(&c);
    done(&b);
  }
}

/* ---------------------------------------------------------------- one device */

static char *print_graph(const Graph *g) {
  char *s = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&s, &n);
  ir_print(g, f);
  fclose(f);
  return s;
}

/* Every pass in order on one device (the file asks for 4: --devices 1 wins); the graph
 * printed before and after placement and comm is the same text, and nothing is placed. */
static void test_one_device_unchanged(void) {
  Built b;
  CHECK(lm(&b, 8, 4, 6, 4, 2, "  devices = 4\n"));
  PassCtx ctx = {.cfg = &b.cfg, .devices = 1, .training = true};
  int mine = 0;
  for (int i = 0; i < pass_count; i++) {
    const Pass *p = &pass_list[i];
    bool ours = p->run == pass_placement || p->run == pass_comm;
    char *before = ours ? print_graph(b.g) : NULL;
    p->run(b.g, &ctx);
    if (ours) {
      char *after = print_graph(b.g);
      CHECK(!strcmp(before, after));
      free(after);
      free(before);
      mine++;
    }
  }
  CHECK(mine == 2);
  for (int k = 0; k < b.g->nnodes; k++) {
    const Node *n = b.g->nodes[k];
    CHECK(!(ir_ops[n->op].flags & OPF_COLLECTIVE));
    CHECK(n->device == -1 && n->ndevices == 0);
  }
  for (int i = 0; i < b.g->ntensors; i++)
    CHECK(b.g->tensors[i]->part == PART_NONE);
  CHECK(b.g->moe_expert_dev == NULL);
  done(&b);
}

/* ---------------------------------------------------------------- rules */

static void test_rules(void) {
  Built b;
  /* the experts all on device 1 */
  CHECK(lm(&b, 8, 2, 4, 4, 2, "  devices = 4\n  place m.experts : on(1)\n"));
  run_passes(&b, 4);
  for (int e = 0; e < 4; e++)
    CHECK(b.g->moe_expert_dev[0][e] == 1);
  done(&b);

  /* a replicated MoE: no all-to-all, its experts' gradients all-reduced */
  CHECK(lm(&b, 8, 2, 4, 4, 2, "  place m : replicate\n"));
  run_passes(&b, 4);
  CHECK(count_op(b.g, OP_ALL_TO_ALL, -1) == 0 && count_op(b.g, OP_ALL_TO_ALL_BACK, -1) == 0);
  const Tensor *w1 = param(b.g, "m.w1");
  CHECK(w1 && w1->part == PART_REPLICATED && w1->grad->producer->op == OP_ALL_REDUCE);
  done(&b);

  /* data_parallel, then shard(experts) for m: the all-to-alls come back */
  CHECK(lm(&b, 8, 2, 4, 4, 2, "  strategy = data_parallel\n  place m : shard(experts)\n"));
  run_passes(&b, 2);
  CHECK(count_op(b.g, OP_ALL_TO_ALL, -1) == 2);
  CHECK(param(b.g, "m.w1")->part == PART_EXPERTS);
  done(&b);

  /* data_parallel alone: everything replicated */
  CHECK(lm(&b, 8, 2, 4, 4, 2, "  strategy = data_parallel\n"));
  run_passes(&b, 2);
  CHECK(count_op(b.g, OP_ALL_TO_ALL, -1) == 0);
  for (int i = 0; i < b.g->nparams; i++)
    CHECK(b.g->params[i]->part == PART_REPLICATED);
  done(&b);

  /* the embedding on device 0 only: its nodes say so, rows are resharded to and from it
   * (an LSTM there is refused: its state would live on part of the devices) */
  CHECK(lm(&b, 8, 2, 4, 4, 2, "  devices = 2\n  place emb : on(0)\n"));
  run_passes(&b, 2);
  int on0 = 0, other = 0;
  for (int k = 0; k < b.g->nnodes; k++) {
    const Node *n = b.g->nodes[k];
    if (n->layer && !strcmp(n->layer, "emb") && n->op != OP_RESHARD) {
      on0 += n->device == 0;
      other += n->device != 0;
    }
  }
  CHECK(on0 > 0 && other == 0);
  CHECK(count_op(b.g, OP_RESHARD, -1) > 0);
  done(&b);
}

/* Device subsets: a reshard's expected bytes are the bytes whose device changes, rows in
 * batch order over each set (ascending): all 4 -> {0, 1}: device 0 takes rows [0, B/2)
 * (its own first quarter stays), device 1 rows [B/2, B) (none of its own): 3/4 move;
 * all 4 -> {1, 2}: 1/2 (device 1's and device 2's quarters stay); the gradient rows back
 * the same. An experts-only subset moves no dense rows: no reshard, and the dispatch's
 * remote fraction counts every sender (1 - 1/4 with the experts on two of four). */
static void test_reshard_bytes(void) {
  static const struct {
    const char *rule;
    double frac;
  } cases[] = {{"loss : on(0, 1)", 0.75}, {"loss : on(1, 2)", 0.5}, {"loss : on(3)", 0.75}};
  for (size_t i = 0; i < MC_ARRAY_LEN(cases); i++) {
    Built b;
    char plan[128];
    snprintf(plan, sizeof plan, "  devices = 4\n  place %s\n", cases[i].rule);
    CHECK(lm(&b, 8, 2, 4, 4, 2, plan));
    run_passes(&b, 4);
    int n = 0;
    for (int k = 0; k < b.g->nnodes; k++) {
      const Node *r = b.g->nodes[k];
      if (r->op != OP_RESHARD) continue;
      n++;
      CommBytes cb = pass_comm_bytes(b.g, r);
      int64_t elem = 4, D = r->in[0]->ty.dtype == DT_I32 ? 1 : 4; /* targets: one i32 */
      CHECK(cb.payload == 8 * 2 * D * elem && cb.upper == cb.payload);
      CHECK(cb.expected == (int64_t)(cb.payload * cases[i].frac + 0.5));
    }
    CHECK(n >= 3); /* the softmax's inputs (h + m is its own), the targets, the gradients back */
    done(&b);
  }
  Built b;
  CHECK(lm(&b, 8, 2, 4, 4, 2, "  devices = 4\n  place m.experts : on(0, 1)\n"));
  run_passes(&b, 4);
  CHECK(count_op(b.g, OP_RESHARD, -1) == 0);
  for (int k = 0; k < b.g->nnodes; k++) {
    const Node *a = b.g->nodes[k];
    if (a->op != OP_ALL_TO_ALL) continue;
    CommBytes cb = pass_comm_bytes(b.g, a);
    CHECK(cb.expected == (int64_t)(cb.payload * 0.75 + 0.5));
  }
  done(&b);
}

/* ---------------------------------------------------------------- hmoe */

static void test_hmoe_groups(void) {
  static const char *text = "model t {\n"
                            "  input tokens : i32[B, T]\n"
                            "  input targets : i32[B, T]\n"
                            "  emb = embedding(tokens, vocab=16, dim=4)\n"
                            "  m = hmoe(emb, groups=4, experts=3, k_group=2, k=2, hidden=4)\n"
                            "  loss = softmax_xent(m, targets, vocab=16)\n"
                            "  output loss\n"
                            "}\n"
                            "train {\n  batch = 8\n  unroll = 2\n}\n"
                            "plan {\n  strategy = hmoe\n  experts = round_robin\n}\n";
  Built b;
  CHECK(load_text(&b, text));
  run_passes(&b, 2);
  CHECK(b.g->moe_nexperts[0] == 12);
  for (int e = 0; e < 12; e++) /* whole groups on one device; groups round-robin */
    CHECK(b.g->moe_expert_dev[0][e] == (e / 3) % 2);
  /* expert params of group 1 (device 1) are not on device 0 */
  PlanCost c = plan_cost(b.g, 2, OPT_ADAM, &plan_consts_cpu);
  CHECK(c.dev[0].nexperts == 6 && c.dev[1].nexperts == 6);
  plan_cost_free(&c);
  done(&b);

  /* a mesh of 2 nodes x 2 devices: groups over nodes (contiguous); a node with at least
   * one group a device keeps each group whole on one of them (the secondary routing
   * never leaves a device); each group's rows go to it (the group -> device map) */
  char mesh[1024];
  snprintf(mesh, sizeof mesh, "%s", text);
  char *pl = strstr(mesh, "plan {");
  snprintf(pl, sizeof mesh - (size_t)(pl - mesh),
           "plan {\n  mesh = [2, 2]\n  strategy = hmoe\n}\n");
  CHECK(load_text(&b, mesh));
  run_passes(&b, 4);
  CHECK(b.g->moe_ngroups[0] == 4);
  for (int e = 0; e < 12; e++)
    CHECK(b.g->moe_expert_dev[0][e] == e / 3);
  for (int u = 0; u < 4; u++)
    CHECK(b.g->moe_group_dev[0][u] == u);
  int groups = 0, experts = 0, pieces[2][2] = {{0}};
  for (int k = 0; k < b.g->nnodes; k++) {
    const Node *n = b.g->nodes[k];
    if (n->op != OP_ALL_TO_ALL && n->op != OP_ALL_TO_ALL_BACK) continue;
    if (n->ia[3]) {
      groups++;
      pieces[n->backward][n->op == OP_ALL_TO_ALL_BACK] += n->nin - 1; /* row tensors */
      CHECK(fabs(n->fa[0] - 0.75) < 1e-12); /* a row stays when its group is on its device */
    } else {
      experts++;
      CHECK(n->fa[0] == 0); /* each expert on its group's device */
    }
  }
  /* group level: xg with its expert ids and gates (packed) and back yg; backward: dyg to,
   * dgates with dxg (packed) back; expert level: xs, ys back, dys, dxs back */
  CHECK(groups == 4 && experts == 4);
  CHECK(pieces[0][0] == 3 && pieces[0][1] == 1 && pieces[1][0] == 1 && pieces[1][1] == 2);
  for (int i = 0; i < b.g->ntensors; i++) /* the separate exchanges left no tensors behind */
    CHECK(b.g->tensors[i]->id == i &&
          (!b.g->tensors[i]->producer || b.g->tensors[i]->producer->id >= 0));
  done(&b);

  /* 2 nodes x 4 devices, 2 groups a node: each group's experts over its node's devices
   * (3 experts: devices 0, 1, 2 of the node), its rows to one of them */
  snprintf(pl, sizeof mesh - (size_t)(pl - mesh),
           "plan {\n  mesh = [2, 4]\n  strategy = hmoe\n}\n");
  CHECK(load_text(&b, mesh));
  run_passes(&b, 8);
  for (int e = 0; e < 12; e++) {
    int grp = e / 3, j = e % 3, node = grp / 2;
    CHECK(b.g->moe_expert_dev[0][e] == node * 4 + j * 4 / 3);
  }
  for (int u = 0; u < 4; u++) /* the node's groups dealt over the group's devices */
    CHECK(b.g->moe_group_dev[0][u] == (u / 2) * 4 + (u % 2));
  done(&b);
}

/* hmoe on P devices: the load factors (primary [G], per group [G, E]) and the group row
 * counts (the offsets, i32[G+1]) are all-reduced before their product; the product itself
 * (the layer's registered load) is not all-reduced again. */
static void test_hmoe_comm(void) {
  static const int cases[][5] = {/* G, E, kg, k, P */ {4, 3, 2, 2, 2}, {5, 2, 1, 2, 3}};
  for (size_t c = 0; c < MC_ARRAY_LEN(cases); c++) {
    int G = cases[c][0], E = cases[c][1], kg = cases[c][2], k = cases[c][3], P = cases[c][4];
    char text[1024];
    snprintf(text, sizeof text,
             "model t {\n  input tokens : i32[B, T]\n  input targets : i32[B, T]\n"
             "  emb = embedding(tokens, vocab=16, dim=4)\n"
             "  m = hmoe(emb, groups=%d, experts=%d, k_group=%d, k=%d, hidden=4)\n"
             "  loss = softmax_xent(m, targets, vocab=16)\n  output loss\n}\n"
             "train {\n  batch = 6\n  unroll = 2\n}\n",
             G, E, kg, k);
    Built b;
    CHECK(load_text(&b, text));
    run_passes(&b, P);
    const Graph *g = b.g;
    int seen = 0;
    for (int q = 0; q < g->nnodes; q++) {
      const Node *n = g->nodes[q];
      if (n->op == OP_DIV_GROUP_ROWS) { /* forward and its gradient: the global counts */
        CHECK(n->in[1]->producer->op == OP_ALL_REDUCE && n->in[1]->ty.dtype == DT_I32);
        CHECK(pass_comm_bytes(g, n->in[1]->producer).payload == (G + 1) * 4);
        if (!n->backward) {
          CHECK(n->in[0]->producer->op == OP_ALL_REDUCE);
          CHECK(pass_comm_bytes(g, n->in[0]->producer).payload == G * E * 4);
          seen++;
        }
      }
      if (n->op == OP_ROW_SCALE && !n->backward && n->in[0]->producer->op == OP_DIV_GROUP_ROWS) {
        CHECK(n->in[1]->producer->op == OP_ALL_REDUCE); /* Load_p */
        CHECK(pass_comm_bytes(g, n->in[1]->producer).payload == G * 4);
        seen++;
      }
    }
    CHECK(seen == 2);
    CHECK(g->moe_load[0]->producer->op == OP_RESHAPE); /* the product, not re-summed */
    CHECK(g->moe_importance[0]->producer->op == OP_ALL_REDUCE);
    done(&b);
  }
}

/* batchwise gating on P devices: all_gather_topm before the route (k, devices), the slot
 * list widened to N*k*P, the threshold loss over the global batch; bytes: the dispatch and
 * its mirrors move the E*floor(k*N/E) used slots of D floats, the all_gather every
 * device's top min(m, N/P) (value, row) pairs per expert. */
static void test_batchwise_bytes(void) {
  static const int cases[][6] = {/* B, T, D, E, k, P */
                                 {8, 4, 6, 4, 2, 2},
                                 {12, 5, 10, 8, 1, 4},
                                 {6, 3, 4, 6, 3, 3},
                                 {4, 1, 4, 8, 1, 4}};
  for (size_t c = 0; c < MC_ARRAY_LEN(cases); c++) {
    int B = cases[c][0], T = cases[c][1], D = cases[c][2], E = cases[c][3], k = cases[c][4],
        P = cases[c][5];
    char text[1024];
    snprintf(text, sizeof text,
             "model t {\n  input tokens : i32[B, T]\n  input targets : i32[B, T]\n"
             "  emb = embedding(tokens, vocab=16, dim=%d)\n"
             "  m = moe(emb, experts=%d, k=%d, hidden=8, gating=batchwise)\n"
             "  loss = softmax_xent(emb + m, targets, vocab=16)\n  output loss\n}\n"
             "train {\n  batch = %d\n  unroll = %d\n}\n",
             D, E, k, B, T);
    Built b;
    CHECK(load_text(&b, text));
    run_passes(&b, P);
    const Graph *g = b.g;
    int64_t N = (int64_t)B * T, m = k * N / E, slots = E * m;
    int64_t block = E * (m < N / P ? m : N / P) * 8;
    int ntopm = 0, na2a = 0, nthr = 0;
    for (int q = 0; q < g->nnodes; q++) {
      const Node *n = g->nodes[q];
      CommBytes cb = pass_comm_bytes(g, n);
      if (n->op == OP_ALL_GATHER_TOPM) {
        ntopm++;
        CHECK(n->ia[0] == k && n->ia[1] == P);
        CHECK(cb.payload == P * block && cb.expected == (P - 1) * P * block);
        CHECK(cb.per_device == (P - 1) * block);
      } else if (n->op == OP_BATCHWISE_ROUTE) {
        CHECK(n->nin == 4 && n->in[2]->producer->op == OP_ALL_GATHER_TOPM);
        CHECK(n->ia[1] == P && n->out[1]->numel == N * k * P); /* room for any split */
      } else if (n->op == OP_ALL_TO_ALL || n->op == OP_ALL_TO_ALL_BACK) {
        na2a++;
        CHECK(cb.payload == slots * D * 4 && cb.upper == cb.payload);
        CHECK(cb.expected == (int64_t)((double)cb.payload * (P - 1) / P + 0.5));
      } else if (n->op == OP_THRESHOLD_LOSS || n->op == OP_THRESHOLD_LOSS_BWD) {
        nthr++;
        CHECK(n->ia[0] == P);
        if (n->op == OP_THRESHOLD_LOSS) CHECK(n->out[0]->part == PART_PARTIAL);
      }
    }
    CHECK(ntopm == 1 && na2a == 4 && nthr == 2);
    done(&b);
  }
}

/* ---------------------------------------------------------------- memory plan, clusters */

/* One device: plan_cost's planned figures are memplan's (what the runtime allocates); more
 * devices: the plan at ceil(B/P) rows, and expert params at the device's share. A cluster of
 * nodes communicates no faster than its slower link and no slower than all-inter. */
static void test_cost_memplan_cluster(void) {
  Built b;
  CHECK(lm(&b, 16, 4, 16, 16, 2, NULL));
  run_passes(&b, 1);
  PlanCost c = cost(&b, 1, &plan_consts_cpu);
  MemFigures mf = pass_memplan_plan(b.g, 16, 4, sizeof(float), 0, NULL);
  CHECK(c.rows_per_device == 16 && c.fits);
  CHECK(c.dev[0].persist_bytes == (double)mf.persist && c.dev[0].arena_bytes == (double)mf.arena);
  CHECK(c.dev[0].planned_bytes == (double)(mf.persist + mf.arena) + c.dev[0].optim_bytes);
  CHECK(c.dev[0].optim_alloc_bytes == c.dev[0].optim_bytes);
  CHECK(c.dev[0].param_alloc_bytes == c.dev[0].param_bytes); /* one device: every parameter */
  double planned1 = c.dev[0].planned_bytes;
  plan_cost_free(&c);
  done(&b);

  CHECK(lm(&b, 16, 4, 16, 16, 2, NULL));
  run_passes(&b, 4);
  CostConsts flat = {.name = "t", .gflops = 1000, .link_gbs = 100, .latency_us = 5};
  CostConsts slow = flat, nodes = flat;
  slow.link_gbs = 1;
  nodes.per_node = 2;
  nodes.inter_gbs = 1;
  nodes.mem_bytes = 1; /* nothing fits one byte */
  PlanCost cf = cost(&b, 4, &flat), cs = cost(&b, 4, &slow), cn = cost(&b, 4, &nodes);
  CHECK(cf.rows_per_device == 4);
  /* 1/4 of the experts and of the rows: less memory per device, parameters as estimated */
  CHECK(cf.dev[0].planned_bytes < planned1);
  CHECK(cf.dev[0].param_alloc_bytes == cf.dev[0].param_bytes);
  CHECK(cf.comm_s < cn.comm_s && cn.comm_s <= cs.comm_s);
  /* the same compute; summed in another order of phases, so equal to rounding */
  CHECK(fabs(cf.compute_s - cn.compute_s) <= 1e-12 * cf.compute_s && cf.fits && !cn.fits);
  plan_cost_free(&cf);
  plan_cost_free(&cs);
  plan_cost_free(&cn);
  done(&b);
}

/* The step under a routing: a skewed load makes the device holding the hot experts the
 * busiest (kernels and received rows); balanced placement of the same loads evens it out;
 * nodes split each device's bytes into inside and between; small GEMMs cost more a FLOP. */
/* the cost tests' constants: round numbers, every term on */
static const CostConsts consts_t = {.name = "t",
                                    .gflops = 100,
                                    .link_gbs = 10,
                                    .latency_us = 1,
                                    .gemm_half = 16,
                                    .elem_gbs = 10,
                                    .launch_us = 1};

static void test_cost_routing(void) {
  CostConsts k = consts_t;
  double small = plan_gemm_s(&k, 8, 512, 512) / (8.0 * 512 * 512);
  double big = plan_gemm_s(&k, 512, 512, 512) / (512.0 * 512 * 512);
  CHECK(fabs(small / big - (24.0 / 8) / (528.0 / 512)) < 1e-9);
  PlanLoads pl = skew_loads();
  double step[2], busy_share[2];
  for (int bal = 0; bal < 2; bal++) {
    loads = &pl;
    Built b;
    CHECK(lm(&b, 64, 4, 16, 8, 2, bal ? "  experts = balanced\n" : "  experts = contiguous\n"));
    run_passes(&b, 2);
    loads = NULL;
    PlanCost u = plan_cost(b.g, 2, OPT_ADAM, &k);
    PlanCost c = plan_cost_routed(b.g, 2, OPT_ADAM, &k, &pl, 0);
    /* routed rows are moved, not made: the total is the uniform one */
    CHECK(fabs(c.dev[0].expert_rows + c.dev[1].expert_rows - u.dev[0].expert_rows -
               u.dev[1].expert_rows) < 1e-6);
    CHECK(fabs(u.dev[0].expert_rows - u.dev[1].expert_rows) < 1e-6);
    step[bal] = c.step_s;
    busy_share[bal] = c.dev[c.busiest].route_share;
    if (!bal) {
      CHECK(c.busiest == 0 && fabs(c.dev[0].route_share - 340.0 / 344) < 1e-9);
      CHECK(c.dev[0].compute_s > c.dev[1].compute_s && c.dev[0].comm_s > c.dev[1].comm_s);
      CHECK(c.step_s > u.step_s);
    }
    plan_cost_free(&u);
    plan_cost_free(&c);
    done(&b);
  }
  CHECK(step[1] < step[0] && busy_share[1] < busy_share[0]);
  /* a Zipf skew is a routing too: expert 0 the hottest, on device 0 under contiguous */
  Built b;
  CHECK(lm(&b, 64, 4, 16, 8, 2, NULL));
  run_passes(&b, 4);
  PlanCost z = plan_cost_routed(b.g, 4, OPT_ADAM, &k, NULL, 1.0);
  CHECK(z.busiest == 0 && z.dev[0].expert_rows > z.dev[3].expert_rows);
  CostConsts kn = k;
  kn.per_node = 2;
  kn.inter_gbs = 1;
  PlanCost f = plan_cost(b.g, 4, OPT_ADAM, &k), n = plan_cost(b.g, 4, OPT_ADAM, &kn);
  for (int d = 0; d < 4; d++) {
    CHECK(f.dev[d].inter_bytes == 0 && n.dev[d].inter_bytes > 0);
    CHECK(fabs(f.dev[d].intra_bytes - n.dev[d].intra_bytes - n.dev[d].inter_bytes) < 1e-6);
  }
  CHECK(n.comm_s > f.comm_s && fabs(n.compute_s - f.compute_s) < 1e-12);
  plan_cost_free(&z);
  plan_cost_free(&f);
  plan_cost_free(&n);
  done(&b);
}

/* Past the last-level cache the optimizer and the expert GEMMs' weights stream from
 * memory: the step no shorter than the optimizer's bytes at dram_gbs; within the cache (or
 * without the constants) the same step as before. */
static void test_dram_floor(void) {
  CostConsts k = consts_t;
  k.cores = 2;
  Built b;
  CHECK(lm(&b, 64, 4, 16, 8, 2, "  strategy = data_parallel\n"));
  run_passes(&b, 2);
  PlanCost c0 = plan_cost(b.g, 2, OPT_ADAM, &k);
  CostConsts kin = k, kout = k;
  kin.dram_gbs = kout.dram_gbs = 1e-3;
  kin.llc_bytes = 1e18; /* everything fits */
  kout.llc_bytes = 1;
  PlanCost ci = plan_cost(b.g, 2, OPT_ADAM, &kin), co = plan_cost(b.g, 2, OPT_ADAM, &kout);
  double moved = 0; /* Adam: 7 elements of 4 bytes a parameter, both devices */
  for (int d = 0; d < 2; d++)
    moved += 7 * c0.dev[d].param_bytes;
  CHECK(c0.step_s > 0 && fabs(ci.step_s - c0.step_s) < 1e-15);
  CHECK(co.step_s >= moved / (kout.dram_gbs * 1e9) && co.step_s > c0.step_s);
  CHECK(fabs(co.comm_s - c0.comm_s) < 1e-15); /* collectives unchanged */
  /* a cache that holds every phase's expert weights (each expert GEMM reads or writes
   * one layer's [E, K, M] on each device, at most six a phase) but not the state every
   * step touches: the weights come from memory anyway (the update's pass evicted them),
   * so at least the forward's two reads of them per device are added to the update's */
  Built w; /* experts small beside the LSTM: D 64, 2 experts of hidden 8 */
  CHECK(lm(&w, 64, 4, 64, 2, 1, "  strategy = data_parallel\n"));
  run_passes(&w, 2);
  double wmax = 0, wsum = 0, state = 0, wmoved = 0;
  for (int i = 0; i < 2; i++) {
    const Tensor *t = param(w.g, i ? "m.w2" : "m.w1");
    CHECK(t && t->ty.rank == 3);
    wmax = fmax(wmax, 4.0 * (double)t->numel);
    wsum += 4.0 * (double)t->numel;
  }
  PlanCost w0 = plan_cost(w.g, 2, OPT_ADAM, &k);
  for (int d = 0; d < 2; d++) {
    state += 4 * w0.dev[d].param_bytes;
    wmoved += 7 * w0.dev[d].param_bytes;
  }
  CostConsts kmid = kout;
  kmid.llc_bytes = 6 * wmax * 2 + 1;
  CHECK(wsum > 0 && state > kmid.llc_bytes);
  PlanCost cm = plan_cost(w.g, 2, OPT_ADAM, &kmid), cx = plan_cost(w.g, 2, OPT_ADAM, &kout);
  CHECK(cm.step_s >= (wmoved + 2 * 2 * wsum) / (kmid.dram_gbs * 1e9));
  CHECK(fabs(cm.step_s - cx.step_s) < 1e-12 * cx.step_s); /* as if there were no cache */
  plan_cost_free(&w0);
  plan_cost_free(&cm);
  plan_cost_free(&cx);
  done(&w);
  plan_cost_free(&c0);
  plan_cost_free(&ci);
  plan_cost_free(&co);
  done(&b);
}

/* The passes over the gradients before the update on host devices: the guard's read of
 * a device's gradients at elem_gbs, and on several devices each device's serial norm pass
 * at norm_ns an element; devices sharing the cores share them (4 devices on 2 cores: each
 * device's passes twice over), one device alone reads over all its cores and has no norm
 * pass of its own. */
static void test_pre_optim(void) {
  CostConsts k = consts_t;
  k.cores = 2;
  k.norm_ns = 0;
  CostConsts kn = k;
  kn.norm_ns = 3;
  for (int P = 1; P <= 4; P *= 2) {
    Built b;
    CHECK(lm(&b, 64, 4, 16, 8, 2, "  strategy = data_parallel\n"));
    run_passes(&b, P);
    PlanCost c0 = plan_cost(b.g, P, OPT_ADAM, &k), c1 = plan_cost(b.g, P, OPT_ADAM, &kn);
    double pb = c0.dev[0].param_bytes; /* data_parallel: every device holds every parameter */
    double guard = pb / (kn.elem_gbs * 1e9), norm = pb / 4 * kn.norm_ns * 1e-9;
    double one = P == 1 ? guard : guard + norm;
    CHECK(pb > 0 && fabs(plan_pre_optim_seconds(pb, P, &kn) - one) < 1e-15);
    CHECK(plan_pre_optim_seconds(pb, P, &k) == 0);
    double want = P == 1 ? one / 2 : one * P / 2; /* over the 2 cores */
    CHECK(fabs((c1.step_s - c0.step_s) - want) < 1e-9 * c1.step_s);
    CHECK(fabs(c1.comm_s - c0.comm_s) < 1e-15); /* collectives unchanged */
    plan_cost_free(&c0);
    plan_cost_free(&c1);
    done(&b);
  }
}

/* Devices that share the cores (threads on 2 cores): with no more devices than cores each
 * phase takes its slowest device, as without sharing; with 4 devices of equal work twice
 * that (their work over the cores); with 4 devices of uneven work (skewed routing under
 * contiguous experts) more than their work over the cores, since the busiest runs on
 * alone at the end (the OS shares the cores evenly while more devices than cores are
 * busy): so balanced experts are faster in kernels too, not only in their collectives. */
static void test_shared_cores(void) {
  CostConsts k0 = consts_t, k2 = consts_t, k4 = consts_t;
  k2.cores = 2;
  k4.cores = 4;
  Built b;
  CHECK(lm(&b, 64, 4, 16, 8, 2, NULL));
  run_passes(&b, 4);
  PlanCost c0 = plan_cost(b.g, 4, OPT_ADAM, &k0), c2 = plan_cost(b.g, 4, OPT_ADAM, &k2),
           c4 = plan_cost(b.g, 4, OPT_ADAM, &k4);
  for (int d = 1; d < 4; d++) /* uniform routing, the paper's strategy: even work */
    CHECK(fabs(c0.dev[d].compute_s - c0.dev[0].compute_s) < 1e-12 * c0.dev[0].compute_s);
  CHECK(fabs(c4.step_s - c0.step_s) < 1e-12 * c0.step_s);
  CHECK(fabs(c2.compute_s - 2 * c0.compute_s) < 1e-9 * c2.compute_s);
  CHECK(fabs(c2.comm_s - 2 * c0.comm_s) < 1e-9 * c2.comm_s);
  plan_cost_free(&c0);
  plan_cost_free(&c2);
  plan_cost_free(&c4);
  done(&b);
  PlanLoads pl = skew_loads();
  double kern[2], sum[2];
  for (int bal = 0; bal < 2; bal++) {
    loads = &pl;
    CHECK(lm(&b, 64, 4, 16, 8, 2, bal ? "  experts = balanced\n" : "  experts = contiguous\n"));
    run_passes(&b, 4);
    loads = NULL;
    PlanCost c = plan_cost_routed(b.g, 4, OPT_ADAM, &k2, &pl, 0);
    kern[bal] = c.compute_s;
    sum[bal] = 0;
    for (int d = 0; d < 4; d++)
      sum[bal] += c.dev[d].compute_s;
    plan_cost_free(&c);
    done(&b);
  }
  /* the same work in all (routed rows are moved, not made), but contiguous's phases run
   * longer than it over the 2 cores (a slowest device below that: the work over the
   * cores alone would price both alike; the experts are a small part of this model) */
  CHECK(fabs(sum[0] - sum[1]) < 1e-3 * sum[0]);
  CHECK(kern[0] > 1.004 * sum[0] / 2 && kern[0] > 1.004 * kern[1]);
  CHECK(kern[1] >= sum[1] / 2 * (1 - 1e-12));
  if (!(kern[0] > 1.004 * kern[1]))
    fprintf(stderr, "shared_cores: kernels %.4g (contiguous) %.4g (balanced), work %.4g %.4g\n",
            kern[0], kern[1], sum[0], sum[1]);
}

/* One device alone on 2 cores: a model whose GEMMs are all below the runtime's split
 * threshold runs them on one core, so its step is not halved; a big one's GEMMs split
 * and its step is (elementwise work and launches priced at ~0, to leave the GEMMs). */
static bool dense_lm(Built *b, int B, int T, int D) {
  char text[1024];
  snprintf(text, sizeof text,
           "model t {\n"
           "  input tokens : i32[B, T]\n"
           "  input targets : i32[B, T]\n"
           "  emb = embedding(tokens, vocab=%d, dim=%d)\n"
           "  d = dense(emb, units=%d)\n"
           "  loss = softmax_xent(d, targets, vocab=%d)\n"
           "  output loss\n"
           "}\n"
           "train {\n  batch = %d\n  unroll = %d\n}\n",
           D, D, D, D, B, T);
  return load_text(b, text);
}

static void test_cores_split(void) {
  CostConsts k1 = consts_t;
  k1.elem_gbs = 1e9;
  k1.launch_us = 0;
  k1.cores = 1;
  CostConsts k2 = k1;
  k2.cores = 2;
  for (int big = 0; big < 2; big++) {
    Built b;
    CHECK(big ? dense_lm(&b, 16, 32, 512) : dense_lm(&b, 4, 2, 16)); /* rows x D: 512 x 512 */
    run_passes(&b, 1);
    int gemms = 0;
    for (int i = 0; i < b.g->nnodes; i++) {
      const Node *n = b.g->nodes[i];
      if (n->op != OP_MATMUL) continue;
      gemms++;
      CHECK(plan_node_cores(b.g, n, &k2) == (big ? 2 : 1));
      CHECK(plan_node_cores(b.g, n, &k1) == 1);
    }
    CHECK(gemms >= 3); /* forward, dx, dW at least */
    PlanCost c1 = plan_cost(b.g, 1, OPT_ADAM, &k1), c2 = plan_cost(b.g, 1, OPT_ADAM, &k2);
    double r = c2.step_s / c1.step_s;
    CHECK(c1.step_s > 0);
    CHECK(big ? r > 0.49 && r < 0.55 : r > 0.95 && r <= 1 + 1e-12);
    if (big ? !(r < 0.55) : !(r > 0.95)) fprintf(stderr, "cores_split big=%d ratio %.3f\n", big, r);
    plan_cost_free(&c1);
    plan_cost_free(&c2);
    done(&b);
  }
}

/* The expert rows sized per step in their slots in the arena (docs/memory.md, "Expert-row
 * buffers"): on each device of lm_moe-like models with several devices, every per-step
 * tensor is in the arena at its slot's rows (x1.25 the fair share), the validator finds no
 * two live tensors sharing a byte, and the arena is smaller than the arena without them
 * plus their region apart at the same rows. */
static void test_rows_in_arena(void) {
  static const int cases[][6] = {/* B, T, D, E, k, P */
                                 {32, 20, 16, 8, 2, 4},
                                 {64, 10, 16, 16, 2, 8}};
  for (size_t c = 0; c < MC_ARRAY_LEN(cases); c++) {
    const int *x = cases[c];
    Built b;
    CHECK(lm(&b, x[0], x[1], x[2], x[3], x[4], "  devices = 4\n"));
    run_passes(&b, x[5]);
    for (int d = 0; d < x[5]; d++) {
      PassCtx pc = {.cfg = &b.cfg, .devices = x[5], .training = true, .elem = 4};
      Type *save = pass_device_view(b.g, &pc, d);
      Graph *g = b.g;
      int64_t *slot = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t)),
              *off = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
      int marked = 0;
      for (int i = 0; i < g->ntensors; i++) {
        const Tensor *t = g->tensors[i];
        if (!t->rows_per_step) continue;
        marked++;
        PlanRows r = plan_rows_of(g, t, g->ndev, g->rank, g->B, g->T);
        slot[i] = t->numel / t->shape[0] * plan_rows_slot_of(&r) * r.per_row * 4;
        CHECK(plan_rows_slot_of(&r) >= r.fair && plan_rows_slot_of(&r) <= r.bound);
      }
      CHECK(marked > 0);
      MemFigures joint = pass_memplan_assign(g, 4);
      CHECK(pass_memplan_validate(g) > 0);
      for (int i = 0; i < g->ntensors; i++) /* every slot in the arena */
        if (g->tensors[i]->rows_per_step)
          CHECK(g->tensors[i]->mem_offset >= joint.persist &&
                g->tensors[i]->mem_offset + slot[i] <= joint.persist + joint.arena);
      MemFigures apart = pass_memplan_plan(g, g->B, g->T, 4, MEMPLAN_ROWS_APART, NULL);
      int64_t region = pass_memplan_rows(g, slot, off, NULL, NULL);
      CHECK(joint.persist == apart.persist && region > 0);
      CHECK(joint.arena < apart.arena + region);
      if (d == 0)
        printf("rows in the arena (B=%d, E=%d, P=%d): arena %lld bytes with the slots, %lld + "
               "%lld apart\n",
               x[0], x[3], x[5], (long long)joint.arena, (long long)apart.arena, (long long)region);
      mc_free(slot);
      mc_free(off);
      pass_device_view_end(g, &pc, save);
    }
    done(&b);
  }
}

/* A slice0 or concat0 the memory plan makes a view (its output at its input's bytes: the
 * runtime copies nothing) costs no time of its own; the same node on a graph with no plan
 * costs its bytes. hmoe: its expert weights stacked (concat0 of parameters) and their
 * gradients sliced back out of grouped_matmul_dw's (slice0). */
static void test_view_cost(void) {
  static const char *text = "model t {\n"
                            "  input tokens : i32[B, T]\n"
                            "  input targets : i32[B, T]\n"
                            "  emb = embedding(tokens, vocab=16, dim=8)\n"
                            "  m = hmoe(emb, groups=4, experts=4, k_group=2, k=2, hidden=8)\n"
                            "  loss = softmax_xent(m, targets, vocab=16)\n"
                            "  output loss\n"
                            "}\n"
                            "train {\n  batch = 8\n  unroll = 4\n}\n";
  Built b;
  CHECK(load_text(&b, text));
  run_passes(&b, 1);
  CHECK(b.g->mem.elem > 0); /* planned */
  int views[2] = {0, 0};
  for (int i = 0; i < b.g->nnodes; i++) {
    const Node *n = b.g->nodes[i];
    if (n->op != OP_SLICE0 && n->op != OP_CONCAT0) {
      CHECK(!pass_memplan_view(b.g, n));
      continue;
    }
    const Tensor *x = n->in[0], *y = n->out[0];
    int64_t at = n->op == OP_SLICE0 ? n->ia[0] * (x->numel / x->shape[0]) * b.g->mem.elem : 0;
    bool view = y->mem_offset == x->mem_offset + at;
    CHECK(pass_memplan_view(b.g, n) == view);
    if (!view) continue;
    views[n->op == OP_CONCAT0]++;
    CHECK(plan_node_seconds(b.g, n, &consts_t) == 0);
    MemFigures mem = b.g->mem;
    b.g->mem.elem = 0; /* as if not planned: a copy of its bytes */
    CHECK(!pass_memplan_view(b.g, n));
    CHECK(plan_node_seconds(b.g, n, &consts_t) > 0);
    b.g->mem = mem;
  }
  CHECK(views[0] > 0 && views[1] > 0); /* the dW slices and the stacked weights */
  done(&b);
}

int main(void) {
  test_shared_cores();
  test_pre_optim();
  test_view_cost();
  test_cores_split();
  test_dram_floor();
  test_cost_routing();
  test_bytes();
  test_gradients_stay();
  test_policies();
  test_balanced();
  test_memory_falls();
  test_one_device_unchanged();
  test_rules();
  test_reshard_bytes();
  test_hmoe_groups();
  test_hmoe_comm();
  test_batchwise_bytes();
  test_cost_memplan_cluster();
  test_rows_in_arena();
  TEST_DONE();
}
