/* test_jit.c: the LLVM JIT (codegen/jit.c, hostjit.c).
 *
 *   1. fused kernels: small expression graphs over every elementwise op (scalar
 *      broadcast, odd sizes for vector tails, exp/tanh clamps and branches,
 *      relu at 0 and -0) run unfused and fused, in float32 and float64: the
 *      outputs must be the same bits; the cache compiles a repeated group once.
 *   2. host JIT: a real program run by the interpreter and by the host JIT gives
 *      the same bits; a program of 10,000 no-op kernels measures the host
 *      overhead per kernel call both ways (printed).
 * Skips (77) when moec was built without LLVM. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../codegen/jit.h"
#include "../passes/fusion.h"
#include "test.h"

static Type vec(int64_t n) {
  Dim d[1] = {dim_int(n)};
  return ir_type(DT_F32, n ? 1 : 0, d);
}

/* A graph of every fusable op; n elements. Returns its outputs in outs[]. */
static Graph *expr_graph(int64_t n, Tensor **ins, Tensor **outs, int *nouts) {
  Graph *g = ir_graph_new("expr");
  Loc l = {0};
  Tensor *x = ir_param(g, "x", vec(n), INIT_ZERO, 0, l);
  Tensor *y = ir_param(g, "y", vec(n), INIT_ZERO, 0, l);
  Tensor *s = ir_param(g, "s", vec(0), INIT_ZERO, 0, l); /* a scalar */
  ins[0] = x, ins[1] = y, ins[2] = s;
  Tensor *a = ir_op2(g, OP_ADD, x, y);
  Tensor *b = ir_op1(g, OP_TANH, a);
  Tensor *c = ir_op2(g, OP_MUL, b, s); /* broadcast */
  Tensor *d = ir_op1(g, OP_SIGMOID, c);
  Tensor *e = ir_op1(g, OP_SOFTPLUS, x);
  Tensor *f = ir_op2(g, OP_SUB, d, e);
  double fa[IR_MAX_ATTR] = {0.37, -1.25};
  Tensor *h = ir_node(g, OP_SCALE, 1, (Tensor *[]){f}, NULL, fa)->out[0];
  Tensor *r = ir_op1(g, OP_RELU, x);
  Tensor *rb = ir_op2(g, OP_RELU_BWD, h, x);
  Tensor *tb = ir_op2(g, OP_TANH_BWD, rb, b);
  Tensor *sb = ir_op2(g, OP_SIGMOID_BWD, tb, d);
  Tensor *pb = ir_op2(g, OP_SOFTPLUS_BWD, sb, y);
  Tensor *z = ir_op2(g, OP_ADD, pb, r);
  Tensor *w = ir_op2(g, OP_ADD, z, s); /* broadcast add */
  ir_op1(g, OP_SUM, h);                /* h is read outside the group: materialised */
  outs[0] = w;
  outs[1] = h;
  *nouts = 2;
  return g;
}

static void fill(Program *p, const Tensor *t, uint64_t seed, double scale) {
  uint64_t key = mc_rng_key(seed, 7, 0);
  for (int64_t i = 0; i < t->numel; i++) {
    double v = scale * (2 * mc_rng_uniform(key, (uint64_t)i) - 1);
    if (i % 17 == 3) v = 0;
    if (i % 17 == 5) v = -0.0;
    if (i % 17 == 7) v = 120; /* past exp's clamp */
    if (i % 17 == 9) v = -120;
    if (i % 17 == 11) v = 0.3; /* tanh's polynomial branch */
    if (p->prec == PREC_F64)
      rt_f64(p, t)[i] = v;
    else
      rt_f32(p, t)[i] = (float)v;
  }
}

static double now(void);

static void test_fused_kernels(void) {
  int64_t sizes[] = {1, 7, 1000, 4099};
  Config cfg; /* fuse = true (the default) */
  fe_config_defaults(&cfg);
  for (int pr = 0; pr < 2; pr++) {
    for (size_t si = 0; si < MC_ARRAY_LEN(sizes); si++) {
      int64_t n = sizes[si];
      Tensor *in0[3], *out0[2], *in1[3], *out1[2];
      int no;
      Graph *g0 = expr_graph(n, in0, out0, &no);
      Graph *g1 = expr_graph(n, in1, out1, &no);
      PassCtx pc = {.cfg = &cfg, .devices = 1};
      int before = g1->nnodes;
      pass_fusion(g1, &pc);
      ir_verify(g1);
      CHECK(g1->nnodes < before);
      int nfused = 0;
      for (int k = 0; k < g1->nnodes; k++)
        nfused += g1->nodes[k]->op == OP_FUSED;
      CHECK(nfused == 1);     /* one group: every op joins (same shape, scalar broadcast) */
      CHECK(g1->nnodes == 3); /* the fused node, softplus (never fused) and the sum */
      ir_bind(g0, 1, 1);
      ir_bind(g1, 1, 1);
      Program *p0 = cg_lower(g0, (Precision)pr), *p1 = cg_lower(g1, (Precision)pr);
      for (int i = 0; i < 3; i++) {
        fill(p0, in0[i], 11 + (uint64_t)i, i == 2 ? 1.5 : 4);
        fill(p1, in1[i], 11 + (uint64_t)i, i == 2 ? 1.5 : 4);
      }
      KernelCtx kc = {.batch_local = 1, .ndevices = 1};
      rt_exec(p0, &kc, 0, p0->ninstrs);
      rt_exec(p1, &kc, 0, p1->ninstrs);
      size_t es = pr ? sizeof(double) : sizeof(float);
      for (int j = 0; j < no; j++) {
        bool same = !memcmp(p0->buf[out0[j]->id], p1->buf[out1[j]->id], (size_t)n * es);
        if (!same) {
          for (int64_t i = 0; i < n; i++) {
            double a = pr ? rt_f64(p0, out0[j])[i] : rt_f32(p0, out0[j])[i];
            double b = pr ? rt_f64(p1, out1[j])[i] : rt_f32(p1, out1[j])[i];
            if (memcmp(&a, &b, sizeof a)) {
              fprintf(stderr, "  %s n=%lld out %d [%lld]: unfused %.9g fused %.9g\n",
                      pr ? "f64" : "f32", (long long)n, j, (long long)i, a, b);
              break;
            }
          }
        }
        CHECK(same);
      }
      cg_program_free(p0);
      cg_program_free(p1);
      ir_graph_free(g0);
      ir_graph_free(g1);
    }
  }
  /* timing (printed, not checked): the expression graph over 1M floats, unfused vs fused */
  {
    int64_t n = 1 << 20;
    Tensor *in0[3], *out0[2], *in1[3], *out1[2];
    int no;
    Graph *g0 = expr_graph(n, in0, out0, &no), *g1 = expr_graph(n, in1, out1, &no);
    PassCtx pc = {.cfg = &cfg, .devices = 1};
    pass_fusion(g1, &pc);
    ir_bind(g0, 1, 1);
    ir_bind(g1, 1, 1);
    Program *p[2] = {cg_lower(g0, PREC_F32), cg_lower(g1, PREC_F32)};
    KernelCtx kc = {.batch_local = 1, .ndevices = 1};
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < 8; r++)
      for (int v = 0; v < 2; v++) {
        for (int i = 0; i < 3; i++)
          fill(p[v], v ? in1[i] : in0[i], 11 + (uint64_t)i, 2);
        double t0 = now();
        rt_exec(p[v], &kc, 0, p[v]->ninstrs);
        double dt = now() - t0;
        best[v] = dt < best[v] ? dt : best[v];
      }
    printf(
        "expression graph, %d elementwise ops over 2^20 floats: unfused %.2f ms (%d kernel calls), "
        "fused %.2f ms (%d)\n",
        g0->nnodes - 1, best[0] * 1e3, p[0]->ninstrs, best[1] * 1e3, p[1]->ninstrs);
    cg_program_free(p[0]);
    cg_program_free(p[1]);
    ir_graph_free(g0);
    ir_graph_free(g1);
  }
  /* the cache: the same group again compiles nothing */
  int c0, h0, c1, h1;
  cg_jit_stats(&c0, &h0);
  Tensor *in[3], *out[2];
  int no;
  Graph *g = expr_graph(1000, in, out, &no);
  PassCtx pc = {.cfg = &cfg, .devices = 1};
  pass_fusion(g, &pc);
  ir_bind(g, 1, 1);
  Program *p = cg_lower(g, PREC_F32);
  cg_jit_stats(&c1, &h1);
  CHECK(c1 == c0 && h1 == h0 + 1);
  cg_program_free(p);
  ir_graph_free(g);
}

/* ---------------------------------------------------------------- host JIT */

static int64_t calls;

#define NOOP(i)                                                                                    \
  static void noop##i(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {    \
    (void)ctx, (void)n, (void)in, (void)out;                                                       \
    calls++;                                                                                       \
    __asm__ volatile("" ::: "memory");                                                             \
  }
NOOP(0)
NOOP(1)
NOOP(2)
NOOP(3)
NOOP(4)
NOOP(5)
NOOP(6)
NOOP(7)

static const KernelFn noops[8] = {noop0, noop1, noop2, noop3, noop4, noop5, noop6, noop7};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_hostjit(void) {
  /* equivalence on a real program: the expression graph, interpreter vs JIT */
  Tensor *in0[3], *out0[2], *in1[3], *out1[2];
  int no;
  Graph *g0 = expr_graph(333, in0, out0, &no), *g1 = expr_graph(333, in1, out1, &no);
  ir_bind(g0, 1, 1);
  ir_bind(g1, 1, 1);
  Program *p0 = cg_lower_on(g0, PREC_F32, &rt_backend_cpu, &(CgOpts){.no_jit = true});
  Program *p1 = cg_lower(g1, PREC_F32); /* the host JIT compiled with the program */
  for (int i = 0; i < 3; i++) {
    fill(p0, in0[i], 3 + (uint64_t)i, 2);
    fill(p1, in1[i], 3 + (uint64_t)i, 2);
  }
  KernelCtx kc = {.batch_local = 1, .ndevices = 1};
  CHECK(!p0->host_fwd && !p0->host_bwd);
  CHECK(p1->host_fwd != NULL);
  rt_exec(p0, &kc, 0, p0->ninstrs);
  rt_exec(p1, &kc, 0, p1->ninstrs);
  for (int j = 0; j < no; j++)
    CHECK(!memcmp(p0->buf[out0[j]->id], p1->buf[out1[j]->id], 333 * sizeof(float)));
  cg_program_free(p0);
  cg_program_free(p1);
  ir_graph_free(g0);
  ir_graph_free(g1);

  /* overhead per call: programs of no-op kernels (8 distinct functions, round robin,
   * so the interpreter's indirect call is not trivially predicted), half forward,
   * half backward; 200 calls (a real step's size) and 10,000 */
  int sizes[2] = {200, 10000};
  for (int si = 0; si < 2; si++) {
    int N = sizes[si], reps = 2000000 / N;
    Program p = {0};
    Node node = {0};
    void *bufs[2] = {NULL, NULL};
    p.instrs = mc_calloc((size_t)N, sizeof(Instr));
    p.ninstrs = N;
    p.first_backward = N / 2;
    for (int k = 0; k < N; k++)
      p.instrs[k] = (Instr){.fn = noops[k % 8], .node = &node, .in = bufs, .out = bufs};
    double t0 = now();
    cg_hostjit_compile(&p);
    double tc = now() - t0;
    void (*fwd)(const KernelCtx *) = p.host_fwd, (*bwd)(const KernelCtx *) = p.host_bwd;
    CHECK(fwd && bwd);
    for (int mode = 0; mode < 2; mode++) {
      p.host_fwd = mode ? fwd : NULL;
      p.host_bwd = mode ? bwd : NULL;
      rt_exec(&p, &kc, 0, N); /* warm */
      calls = 0;
      double best = 1e30;
      for (int r = 0; r < 5; r++) {
        t0 = now();
        for (int i = 0; i < reps; i++) {
          rt_exec(&p, &kc, 0, p.first_backward);
          rt_exec(&p, &kc, p.first_backward, N);
        }
        double dt = (now() - t0) / ((double)reps * N);
        best = dt < best ? dt : best;
      }
      CHECK(calls == (int64_t)5 * reps * N);
      printf("program of %5d calls: host overhead per kernel call, %-11s %.2f ns\n", N,
             mode ? "host JIT:" : "interpreter:", best * 1e9);
    }
    printf("program of %5d calls: host JIT compile %.1f ms\n", N, tc * 1e3);
    cg_hostjit_free(p.hostjit);
    mc_free(p.instrs);
  }
}

int main(void) {
  if (!cg_jit_available()) {
    printf("skipped: moec was built without LLVM (MOEC_LLVM=OFF)\n");
    return 77;
  }
  test_fused_kernels();
  test_hostjit();
  TEST_DONE();
}
