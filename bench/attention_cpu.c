/* attention_cpu.c: the cost of one attention layer on the CPU, forward and forward +
 * backward, for GNMT's additive score and the paper's product score (docs/language.md,
 * "The attention exactly"), beside one LSTM layer of the same width over the target, so
 * the two can be set against each other.
 *
 * The graph is the builder's expansion (projections, scores, masked softmax over a
 * padded source, context) with a sum as the loss, bound to B, T, S; float32, the
 * interpreter, parameters and inputs fixed, a quarter of the source positions padding.
 *
 *   scripts/setup     # CMake builds build/attention_cpu (tests/seq.cmake), or by hand:
 *   cc -O2 -D_GNU_SOURCE -I. -Ibuild -o build/attention_cpu bench/attention_cpu.c \
 *      build/libmoeccore.a -lopenblas -lm -lpthread
 *   OPENBLAS_NUM_THREADS=1 build/attention_cpu [B T S D A reps]   (default 64 16 16 256 256 5)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codegen/codegen.h"
#include "passes/passes.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static Tensor *P(Graph *g, const char *name, int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_param(g, name, ir_type(DT_F32, rank, d), INIT_ZERO, 0, (Loc){0});
}

/* kind 0: additive attention, 1: product attention, 2: an lstm over [B, T, D] */
static Graph *build(int kind, int64_t D, int64_t A, Tensor **ids) {
  Dim b = dim_sym('B'), t = dim_sym('T'), s = dim_sym('S'), d = dim_int(D), a = dim_int(A);
  Graph *g = ir_graph_new(kind == 2 ? "lstm" : kind ? "product" : "additive");
  Tensor *q = P(g, "q", 3, b, t, d);
  if (kind == 2) {
    Dim d4 = dim_int(4 * D);
    Tensor *whh = P(g, "w_hh", 2, d4, d, d), *h0 = P(g, "h0", 2, b, d, d);
    Tensor *wih = P(g, "w_ih", 2, d4, d, d);
    Tensor *in2[2] = {q, wih};
    int64_t tb[IR_MAX_ATTR] = {0, 1};
    Tensor *xp = ir_node(g, OP_MATMUL, 2, in2, tb, NULL)->out[0];
    Tensor *in4[4] = {xp, whh, h0, P(g, "c0", 2, b, d, d)};
    g->loss = ir_op1(g, OP_SUM, ir_node(g, OP_LSTM, 4, in4, NULL, NULL)->out[0]);
    return g;
  }
  Tensor *m = P(g, "m", 3, b, s, d), *u = P(g, "u", 2, d, a, a), *w = P(g, "w", 2, d, a, a);
  Tensor *v = P(g, "v", 1, a, a, a);
  Tensor *mu = ir_op2(g, OP_MATMUL, m, u), *qw = ir_op2(g, OP_MATMUL, q, w), *sc;
  if (kind == 1) {
    Tensor *in[2] = {ir_op2(g, OP_COL_SCALE, ir_op1(g, OP_TANH, qw), v), ir_op1(g, OP_TANH, mu)};
    int64_t tb[IR_MAX_ATTR] = {0, 1};
    sc = ir_node(g, OP_BMM, 2, in, tb, NULL)->out[0];
  } else {
    Tensor *in[3] = {qw, mu, v};
    sc = ir_node(g, OP_ATTN_SCORE, 3, in, NULL, NULL)->out[0];
  }
  Dim id[2] = {b, s};
  *ids = ir_input(g, "src", ir_type(DT_I32, 2, id), (Loc){0});
  Tensor *in1[1] = {*ids};
  Tensor *mask = ir_node(g, OP_PAD_MASK, 1, in1, NULL, NULL)->out[0];
  Tensor *ctx = ir_op2(g, OP_BMM, ir_op2(g, OP_MASKED_SOFTMAX, sc, mask), m);
  g->loss = ir_op1(g, OP_SUM, ctx);
  return g;
}

int main(int argc, char **argv) {
  int64_t B = 64, T = 16, S = 16, D = 256, A = 256;
  int reps = 5;
  if (argc == 7) {
    B = atoll(argv[1]), T = atoll(argv[2]), S = atoll(argv[3]), D = atoll(argv[4]);
    A = atoll(argv[5]), reps = atoi(argv[6]);
  } else if (argc != 1) {
    fprintf(stderr, "usage: attention_cpu [B T S D A reps]\n");
    return 2;
  }
  if (B < 1 || T < 1 || S < 1 || D < 1 || A < 1 || reps < 1) {
    fprintf(stderr, "attention_cpu: every size must be positive\n");
    return 2;
  }
  printf("B=%lld T=%lld S=%lld D=%lld A=%lld, float32, %d reps (ms per pass)\n", (long long)B,
         (long long)T, (long long)S, (long long)D, (long long)A, reps);
  for (int kind = 0; kind < 3; kind++) {
    Tensor *ids = NULL;
    Graph *g = build(kind, D, A, &ids);
    PassCtx pc = {.cfg = NULL, .devices = 1, .training = true};
    pass_autodiff(g, &pc);
    ir_bind_seq(g, B, T, S);
    Program *p = cg_lower(g, PREC_F32);
    for (int i = 0; i < g->ntensors; i++) {
      Tensor *t = g->tensors[i];
      if (t->kind == TK_PARAM)
        for (int64_t k = 0; k < t->numel; k++)
          ((float *)p->buf[i])[k] = 0.02f * (float)(k % 17) - 0.15f;
    }
    if (ids) /* the last quarter of each source row is padding (id 0) */
      for (int64_t k = 0; k < ids->numel; k++)
        ((int32_t *)p->buf[ids->id])[k] = (k % S) < S - S / 4 ? 1 : 0;
    KernelCtx kc = {.training = true, .seed = 1, .batch_local = B, .ndevices = 1};
    rt_exec(p, &kc, 0, p->ninstrs); /* warm-up */
    double t0 = now();
    for (int r = 0; r < reps; r++)
      rt_exec(p, &kc, 0, p->first_backward);
    double t1 = now();
    for (int r = 0; r < reps; r++)
      rt_exec(p, &kc, 0, p->ninstrs);
    double t2 = now();
    printf("  %-9s forward %8.2f   forward+backward %8.2f\n", g->name, (t1 - t0) / reps * 1e3,
           (t2 - t1) / reps * 1e3);
    cg_program_free(p);
    ir_graph_free(g);
  }
  return 0;
}
