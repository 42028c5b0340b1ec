/* test_fusion.c: the fusion pass's legality rules (passes/fusion.c) on small
 * hand-made graphs: a chain fuses; no group crosses a device boundary or a
 * recompute boundary; an intermediate read outside the group is materialised
 * (an output of the fused node); a path that leaves the group and re-enters it
 * keeps the re-entering node out (no cycle); random ops (dropout) stay out;
 * forward and backward nodes never share a group. The rewritten graph always
 * passes ir_verify. Skips (77) without LLVM (fusion is off there). */
#include <stdlib.h>
#include <string.h>

#include "../codegen/jit.h"
#include "../passes/fusion.h"
#include "test.h"

static Type vec(int64_t n) {
  Dim d[1] = {dim_int(n)};
  return ir_type(DT_F32, n ? 1 : 0, d);
}

static int count_op(const Graph *g, OpKind op) {
  int c = 0;
  for (int k = 0; k < g->nnodes; k++)
    c += g->nodes[k]->op == op;
  return c;
}

static const Node *first_fused(const Graph *g) {
  for (int k = 0; k < g->nnodes; k++)
    if (g->nodes[k]->op == OP_FUSED) return g->nodes[k];
  return NULL;
}

static bool has_out(const Node *n, const Tensor *t) {
  for (int j = 0; j < n->nout; j++)
    if (n->out[j] == t) return true;
  return false;
}

static void fuse(Graph *g) {
  Config cfg; /* fuse = true: the default */
  fe_config_defaults(&cfg);
  PassCtx pc = {.cfg = &cfg, .devices = 1};
  pass_fusion(g, &pc);
  ir_verify(g);
}

static void test_chain(void) {
  Graph *g = ir_graph_new("chain");
  Tensor *x = ir_param(g, "x", vec(8), INIT_ZERO, 0, (Loc){0});
  Tensor *a = ir_op1(g, OP_RELU, x);
  Tensor *b = ir_op1(g, OP_TANH, a);
  Tensor *c = ir_op2(g, OP_MUL, b, x);
  ir_op1(g, OP_SUM, c);
  fuse(g);
  CHECK(g->nnodes == 2 && count_op(g, OP_FUSED) == 1);
  const Node *f = first_fused(g);
  CHECK(f && f->nout == 1 && f->out[0] == c && f->nin == 1 && f->in[0] == x);
  const FusedProg *pr = ir_fused_prog(f);
  CHECK(pr && pr->nops == 3 && pr->nin == 1 && pr->outs[0] == 1 + 2);
  CHECK(f->fused_group == 0 && f->ia[0] == 3);
  ir_graph_free(g);
}

static void test_device_boundary(void) {
  Graph *g = ir_graph_new("devices");
  Tensor *x = ir_param(g, "x", vec(8), INIT_ZERO, 0, (Loc){0});
  Tensor *a = ir_op1(g, OP_RELU, x);
  a->producer->device = 0;
  Tensor *b = ir_op1(g, OP_TANH, a);
  b->producer->device = 1;
  Tensor *c = ir_op1(g, OP_SIGMOID, b);
  c->producer->device = 1;
  ir_op1(g, OP_SUM, c);
  fuse(g);
  /* relu alone on device 0; tanh + sigmoid fused on device 1 */
  CHECK(g->nnodes == 3 && count_op(g, OP_FUSED) == 1 && count_op(g, OP_RELU) == 1);
  const Node *f = first_fused(g);
  CHECK(f && f->device == 1 && f->in[0] == a);
  ir_graph_free(g);
}

static void test_recompute_boundary(void) {
  Graph *g = ir_graph_new("recompute");
  Tensor *x = ir_param(g, "x", vec(8), INIT_ZERO, 0, (Loc){0});
  Tensor *a = ir_op1(g, OP_RELU, x);
  a->producer->recompute_seg = 0;
  Tensor *b = ir_op1(g, OP_TANH, a);
  b->producer->recompute_seg = 1;
  ir_op1(g, OP_SUM, b);
  fuse(g);
  CHECK(g->nnodes == 3 && count_op(g, OP_FUSED) == 0);
  ir_graph_free(g);
}

static void test_materialised(void) {
  Graph *g = ir_graph_new("materialised");
  Tensor *x = ir_param(g, "x", vec(8), INIT_ZERO, 0, (Loc){0});
  Tensor *y = ir_param(g, "y", vec(8), INIT_ZERO, 0, (Loc){0});
  Tensor *a = ir_op2(g, OP_ADD, x, y);
  Tensor *b = ir_op1(g, OP_TANH, a); /* read only inside: a register */
  Tensor *c = ir_op2(g, OP_MUL, b, a);
  ir_op1(g, OP_SUM, c);
  ir_op1(g, OP_SUM, a); /* a is read after the group: materialised */
  fuse(g);
  const Node *f = first_fused(g);
  CHECK(f && f->nout == 2 && has_out(f, a) && has_out(f, c) && !has_out(f, b));
  CHECK(f && f->nin == 2);
  CHECK(b->producer == NULL && a->producer == f && c->producer == f);
  ir_graph_free(g);
}

static void test_no_cycle(void) {
  /* a = relu(x); s = sum(a); b = a + s: b would re-enter a's group through s */
  Graph *g = ir_graph_new("cycle");
  Tensor *x = ir_param(g, "x", vec(8), INIT_ZERO, 0, (Loc){0});
  Tensor *a = ir_op1(g, OP_RELU, x);
  Tensor *s = ir_op1(g, OP_SUM, a);
  Tensor *b = ir_op2(g, OP_ADD, a, s);
  Tensor *c = ir_op1(g, OP_TANH, b); /* b and c still fuse with each other */
  ir_op1(g, OP_SUM, c);
  fuse(g);
  CHECK(count_op(g, OP_RELU) == 1 && count_op(g, OP_FUSED) == 1);
  const Node *f = first_fused(g);
  CHECK(f && f->nout == 1 && f->out[0] == c && ir_fused_prog(f)->nops == 2);
  /* order: relu, sum, fused, sum */
  CHECK(g->nodes[0]->op == OP_RELU && g->nodes[1]->op == OP_SUM && g->nodes[2] == f);
  ir_graph_free(g);
}

static void test_random_and_sides(void) {
  Graph *g = ir_graph_new("random");
  Tensor *x = ir_param(g, "x", vec(8), INIT_ZERO, 0, (Loc){0});
  int64_t ia[IR_MAX_ATTR] = {0};
  double fa[IR_MAX_ATTR] = {0.1};
  Node *d = ir_node(g, OP_DROPOUT, 1, (Tensor *[]){x}, ia, fa);
  Tensor *a = ir_op2(g, OP_ADD, d->out[0], x);
  Tensor *b = ir_op1(g, OP_RELU, a);
  ir_set_backward(g, true);
  Tensor *c = ir_op1(g, OP_TANH, b);
  Tensor *e = ir_op1(g, OP_SIGMOID, c);
  ir_set_backward(g, false);
  ir_op1(g, OP_SUM, e);
  fuse(g);
  CHECK(count_op(g, OP_DROPOUT) == 1 && count_op(g, OP_FUSED) == 2);
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    const FusedProg *pr = ir_fused_prog(n);
    if (pr)
      for (int i = 0; i < pr->nops; i++)
        CHECK(pr->ops[i].op != OP_DROPOUT);
  }
  ir_graph_free(g);
}

int main(void) {
  if (!cg_jit_available()) {
    printf("skipped: moec was built without LLVM (fusion is off)\n");
    return 77;
  }
  test_chain();
  test_device_boundary();
  test_recompute_boundary();
  test_materialised();
  test_no_cycle();
  test_random_and_sides();
  TEST_DONE();
}
