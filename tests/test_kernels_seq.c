/* test_kernels_seq.c: the sequence ops' CPU kernels against reference loops written
 * here, in float32 and float64: bmm in every transpose form; the additive attention
 * scores (v . tanh(qw + mu)); the masked softmax (rows sum to 1 over real positions,
 * weights exactly 0 at padding, an all-padding row all 0, no NaN); pad masks and counts;
 * the padded cross-entropy (the mean over real targets, a hand-made case, padded rows
 * without gradient); joining and slicing columns; a target id outside the vocabulary is
 * a clear error. */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../codegen/codegen.h"
#include "kernel_test.h"
#include "test.h"

#define I_(n) dim_int(n)

static Type f32(int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_type(DT_F32, rank, d);
}
static Tensor *param(Graph *g, const char *name, Type t) {
  return ir_param(g, name, t, INIT_ZERO, 0, (Loc){0});
}
static Tensor *node(Graph *g, OpKind op, int nin, Tensor *a, Tensor *b, Tensor *c, int64_t i0,
                    int64_t i1) {
  Tensor *in[3] = {a, b, c};
  int64_t ia[IR_MAX_ATTR] = {i0, i1};
  return ir_node(g, op, nin, in, ia, NULL)->out[0];
}

static void set_ids(Program *p, const Tensor *t, const int32_t *v) {
  memcpy(p->buf[t->id], v, (size_t)t->numel * sizeof(int32_t));
}
static void run(Program *p) {
  KernelCtx kc = {.seed = 1, .batch_local = 1, .ndevices = 1};
  rt_exec(p, &kc, 0, p->ninstrs);
}
/* ---------------------------------------------------------------- bmm */

static void t_bmm(void) {
  enum { Bt = 3, M = 4, K = 5, N = 2 };
  for (int pr = 0; pr < 2; pr++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        Graph *g = ir_graph_new("bmm");
        Tensor *a = param(g, "a", ta ? f32(3, I_(Bt), I_(K), I_(M)) : f32(3, I_(Bt), I_(M), I_(K)));
        Tensor *b = param(g, "b", tb ? f32(3, I_(Bt), I_(N), I_(K)) : f32(3, I_(Bt), I_(K), I_(N)));
        Tensor *y = node(g, OP_BMM, 2, a, b, NULL, ta, tb);
        ir_bind(g, 1, 1);
        Program *p = cg_lower(g, (Precision)pr);
        double *av = randv(a->numel, 1, 1), *bv = randv(b->numel, 2, 1);
        set(p, a, av);
        set(p, b, bv);
        run(p);
        double ref[Bt * M * N];
        for (int64_t i = 0; i < Bt; i++)
          for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
              double s = 0;
              for (int64_t k = 0; k < K; k++) {
                double x = ta ? av[(i * K + k) * M + m] : av[(i * M + m) * K + k];
                double w = tb ? bv[(i * N + n) * K + k] : bv[(i * K + k) * N + n];
                s += x * w;
              }
              ref[(i * M + m) * N + n] = s;
            }
        CHECK(rel_err(p, y, ref) < tol((Precision)pr));
        mc_free(av);
        mc_free(bv);
        cg_program_free(p);
        ir_graph_free(g);
      }
}

/* ---------------------------------------------------------------- attention */

static void t_attn_score(void) {
  enum { Bt = 2, T = 3, S = 5, A = 11 }; /* A not a multiple of 8: the tail too */
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("attn_score");
    Tensor *q = param(g, "qw", f32(3, I_(Bt), I_(T), I_(A)));
    Tensor *m = param(g, "mu", f32(3, I_(Bt), I_(S), I_(A)));
    Tensor *v = param(g, "v", f32(1, I_(A), I_(1), I_(1)));
    Tensor *s = node(g, OP_ATTN_SCORE, 3, q, m, v, 0, 0);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double *qv = randv(q->numel, 3, 2), *mv = randv(m->numel, 4, 2), *vv = randv(A, 5, 1);
    set(p, q, qv);
    set(p, m, mv);
    set(p, v, vv);
    run(p);
    double ref[Bt * T * S];
    for (int64_t b = 0; b < Bt; b++)
      for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < S; j++) {
          double acc = 0;
          for (int64_t d = 0; d < A; d++)
            acc += vv[d] * tanh(qv[(b * T + t) * A + d] + mv[(b * S + j) * A + d]);
          ref[(b * T + t) * S + j] = acc;
        }
    CHECK(rel_err(p, s, ref) < (pr == PREC_F64 ? 1e-12 : 1e-5));
    mc_free(qv);
    mc_free(mv);
    mc_free(vv);
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* ids -> pad_mask -> masked_softmax; count_nonpad */
static void t_masked_softmax(void) {
  enum { Bt = 3, T = 2, S = 4 };
  const int32_t pad = 7;
  /* row 0: two real then pads; row 1: all real; row 2: all pads */
  const int32_t ids[Bt * S] = {3, 1, pad, pad, 0, 2, 4, 1, pad, pad, pad, pad};
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("masked_softmax");
    Tensor *s = param(g, "s", f32(3, I_(Bt), I_(T), I_(S)));
    Dim d[2] = {I_(Bt), I_(S)};
    Tensor *id = ir_input(g, "ids", ir_type(DT_I32, 2, d), (Loc){0});
    Tensor *mask = node(g, OP_PAD_MASK, 1, id, NULL, NULL, pad, 0);
    Tensor *a = node(g, OP_MASKED_SOFTMAX, 2, s, mask, NULL, 0, 0);
    Tensor *cnt = node(g, OP_COUNT_NONPAD, 1, id, NULL, NULL, pad, 0);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double *sv = randv(s->numel, 6, 30); /* large scores: the max must be subtracted, */
    sv[2] = 1e30;                        /* over the real positions only: a huge */
    sv[(2 * T) * S + 1] = 1e30;          /* score at a pad changes nothing */
    set(p, s, sv);
    set_ids(p, id, ids);
    run(p);
    CHECK(get(p, cnt, 0) == 6);
    double ref[Bt * T * S] = {0};
    for (int64_t b = 0; b < Bt; b++)
      for (int64_t t = 0; t < T; t++) {
        const double *x = sv + (b * T + t) * S;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < S; j++)
          if (ids[b * S + j] != pad) mx = fmax(mx, x[j]);
        for (int64_t j = 0; j < S; j++)
          if (ids[b * S + j] != pad) sum += exp(x[j] - mx);
        for (int64_t j = 0; j < S; j++)
          ref[(b * T + t) * S + j] = ids[b * S + j] != pad ? exp(x[j] - mx) / sum : 0;
      }
    CHECK(rel_err(p, a, ref) < tol((Precision)pr));
    for (int64_t i = 0; i < a->numel; i++) {
      int64_t b = i / (T * S), j = i % S;
      if (ids[b * S + j] == pad) CHECK(get(p, a, i) == 0.0); /* exactly */
      CHECK(get(p, a, i) == get(p, a, i));
    }
    for (int64_t j = 0; j < S; j++)
      CHECK(get(p, mask, j) == (ids[j] != pad));
    mc_free(sv);
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* ---------------------------------------------------------------- padded cross-entropy */

/* Hand-made: V = 2, zero logits for every row: -log p = log 2 per real target. Targets
 * {1, pad, 0, pad}: count 2, loss = (log 2 + log 2) / 2 = log 2, and the gradient of the
 * real rows is (p - onehot) / 2 = +-1/4, the padded rows' 0. */
static void t_xent_pad(void) {
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("xent_pad");
    Tensor *lg = param(g, "logits", f32(2, I_(4), I_(2), I_(1)));
    Tensor *tg = ir_input(g, "targets", ir_type(DT_I32, 1, (Dim[]){I_(4)}), (Loc){0});
    Tensor *cnt = node(g, OP_COUNT_NONPAD, 1, tg, NULL, NULL, 5, 0);
    Tensor *in[3] = {lg, tg, cnt};
    int64_t ia[IR_MAX_ATTR] = {5};
    Node *xn = ir_node(g, OP_XENT_PAD, 3, in, ia, NULL);
    Tensor *one = param(g, "one", f32(0, I_(1), I_(1), I_(1)));
    Tensor *bin[4] = {one, xn->out[1], tg, cnt};
    Tensor *dl = ir_node(g, OP_XENT_PAD_BWD, 4, bin, ia, NULL)->out[0];
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    const int32_t t4[4] = {1, 5, 0, 5};
    double zeros[8] = {0}, onev[1] = {1};
    set(p, lg, zeros);
    set(p, one, onev);
    set_ids(p, tg, t4);
    run(p);
    CHECK(get(p, cnt, 0) == 2);
    CHECK_CLOSE(get(p, xn->out[0], 0), log(2.0), tol((Precision)pr), 0);
    const double want[8] = {0.25, -0.25, 0, 0, -0.25, 0.25, 0, 0};
    CHECK(rel_err(p, dl, want) < tol((Precision)pr));
    cg_program_free(p);
    ir_graph_free(g);
  }
}

/* every target padding: count 0, loss 0 (the mean of nothing), no NaN */
static void t_xent_all_pad(void) {
  Graph *g = ir_graph_new("xent_all_pad");
  Tensor *lg = param(g, "logits", f32(2, I_(3), I_(4), I_(1)));
  Tensor *tg = ir_input(g, "targets", ir_type(DT_I32, 1, (Dim[]){I_(3)}), (Loc){0});
  Tensor *cnt = node(g, OP_COUNT_NONPAD, 1, tg, NULL, NULL, 0, 0);
  Tensor *in[3] = {lg, tg, cnt};
  int64_t ia[IR_MAX_ATTR] = {0};
  Node *xn = ir_node(g, OP_XENT_PAD, 3, in, ia, NULL);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F32);
  const int32_t t3[3] = {0, 0, 0};
  double *lv = randv(12, 8, 3);
  set(p, lg, lv);
  set_ids(p, tg, t3);
  run(p);
  CHECK(get(p, xn->out[0], 0) == 0);
  mc_free(lv);
  cg_program_free(p);
  ir_graph_free(g);
}

/* a target outside [0, V) that is not the pad: mc_die naming the layer, exit 1 */
static void t_bad_target(void) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    Graph *g = ir_graph_new("bad");
    ir_set_context(g, "loss", NULL, (Loc){0});
    Tensor *lg = param(g, "logits", f32(2, I_(2), I_(3), I_(1)));
    Tensor *tg = ir_input(g, "targets", ir_type(DT_I32, 1, (Dim[]){I_(2)}), (Loc){0});
    Tensor *cnt = node(g, OP_COUNT_NONPAD, 1, tg, NULL, NULL, 0, 0);
    Tensor *in[3] = {lg, tg, cnt};
    ir_node(g, OP_XENT_PAD, 3, in, NULL, NULL);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, PREC_F32);
    const int32_t t2[2] = {1, 9};
    set_ids(p, tg, t2);
    run(p);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
}

/* ---------------------------------------------------------------- columns */

static void t_columns(void) {
  for (int pr = 0; pr < 2; pr++) {
    Graph *g = ir_graph_new("columns");
    Tensor *a = param(g, "a", f32(3, I_(2), I_(3), I_(2)));
    Tensor *b = param(g, "b", f32(3, I_(2), I_(3), I_(3)));
    Tensor *v = param(g, "v", f32(1, I_(5), I_(1), I_(1)));
    Tensor *c = node(g, OP_CONCAT_LAST, 2, a, b, NULL, 0, 0);
    Tensor *cs = node(g, OP_COL_SCALE, 2, c, v, NULL, 0, 0);
    Tensor *sl = node(g, OP_SLICE_LAST, 1, cs, NULL, NULL, 1, 3);
    ir_bind(g, 1, 1);
    Program *p = cg_lower(g, (Precision)pr);
    double *av = randv(12, 9, 1), *bv = randv(18, 10, 1), *vv = randv(5, 11, 2);
    set(p, a, av);
    set(p, b, bv);
    set(p, v, vv);
    run(p);
    double ref[6 * 3];
    for (int r = 0; r < 6; r++)
      for (int j = 0; j < 3; j++) {
        int col = 1 + j;
        double x = col < 2 ? av[r * 2 + col] : bv[r * 3 + col - 2];
        ref[r * 3 + j] = x * vv[col];
      }
    CHECK(rel_err(p, sl, ref) < tol((Precision)pr));
    cg_program_free(p);
    mc_free(av);
    mc_free(bv);
    mc_free(vv);
    ir_graph_free(g);
  }
}

int main(void) {
  t_bmm();
  t_attn_score();
  t_masked_softmax();
  t_xent_pad();
  t_xent_all_pad();
  t_bad_target();
  t_columns();
  TEST_DONE();
}
