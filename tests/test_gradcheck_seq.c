/* test_gradcheck_seq.c: the sequence ops (bmm, attention scores, masked softmax, column
 * scaling, joining, the padded cross-entropy) and the layers built from them (attention,
 * additive and product, masked and not; a whole small encoder-decoder with MoE layers in
 * encoder and decoder) against central finite differences in float64, and their float32
 * kernels against float64 (tests/gradcheck.h). Graphs over the source length S bind
 * S != T, so a mixed-up dim cannot pass. */
#include <string.h>

#include "gradcheck.h"
#include "test.h"
#include "test_model.h"

#define B_ dim_sym('B')
#define T_ dim_sym('T')
#define S_ dim_sym('S')
#define I_(n) dim_int(n)

static double worst_fd, worst_f32;
static int nchecked;
static bool verbose;

static Type f32(int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_type(DT_F32, rank, d);
}

static Tensor *P(Graph *g, const char *name, Type t) {
  return ir_param(g, name, t, INIT_ZERO, 0, (Loc){0});
}

static Tensor *node(Graph *g, OpKind op, int nin, Tensor *a, Tensor *b, Tensor *c, int64_t i0,
                    int64_t i1) {
  Tensor *in[3] = {a, b, c};
  int64_t ia[IR_MAX_ATTR] = {i0, i1};
  return ir_node(g, op, nin, in, ia, NULL)->out[0];
}

static GcOpts opts(void) {
  GcOpts o = gc_opts();
  o.B = 2;
  o.T = 3;
  o.S = 4;
  o.verbose = verbose;
  return o;
}

static void run(Graph *g, int nouts, Tensor **outs, const GcOpts *o) {
  GcResult r = gc_check(g, nouts, outs, o);
  CHECK(r.ok);
  CHECK(r.nparams > 0);
  worst_fd = fmax(worst_fd, r.worst_rel);
  worst_f32 = fmax(worst_f32, r.worst_f32);
  nchecked++;
}

/* Token ids for i32 inputs: the pad id 0 at the positions pad_at says, else 1 + a
 * pattern below V. */
typedef struct Ids {
  int64_t V;
  int32_t pad;
  bool (*pad_at)(const Tensor *t, int64_t row, int64_t col);
} Ids;

/* Row 0 ends in two pads, row 1 has none, row 2 is all padding (an empty sentence). */
static bool pad_tail(const Tensor *t, int64_t row, int64_t col) {
  int64_t L = t->shape[1];
  return (row == 0 && col >= L - 2) || row == 2;
}

static void fill_ids(const Tensor *t, int32_t *buf, void *user) {
  const Ids *ids = user;
  int64_t L = t->ty.rank >= 2 ? t->shape[1] : 1;
  for (int64_t i = 0; i < t->numel; i++) {
    bool pad = ids->pad_at && ids->pad_at(t, i / L, i % L);
    buf[i] = pad ? ids->pad : (int32_t)(1 + (i * 5 + t->id) % (ids->V - 1));
  }
}

/* ---------------------------------------------------------------- ops */

static void t_bmm(void) {
  /* y = a . b in the four transposition forms; M = T, K = S or 4, N = 5 or S */
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      char nm[32];
      snprintf(nm, sizeof nm, "bmm_t%d%d", ta, tb);
      Graph *g = ir_graph_new(nm);
      Tensor *a = P(g, "a", ta ? f32(3, B_, S_, T_) : f32(3, B_, T_, S_));
      Tensor *b = P(g, "b", tb ? f32(3, B_, I_(5), S_) : f32(3, B_, S_, I_(5)));
      Tensor *y = node(g, OP_BMM, 2, a, b, NULL, ta, tb);
      CHECK(dim_eq(y->ty.dim[1], T_) && dim_eq(y->ty.dim[2], I_(5)));
      GcOpts o = opts();
      run(g, 1, &y, &o);
      ir_graph_free(g);
    }
}

static void t_attn_score(void) {
  Graph *g = ir_graph_new("attn_score");
  Tensor *qw = P(g, "qw", f32(3, B_, T_, I_(5)));
  Tensor *mu = P(g, "mu", f32(3, B_, S_, I_(5)));
  Tensor *v = P(g, "v", f32(1, I_(5), I_(1), I_(1)));
  Tensor *s = node(g, OP_ATTN_SCORE, 3, qw, mu, v, 0, 0);
  CHECK(dim_eq(s->ty.dim[1], T_) && dim_eq(s->ty.dim[2], S_));
  GcOpts o = opts();
  o.scale = 1.5; /* into tanh's curved part */
  run(g, 1, &s, &o);
  ir_graph_free(g);
}

/* masked softmax over scores [B, T, S] with a mask from ids (B = 3: tails, none, all) */
static void t_masked_softmax(void) {
  Graph *g = ir_graph_new("masked_softmax");
  Tensor *s = P(g, "scores", f32(3, B_, T_, S_));
  Dim id[2] = {B_, S_};
  Tensor *ids = ir_input(g, "ids", ir_type(DT_I32, 2, id), (Loc){0});
  Tensor *mask = node(g, OP_PAD_MASK, 1, ids, NULL, NULL, 0, 0);
  Tensor *a = ir_op2(g, OP_MASKED_SOFTMAX, s, mask);
  GcOpts o = opts();
  o.B = 3;
  o.scale = 2;
  Ids ids_fill = {9, 0, pad_tail};
  o.fill_i32 = fill_ids;
  o.user = &ids_fill;
  run(g, 1, &a, &o);
  ir_graph_free(g);
}

static void t_columns(void) {
  Graph *g = ir_graph_new("col_scale");
  Tensor *x = P(g, "x", f32(3, B_, T_, I_(4)));
  Tensor *v = P(g, "v", f32(1, I_(4), I_(1), I_(1)));
  Tensor *y = ir_op2(g, OP_COL_SCALE, x, v);
  GcOpts o = opts();
  run(g, 1, &y, &o);
  ir_graph_free(g);

  g = ir_graph_new("concat_last");
  Tensor *a = P(g, "a", f32(3, B_, S_, I_(2)));
  Tensor *b = P(g, "b", f32(3, B_, S_, I_(3)));
  Tensor *c = ir_op2(g, OP_CONCAT_LAST, a, b);
  CHECK(dim_eq(c->ty.dim[2], I_(5)));
  Tensor *t = ir_op1(g, OP_TANH, c); /* a nonlinear use: the slices must be the right ones */
  run(g, 1, &t, &o);
  ir_graph_free(g);
}

/* The padded cross-entropy alone: loss = sum over real targets / count (count from the
 * same targets), and with the probs used too. */
static void t_xent_pad(void) {
  for (int variant = 0; variant < 2; variant++) {
    Graph *g = ir_graph_new(variant ? "xent_pad_probs" : "xent_pad");
    Dim rd[2] = {dim_mul(B_, T_), I_(6)};
    Tensor *lg = P(g, "logits", ir_type(DT_F32, 2, rd));
    Tensor *tg = ir_input(g, "targets", ir_type(DT_I32, 1, rd), (Loc){0});
    Tensor *cnt = node(g, OP_COUNT_NONPAD, 1, tg, NULL, NULL, 0, 0);
    Tensor *in[3] = {lg, tg, cnt};
    int64_t ia[IR_MAX_ATTR] = {0};
    Node *n = ir_node(g, OP_XENT_PAD, 3, in, ia, NULL);
    GcOpts o = opts();
    o.scale = 2;
    Ids ids = {6, 0, NULL};
    o.fill_i32 = fill_ids;
    o.user = &ids;
    if (!variant) {
      g->loss = n->out[0];
      run(g, 0, NULL, &o);
    } else {
      Tensor *outs[2] = {n->out[0], n->out[1]};
      run(g, 2, outs, &o);
    }
    ir_graph_free(g);
  }
}

/* ---------------------------------------------------------------- layers from .moe text */

static AstFile *parse(const char *name, const char *text, Config *cfg) {
  return test_parse_model(name, text, strlen(text), cfg);
}

static Tensor *find(Graph *g, const char *name) {
  for (int i = 0; i < g->ntensors; i++)
    if (!strcmp(g->tensors[i]->name, name)) return g->tensors[i];
  fprintf(stderr, "no tensor '%s'\n", name);
  exit(1);
}

/* Pads in the source ids only ("src"), in the last two positions of row 0 and all of row
 * 2; targets "tgt_out" end in one pad in row 1. */
static bool pad_model(const Tensor *t, int64_t row, int64_t col) {
  if (!strcmp(t->name, "src")) return pad_tail(t, row, col);
  if (!strcmp(t->name, "tgt_out")) return row == 1 && col == t->shape[1] - 1;
  return false;
}

/* attention(q, m) alone: the context's gradient to q, m, u, w, v */
static void t_attention(bool product, bool masked) {
  char text[1024];
  snprintf(text, sizeof text,
           "model att {\n"
           "  input src : i32[B, S]%s\n"
           "  input tgt : i32[B, T]\n"
           "  q0 = embedding(tgt, vocab=9, dim=3)\n"
           "  m0 = embedding(src, vocab=9, dim=5)\n"
           "  ctx = attention(q0, m0, units=4, score=%s)\n"
           "  loss = softmax_xent(ctx, tgt, vocab=9)\n"
           "  output loss\n"
           "}\n",
           masked ? " pad 0" : "", product ? "product" : "additive");
  char nm[48];
  snprintf(nm, sizeof nm, "attention_%s%s", product ? "product" : "additive",
           masked ? "_masked" : "");
  Config cfg;
  AstFile *f = parse(nm, text, &cfg);
  Graph *g = ir_build(f, &cfg);
  g->name = nm;
  Tensor *ctx = find(g, "ctx");
  CHECK(dim_eq(ctx->ty.dim[1], T_) && dim_eq(ctx->ty.dim[2], I_(5)));
  GcOpts o = opts();
  o.B = 3;
  o.scale = 1.2;
  Ids ids = {9, 0, masked ? pad_model : NULL};
  o.fill_i32 = fill_ids;
  o.user = &ids;
  run(g, 1, &ctx, &o);
  ir_graph_free(g);
  fe_ast_free(f);
}

/* The attention's parameters drawn wider (U(-3, 3)): with the defaults its scores hardly
 * vary over a 4-position source and its gradients sit near the finite differences'
 * rounding floor. */
static bool fill_wide_attention(const Tensor *t, double *buf, void *user) {
  (void)user;
  if (strncmp(t->name, "ctx.", 4) != 0) return false;
  uint64_t key = mc_rng_key(23, (uint64_t)t->id, 0);
  for (int64_t i = 0; i < t->numel; i++)
    buf[i] = 3 * (2 * mc_rng_uniform(key, (uint64_t)i) - 1);
  return true;
}

/* The paper's shape, small: an encoder (embedding, lstm, MoE with a residual, lstm) and a
 * decoder (embedding, lstm, attention, the context joined into the next lstm's input,
 * a batchwise MoE with a residual) with dropout, padded source and targets; loss = the
 * mean cross-entropy over real targets + both MoE layers' aux losses. Training mode:
 * dropout masks and gate noise are drawn (fixed by the seed). */
static void t_encoder_decoder(bool product) {
  char text[2048];
  snprintf(text, sizeof text,
           "model encdec {\n"
           "  let V = 7\n"
           "  input src : i32[B, S] pad 0\n"
           "  input tgt_in : i32[B, T] pad 0\n"
           "  input tgt_out : i32[B, T] pad 0\n"
           "  se = embedding(src, vocab=V, dim=4)\n"
           "  e1 = lstm(dropout(se, 0.2), units=4)\n"
           "  em = moe(e1, experts=3, k=2, hidden=5)\n"
           "  e2 = lstm(e1 + em, units=4)\n"
           "  te = embedding(tgt_in, vocab=V, dim=4)\n"
           "  d1 = lstm(te, units=4)\n"
           "  ctx = attention(d1, e2, units=3, score=%s)\n"
           "  d2 = lstm(concat(d1, ctx), units=4)\n"
           "  dm = moe(d2, experts=4, k=2, hidden=3, gating=batchwise)\n"
           "  loss = softmax_xent(d2 + dm, tgt_out, vocab=V)\n"
           "  output loss\n"
           "}\n",
           product ? "product" : "additive");
  const char *nm = product ? "encdec_product" : "encdec_additive";
  Config cfg;
  AstFile *f = parse(nm, text, &cfg);
  Graph *g = ir_build(f, &cfg);
  g->name = nm;
  CHECK(g->nstates == 0); /* no lstm carries state in a translation model */
  CHECK(g->xent_count != NULL);
  CHECK(ir_input_role(g, IN_SOURCE) == find(g, "src"));
  CHECK(ir_input_role(g, IN_TARGET) == find(g, "tgt_in"));
  CHECK(ir_input_role(g, IN_LABELS) == find(g, "tgt_out"));
  GcOpts o = opts();
  o.B = 3;
  o.training = true;
  o.seed = 5;
  o.scale = 0.8;
  o.eps = 1e-5;
  o.fill_f64 = fill_wide_attention;
  o.tol_f32 = 1e-4; /* f32 cancellation in the attention's softmax gradient (as hmoe's) */
  Ids ids = {7, 0, pad_model};
  o.fill_i32 = fill_ids;
  o.user = &ids;
  run(g, 0, NULL, &o);
  ir_graph_free(g);
  fe_ast_free(f);
}

int main(int argc, char **argv) {
  verbose = argc > 1 && !strcmp(argv[1], "-v");
  t_bmm();
  t_attn_score();
  t_masked_softmax();
  t_columns();
  t_xent_pad();
  for (int product = 0; product < 2; product++)
    for (int masked = 0; masked < 2; masked++)
      t_attention(product, masked);
  t_encoder_decoder(false);
  t_encoder_decoder(true);
  printf("%d graphs checked; worst finite-difference rel err %.2e, worst f32/f64 rel diff %.2e\n",
         nchecked, worst_fd, worst_f32);
  TEST_DONE();
}
