/* test_ir.c: the IR: dense shape rules (good and bad inputs),
 * the AST -> graph builder (each layer's expansion, param names and shapes as
 * language.md lists them, states, rng streams, the loss), ir_verify, ir_bind,
 * the printer's stability, and the pass manager. ASTs are made by hand here,
 * as sema would annotate them, so the test does not depend on the parser;
 * the golden tests (tests/ir_golden) cover the whole path from .moe text. */
#include <string.h>

#include "../codegen/codegen.h"
#include "../ir/ir.h"
#include "../passes/passes.h"
#include "test.h"

/* ---------------------------------------------------------------- shape rules */

static Type ty(DType dt, int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_type(dt, rank, d);
}

#define B_ dim_sym('B')
#define T_ dim_sym('T')
#define I_(n) dim_int(n)
#define Z_ dim_int(0)

static bool type_is(const Type *t, const char *want) {
  char buf[128];
  type_str(t, buf, sizeof buf);
  if (strcmp(buf, want)) fprintf(stderr, "  type %s, expected %s\n", buf, want);
  return !strcmp(buf, want);
}

/* Runs op's shape rule on a hand-made node (no dying): returns the error or NULL. */
static const char *try_shape(Graph *g, OpKind op, int nin, Tensor **in, const int64_t *ia,
                             const double *fa, Type *out0, Type *out1) {
  Node n = {0};
  Tensor outs[5] = {0};
  Tensor *outp[5] = {&outs[0], &outs[1], &outs[2], &outs[3], &outs[4]};
  n.op = op;
  n.nin = nin;
  n.in = in;
  n.nout = ir_ops[op].nout;
  n.out = outp;
  if (ia) memcpy(n.ia, ia, sizeof n.ia);
  if (fa) memcpy(n.fa, fa, sizeof n.fa);
  const char *err = ir_ops[op].shape(g, &n);
  if (out0) *out0 = outs[0].ty;
  if (out1) *out1 = outs[1].ty;
  return err;
}

static void test_shapes(void) {
  Graph *g = ir_graph_new("shapes");
  Loc l = {0};
  Tensor *x = ir_input(g, "x", ty(DT_F32, 3, B_, T_, I_(16)), l);                  // [B, T, 16]
  Tensor *y = ir_input(g, "y", ty(DT_F32, 3, B_, T_, I_(16)), l);                  // [B, T, 16]
  Tensor *z = ir_input(g, "z", ty(DT_F32, 3, B_, T_, I_(8)), l);                   // [B, T, 8]
  Tensor *s = ir_input(g, "s", ty(DT_F32, 0, Z_, Z_, Z_), l);                      // scalar
  Tensor *ids = ir_input(g, "ids", ty(DT_I32, 2, B_, T_, Z_), l);                  // i32[B, T]
  Tensor *w = ir_param(g, "w", ty(DT_F32, 2, I_(8), I_(16), Z_), INIT_ZERO, 0, l); // [8, 16]
  Tensor *bias = ir_param(g, "b", ty(DT_F32, 1, I_(8), Z_, Z_), INIT_ZERO, 0, l);  // [8]
  Type o, o1;

  /* binary: same type, scalar b, mismatch, dtype mismatch */
  CHECK(!try_shape(g, OP_ADD, 2, (Tensor *[]){x, y}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 16]"));
  CHECK(!try_shape(g, OP_MUL, 2, (Tensor *[]){x, s}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 16]"));
  CHECK(try_shape(g, OP_ADD, 2, (Tensor *[]){x, z}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(try_shape(g, OP_SUB, 2, (Tensor *[]){s, x}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(try_shape(g, OP_ADD, 2, (Tensor *[]){ids, ids}, NULL, NULL, &o, NULL) == NULL);
  CHECK(try_shape(g, OP_ADD, 2, (Tensor *[]){x, ids}, NULL, NULL, NULL, NULL) != NULL);

  /* unary ops need floats; zeros takes any shape donor */
  CHECK(!try_shape(g, OP_TANH, 1, (Tensor *[]){z}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 8]"));
  CHECK(try_shape(g, OP_RELU, 1, (Tensor *[]){ids}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(!try_shape(g, OP_ZEROS, 1, (Tensor *[]){ids}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "i32[B, T]"));

  /* dropout: y and mask; p must be in [0, 1) */
  CHECK(!try_shape(g, OP_DROPOUT, 1, (Tensor *[]){x}, NULL, (double[IR_MAX_ATTR]){0.5}, &o, &o1));
  CHECK(type_is(&o, "f32[B, T, 16]") && type_is(&o1, "f32[B, T, 16]"));
  CHECK(try_shape(g, OP_DROPOUT, 1, (Tensor *[]){x}, NULL, (double[IR_MAX_ATTR]){1.0}, NULL,
                  NULL) != NULL);

  /* matmul: plain, transB, transA over flattened rows, mismatches */
  Tensor *w2 = ir_param(g, "w2", ty(DT_F32, 2, I_(16), I_(8), Z_), INIT_ZERO, 0, l); // [16, 8]
  CHECK(!try_shape(g, OP_MATMUL, 2, (Tensor *[]){x, w2}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 8]"));
  CHECK(!try_shape(g, OP_MATMUL, 2, (Tensor *[]){x, w}, (int64_t[IR_MAX_ATTR]){0, 1}, NULL, &o,
                   NULL));
  CHECK(type_is(&o, "f32[B, T, 8]"));
  CHECK(try_shape(g, OP_MATMUL, 2, (Tensor *[]){x, w}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(try_shape(g, OP_MATMUL, 2, (Tensor *[]){x, z}, NULL, NULL, NULL, NULL) != NULL);
  /* dW = g^T . x: g [B, T, 8], x [B, T, 16] -> [8, 16] */
  CHECK(!try_shape(g, OP_MATMUL, 2, (Tensor *[]){z, x}, (int64_t[IR_MAX_ATTR]){1, 0}, NULL, &o,
                   NULL));
  CHECK(type_is(&o, "f32[8, 16]"));
  /* dx = g . W: g [B, T, 8], W [8, 16] -> [B, T, 16] */
  CHECK(!try_shape(g, OP_MATMUL, 2, (Tensor *[]){z, w}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 16]"));
  Tensor *x2 = ir_input(g, "x2", ty(DT_F32, 2, dim_mul(B_, T_), I_(16), Z_), l); // [B*T, 16]
  CHECK(!try_shape(g, OP_MATMUL, 2, (Tensor *[]){z, x2}, (int64_t[IR_MAX_ATTR]){1, 0}, NULL, &o,
                   NULL));
  CHECK(type_is(&o, "f32[8, 16]"));
  Tensor *x3 = ir_input(g, "x3", ty(DT_F32, 2, B_, I_(16), Z_), l); // [B, 16]: rows differ
  CHECK(try_shape(g, OP_MATMUL, 2, (Tensor *[]){z, x3}, (int64_t[IR_MAX_ATTR]){1, 0}, NULL, NULL,
                  NULL));

  /* bias_add, sum_rows, sum, broadcast */
  CHECK(!try_shape(g, OP_BIAS_ADD, 2, (Tensor *[]){z, bias}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 8]"));
  CHECK(try_shape(g, OP_BIAS_ADD, 2, (Tensor *[]){x, bias}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(!try_shape(g, OP_SUM_ROWS, 1, (Tensor *[]){z}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[8]"));
  CHECK(!try_shape(g, OP_SUM, 1, (Tensor *[]){x}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[]"));
  CHECK(!try_shape(g, OP_BROADCAST, 2, (Tensor *[]){s, x}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 16]"));
  CHECK(try_shape(g, OP_BROADCAST, 2, (Tensor *[]){x, x}, NULL, NULL, NULL, NULL) != NULL);

  /* reshape: packed dims round-trip; element count must match */
  Dim bt = dim_mul(B_, T_);
  CHECK(dim_eq(ir_dim_unpack(ir_dim_pack(bt)), bt));
  CHECK(dim_eq(ir_dim_unpack(ir_dim_pack(I_(123456789))), I_(123456789)));
  Tensor *r = ir_reshape(g, x, ty(DT_F32, 2, bt, I_(16), Z_));
  CHECK(type_is(&r->ty, "f32[B*T, 16]"));
  Tensor *r2 = ir_reshape(g, r, ty(DT_F32, 3, B_, T_, I_(16)));
  CHECK(type_is(&r2->ty, "f32[B, T, 16]"));
  Tensor *ri = ir_reshape(g, ids, ty(DT_I32, 1, bt, Z_, Z_));
  CHECK(type_is(&ri->ty, "i32[B*T]"));
  int64_t bad[IR_MAX_ATTR] = {ir_dim_pack(bt), ir_dim_pack(I_(8))};
  CHECK(try_shape(g, OP_RESHAPE, 1, (Tensor *[]){x}, bad, NULL, NULL, NULL) != NULL);

  /* embedding and its backward */
  Tensor *emb = ir_param(g, "emb", ty(DT_F32, 2, I_(100), I_(16), Z_), INIT_ZERO, 0, l);
  CHECK(!try_shape(g, OP_EMBEDDING, 2, (Tensor *[]){ids, emb}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B, T, 16]"));
  CHECK(try_shape(g, OP_EMBEDDING, 2, (Tensor *[]){x, emb}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(!try_shape(g, OP_EMBEDDING_BWD, 2, (Tensor *[]){ids, x}, (int64_t[IR_MAX_ATTR]){100}, NULL,
                   &o, NULL));
  CHECK(type_is(&o, "f32[100, 16]"));
  CHECK(try_shape(g, OP_EMBEDDING_BWD, 2, (Tensor *[]){ids, x2}, (int64_t[IR_MAX_ATTR]){100}, NULL,
                  NULL, NULL) != NULL);

  /* lstm: U = 4 */
  Tensor *xp = ir_input(g, "xp", ty(DT_F32, 3, B_, T_, I_(16)), l);                    // [B, T, 4U]
  Tensor *whh = ir_param(g, "whh", ty(DT_F32, 2, I_(16), I_(4), Z_), INIT_ZERO, 0, l); // [4U, U]
  Tensor *h0 = ir_state(g, "h0", ty(DT_F32, 2, B_, I_(4), Z_), l);                     // [B, U]
  Tensor *c0 = ir_state(g, "c0", ty(DT_F32, 2, B_, I_(4), Z_), l);
  Node *ln = ir_node(g, OP_LSTM, 4, (Tensor *[]){xp, whh, h0, c0}, NULL, NULL);
  CHECK(type_is(&ln->out[0]->ty, "f32[B, T, 4]"));
  CHECK(type_is(&ln->out[1]->ty, "f32[B, T, 4]"));
  CHECK(type_is(&ln->out[2]->ty, "f32[B, T, 16]"));
  CHECK(type_is(&ln->out[3]->ty, "f32[B, 4]"));
  CHECK(type_is(&ln->out[4]->ty, "f32[B, 4]"));
  CHECK(try_shape(g, OP_LSTM, 4, (Tensor *[]){z, whh, h0, c0}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(try_shape(g, OP_LSTM, 4, (Tensor *[]){xp, whh, h0, x3}, NULL, NULL, NULL, NULL) != NULL);
  Tensor *lin[7] = {ln->out[0], whh, h0, c0, ln->out[0], ln->out[1], ln->out[2]};
  Node *lb = ir_node(g, OP_LSTM_BWD, 7, lin, NULL, NULL);
  CHECK(type_is(&lb->out[0]->ty, "f32[B, T, 16]"));
  CHECK(type_is(&lb->out[1]->ty, "f32[16, 4]"));
  CHECK(type_is(&lb->out[2]->ty, "f32[B, 4]"));
  CHECK(type_is(&lb->out[3]->ty, "f32[B, 4]"));
  lin[6] = ln->out[0]; /* G of the wrong width */
  CHECK(try_shape(g, OP_LSTM_BWD, 7, lin, NULL, NULL, NULL, NULL) != NULL);

  /* xent and its backward */
  Tensor *logits = ir_input(g, "logits", ty(DT_F32, 2, bt, I_(100), Z_), l); // [B*T, 100]
  CHECK(!try_shape(g, OP_XENT, 2, (Tensor *[]){logits, ri}, NULL, NULL, &o, &o1));
  CHECK(type_is(&o, "f32[]") && type_is(&o1, "f32[B*T, 100]"));
  CHECK(try_shape(g, OP_XENT, 2, (Tensor *[]){logits, ids}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(try_shape(g, OP_XENT, 2, (Tensor *[]){x2, x2}, NULL, NULL, NULL, NULL) != NULL);
  CHECK(!try_shape(g, OP_XENT_BWD, 3, (Tensor *[]){s, logits, ri}, NULL, NULL, &o, NULL));
  CHECK(type_is(&o, "f32[B*T, 100]"));
  CHECK(try_shape(g, OP_XENT_BWD, 3, (Tensor *[]){x, logits, ri}, NULL, NULL, NULL, NULL) != NULL);

  /* an error message names the tensors */
  const char *e = try_shape(g, OP_ADD, 2, (Tensor *[]){x, z}, NULL, NULL, NULL, NULL);
  CHECK(e && strstr(e, "'x'") && strstr(e, "'z'") && strstr(e, "f32[B, T, 8]"));

  ir_verify(g);
  ir_bind(g, 3, 5);
  CHECK(r->shape[0] == 15 && r->shape[1] == 16 && r->numel == 240);
  CHECK(ln->out[2]->shape[0] == 3 && ln->out[2]->shape[1] == 5 && ln->out[2]->shape[2] == 16);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- a hand-made checked AST */

static McArena ast_arena;
static const Loc L0 = {1, 1, 1, 1, NULL};

static Expr *ex(ExprKind k) {
  Expr *e = mc_arena_alloc(&ast_arena, sizeof(Expr));
  e->kind = k;
  e->layer = -1;
  e->loc = L0;
  return e;
}
static Expr *name(const char *s) {
  Expr *e = ex(EX_NAME);
  e->str = s;
  return e;
}
static Expr *num(double v) {
  Expr *e = ex(EX_NUM);
  e->num = v;
  e->ival = (int64_t)v;
  e->is_int = v == (double)(int64_t)v;
  return e;
}
static Expr *bin(int op, Expr *l, Expr *r) {
  Expr *e = ex(EX_BINOP);
  e->op = op;
  e->lhs = l;
  e->rhs = r;
  return e;
}
/* A layer call as sema leaves it: layer id, defaults then the given args, targ. */
static Expr *call(LayerId id, const char *pname, Expr *t0, Expr *t1, int nkv, ...) {
  Expr *e = ex(EX_CALL);
  e->str = fe_layers[id].name;
  e->layer = id;
  e->param_name = pname;
  e->targ[0] = t0;
  e->targ[1] = t1;
  for (int i = 0; i < fe_layers[id].nargs; i++)
    e->argv[fe_layers[id].args[i].id] = fe_layers[id].args[i].def;
  va_list ap;
  va_start(ap, nkv);
  for (int i = 0; i < nkv; i++) {
    int k = va_arg(ap, int);
    e->argv[k] = va_arg(ap, double);
  }
  va_end(ap);
  return e;
}

typedef struct {
  Stmt *head, **tail;
} StmtList;

static Stmt *stmt(StmtList *sl, StmtKind k, const char *nm, int line) {
  Stmt *s = mc_arena_alloc(&ast_arena, sizeof(Stmt));
  s->kind = k;
  s->name = nm;
  s->loc = (Loc){line, 1, line, 1, NULL};
  *sl->tail = s;
  sl->tail = &s->next;
  return s;
}
static Arg *args(int n, Expr **v) {
  Arg *head = NULL, **tail = &head;
  for (int i = 0; i < n; i++) {
    Arg *a = mc_arena_alloc(&ast_arena, sizeof(Arg));
    a->value = v[i];
    *tail = a;
    tail = &a->next;
  }
  return head;
}
static void input(StmtList *sl, const char *nm, DType dt, Expr *d0, Expr *d1) {
  Stmt *s = stmt(sl, ST_INPUT, nm, 1);
  s->dtype = dt;
  s->dims = args(2, (Expr *[]){d0, d1});
}
static void assign(StmtList *sl, const char *nm, Expr *v, int line) {
  Stmt *s = stmt(sl, ST_ASSIGN, nm, line);
  v->loc = (Loc){line, 5, line, 5, NULL};
  s->value = v;
}

static AstFile *new_file(StmtList *sl, const char *model) {
  AstFile *f = mc_arena_alloc(&ast_arena, sizeof(AstFile));
  f->model = mc_arena_alloc(&ast_arena, sizeof(Block));
  f->model->name = model;
  sl->head = NULL;
  sl->tail = &sl->head;
  return f;
}

static int count_op(const Graph *g, OpKind op) {
  int c = 0;
  for (int k = 0; k < g->nnodes; k++)
    c += g->nodes[k]->op == op;
  return c;
}

static const Tensor *find_param(const Graph *g, const char *nm) {
  for (int i = 0; i < g->nparams; i++)
    if (!strcmp(g->params[i]->name, nm)) return g->params[i];
  return NULL;
}

static const Tensor *find_tensor(const Graph *g, const char *nm) {
  for (int i = 0; i < g->ntensors; i++)
    if (!strcmp(g->tensors[i]->name, nm)) return g->tensors[i];
  return NULL;
}

static bool param_is(const Graph *g, int i, const char *nm, const char *type, InitKind init) {
  if (i >= g->nparams) return false;
  const Tensor *p = g->params[i];
  bool ok = !strcmp(p->name, nm) && type_is(&p->ty, type) && p->init == init;
  if (!ok) fprintf(stderr, "  param %d is %s\n", i, p->name);
  return ok;
}

/* A dense LM with every dense layer kind:
 *   let V = 50
 *   input tokens : i32[B, T];  input targets : i32[B, T]
 *   emb = embedding(tokens, vocab=V, dim=16)
 *   h = lstm(emb, units=8)
 *   d = dense(h, units=8, act=relu)
 *   r = h + d * 0.5
 *   t = tanh(r - 1)
 *   dr = dropout(t, p=0.1)
 *   e2 = dropout(dr, p=0.2)
 *   sm = softmax_xent(e2, targets, vocab=V)
 *   output sm */
static void test_build_dense(void) {
  StmtList sl;
  AstFile *f = new_file(&sl, "lm");
  Stmt *let = stmt(&sl, ST_LET, "V", 1);
  let->value = num(50);
  input(&sl, "tokens", DT_I32, name("B"), name("T"));
  input(&sl, "targets", DT_I32, name("B"), name("T"));
  assign(&sl, "emb",
         call(L_EMBEDDING, "emb", name("tokens"), NULL, 2, LA_VOCAB, 50.0, LA_DIM, 16.0), 4);
  assign(&sl, "h", call(L_LSTM, "h", name("emb"), NULL, 1, LA_UNITS, 8.0), 5);
  assign(&sl, "d", call(L_DENSE, "d", name("h"), NULL, 2, LA_UNITS, 8.0, LA_ACT, (double)LAE_RELU),
         6);
  assign(&sl, "r", bin('+', name("h"), bin('*', name("d"), num(0.5))), 7);
  assign(&sl, "t", call(L_TANH, "t", bin('-', name("r"), num(1)), NULL, 0), 8);
  assign(&sl, "dr", call(L_DROPOUT, "dr", name("t"), NULL, 1, LA_P, 0.1), 9);
  assign(&sl, "e2", call(L_DROPOUT, "e2", name("dr"), NULL, 1, LA_P, 0.2), 10);
  assign(&sl, "sm", call(L_SOFTMAX_XENT, "sm", name("e2"), name("targets"), 1, LA_VOCAB, 50.0), 11);
  Stmt *out = stmt(&sl, ST_OUTPUT, NULL, 12);
  out->names = args(1, (Expr *[]){name("sm")});
  f->model->stmts = sl.head;

  Config cfg;
  memset(&cfg, 0, sizeof cfg);
  Graph *g = ir_build(f, &cfg);
  ir_verify(g);
  CHECK(!strcmp(g->name, "lm"));
  CHECK(g->ninputs == 2 && type_is(&g->inputs[0]->ty, "i32[B, T]"));

  /* params: creation order, names and shapes as language.md lists them */
  CHECK(g->nparams == 8);
  CHECK(param_is(g, 0, "emb.weight", "f32[50, 16]", INIT_UNIFORM));
  CHECK(param_is(g, 1, "h.weight_ih", "f32[32, 16]", INIT_UNIFORM));
  CHECK(param_is(g, 2, "h.weight_hh", "f32[32, 8]", INIT_UNIFORM));
  CHECK(param_is(g, 3, "h.bias", "f32[32]", INIT_ZERO));
  CHECK(param_is(g, 4, "d.weight", "f32[8, 8]", INIT_UNIFORM));
  CHECK(param_is(g, 5, "d.bias", "f32[8]", INIT_ZERO));
  CHECK(param_is(g, 6, "sm.weight", "f32[50, 8]", INIT_UNIFORM));
  CHECK(param_is(g, 7, "sm.bias", "f32[50]", INIT_ZERO));
  CHECK_CLOSE(find_param(g, "h.weight_ih")->init_scale, 1 / sqrt(8.0), 1e-12, 0);
  CHECK_CLOSE(find_param(g, "d.weight")->init_scale, 1 / sqrt(8.0), 1e-12, 0);
  CHECK_CLOSE(find_param(g, "emb.weight")->init_scale, 0.1, 1e-12, 0);

  /* states: h.h <- hT, h.c <- cT */
  CHECK(g->nstates == 2);
  CHECK(g->nstates == 2 && !strcmp(g->states[0].state->name, "h.h") &&
        !strcmp(g->states[0].next->name, "h.hT") && !strcmp(g->states[1].state->name, "h.c") &&
        !strcmp(g->states[1].next->name, "h.cT") && g->states[0].next->producer->op == OP_LSTM);
  CHECK(g->nstates == 2 && type_is(&g->states[0].state->ty, "f32[B, 8]"));

  /* expansions: the exact op sequence */
  static const OpKind want[] = {
      OP_EMBEDDING,                                                /* emb */
      OP_MATMUL,    OP_BIAS_ADD, OP_LSTM,                          /* h */
      OP_MATMUL,    OP_BIAS_ADD, OP_RELU,                          /* d */
      OP_SCALE,     OP_ADD,                                        /* r = h + d*0.5 */
      OP_SCALE,     OP_TANH,                                       /* t = tanh(r - 1) */
      OP_DROPOUT,   OP_DROPOUT,                                    /* dr, e2 */
      OP_RESHAPE,   OP_MATMUL,   OP_BIAS_ADD, OP_RESHAPE, OP_XENT, /* sm */
  };
  CHECK(g->nnodes == (int)MC_ARRAY_LEN(want));
  for (int k = 0; k < g->nnodes && k < (int)MC_ARRAY_LEN(want); k++) {
    if (g->nodes[k]->op != want[k])
      fprintf(stderr, "  node %d is %s, expected %s\n", k, ir_ops[g->nodes[k]->op].name,
              ir_ops[want[k]].name);
    CHECK(g->nodes[k]->op == want[k]);
  }
  if (g->nnodes == (int)MC_ARRAY_LEN(want)) {
    Node **n = g->nodes;
    CHECK(n[1]->ia[0] == 0 && n[1]->ia[1] == 1); /* x . W_ih^T */
    CHECK(n[3]->in[2]->kind == TK_STATE && n[3]->in[3]->kind == TK_STATE);
    CHECK(n[7]->fa[0] == 0.5 && n[7]->fa[1] == 0);
    CHECK(n[9]->fa[0] == 1 && n[9]->fa[1] == -1);
    /* rng streams: stable counter in build order */
    CHECK(n[11]->ia[0] == 0 && n[11]->fa[0] == 0.1);
    CHECK(n[12]->ia[0] == 1 && n[12]->fa[0] == 0.2);
    CHECK(g->nrng == 2);
    CHECK(n[17]->fa[0] == 0); /* mean over the global batch, resolved at run time */
    /* layer, loc on each node */
    CHECK(!strcmp(n[0]->layer, "emb") && n[0]->loc.line == 4);
    CHECK(!strcmp(n[3]->layer, "h") && n[3]->loc.line == 5);
    CHECK(!strcmp(n[17]->layer, "sm") && n[17]->loc.line == 11);
    CHECK(!n[5]->backward);
  }
  /* readable names */
  CHECK(find_tensor(g, "emb") && find_tensor(g, "h") && find_tensor(g, "d") &&
        find_tensor(g, "r") && find_tensor(g, "dr") && find_tensor(g, "sm"));
  CHECK(find_tensor(g, "h")->producer && find_tensor(g, "h")->producer->op == OP_LSTM);
  CHECK(find_tensor(g, "sm.logits") && find_tensor(g, "dr.mask") && find_tensor(g, "h.xproj"));

  /* the loss: xent alone */
  CHECK(g->xent && g->xent == find_tensor(g, "sm") && g->aux == NULL && g->loss == g->xent);
  CHECK(g->loss && type_is(&g->loss->ty, "f32[]"));

  /* binding */
  ir_bind(g, 4, 3);
  CHECK(find_tensor(g, "h")->shape[0] == 4 && find_tensor(g, "h")->shape[1] == 3 &&
        find_tensor(g, "h")->shape[2] == 8);
  const Tensor *lg = find_tensor(g, "sm.logits");
  CHECK(lg->shape[0] == 12 && lg->shape[1] == 50 && lg->numel == 600);
  CHECK(find_tensor(g, "h.G")->numel == 4 * 3 * 32);
  CHECK(g->loss->numel == 1);

  /* the printer: stable text with what matters */
  char *p1 = NULL, *p2 = NULL;
  size_t n1 = 0, n2 = 0;
  FILE *m1 = open_memstream(&p1, &n1), *m2 = open_memstream(&p2, &n2);
  ir_print(g, m1);
  ir_print(g, m2);
  fclose(m1);
  fclose(m2);
  CHECK(n1 > 0 && n1 == n2 && !memcmp(p1, p2, n1));
  CHECK(strstr(p1, "graph lm\n") != NULL);
  CHECK(strstr(p1, "h.weight_ih : f32[32, 16]  uniform(0.353553)") != NULL);
  CHECK(strstr(p1, "h.bias : f32[32]  zero") != NULL);
  CHECK(strstr(p1, "h.h : f32[B, 8]  <- h.hT") != NULL);
  CHECK(strstr(p1, "h.xw = matmul(emb, h.weight_ih) {transB=1}  : f32[B, T, 32]  @h  ; 5:5") !=
        NULL);
  CHECK(strstr(p1, "h, h.C, h.G, h.hT, h.cT = lstm(h.xproj, h.weight_hh, h.h, h.c)") != NULL);
  CHECK(strstr(p1, "= dropout(t) {rng=0, p=0.1}") != NULL);
  CHECK(strstr(p1, "sm, sm.probs = xent(sm.logits, sm.targets) {scale=1/N_global}  : f32[], "
                   "f32[B*T, 50]") != NULL);
  CHECK(strstr(p1, "  loss = sm\n") != NULL);
  if (getenv("IR_TEST_PRINT")) fputs(p1, stdout);
  free(p1);
  free(p2);
  ir_graph_free(g);
}

/* Scalar arithmetic and aux losses combine as documented: a rank-0 tensor
 * operand broadcasts; s - x becomes -x + s. */
static void test_build_scalar_ops(void) {
  StmtList sl;
  AstFile *f = new_file(&sl, "ops");
  input(&sl, "x", DT_F32, name("B"), num(4));
  assign(&sl, "a", bin('-', num(2), name("x")), 2);
  assign(&sl, "b", bin('*', num(3), name("a")), 3);
  assign(&sl, "c", bin('*', name("a"), name("b")), 4);
  Expr *neg = ex(EX_NEG);
  neg->lhs = name("c");
  assign(&sl, "d", neg, 5);
  assign(&sl, "e", name("d"), 6); /* an alias: no op, "d" keeps its name */
  f->model->stmts = sl.head;
  Config cfg;
  memset(&cfg, 0, sizeof cfg);
  Graph *g = ir_build(f, &cfg);
  ir_verify(g);
  CHECK(g->nnodes == 4);
  CHECK(count_op(g, OP_SCALE) == 3 && count_op(g, OP_MUL) == 1);
  if (g->nnodes == 4) {
    CHECK(g->nodes[0]->fa[0] == -1 && g->nodes[0]->fa[1] == 2);
    CHECK(g->nodes[1]->fa[0] == 3 && g->nodes[1]->fa[1] == 0);
    CHECK(g->nodes[3]->fa[0] == -1);
    CHECK(type_is(&g->nodes[3]->out[0]->ty, "f32[B, 4]"));
  }
  CHECK(g->loss == NULL && g->xent == NULL);
  CHECK(find_tensor(g, "d") && !find_tensor(g, "e"));
  ir_graph_free(g);
}

/* moe and hmoe through ir_build: language.md's param names and shapes, the aux
 * loss summed into the loss, roles for place rules, and autodiff reaching every
 * parameter. */
static Graph *build_moe_lm(bool hier) {
  StmtList sl;
  AstFile *f = new_file(&sl, hier ? "hmoe_lm" : "moe_lm");
  input(&sl, "tokens", DT_I32, name("B"), name("T"));
  input(&sl, "targets", DT_I32, name("B"), name("T"));
  assign(&sl, "emb", call(L_EMBEDDING, "emb", name("tokens"), NULL, 2, LA_VOCAB, 30.0, LA_DIM, 8.0),
         3);
  if (hier)
    assign(&sl, "m",
           call(L_HMOE, "m", name("emb"), NULL, 5, LA_GROUPS, 2.0, LA_EXPERTS, 3.0, LA_K_GROUP, 1.0,
                LA_K, 2.0, LA_HIDDEN, 16.0),
           4);
  else
    assign(&sl, "m",
           call(L_MOE, "m", name("emb"), NULL, 3, LA_EXPERTS, 4.0, LA_K, 2.0, LA_HIDDEN, 16.0), 4);
  assign(&sl, "m2",
         call(L_MOE, "m2", name("m"), NULL, 4, LA_EXPERTS, 2.0, LA_K, 1.0, LA_HIDDEN, 4.0, LA_NOISE,
              0.0),
         5);
  assign(&sl, "loss", call(L_SOFTMAX_XENT, "loss", name("m2"), name("targets"), 1, LA_VOCAB, 30.0),
         6);
  Stmt *out = stmt(&sl, ST_OUTPUT, NULL, 7);
  out->names = args(1, (Expr *[]){name("loss")});
  f->model->stmts = sl.head;
  Config cfg;
  memset(&cfg, 0, sizeof cfg);
  return ir_build(f, &cfg);
}

static void test_build_moe(void) {
  Graph *g = build_moe_lm(false);
  ir_verify(g);
  /* params: emb, m (noisy: w_noise), m2 (noise=false: no w_noise), loss */
  CHECK(g->nparams == 1 + 6 + 5 + 2);
  CHECK(param_is(g, 1, "m.w_gate", "f32[8, 4]", INIT_ZERO));
  CHECK(param_is(g, 2, "m.w_noise", "f32[8, 4]", INIT_ZERO));
  CHECK(param_is(g, 3, "m.w1", "f32[4, 8, 16]", INIT_UNIFORM));
  CHECK(param_is(g, 4, "m.b1", "f32[4, 16]", INIT_ZERO));
  CHECK(param_is(g, 5, "m.w2", "f32[4, 16, 8]", INIT_UNIFORM));
  CHECK(param_is(g, 6, "m.b2", "f32[4, 8]", INIT_ZERO));
  CHECK(param_is(g, 7, "m2.w_gate", "f32[8, 2]", INIT_ZERO));
  CHECK(!find_param(g, "m2.w_noise"));
  CHECK(param_is(g, 12, "loss.weight", "f32[30, 8]", INIT_UNIFORM));
  /* the MoE output keeps x's leading dims and the assigned name */
  CHECK(find_tensor(g, "m") && type_is(&find_tensor(g, "m")->ty, "f32[B, T, 8]"));
  /* one noise op (m), with the first rng stream; m2 has none */
  CHECK(count_op(g, OP_NOISE) == 1 && g->nrng == 1);
  CHECK(count_op(g, OP_DISPATCH) == 2 && count_op(g, OP_COMBINE) == 2);
  /* roles for place rules */
  bool gate = false, experts = false;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_GROUPED_MATMUL && !strcmp(n->layer, "m"))
      experts |= n->role && !strcmp(n->role, "experts");
    if (n->op == OP_TOPK && !strcmp(n->layer, "m")) gate |= n->role && !strcmp(n->role, "gate");
  }
  CHECK(gate && experts);
  /* loss = xent + (aux of m + aux of m2) */
  CHECK(g->xent == find_tensor(g, "loss") || (g->xent && !strcmp(g->xent->name, "loss")));
  CHECK(g->aux && g->aux->producer && g->aux->producer->op == OP_ADD);
  CHECK(g->aux && !strcmp(g->aux->name, "aux") && type_is(&g->aux->ty, "f32[]"));
  CHECK(g->loss && g->loss != g->xent && g->loss->producer->op == OP_ADD &&
        g->loss->producer->in[0] == g->xent && g->loss->producer->in[1] == g->aux);
  CHECK(g->nmoe == 2);

  /* autodiff reaches every parameter; the graph still verifies and binds */
  PassCtx ctx = {.devices = 1, .training = true};
  FILE *null = fopen("/dev/null", "w");
  CHECK(pass_run_all(g, &ctx, "autodiff", null));
  fclose(null);
  CHECK(g->has_backward);
  for (int i = 0; i < g->nparams; i++) {
    if (!g->params[i]->grad) fprintf(stderr, "  no gradient for %s\n", g->params[i]->name);
    CHECK(g->params[i]->grad != NULL);
  }
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *p = g->params[i];
    if (!p->grad) continue;
    char a[128], b[128];
    type_str(&p->ty, a, sizeof a);
    type_str(&p->grad->ty, b, sizeof b);
    if (strcmp(a, b)) fprintf(stderr, "  d %s is %s, expected %s\n", p->name, b, a);
    CHECK(!strcmp(a, b));
  }
  ir_verify(g);
  ir_bind(g, 3, 4);
  CHECK(find_tensor(g, "m")->shape[0] == 3 && find_tensor(g, "m")->shape[1] == 4);
  ir_graph_free(g);

  g = build_moe_lm(true);
  ir_verify(g);
  CHECK(param_is(g, 1, "m.w_gate", "f32[8, 2]", INIT_ZERO));
  CHECK(param_is(g, 2, "m.w_noise", "f32[8, 2]", INIT_ZERO));
  CHECK(param_is(g, 3, "m.g0.w_gate", "f32[8, 3]", INIT_ZERO));
  CHECK(find_param(g, "m.g1.w1") && type_is(&find_param(g, "m.g1.w1")->ty, "f32[3, 8, 16]"));
  CHECK(find_param(g, "m.g1.b2") && type_is(&find_param(g, "m.g1.b2")->ty, "f32[3, 8]"));
  CHECK(find_tensor(g, "m") && type_is(&find_tensor(g, "m")->ty, "f32[B, T, 8]"));
  CHECK(g->aux && g->loss && g->loss != g->xent);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- through the frontend */

/* Parses and checks text; NULL (after printing the diagnostics) on errors. */
static Graph *build_text(const char *text, AstFile **fout) {
  Source src = {.path = "test.moe", .text = text, .len = strlen(text)};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  Config cfg;
  fe_config_defaults(&cfg);
  if (d.errors == 0) fe_sema(f, &cfg, &d);
  if (d.errors > 0) {
    fe_ast_free(f);
    return NULL;
  }
  *fout = f;
  return ir_build(f, &cfg);
}

static void test_frontend(void) {
  static const char *src = "model t {\n"
                           "  let D = 6\n"
                           "  input x : f32[B, T, D]\n"
                           "  input y : i32[B, T]\n"
                           "  a = x * 2 + 1\n"
                           "  b = 3 - a\n"
                           "  n0 = dense(-b, units=4, act=sigmoid)\n"
                           "  n = dense(relu(n0), units=D)\n"
                           "  z = n\n"
                           "  m1 = moe(z, experts=3, k=1, hidden=5)\n"
                           "  m2 = moe(m1 + z, experts=2, k=2, hidden=5, noise=false)\n"
                           "  loss = softmax_xent(m2, y, vocab=7)\n"
                           "  output loss\n"
                           "}\n";
  AstFile *f = NULL;
  Graph *g = build_text(src, &f);
  CHECK(g != NULL);
  if (!g) return;
  ir_verify(g);
  CHECK(g->ninputs == 2 && type_is(&g->inputs[0]->ty, "f32[B, T, 6]"));
  CHECK(param_is(g, 0, "n0.weight", "f32[4, 6]", INIT_UNIFORM));
  CHECK(param_is(g, 2, "n.weight", "f32[6, 4]", INIT_UNIFORM));
  CHECK(param_is(g, 4, "m1.w_gate", "f32[6, 3]", INIT_ZERO));
  CHECK(g->nparams >= 2 && param_is(g, g->nparams - 2, "loss.weight", "f32[7, 6]", INIT_UNIFORM));
  CHECK(find_tensor(g, "z") == NULL && find_tensor(g, "n")); /* z is an alias of n */
  /* a = x*2 + 1; b = 3 - a; -b: three scales; n0, n layers; the residual add */
  CHECK(count_op(g, OP_SCALE) >= 4 && count_op(g, OP_SIGMOID) == 1 && count_op(g, OP_RELU) >= 1);
  /* two aux losses summed in layer order, then added to the cross-entropy */
  CHECK(g->aux && !strcmp(g->aux->name, "aux") && g->aux->producer->in[0]->producer &&
        !strcmp(g->aux->producer->in[0]->name, "m1.aux") &&
        !strcmp(g->aux->producer->in[1]->name, "m2.aux"));
  CHECK(g->loss && !strcmp(g->loss->name, "total_loss") && g->xent &&
        !strcmp(g->xent->name, "loss"));
  CHECK(g->loss && g->loss->producer->layer == NULL && g->loss->producer->loc.line == 13);
  /* source locations reach the nodes */
  const Tensor *n0 = find_tensor(g, "n0");
  CHECK(n0 && n0->producer->loc.line == 7 && !strcmp(n0->producer->layer, "n0"));
  ir_graph_free(g);
  fe_ast_free(f);
}

/* The graph runs: with every buffer zeroed (params included), the logits are 0,
 * the loss is exactly ln(V) and d loss.bias is known; forward and backward of a
 * model with dropout, an LSTM, dense and a residual run on the CPU kernels. */
static void test_runs(void) {
  static const char *src = "model lm {\n"
                           "  input tokens : i32[B, T]\n"
                           "  input targets : i32[B, T]\n"
                           "  emb = embedding(tokens, vocab=11, dim=4)\n"
                           "  e = dropout(emb, p=0.3)\n"
                           "  h = lstm(e, units=3)\n"
                           "  d = dense(h, units=3, act=tanh)\n"
                           "  loss = softmax_xent(h + d, targets, vocab=11)\n"
                           "  output loss\n"
                           "}\n";
  AstFile *f = NULL;
  Graph *g = build_text(src, &f);
  CHECK(g != NULL);
  if (!g) return;
  PassCtx pctx = {.devices = 1, .training = true};
  FILE *null = fopen("/dev/null", "w");
  CHECK(pass_run_all(g, &pctx, NULL, null));
  fclose(null);
  ir_bind(g, 2, 3);
  Program *p = cg_lower(g, PREC_F64);
  KernelCtx ctx = {.training = true,
                   .seed = 1,
                   .step = 0,
                   .batch0 = 0,
                   .batch_local = 2,
                   .device = 0,
                   .ndevices = 1};
  rt_exec(p, &ctx, 0, p->ninstrs);
  CHECK_CLOSE(rt_f64(p, g->loss)[0], log(11.0), 1e-12, 1e-12);
  /* every target is 0: d loss.bias = mean over rows of (softmax - onehot) = 1/V - [v == 0] */
  const Tensor *bias = find_param(g, "loss.bias");
  CHECK(bias && bias->grad);
  if (bias && bias->grad)
    for (int v = 0; v < 11; v++)
      CHECK_CLOSE(rt_f64(p, bias->grad)[v], 1.0 / 11 - (v == 0), 1e-12, 1e-12);
  cg_program_free(p);
  ir_graph_free(g);
  fe_ast_free(f);
}

/* ---------------------------------------------------------------- pass manager */

static void test_passes(void) {
  StmtList sl;
  AstFile *f = new_file(&sl, "pm");
  input(&sl, "x", DT_F32, name("B"), num(4));
  assign(&sl, "y", call(L_RELU, "y", name("x"), NULL, 0), 2);
  f->model->stmts = sl.head;
  Config cfg;
  memset(&cfg, 0, sizeof cfg);
  Graph *g = ir_build(f, &cfg);
  PassCtx ctx = {.cfg = &cfg, .devices = 1, .training = false};
  CHECK(pass_count >= 2 && !strcmp(pass_list[0].name, "verify"));
  bool has_autodiff = false;
  for (int i = 0; i < pass_count; i++)
    has_autodiff |= !strcmp(pass_list[i].name, "autodiff");
  CHECK(has_autodiff);
  FILE *null = fopen("/dev/null", "w");
  CHECK(!pass_run_all(g, &ctx, "no_such_pass", null));
  char *p = NULL;
  size_t n = 0;
  FILE *m = open_memstream(&p, &n);
  CHECK(pass_run_all(g, &ctx, "build", m));
  fclose(m);
  CHECK(p && strstr(p, "y = relu(x)  : f32[B, 4]  @y  ; 2:5") != NULL);
  free(p);
  CHECK(pass_run_all(g, &ctx, "verify", null));
  CHECK(pass_run_all(g, &ctx, NULL, null)); /* eval: autodiff skipped */
  CHECK(g->nnodes == 1);
  fclose(null);
  ir_graph_free(g);
}

int main(void) {
  test_shapes();
  test_build_dense();
  test_build_scalar_ops();
  test_build_moe();
  test_frontend();
  test_runs();
  test_passes();
  mc_arena_free(&ast_arena);
  TEST_DONE();
}
