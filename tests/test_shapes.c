/* test_shapes.c: what sema infers and resolves, and what summary.c counts.
 *
 *   - types of every layer's output with the symbols B and T, constant dims,
 *     rank changes (embedding adds one, softmax_xent gives a scalar), the Dim
 *     helpers (B*T, evaluation);
 *   - resolved layer arguments in Expr.argv (defaults, positional, enums,
 *     bools, let constants), targ[] and param_name;
 *   - Config from train and plan blocks (defaults, resolution, place rules);
 *   - parameter and op counts of every example, against formulas written out
 *     here, and the paper's Table 7 figures for MoE-32 (37.8M params without
 *     embedding and softmax, 8.4M ops per timestep), 4xLSTM-512 and MoE-256-h;
 *   - a translation model: S, pad ids, attention, concat, their counts;
 *   - inputs that must fail without crashing. */
#include <string.h>

#include "frontend/frontend.h"
#include "tests/test.h"

/* ---------------------------------------------------------------- helpers */

typedef struct Checked {
  AstFile *f;
  Config cfg;
  int errors;
  char *diag; /* what diag printed */
} Checked;

static Checked check_text(const char *text, const char *path) {
  Checked c = {0};
  Source src = {.path = path, .text = text, .len = strlen(text)};
  size_t n = 0;
  FILE *mem = open_memstream(&c.diag, &n);
  Diag d;
  fe_diag_init(&d, &src);
  d.out = mem;
  c.f = fe_parse(&src, &d);
  fe_config_defaults(&c.cfg);
  if (d.errors == 0) fe_sema(c.f, &c.cfg, &d);
  fclose(mem);
  c.errors = d.errors;
  return c;
}

static void done(Checked *c) {
  fe_ast_free(c->f);
  free(c->diag);
}

/* The value of `NAME = ...` in the model. */
static Expr *value_of(AstFile *f, const char *name) {
  for (Stmt *s = f->model->stmts; s; s = s->next)
    if (s->kind == ST_ASSIGN && !strcmp(s->name, name)) return s->value;
  return NULL;
}

static bool type_is(const Expr *e, const char *want) {
  char buf[160];
  if (!e) return false;
  type_str(&e->ty, buf, sizeof buf);
  if (strcmp(buf, want)) {
    fprintf(stderr, "  type %s, expected %s\n", buf, want);
    return false;
  }
  return true;
}

#define CHECK_OK(c)                                                                                \
  do {                                                                                             \
    CHECK((c).errors == 0);                                                                        \
    if ((c).errors) fprintf(stderr, "%s", (c).diag);                                               \
  } while (0)

/* ---------------------------------------------------------------- shapes */

static void test_shapes_lm(void) {
  Checked c =
      check_text("model lm {\n"
                 "  let V = 40\n"
                 "  let D = 4 * 4\n"
                 "  input tokens : i32[B, T]\n"
                 "  input targets : i32[B, T]\n"
                 "  emb = embedding(tokens, vocab=V, dim=D)\n"
                 "  h = lstm(emb, units=32)\n"
                 "  a = dense(h, units=8, act=relu)\n"
                 "  m = moe(a, experts=4, hidden=16, out=12)\n"
                 "  g = hmoe(m, groups=2, experts=3, k_group=1, k=2, hidden=8, noise=false)\n"
                 "  r = relu(g) - tanh(m) * 2\n"
                 "  s = -sigmoid(r) + 1\n"
                 "  d = dropout(s, 0.25)\n"
                 "  loss = softmax_xent(d, targets, vocab=V)\n"
                 "  same = loss\n"
                 "  output same, h\n"
                 "}\n",
                 "lm.moe");
  CHECK_OK(c);
  if (c.errors) return done(&c);
  AstFile *f = c.f;
  CHECK(type_is(value_of(f, "emb"), "f32[B, T, 16]"));
  CHECK(type_is(value_of(f, "h"), "f32[B, T, 32]"));
  CHECK(type_is(value_of(f, "a"), "f32[B, T, 8]"));
  CHECK(type_is(value_of(f, "m"), "f32[B, T, 12]"));
  CHECK(type_is(value_of(f, "g"), "f32[B, T, 12]"));
  CHECK(type_is(value_of(f, "r"), "f32[B, T, 12]"));
  CHECK(type_is(value_of(f, "s"), "f32[B, T, 12]"));
  CHECK(type_is(value_of(f, "d"), "f32[B, T, 12]"));
  CHECK(type_is(value_of(f, "loss"), "f32[]"));
  CHECK(value_of(f, "loss")->ty.rank == 0);
  CHECK(type_is(value_of(f, "same"), "f32[]"));
  /* the nested parameter-free calls are annotated too */
  Expr *r = value_of(f, "r");
  CHECK(r->kind == EX_BINOP && r->lhs->kind == EX_CALL && r->lhs->layer == L_RELU);
  CHECK(r->lhs->param_name == NULL);
  CHECK(type_is(r->lhs, "f32[B, T, 12]"));
  CHECK(type_is(r->rhs, "f32[B, T, 12]"));
  /* layer ids, tensor args, names, resolved arguments */
  Expr *emb = value_of(f, "emb"), *h = value_of(f, "h"), *a = value_of(f, "a");
  Expr *m = value_of(f, "m"), *g = value_of(f, "g"), *d = value_of(f, "d");
  Expr *loss = value_of(f, "loss");
  CHECK(emb->layer == L_EMBEDDING && emb->argv[LA_VOCAB] == 40 && emb->argv[LA_DIM] == 16);
  CHECK(emb->param_name && !strcmp(emb->param_name, "emb"));
  CHECK(emb->targ[0] && emb->targ[0]->kind == EX_NAME && !strcmp(emb->targ[0]->str, "tokens"));
  CHECK(type_is(emb->targ[0], "i32[B, T]"));
  CHECK(h->layer == L_LSTM && h->argv[LA_UNITS] == 32 && h->targ[0] && h->targ[1] == NULL);
  CHECK(a->layer == L_DENSE && a->argv[LA_UNITS] == 8 && a->argv[LA_ACT] == LAE_RELU);
  CHECK(m->layer == L_MOE && m->argv[LA_EXPERTS] == 4 && m->argv[LA_K] == 2 &&
        m->argv[LA_HIDDEN] == 16 && m->argv[LA_GATING] == LAE_NOISY_TOPK &&
        m->argv[LA_NOISE] == 1 && m->argv[LA_OUT] == 12);
  CHECK_CLOSE(m->argv[LA_W_IMPORTANCE], 0.01, 0, 1e-15);
  CHECK_CLOSE(m->argv[LA_W_LOAD], 0.01, 0, 1e-15);
  CHECK(g->layer == L_HMOE && g->argv[LA_GROUPS] == 2 && g->argv[LA_EXPERTS] == 3 &&
        g->argv[LA_K_GROUP] == 1 && g->argv[LA_K] == 2 && g->argv[LA_NOISE] == 0 &&
        g->argv[LA_OUT] == 0);
  CHECK(d->layer == L_DROPOUT && d->argv[LA_P] == 0.25);
  CHECK(loss->layer == L_SOFTMAX_XENT && loss->argv[LA_VOCAB] == 40);
  CHECK(loss->targ[0] && loss->targ[1] && !strcmp(loss->targ[1]->str, "targets"));
  /* defaults: the synthetic corpus takes the model's vocabulary and the seed */
  CHECK(c.cfg.data == DATA_SYNTHETIC && c.cfg.vocab == 40 && c.cfg.topics == 8);
  CHECK(c.cfg.data_seed == 1 && c.cfg.seed == 1);
  CHECK(c.cfg.batch == 32 && c.cfg.unroll == 20 && c.cfg.optimizer == OPT_ADAM);
  CHECK(c.cfg.devices == 1 && c.cfg.mesh_nodes == 1 && c.cfg.mesh_per_node == 1);
  CHECK(!strcmp(c.cfg.strategy, "paper") && !strcmp(c.cfg.expert_policy, "contiguous"));
  CHECK(c.cfg.fuse && c.cfg.backend == BK_AUTO && c.cfg.recompute == RC_NONE && !c.cfg.rules);
  done(&c);
}

/* Rank 2 and rank 4, constant dims, flattening of symbolic dims. */
static void test_shapes_ranks(void) {
  Checked c = check_text("model r {\n"
                         "  let N = 6\n"
                         "  input ids : i32[B]\n"
                         "  input tg : i32[B]\n"
                         "  input ids4 : i32[4, T, 2]\n"
                         "  input tg4 : i32[4, T, 2]\n"
                         "  input feats : f32[B, T, N]\n"
                         "  e = embedding(ids, vocab=10, dim=5)\n"
                         "  x = dense(e, units=7, act=tanh)\n"
                         "  loss = softmax_xent(x, tg, vocab=10)\n"
                         "  e4 = embedding(ids4, vocab=10, dim=3)\n"
                         "  m4 = moe(e4, experts=2, k=1, hidden=4, gating=softmax)\n"
                         "  l4 = softmax_xent(m4, tg4, vocab=10)\n"
                         "  f = lstm(feats, units=N)\n"
                         "  y = f + feats\n"
                         "  output loss, y\n"
                         "}\n",
                         "r.moe");
  CHECK_OK(c);
  if (c.errors) return done(&c);
  CHECK(type_is(value_of(c.f, "e"), "f32[B, 5]"));
  CHECK(type_is(value_of(c.f, "x"), "f32[B, 7]"));
  CHECK(type_is(value_of(c.f, "loss"), "f32[]"));
  CHECK(type_is(value_of(c.f, "e4"), "f32[4, T, 2, 3]"));
  CHECK(type_is(value_of(c.f, "m4"), "f32[4, T, 2, 3]"));
  CHECK(value_of(c.f, "m4")->argv[LA_GATING] == LAE_SOFTMAX);
  CHECK(type_is(value_of(c.f, "f"), "f32[B, T, 6]"));
  CHECK(type_is(value_of(c.f, "y"), "f32[B, T, 6]"));
  done(&c);
  /* The Dim algebra the IR uses to flatten [B, T, D] into [B*T, D]. */
  Dim bt = dim_mul(dim_sym('B'), dim_sym('T'));
  char buf[64];
  CHECK(!strcmp(dim_str(bt, buf, sizeof buf), "B*T"));
  CHECK(!strcmp(dim_str(dim_mul(dim_int(4), dim_sym('B')), buf, sizeof buf), "4*B"));
  CHECK(dim_eval(bt, 32, 20) == 640);
  CHECK(dim_eq(dim_mul(dim_sym('T'), dim_sym('B')), bt));
  CHECK(!dim_is_const(bt) && dim_is_const(dim_int(7)));
}

/* ---------------------------------------------------------------- config */

static void test_config(void) {
  Checked c = check_text("model c {\n"
                         "  let V = 64\n"
                         "  input tokens : i32[B, T]\n"
                         "  input targets : i32[B, T]\n"
                         "  emb = embedding(tokens, vocab=V, dim=8)\n"
                         "  h1 = lstm(emb, units=8)\n"
                         "  m = moe(h1, experts=4, k=2, hidden=16)\n"
                         "  h2 = lstm(m, units=8)\n"
                         "  loss = softmax_xent(h2, targets, vocab=V)\n"
                         "  output loss\n"
                         "}\n"
                         "train {\n"
                         "  data = synthetic(topics=3, vocab=V)\n"
                         "  batch = 16; unroll = 10; steps = 50; eval_every = 25\n"
                         "  optimizer = factored(lr=0.01, beta2=0.99)\n"
                         "  clip = 1.5\n"
                         "  seed = 7\n"
                         "}\n"
                         "plan {\n"
                         "  mesh = [2, 4]\n"
                         "  strategy = data_parallel\n"
                         "  experts = round_robin\n"
                         "  recompute = [h1, m]\n"
                         "  memory_budget = 8GiB\n"
                         "  fuse = false\n"
                         "  backend = cpu\n"
                         "  place m.experts : shard(experts)\n"
                         "  place h* : on(0, 3)\n"
                         "  place m.gate : replicate\n"
                         "}\n",
                         "/data/models/c.moe");
  CHECK_OK(c);
  if (c.errors) return done(&c);
  Config *g = &c.cfg;
  CHECK(g->data == DATA_SYNTHETIC && g->topics == 3 && g->vocab == 64);
  CHECK(g->data_seed == 7 && g->seed == 7); /* the corpus follows the train seed */
  CHECK(g->batch == 16 && g->unroll == 10 && g->steps == 50 && g->eval_every == 25);
  CHECK(g->optimizer == OPT_FACTORED && g->beta1 == 0);
  CHECK_CLOSE(g->lr, 0.01, 0, 1e-15);
  CHECK_CLOSE(g->beta2, 0.99, 0, 1e-15);
  CHECK_CLOSE(g->clip, 1.5, 0, 0);
  CHECK(g->devices == 8 && g->mesh_nodes == 2 && g->mesh_per_node == 4);
  CHECK(!strcmp(g->strategy, "data_parallel") && !strcmp(g->expert_policy, "round_robin"));
  CHECK(g->recompute == RC_LIST && g->n_recompute == 2 && !strcmp(g->recompute_names[0], "h1") &&
        !strcmp(g->recompute_names[1], "m"));
  CHECK(g->memory_budget == 8589934592.0);
  CHECK(!g->fuse && g->backend == BK_CPU);
  PlaceRule *r = g->rules;
  CHECK(r && !strcmp(r->pattern, "m.experts") && r->kind == PK_SHARD_EXPERTS);
  r = r ? r->next : NULL;
  CHECK(r && !strcmp(r->pattern, "h*") && r->kind == PK_ON && r->ndevices == 2 &&
        r->devices[0] == 0 && r->devices[1] == 3);
  r = r ? r->next : NULL;
  CHECK(r && !strcmp(r->pattern, "m.gate") && r->kind == PK_REPLICATE && !r->next);
  done(&c);

  /* file corpora: .bin is uint16 ids, anything else text; relative paths are
   * relative to the .moe file; the synthetic vocab is not involved */
  const char *model = "model f {\n  input tokens : i32[B, T]\n  input targets : i32[B, T]\n"
                      "  emb = embedding(tokens, vocab=100, dim=4)\n"
                      "  loss = softmax_xent(emb, targets, vocab=100)\n  output loss\n}\n";
  char text[1024];
  snprintf(text, sizeof text,
           "%strain { data = \"corpus/tokens.bin\"\n optimizer = adam }\n"
           "plan { devices = 2\n recompute = auto }\n",
           model);
  c = check_text(text, "examples/f.moe");
  CHECK_OK(c);
  CHECK(c.cfg.data == DATA_BIN && c.cfg.data_path &&
        !strcmp(c.cfg.data_path, "examples/corpus/tokens.bin"));
  CHECK(c.cfg.optimizer == OPT_ADAM && c.cfg.beta1 == 0.9 && c.cfg.lr == 1e-3);
  CHECK(c.cfg.devices == 2 && c.cfg.mesh_nodes == 1 && c.cfg.mesh_per_node == 2);
  CHECK(c.cfg.recompute == RC_AUTO);
  done(&c);
  snprintf(text, sizeof text, "%strain { data = \"/abs/words.txt\" }\n", model);
  c = check_text(text, "f.moe");
  CHECK_OK(c);
  CHECK(c.cfg.data == DATA_TEXT && !strcmp(c.cfg.data_path, "/abs/words.txt"));
  done(&c);
}

/* ---------------------------------------------------------------- counts */

/* The formulas of docs/language.md ("Counting"), written out independently. */
static int64_t lstm_params(int64_t in, int64_t u) {
  return 4 * u * in + 4 * u * u + 4 * u;
}
static int64_t lstm_ops(int64_t in, int64_t u) {
  return 4 * u * (in + u);
}
static int64_t expert_params(int64_t in, int64_t h, int64_t out) {
  return in * h + h + h * out + out;
}
/* moe with noisy top-k gating: w_gate and w_noise, E experts; k experts per position */
static int64_t moe_params(int64_t in, int64_t e, int64_t h) {
  return 2 * in * e + e * expert_params(in, h, in);
}
static int64_t moe_ops(int64_t in, int64_t e, int64_t k, int64_t h) {
  return 2 * in * e + k * (in * h + h * in);
}

static ModelSummary summarize_file(const char *name, Checked *c, McArena *a) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", MOEC_EXAMPLES_DIR, name);
  size_t len = 0;
  char *text = mc_read_file(path, &len);
  ModelSummary s = {0};
  CHECK(text != NULL);
  if (!text) return s;
  *c = check_text(text, path);
  CHECK_OK(*c);
  if (!c->errors) s = fe_summarize(c->f, a);
  mc_free(text); /* the AST interns its strings */
  return s;
}

static void test_paper_moe32(void) {
  McArena a = {0};
  Checked c;
  ModelSummary s = summarize_file("paper_moe32_1b.moe", &c, &a);
  int64_t V = 793471, D = 512;
  int64_t core = 2 * lstm_params(D, D) + moe_params(D, 32, 1024);
  int64_t ops = 2 * lstm_ops(D, D) + moe_ops(D, 32, 4, 1024);
  CHECK(core == 37834752 && ops == 8421376); /* the formulas, by hand */
  CHECK(s.params_core == core);
  CHECK(s.ops_per_timestep == ops);
  /* Table 7 of the paper: 37.8M parameters without embedding and softmax, 8.4M ops/timestep */
  CHECK(llround((double)s.params_core / 1e5) == 378);
  CHECK(llround((double)s.ops_per_timestep / 1e5) == 84);
  CHECK(s.params == core + V * D + (V * D + V));
  CHECK(s.nlayers == 6 && !strcmp(s.model, "moe32_1b"));
  if (s.nlayers == 6) {
    CHECK(s.layers[0].layer == L_EMBEDDING && !s.layers[0].core && s.layers[0].params == V * D);
    CHECK(s.layers[1].layer == L_DROPOUT && s.layers[1].params == 0);
    CHECK(s.layers[3].layer == L_MOE && s.layers[3].params == moe_params(D, 32, 1024));
    CHECK(s.layers[5].layer == L_SOFTMAX_XENT && !s.layers[5].core);
    char buf[64];
    CHECK(!strcmp(type_str(&s.layers[3].out, buf, sizeof buf), "f32[B, T, 512]"));
  }
  done(&c);
  mc_arena_free(&a);
}

/* Paper-sized 4xLSTM-512 and MoE-256-h from inline sources (Table 7: 8.4M ops for both). */
static void test_paper_others(void) {
  McArena a = {0};
  Checked c = check_text("model b {\n  let D = 512\n  input t : i32[B, T]\n  input y : i32[B, T]\n"
                         "  e = embedding(t, vocab=793471, dim=D)\n"
                         "  h1 = lstm(e, units=D)\n  h2 = lstm(h1, units=D)\n"
                         "  h3 = lstm(h2, units=D)\n  h4 = lstm(h3, units=D)\n"
                         "  loss = softmax_xent(h4, y, vocab=793471)\n  output loss\n}\n",
                         "b.moe");
  CHECK_OK(c);
  if (!c.errors) {
    ModelSummary s = fe_summarize(c.f, &a);
    CHECK(s.params_core == 4 * lstm_params(512, 512));
    CHECK(s.ops_per_timestep == 4 * lstm_ops(512, 512));
    CHECK(llround((double)s.params_core / 1e5) == 84 &&
          llround((double)s.ops_per_timestep / 1e5) == 84);
  }
  done(&c);
  c = check_text("model h {\n  let D = 512\n  input t : i32[B, T]\n  input y : i32[B, T]\n"
                 "  e = embedding(t, vocab=793471, dim=D)\n  h1 = lstm(e, units=D)\n"
                 "  m = hmoe(h1, groups=16, experts=16, k_group=2, k=2, hidden=1024)\n"
                 "  h2 = lstm(m, units=D)\n"
                 "  loss = softmax_xent(h2, y, vocab=793471)\n  output loss\n}\n",
                 "h.moe");
  CHECK_OK(c);
  if (!c.errors) {
    ModelSummary s = fe_summarize(c.f, &a);
    int64_t in = 512, G = 16, E = 16, H = 1024;
    int64_t hp = 2 * in * G + G * (2 * in * E + E * expert_params(in, H, in));
    int64_t ho = 2 * in * G + 2 * (2 * in * E) + 2 * 2 * (2 * in * H);
    CHECK(s.params_core == 2 * lstm_params(512, 512) + hp);
    CHECK(s.ops_per_timestep == 2 * lstm_ops(512, 512) + ho);
    CHECK(llround((double)s.ops_per_timestep / 1e5) == 84);
  }
  done(&c);
  mc_arena_free(&a);
}

/* The scaled examples: V = 512, D = 64, experts 64 -> 128 -> 64. */
static void test_examples(void) {
  const int64_t V = 512, D = 64, H = 128;
  const int64_t emb = V * D, sm = V * D + V;
  struct {
    const char *file;
    int64_t core, ops;
  } ex[] = {
      {"lm_4xlstm.moe", 4 * lstm_params(D, D), 4 * lstm_ops(D, D)},
      {"lm_moe4.moe", 2 * lstm_params(D, D) + moe_params(D, 4, H),
       2 * lstm_ops(D, D) + moe_ops(D, 4, 4, H)},
      {"lm_moe32.moe", 2 * lstm_params(D, D) + moe_params(D, 32, H),
       2 * lstm_ops(D, D) + moe_ops(D, 32, 4, H)},
      {"lm_moe256.moe", 2 * lstm_params(D, D) + moe_params(D, 256, H),
       2 * lstm_ops(D, D) + moe_ops(D, 256, 4, H)},
      {"lm_moe256h.moe",
       2 * lstm_params(D, D) + 2 * D * 16 + 16 * (2 * D * 16 + 16 * expert_params(D, H, D)),
       2 * lstm_ops(D, D) + 2 * D * 16 + 2 * (2 * D * 16) + 4 * (2 * D * H)},
  };
  /* by hand for one of them: lm_moe32 = 2*33024 + (8192 + 32*16576) */
  CHECK(ex[2].core == 600576 && ex[2].ops == 135168);
  for (size_t i = 0; i < MC_ARRAY_LEN(ex); i++) {
    McArena a = {0};
    Checked c;
    ModelSummary s = summarize_file(ex[i].file, &c, &a);
    if (s.params_core != ex[i].core || s.ops_per_timestep != ex[i].ops)
      fprintf(stderr, "  %s: core %lld ops %lld, expected %lld %lld\n", ex[i].file,
              (long long)s.params_core, (long long)s.ops_per_timestep, (long long)ex[i].core,
              (long long)ex[i].ops);
    CHECK(s.params_core == ex[i].core);
    CHECK(s.ops_per_timestep == ex[i].ops);
    CHECK(s.params == ex[i].core + emb + sm);
    /* every example trains on the built-in corpus with the model's vocabulary */
    CHECK(!c.errors && c.cfg.data == DATA_SYNTHETIC && c.cfg.vocab == V && c.cfg.batch == 32 &&
          c.cfg.unroll == 20);
    done(&c);
    mc_arena_free(&a);
  }
}

/* A translation model: S in types, pad ids, carry resolved by the model, the attention's
 * mask and output, concat, the counts (attention: u, w, v; m.U + q.W per timestep, the
 * score and context per pair); 'pad' as an ordinary name. */
static void test_translation(void) {
  McArena a = {0};
  Checked c = check_text("model nmt {\n"
                         "  let V = 50\n"
                         "  input src : i32[B, S] pad 0\n"
                         "  input tgt_in : i32[B, T]\n"
                         "  input tgt_out : i32[B, T] pad 0\n"
                         "  se = embedding(src, vocab=V, dim=8)\n"
                         "  enc = lstm(se, units=6)\n"
                         "  te = embedding(tgt_in, vocab=V, dim=8)\n"
                         "  pad = lstm(te, units=4)\n"
                         "  ctx = attention(pad, enc, units=5)\n"
                         "  ctx2 = attention(pad, enc, units=5, score=product)\n"
                         "  d2 = lstm(concat(pad, ctx), units=4)\n"
                         "  loss = softmax_xent(d2, tgt_out, vocab=V)\n"
                         "  output loss\n"
                         "}\n",
                         "nmt.moe");
  CHECK_OK(c);
  if (!c.errors) {
    CHECK(type_is(value_of(c.f, "se"), "f32[B, S, 8]"));
    CHECK(type_is(value_of(c.f, "ctx"), "f32[B, T, 6]"));
    CHECK(type_is(value_of(c.f, "d2"), "f32[B, T, 4]"));
    Expr *enc = value_of(c.f, "enc"), *ctx = value_of(c.f, "ctx");
    CHECK(enc->argv[LA_CARRY] == 0); /* no lstm carries state in a translation model */
    CHECK(ctx->mask_input && !strcmp(ctx->mask_input, "src"));
    CHECK(ctx->argv[LA_SCORE] == LAE_ADDITIVE);
    CHECK(value_of(c.f, "ctx2")->argv[LA_SCORE] == LAE_PRODUCT);
    ModelSummary s = fe_summarize(c.f, &a);
    CHECK(s.translation);
    int64_t att_p = 6 * 5 + 4 * 5 + 5, att_o = 6 * 5 + 4 * 5;
    CHECK(s.params_core ==
          lstm_params(8, 6) + lstm_params(8, 4) + 2 * att_p + lstm_params(4 + 6, 4));
    CHECK(s.ops_per_timestep ==
          lstm_ops(8, 6) + lstm_ops(8, 4) + att_o + (att_o + 5) + lstm_ops(4 + 6, 4));
    CHECK(s.ops_per_pair == 2 * (5 + 6));
  }
  done(&c);
  /* a language model: the lstm carries its state, there is no pair count */
  c = check_text("model lm { input t : i32[B, T]  input y : i32[B, T]\n"
                 "  e = embedding(t, vocab=9, dim=4)  h = lstm(e, units=4)\n"
                 "  loss = softmax_xent(h, y, vocab=9)  output loss }\n",
                 "lm.moe");
  CHECK_OK(c);
  if (!c.errors) {
    CHECK(value_of(c.f, "h")->argv[LA_CARRY] == 1);
    ModelSummary s = fe_summarize(c.f, &a);
    CHECK(!s.translation && s.ops_per_pair == 0);
  }
  done(&c);
  mc_arena_free(&a);
}

/* ---------------------------------------------------------------- robustness */

static void test_bad_inputs(void) {
  const char *bad[] = {
      "model a { x = lstm(units=1e300) output x }",
      "model a { input t : i32[B, T] e = embedding(t, vocab=1e30, dim=1e30) output e }",
      "model a { input t : i32[B, T] e = embedding(t, vocab=3000000, dim=3000000, vocab=2) }",
      "model a { let x = 1 let y = x * x * x * x * x * x * x * 1e300 * 1e300 input t : i32[y] }",
      "model a { input t : i32[B, T] x = t(t) y = (((t))) + [t, t] output y, y, z }",
      "model a { output loss } train { data = synthetic(1, 2, 3, 4) optimizer = adam(1, 2, 3, 4, "
      "5) } plan { mesh = [] recompute = [1, \"x\"] place * : on() place *.gate : shard(x) }",
      "model a { input t : f32[B, T, 3] m = moe(t, experts=2147483647, hidden=2147483647) output m "
      "}",
      "model a { input t : f32[B, T, 3] m = hmoe(t, groups=0, experts=-1, k=1.5, gating=3) }",
      "model a { let B = 1 let T = B input x : i32[T, B] }",
      "model a { } plan { devices = 0 place x : replicate }",
      "model a { input s : i32[B, S] pad 1e300 input t : i32[S] pad s x = attention(s, t) }",
      "model a { input s : f32[B, S, 2] x = attention(s, s, units=1e12) y = concat(x, 3) }",
      "model a { input s : i32[B, S, S] pad 0 e = embedding(s, vocab=4, dim=2) "
      "c = concat(e, e) a = attention(c, c, units=2) l = lstm(a, units=2, carry=true) }",
  };
  for (size_t i = 0; i < MC_ARRAY_LEN(bad); i++) {
    Checked c = check_text(bad[i], "bad.moe");
    CHECK(c.errors > 0);
    done(&c);
  }
  /* deep nesting within the parser's limit: sema walks it */
  McBuf b = {0};
  mc_buf_printf(&b, "model a { input t : f32[B, T, 2]\n x = ");
  for (int i = 0; i < 200; i++)
    mc_buf_printf(&b, "(t + ");
  mc_buf_printf(&b, "t");
  for (int i = 0; i < 200; i++)
    mc_buf_printf(&b, ")");
  mc_buf_printf(&b, "\n output x }\n");
  Checked c = check_text(b.data, "deep.moe");
  CHECK(c.errors == 1 && strstr(c.diag, "no scalar output"));
  done(&c);
  mc_buf_free(&b);
}

int main(void) {
  test_shapes_lm();
  test_shapes_ranks();
  test_config();
  test_paper_moe32();
  test_paper_others();
  test_examples();
  test_translation();
  test_bad_inputs();
  TEST_DONE();
}
