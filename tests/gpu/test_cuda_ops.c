/* test_cuda_ops.c: every op with a CUDA kernel against the CPU kernel (the
 * reference), float32 and float64, on random inputs (ids in range, offsets and
 * positions from a real dispatch, ties in top-k, k == E, empty experts).
 *
 * Per case: the CPU kernel and the CUDA kernel run on the same inputs; outputs
 * are poisoned before each run (NaN, or a sentinel for i32) so an unwritten
 * element fails; guard bytes around every device output catch overruns; the CUDA
 * kernel runs twice and must give the same bits (determinism). Float outputs
 * must satisfy |d| <= atol + rtol*|ref| with rtol = 1e-5, atol = 1e-6 in float32
 * (1e-10 / 1e-12 in float64); for ops whose sums run in another order on the GPU
 * (GEMMs, recurrences, long reductions) atol is scaled by max(1, max|ref|).
 * i32 outputs must be equal. Prints the first mismatches of each output.
 *
 * Without a GPU (or built without CUDA): prints "SKIP: ..." and exits 77. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "runtime/runtime.h"
#include "tests/test.h"
#ifdef MOEC_HAVE_CUDA
#include "runtime/cuda/cuda.h"
#endif

#define MAXIO 12
#define GUARD 256 /* bytes before and after every device output */
#define POISON_I32 (-777777)

static const Backend *cuda;
static void *cuda_dev;
static uint64_t rng_state = 0x1234567ull;
static bool tested[OP_COUNT];
static int ncases;

static double urand(void) { /* [0,1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}
static double *vals(int64_t n, double lo, double hi) {
  double *v = mc_malloc((size_t)n * sizeof(double));
  for (int64_t i = 0; i < n; i++)
    v[i] = lo + (hi - lo) * urand();
  return v;
}
static int32_t *ints(int64_t n, int32_t lo, int32_t hi) { /* [lo, hi) */
  int32_t *v = mc_malloc((size_t)n * sizeof(int32_t));
  for (int64_t i = 0; i < n; i++)
    v[i] = lo + (int32_t)(urand() * (hi - lo));
  return v;
}

/* ---------------------------------------------------------------- a case */

typedef struct Case {
  const char *name;
  Graph *g;
  Tensor *in[MAXIO];
  double *f[MAXIO]; /* master values of float inputs */
  int32_t *i[MAXIO];
  int nin;
  bool training, reduce;
} Case;

static Case begin(const char *name) {
  Case c = {0};
  c.name = name;
  c.g = ir_graph_new(name);
  return c;
}

static Type ty(DType dt, int rank, const int64_t *d) {
  Dim dims[MAX_RANK];
  for (int k = 0; k < rank; k++)
    dims[k] = dim_int(d[k]);
  return ir_type(dt, rank, dims);
}

/* Float input of `rank` dims taking ownership of v. */
static Tensor *fin(Case *c, double *v, int rank, int64_t d0, int64_t d1, int64_t d2) {
  int64_t d[3] = {d0, d1, d2};
  char nm[16];
  snprintf(nm, sizeof nm, "in%d", c->nin);
  Tensor *t = ir_input(c->g, nm, ty(DT_F32, rank, d), (Loc){0});
  c->in[c->nin] = t;
  c->f[c->nin++] = v;
  return t;
}
static Tensor *iin(Case *c, int32_t *v, int rank, int64_t d0, int64_t d1) {
  int64_t d[2] = {d0, d1};
  char nm[16];
  snprintf(nm, sizeof nm, "in%d", c->nin);
  Tensor *t = ir_input(c->g, nm, ty(DT_I32, rank, d), (Loc){0});
  c->in[c->nin] = t;
  c->i[c->nin++] = v;
  return t;
}

static size_t tbytes(const Tensor *t, Precision p) {
  return (size_t)t->numel * (t->ty.dtype == DT_I32 ? 4 : p == PREC_F64 ? 8 : 4);
}

static void *host_input(const Case *c, int k, Precision p) {
  const Tensor *t = c->in[k];
  void *h = mc_malloc(tbytes(t, p) + 1);
  for (int64_t e = 0; e < t->numel; e++) {
    if (t->ty.dtype == DT_I32)
      ((int32_t *)h)[e] = c->i[k][e];
    else if (p == PREC_F64)
      ((double *)h)[e] = c->f[k][e];
    else
      ((float *)h)[e] = (float)c->f[k][e];
  }
  return h;
}

static void poison(void *h, const Tensor *t, Precision p) {
  for (int64_t e = 0; e < t->numel; e++) {
    if (t->ty.dtype == DT_I32)
      ((int32_t *)h)[e] = POISON_I32;
    else if (p == PREC_F64)
      ((double *)h)[e] = NAN;
    else
      ((float *)h)[e] = NAN;
  }
}

static bool tf32; /* grouped GEMMs in TF32: float32 tolerances for its 10-bit mantissa */

static double getf(const void *h, int64_t e, Precision p) {
  return p == PREC_F64 ? ((const double *)h)[e] : (double)((const float *)h)[e];
}

/* Compares one output; returns the number of mismatches. */
static int compare(const Case *c, const Node *n, int j, const void *ref, const void *got,
                   Precision p) {
  const Tensor *t = n->out[j];
  int bad = 0;
  if (t->ty.dtype == DT_I32) {
    for (int64_t e = 0; e < t->numel; e++) {
      int32_t a = ((const int32_t *)ref)[e], b = ((const int32_t *)got)[e];
      if (a != b && bad++ < 5)
        fprintf(stderr, "  %s [%s] out%d[%lld]: cuda %d, cpu %d%s\n", c->name,
                p == PREC_F64 ? "f64" : "f32", j, (long long)e, b, a,
                b == POISON_I32 ? " (never written)" : "");
    }
    return bad;
  }
  double rtol = p == PREC_F64 ? 1e-10
                : tf32        ? 5e-3
                              : 1e-5,
         atol = p == PREC_F64 ? 1e-12
                : tf32        ? 5e-3
                              : 1e-6;
  if (c->reduce) {
    double mx = 1;
    for (int64_t e = 0; e < t->numel; e++)
      if (isfinite(getf(ref, e, p))) mx = fmax(mx, fabs(getf(ref, e, p)));
    atol *= mx;
  }
  for (int64_t e = 0; e < t->numel; e++) {
    double a = getf(ref, e, p), b = getf(got, e, p);
    bool ok = a == b || fabs(a - b) <= atol + rtol * fabs(a);
    if (isnan(b)) ok = false;
    if (!ok && bad++ < 5)
      fprintf(stderr, "  %s [%s] out%d[%lld]: cuda %.9g, cpu %.9g (|d| %.3g)%s\n", c->name,
              p == PREC_F64 ? "f64" : "f32", j, (long long)e, b, a, fabs(a - b),
              isnan(b) ? " (never written?)" : "");
  }
  return bad;
}

/* Runs op on the case's inputs on both backends in one precision and compares. */
static void run_prec(Case *c, Node *n, Precision p) {
  const KernelFn cpu = rt_cpu_kernels(p)[n->op], gpu = cuda->kernels(p)[n->op];
  if (!cpu) {
    printf("  %-28s %s: no cpu kernel, not compared\n", c->name, p == PREC_F64 ? "f64" : "f32");
    return;
  }
  test_checks++;
  if (!gpu) {
    test_failures++;
    fprintf(stderr, "%s: op '%s' has a cpu kernel but no cuda kernel (%s)\n", c->name,
            ir_ops[n->op].name, p == PREC_F64 ? "f64" : "f32");
    return;
  }
  KernelCtx ctx = {.training = c->training,
                   .seed = 7,
                   .step = 3,
                   .batch0 = 3,
                   .batch_local = 4,
                   .device = 0,
                   .ndevices = 1,
                   .dev = NULL};
  void *hin[MAXIO], *hout[MAXIO], *din[MAXIO], *dout[MAXIO], *dbase[MAXIO], *got[MAXIO],
      *got2[MAXIO];
  for (int k = 0; k < n->nin; k++) {
    hin[k] = host_input(c, k, p);
    din[k] = cuda->alloc(tbytes(n->in[k], p));
    CHECK(din[k] != NULL);
    cuda->upload(din[k], hin[k], tbytes(n->in[k], p));
  }
  for (int j = 0; j < n->nout; j++) {
    size_t b = tbytes(n->out[j], p);
    hout[j] = mc_malloc(b + 1);
    got[j] = mc_malloc(b + 2 * GUARD);
    got2[j] = mc_malloc(b + 2 * GUARD);
    poison(hout[j], n->out[j], p);
    dbase[j] = cuda->alloc(b + 2 * GUARD);
    CHECK(dbase[j] != NULL);
    dout[j] = (char *)dbase[j] + GUARD;
  }
  cpu(&ctx, n, hin, hout);

  ctx.dev = cuda_dev;
  for (int rep = 0; rep < 2; rep++) {
    for (int j = 0; j < n->nout; j++) { /* guards 0xA5, output poisoned */
      size_t b = tbytes(n->out[j], p);
      unsigned char *h = rep ? got2[j] : got[j];
      memset(h, 0xA5, b + 2 * GUARD);
      poison(h + GUARD, n->out[j], p);
      cuda->upload(dbase[j], h, b + 2 * GUARD);
    }
    gpu(&ctx, n, din, dout);
    cuda->sync();
    for (int j = 0; j < n->nout; j++)
      cuda->download(rep ? got2[j] : got[j], dbase[j], tbytes(n->out[j], p) + 2 * GUARD);
  }
  for (int j = 0; j < n->nout; j++) {
    size_t b = tbytes(n->out[j], p);
    const unsigned char *h = got[j];
    int gbad = 0;
    for (size_t q = 0; q < GUARD; q++)
      gbad += (h[q] != 0xA5) + (h[GUARD + b + q] != 0xA5);
    test_checks++;
    if (gbad) {
      test_failures++;
      fprintf(stderr, "  %s: out%d: %d guard bytes overwritten (out of bounds write)\n", c->name, j,
              gbad);
    }
    int bad = compare(c, n, j, hout[j], h + GUARD, p);
    test_checks++;
    if (bad) {
      test_failures++;
      fprintf(stderr, "%s [%s]: out%d: %d of %lld elements differ\n", c->name,
              p == PREC_F64 ? "f64" : "f32", j, bad, (long long)n->out[j]->numel);
    }
    test_checks++;
    if (memcmp(h + GUARD, (unsigned char *)got2[j] + GUARD, b) != 0) {
      test_failures++;
      fprintf(stderr, "%s [%s]: out%d: two runs differ (not deterministic)\n", c->name,
              p == PREC_F64 ? "f64" : "f32", j);
    }
  }
  for (int k = 0; k < n->nin; k++) {
    mc_free(hin[k]);
    cuda->release(din[k]);
  }
  for (int j = 0; j < n->nout; j++) {
    mc_free(hout[j]);
    mc_free(got[j]);
    mc_free(got2[j]);
    cuda->release(dbase[j]);
  }
}

static void run(Case *c, OpKind op, int64_t ia0, int64_t ia1, double fa0, double fa1) {
  int64_t ia[IR_MAX_ATTR] = {ia0, ia1};
  double fa[IR_MAX_ATTR] = {fa0, fa1};
  Node *n = ir_node(c->g, op, c->nin, c->in, ia, fa);
  ir_bind(c->g, 1, 1);
  tested[op] = true;
  ncases++;
  int f0 = test_failures;
  run_prec(c, n, PREC_F32);
  run_prec(c, n, PREC_F64);
  printf("%-4s %s\n", test_failures == f0 ? "ok" : "FAIL", c->name);
  for (int k = 0; k < c->nin; k++) {
    mc_free(c->f[k]);
    mc_free(c->i[k]);
  }
  ir_graph_free(c->g);
}

/* ---------------------------------------------------------------- dependent inputs */

/* Distinct experts per row: a random k-subset of [0,E) in random order. */
static int32_t *route(int64_t N, int64_t E, int64_t k) {
  int32_t *idx = mc_malloc((size_t)(N * k) * sizeof(int32_t)), *perm = mc_malloc((size_t)E * 4);
  for (int64_t r = 0; r < N; r++) {
    for (int64_t e = 0; e < E; e++)
      perm[e] = (int32_t)e;
    for (int64_t j = 0; j < k; j++) {
      int64_t q = j + (int64_t)(urand() * (double)(E - j));
      int32_t t = perm[j];
      perm[j] = perm[q];
      perm[q] = t;
      idx[r * k + j] = perm[j];
    }
  }
  mc_free(perm);
  return idx;
}

/* The stable counting sort of dispatch: offsets[E+1], pos[N*k]. */
static void dispatch_host(const int32_t *idx, int64_t N, int64_t k, int64_t E, int32_t **off,
                          int32_t **pos) {
  *off = mc_calloc((size_t)E + 1, 4);
  *pos = mc_malloc((size_t)(N * k) * 4);
  int32_t *cur = mc_calloc((size_t)E + 1, 4);
  for (int64_t i = 0; i < N * k; i++)
    cur[idx[i] + 1]++;
  for (int64_t e = 0; e < E; e++)
    cur[e + 1] += cur[e];
  memcpy(*off, cur, (size_t)(E + 1) * 4);
  for (int64_t i = 0; i < N * k; i++)
    (*pos)[i] = cur[idx[i]]++;
  mc_free(cur);
}

static int32_t *copy_i(const int32_t *a, int64_t n) {
  int32_t *b = mc_malloc((size_t)n * 4);
  memcpy(b, a, (size_t)n * 4);
  return b;
}

/* Top-(k+1) selection per row (desc, ties lower index): idx, thr, thr_idx. */
static void topk_host(const double *x, int64_t N, int64_t E, int64_t k, int32_t *idx, double *thr,
                      int32_t *tidx) {
  int32_t *sel = mc_malloc((size_t)(k + 1) * 4);
  for (int64_t r = 0; r < N; r++) {
    int64_t m = k + 1 < E ? k + 1 : E;
    for (int64_t s = 0; s < m; s++) {
      int32_t best = -1;
      for (int64_t e = 0; e < E; e++) {
        bool used = false;
        for (int64_t q = 0; q < s; q++)
          used |= sel[q] == e;
        if (!used && (best < 0 || x[r * E + e] > x[r * E + best])) best = (int32_t)e;
      }
      sel[s] = best;
    }
    for (int64_t j = 0; j < k; j++)
      idx[r * k + j] = sel[j];
    thr[r * 2] = x[r * E + sel[k - 1]];
    tidx[r * 2] = sel[k - 1];
    thr[r * 2 + 1] = k < E ? x[r * E + sel[k]] : -INFINITY;
    tidx[r * 2 + 1] = k < E ? sel[k] : -1;
  }
  mc_free(sel);
}

/* ---------------------------------------------------------------- the cases */

static void dense_cases(void) {
  static const OpKind bin[] = {OP_ADD, OP_SUB, OP_MUL};
  for (int q = 0; q < 3; q++)
    for (int sc = 0; sc < 2; sc++) {
      char nm[64];
      snprintf(nm, sizeof nm, "%s%s", ir_ops[bin[q]].name, sc ? " (scalar b)" : "");
      Case c = begin(nm);
      fin(&c, vals(300, -2, 2), 2, 20, 15, 0);
      if (sc)
        fin(&c, vals(1, -2, 2), 0, 0, 0, 0);
      else
        fin(&c, vals(300, -2, 2), 2, 20, 15, 0);
      run(&c, bin[q], 0, 0, 0, 0);
    }
  static const OpKind un[] = {OP_SCALE, OP_RELU, OP_TANH, OP_SIGMOID, OP_SOFTPLUS};
  for (int q = 0; q < 5; q++) {
    Case c = begin(ir_ops[un[q]].name);
    fin(&c, vals(1000, -30, 30), 3, 4, 10, 25);
    run(&c, un[q], 0, 0, -1.5, 0.25);
  }
  static const OpKind bw[] = {OP_RELU_BWD, OP_TANH_BWD, OP_SIGMOID_BWD, OP_SOFTPLUS_BWD};
  for (int q = 0; q < 4; q++) {
    Case c = begin(ir_ops[bw[q]].name);
    fin(&c, vals(640, -2, 2), 2, 32, 20, 0);
    fin(&c, vals(640, q == 0 || q == 3 ? -3 : 0, q == 0 || q == 3 ? 3 : 1), 2, 32, 20, 0);
    run(&c, bw[q], 0, 0, 0, 0);
  }
  for (int tr = 0; tr < 2; tr++) {
    Case c = begin(tr ? "dropout (training)" : "dropout (eval)");
    c.training = tr;
    fin(&c, vals(5000, -1, 1), 2, 100, 50, 0);
    run(&c, OP_DROPOUT, 4, 0, 0.3, 0);
  }
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      char nm[64];
      snprintf(nm, sizeof nm, "matmul transA=%d transB=%d", ta, tb);
      Case c = begin(nm);
      c.reduce = true;
      if (!ta) { /* a[3,7,40] . b[40,24] (b[24,40]) */
        fin(&c, vals(3 * 7 * 40, -1, 1), 3, 3, 7, 40);
        fin(&c, vals(40 * 24, -1, 1), 2, tb ? 24 : 40, tb ? 40 : 24, 0);
      } else { /* a[3,7,40]^T rows 21 . b[3,7,24] (b[24,21]) */
        fin(&c, vals(3 * 7 * 40, -1, 1), 3, 3, 7, 40);
        if (tb)
          fin(&c, vals(24 * 21, -1, 1), 2, 24, 21, 0);
        else
          fin(&c, vals(3 * 7 * 24, -1, 1), 3, 3, 7, 24);
      }
      run(&c, OP_MATMUL, ta, tb, 0, 0);
    }
  {
    Case c = begin("bias_add");
    fin(&c, vals(3 * 5 * 33, -1, 1), 3, 3, 5, 33);
    fin(&c, vals(33, -1, 1), 1, 33, 0, 0);
    run(&c, OP_BIAS_ADD, 0, 0, 0, 0);
  }
  {
    Case c = begin("sum_rows");
    c.reduce = true;
    fin(&c, vals(700 * 37, -1, 1), 2, 700, 37, 0);
    run(&c, OP_SUM_ROWS, 0, 0, 0, 0);
  }
  {
    Case c = begin("sum");
    c.reduce = true;
    fin(&c, vals(5000, -1, 1), 2, 100, 50, 0);
    run(&c, OP_SUM, 0, 0, 0, 0);
  }
  {
    Case c = begin("broadcast");
    fin(&c, vals(1, -1, 1), 0, 0, 0, 0);
    fin(&c, vals(60, -1, 1), 2, 6, 10, 0);
    run(&c, OP_BROADCAST, 0, 0, 0, 0);
  }
  {
    Case c = begin("zeros");
    fin(&c, vals(60, -1, 1), 2, 6, 10, 0);
    run(&c, OP_ZEROS, 0, 0, 0, 0);
  }
  {
    Case c = begin("reshape");
    fin(&c, vals(60, -1, 1), 2, 6, 10, 0);
    run(&c, OP_RESHAPE, ir_dim_pack(dim_int(3)), ir_dim_pack(dim_int(20)), 0, 0);
  }
  {
    Case c = begin("embedding");
    iin(&c, ints(4 * 9, 0, 50), 2, 4, 9);
    fin(&c, vals(50 * 16, -1, 1), 2, 50, 16, 0);
    run(&c, OP_EMBEDDING, 0, 0, 0, 0);
  }
  {
    Case c = begin("embedding_bwd");
    c.reduce = true;
    iin(&c, ints(4 * 90, 0, 20), 2, 4, 90); /* many repeats per id */
    fin(&c, vals(4 * 90 * 16, -1, 1), 3, 4, 90, 16);
    run(&c, OP_EMBEDDING_BWD, 20, 0, 0, 0);
  }
  int64_t B = 5, T = 6, U = 24;
  {
    Case c = begin("lstm");
    c.reduce = true;
    fin(&c, vals(B * T * 4 * U, -1, 1), 3, B, T, 4 * U);
    fin(&c, vals(4 * U * U, -0.3, 0.3), 2, 4 * U, U, 0);
    fin(&c, vals(B * U, -1, 1), 2, B, U, 0);
    fin(&c, vals(B * U, -1, 1), 2, B, U, 0);
    run(&c, OP_LSTM, 0, 0, 0, 0);
  }
  {
    Case c = begin("lstm_bwd");
    c.reduce = true;
    fin(&c, vals(B * T * U, -1, 1), 3, B, T, U);
    fin(&c, vals(4 * U * U, -0.3, 0.3), 2, 4 * U, U, 0);
    fin(&c, vals(B * U, -1, 1), 2, B, U, 0);
    fin(&c, vals(B * U, -1, 1), 2, B, U, 0);
    fin(&c, vals(B * T * U, -1, 1), 3, B, T, U);
    fin(&c, vals(B * T * U, -2, 2), 3, B, T, U);
    fin(&c, vals(B * T * 4 * U, 0.01, 0.99), 3, B, T, 4 * U);
    run(&c, OP_LSTM_BWD, 0, 0, 0, 0);
  }
  {
    Case c = begin("softmax");
    fin(&c, vals(7 * 3 * 300, -5, 5), 3, 7, 3, 300);
    run(&c, OP_SOFTMAX, 0, 0, 0, 0);
  }
  {
    Case c = begin("softmax_bwd");
    fin(&c, vals(21 * 300, -1, 1), 2, 21, 300, 0);
    fin(&c, vals(21 * 300, 0, 0.01), 2, 21, 300, 0);
    run(&c, OP_SOFTMAX_BWD, 0, 0, 0, 0);
  }
  for (int q = 0; q < 2; q++) {
    Case c = begin(q ? "xent (fa[0] = 0.01)" : "xent (fa[0] = 0: 1/N)");
    c.reduce = true;
    fin(&c, vals(40 * 1000, -4, 4), 2, 40, 1000, 0);
    iin(&c, ints(40, 0, 1000), 1, 40, 0);
    run(&c, OP_XENT, 0, 0, q ? 0.01 : 0, 0);
  }
  {
    Case c = begin("xent_bwd");
    fin(&c, vals(1, 0.5, 2), 0, 0, 0, 0);
    fin(&c, vals(40 * 1000, 0, 0.002), 2, 40, 1000, 0);
    iin(&c, ints(40, 0, 1000), 1, 40, 0);
    run(&c, OP_XENT_BWD, 0, 0, 0, 0);
  }
}

static void routes_cases(int64_t E, int64_t k, int64_t D);

static void moe_cases(void) {
  const int64_t N = 300, E = 16, k = 2, D = 24, H = 40;
  for (int tr = 0; tr < 2; tr++) {
    Case c = begin(tr ? "noise (training)" : "noise (eval)");
    c.training = tr;
    fin(&c, vals(N * E, -1, 1), 2, N, E, 0);
    fin(&c, vals(N * E, -3, 3), 2, N, E, 0);
    run(&c, OP_NOISE, 9, 0, 0, 0);
  }
  {
    Case c = begin("noise_bwd");
    for (int q = 0; q < 4; q++)
      fin(&c, vals(N * E, -2, 2), 2, N, E, 0);
    run(&c, OP_NOISE_BWD, 0, 0, 0, 0);
  }
  static const int64_t ks[] = {1, 2, 4, 16};
  for (int q = 0; q < 4; q++) {
    char nm[64];
    snprintf(nm, sizeof nm, "topk k=%lld of E=16 (ties)", (long long)ks[q]);
    Case c = begin(nm);
    double *x = vals(N * E, 0, 1);
    for (int64_t i = 0; i < N * E; i++)
      x[i] = floor(x[i] * 6) - 3; /* many ties */
    fin(&c, x, 2, N, E, 0);
    run(&c, OP_TOPK, ks[q], 0, 0, 0);
  }
  {
    Case c = begin("topk k=3 of E=300");
    fin(&c, vals(40 * 300, -1, 1), 2, 40, 300, 0);
    run(&c, OP_TOPK, 3, 0, 0, 0);
  }
  for (int q = 0; q < 2; q++) {
    int64_t kk = q ? E : k;
    Case c = begin(q ? "topk_bwd (k == E)" : "topk_bwd");
    double *x = vals(N * E, -1, 1), *thr = mc_malloc((size_t)N * 2 * 8);
    int32_t *idx = mc_malloc((size_t)(N * kk) * 4), *tidx = mc_malloc((size_t)N * 2 * 4);
    topk_host(x, N, E, kk, idx, thr, tidx);
    fin(&c, vals(N * kk, -1, 1), 2, N, kk, 0);
    fin(&c, vals(N * 2, -1, 1), 2, N, 2, 0);
    iin(&c, idx, 2, N, kk);
    iin(&c, tidx, 2, N, 2);
    run(&c, OP_TOPK_BWD, E, 0, 0, 0);
    mc_free(x);
    mc_free(thr);
  }
  for (int q = 0; q < 2; q++) { /* q = 1: k == E, thr[:,1] = -inf */
    int64_t kk = q ? E : k;
    for (int bwd = 0; bwd < 2; bwd++) {
      char nm[64];
      snprintf(nm, sizeof nm, "load_smooth%s%s", bwd ? "_bwd" : "", q ? " (k == E)" : "");
      Case c = begin(nm);
      c.reduce = true;
      double *clean = vals(N * E, -1, 1), *noisy = vals(N * E, -1, 1),
             *thr = mc_malloc((size_t)N * 16);
      int32_t *idx = mc_malloc((size_t)(N * kk) * 4), *tidx = mc_malloc((size_t)N * 8);
      for (int64_t i = 0; i < N * E; i++)
        noisy[i] = clean[i] + 0.3 * noisy[i];
      topk_host(noisy, N, E, kk, idx, thr, tidx);
      if (bwd) fin(&c, vals(E, -1, 1), 1, E, 0, 0);
      fin(&c, clean, 2, N, E, 0);
      fin(&c, noisy, 2, N, E, 0);
      fin(&c, vals(N * E, 0.05, 1), 2, N, E, 0);
      fin(&c, thr, 2, N, 2, 0);
      run(&c, bwd ? OP_LOAD_SMOOTH_BWD : OP_LOAD_SMOOTH, 0, 0, 0, 0);
      mc_free(idx);
      mc_free(tidx);
    }
  }
  {
    Case c = begin("load_count");
    iin(&c, route(N, E, k), 2, N, k);
    run(&c, OP_LOAD_COUNT, E, 0, 0, 0);
  }
  {
    Case c = begin("importance");
    c.reduce = true;
    iin(&c, route(N, E, k), 2, N, k);
    fin(&c, vals(N * k, 0, 1), 2, N, k, 0);
    run(&c, OP_IMPORTANCE, E, 0, 0, 0);
  }
  {
    Case c = begin("gather_idx");
    fin(&c, vals(E, -1, 1), 1, E, 0, 0);
    iin(&c, route(N, E, k), 2, N, k);
    run(&c, OP_GATHER_IDX, 0, 0, 0, 0);
  }
  {
    Case c = begin("cv2");
    fin(&c, vals(E, 0, 5), 1, E, 0, 0);
    run(&c, OP_CV2, 0, 0, 0, 0);
  }
  {
    Case c = begin("cv2_bwd");
    fin(&c, vals(1, 0.5, 1.5), 0, 0, 0, 0);
    fin(&c, vals(E, 0, 5), 1, E, 0, 0);
    run(&c, OP_CV2_BWD, 0, 0, 0, 0);
  }
  /* a routing with expert 5 empty */
  int32_t *idx = route(N, E, k);
  for (int64_t i = 0; i < N * k; i++)
    if (idx[i] == 5)
      idx[i] = (int32_t)(i % k == 0 ? (idx[i + 1] == 6 ? 7 : 6) : (idx[i - 1] == 6 ? 7 : 6));
  int32_t *off, *pos;
  dispatch_host(idx, N, k, E, &off, &pos);
  {
    Case c = begin("dispatch (an empty expert)");
    fin(&c, vals(N * D, -1, 1), 2, N, D, 0);
    iin(&c, copy_i(idx, N * k), 2, N, k);
    run(&c, OP_DISPATCH, E, 0, 0, 0);
  }
  {
    Case c = begin("undispatch");
    fin(&c, vals(N * k * D, -1, 1), 2, N * k, D, 0);
    iin(&c, copy_i(pos, N * k), 2, N, k);
    run(&c, OP_UNDISPATCH, 0, 0, 0, 0);
  }
  for (int tw = 0; tw < 2; tw++) {
    Case c = begin(tw ? "grouped_matmul transW" : "grouped_matmul");
    c.reduce = true;
    fin(&c, vals(N * k * D, -1, 1), 2, N * k, D, 0);
    fin(&c, vals(E * D * H, -1, 1), 3, E, tw ? H : D, tw ? D : H);
    iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
    run(&c, OP_GROUPED_MATMUL, tw, 0, 0, 0);
  }
  {
    /* batchwise padding: rows past offsets[E] belong to no expert; their outputs are
     * zero (ops.def), poisoned here before the run */
    Case c = begin("grouped_matmul (rows past offsets[E])");
    c.reduce = true;
    fin(&c, vals((N * k + 7) * D, -1, 1), 2, N * k + 7, D, 0);
    fin(&c, vals(E * D * H, -1, 1), 3, E, D, H);
    iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
    run(&c, OP_GROUPED_MATMUL, 0, 0, 0, 0);
  }
  {
    Case c = begin("grouped_matmul_dw (rows past offsets[E])");
    c.reduce = true;
    fin(&c, vals((N * k + 7) * D, -1, 1), 2, N * k + 7, D, 0);
    fin(&c, vals((N * k + 7) * H, -1, 1), 2, N * k + 7, H, 0);
    iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
    run(&c, OP_GROUPED_MATMUL_DW, 0, 0, 0, 0);
  }
  {
    Case c = begin("grouped_matmul_dw (an empty expert)");
    c.reduce = true;
    fin(&c, vals(N * k * D, -1, 1), 2, N * k, D, 0);
    fin(&c, vals(N * k * H, -1, 1), 2, N * k, H, 0);
    iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
    run(&c, OP_GROUPED_MATMUL_DW, 0, 0, 0, 0);
  }
  {
    Case c = begin("grouped_bias");
    fin(&c, vals(N * k * H, -1, 1), 2, N * k, H, 0);
    fin(&c, vals(E * H, -1, 1), 2, E, H, 0);
    iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
    run(&c, OP_GROUPED_BIAS, 0, 0, 0, 0);
  }
  {
    Case c = begin("grouped_sum_rows");
    c.reduce = true;
    fin(&c, vals(N * k * H, -1, 1), 2, N * k, H, 0);
    iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
    run(&c, OP_GROUPED_SUM_ROWS, 0, 0, 0, 0);
  }
  {
    Case c = begin("combine");
    c.reduce = true;
    fin(&c, vals(N * k * D, -1, 1), 2, N * k, D, 0);
    fin(&c, vals(N * k, 0, 1), 2, N, k, 0);
    iin(&c, copy_i(pos, N * k), 2, N, k);
    run(&c, OP_COMBINE, 0, 0, 0, 0);
  }
  {
    Case c = begin("combine_bwd");
    c.reduce = true;
    fin(&c, vals(N * D, -1, 1), 2, N, D, 0);
    fin(&c, vals(N * k * D, -1, 1), 2, N * k, D, 0);
    fin(&c, vals(N * k, 0, 1), 2, N, k, 0);
    iin(&c, copy_i(pos, N * k), 2, N, k);
    run(&c, OP_COMBINE_BWD, 0, 0, 0, 0);
  }
  {
    Case c = begin("concat0");
    fin(&c, vals(3 * 8, -1, 1), 2, 3, 8, 0);
    fin(&c, vals(5 * 8, -1, 1), 2, 5, 8, 0);
    fin(&c, vals(1 * 8, -1, 1), 2, 1, 8, 0);
    run(&c, OP_CONCAT0, 0, 0, 0, 0);
  }
  {
    Case c = begin("slice0");
    fin(&c, vals(10 * 8, -1, 1), 2, 10, 8, 0);
    run(&c, OP_SLICE0, 3, 4, 0, 0);
  }
  /* hmoe helpers: G = 4 groups over R = N*k rows (the dispatch offsets of 4 "experts") */
  const int64_t G = 4, R = N * k;
  int32_t *gidx = route(N, G, k), *goff, *gpos;
  dispatch_host(gidx, N, k, G, &goff, &gpos);
  {
    Case c = begin("global_idx");
    iin(&c, route(R, E, 2), 2, R, 2);
    iin(&c, copy_i(goff, G + 1), 1, G + 1, 0);
    run(&c, OP_GLOBAL_IDX, E, 0, 0, 0);
  }
  {
    Case c = begin("scatter_pos");
    fin(&c, vals(N * k, -1, 1), 2, N, k, 0);
    iin(&c, copy_i(pos, N * k), 2, N, k);
    run(&c, OP_SCATTER_POS, 0, 0, 0, 0);
  }
  {
    Case c = begin("gather_pos");
    fin(&c, vals(N * k, -1, 1), 1, N * k, 0, 0);
    iin(&c, copy_i(pos, N * k), 2, N, k);
    run(&c, OP_GATHER_POS, 0, 0, 0, 0);
  }
  {
    Case c = begin("row_scale");
    fin(&c, vals(R * D, -1, 1), 2, R, D, 0);
    fin(&c, vals(R, -1, 1), 1, R, 0, 0);
    run(&c, OP_ROW_SCALE, 0, 0, 0, 0);
  }
  {
    Case c = begin("row_dot");
    c.reduce = true;
    fin(&c, vals(R * D, -1, 1), 2, R, D, 0);
    fin(&c, vals(R * D, -1, 1), 2, R, D, 0);
    run(&c, OP_ROW_DOT, 0, 0, 0, 0);
  }
  for (int bwd = 0; bwd < 2; bwd++) {
    Case c = begin(bwd ? "load_smooth_grouped_bwd" : "load_smooth_grouped");
    c.reduce = true;
    double *clean = vals(R * E, -1, 1), *noisy = vals(R * E, -1, 1),
           *thr = mc_malloc((size_t)R * 16);
    int32_t *ti = mc_malloc((size_t)(R * k) * 4), *tt = mc_malloc((size_t)R * 8);
    for (int64_t i = 0; i < R * E; i++)
      noisy[i] = clean[i] + 0.3 * noisy[i];
    topk_host(noisy, R, E, k, ti, thr, tt);
    if (bwd) fin(&c, vals(G * E, -1, 1), 2, G, E, 0);
    fin(&c, clean, 2, R, E, 0);
    fin(&c, noisy, 2, R, E, 0);
    fin(&c, vals(R * E, 0.05, 1), 2, R, E, 0);
    fin(&c, thr, 2, R, 2, 0);
    iin(&c, copy_i(goff, G + 1), 1, G + 1, 0);
    run(&c, bwd ? OP_LOAD_SMOOTH_GROUPED_BWD : OP_LOAD_SMOOTH_GROUPED, 0, 0, 0, 0);
    mc_free(ti);
    mc_free(tt);
  }
  {
    Case c = begin("div_group_rows");
    fin(&c, vals(G * E, -1, 1), 2, G, E, 0);
    iin(&c, copy_i(goff, G + 1), 1, G + 1, 0);
    run(&c, OP_DIV_GROUP_ROWS, 0, 0, 0, 0);
  }
  /* batchwise gating: N rows, E experts, k slots per row on average */
  for (int tr = 0; tr < 2; tr++) {
    char nm[64];
    snprintf(nm, sizeof nm, "batchwise_route (%s)", tr ? "training" : "eval");
    Case c = begin(nm);
    c.training = tr;
    double *gs = vals(N * E, 0, 1);
    for (int64_t i = 0; i < N * E; i += 7)
      gs[i] = 0.5; /* ties */
    fin(&c, gs, 2, N, E, 0);
    fin(&c, vals(E, 0.6, 0.95), 1, E, 0, 0);
    run(&c, OP_BATCHWISE_ROUTE, k, 0, 0, 0);
  }
  {
    /* scores of +0.0 and -0.0 deep in every expert's top m: equal keys for the CPU's
     * comparison and for CCCL 3's radix sort, so both take the lower rows (docs/cuda.md) */
    Case c = begin("batchwise_route (+0.0 and -0.0 ties)");
    c.training = true;
    double *gs = vals(N * E, 0, 1);
    for (int64_t i = 0; i < N * E; i++)
      if (i % 5) gs[i] = i % 2 ? -0.0 : 0.0;
    fin(&c, gs, 2, N, E, 0);
    fin(&c, vals(E, 0.6, 0.95), 1, E, 0, 0);
    run(&c, OP_BATCHWISE_ROUTE, k, 0, 0, 0);
  }
  routes_cases(E, k, D);
  mc_free(gidx);
  mc_free(goff);
  mc_free(gpos);
  mc_free(idx);
  mc_free(off);
  mc_free(pos);
}

/* Batchwise routes: m = k*N/E rows per expert (N = 320 so that E*m = N*k: the CPU's
 * combine_routes checks offsets[E] == R), each expert's rows ascending. */
static void routes_cases(int64_t E, int64_t k, int64_t D) {
  const int64_t N = 320, m = k * N / E, RS = N * k;
  int32_t *rows = mc_malloc((size_t)RS * 4), *roff = mc_malloc((size_t)(E + 1) * 4);
  double *mask = mc_calloc((size_t)(N * E), 8);
  for (int64_t q = 0; q < RS; q++)
    rows[q] = -1;
  {
    int64_t s = 0;
    for (int64_t e = 0; e < E; e++) {
      roff[e] = (int32_t)s;
      int32_t *pick = route(1, N, m);
      for (int64_t a = 1; a < m; a++) /* ascending rows */
        for (int64_t b = a; b > 0 && pick[b] < pick[b - 1]; b--) {
          int32_t t = pick[b];
          pick[b] = pick[b - 1];
          pick[b - 1] = t;
        }
      for (int64_t j = 0; j < m; j++) {
        rows[s++] = pick[j];
        mask[pick[j] * E + e] = 1;
      }
      mc_free(pick);
    }
    roff[E] = (int32_t)s; /* slots past it stay -1 */
  }
  {
    Case c = begin("gather_rows");
    fin(&c, vals(N * D, -1, 1), 2, N, D, 0);
    iin(&c, copy_i(rows, RS), 1, RS, 0);
    run(&c, OP_GATHER_ROWS, 0, 0, 0, 0);
  }
  {
    Case c = begin("scatter_rows");
    c.reduce = true;
    fin(&c, vals(RS * D, -1, 1), 2, RS, D, 0);
    iin(&c, copy_i(rows, RS), 1, RS, 0);
    fin(&c, vals(N * D, -1, 1), 2, N, D, 0);
    run(&c, OP_SCATTER_ROWS, 0, 0, 0, 0);
  }
  for (int bwd = 0; bwd < 2; bwd++) {
    Case c = begin(bwd ? "masked_norm_bwd" : "masked_norm");
    c.reduce = true;
    double *mk = mc_malloc((size_t)(N * E) * 8);
    memcpy(mk, mask, (size_t)(N * E) * 8);
    if (bwd) fin(&c, vals(N * E, -1, 1), 2, N, E, 0);
    fin(&c, vals(N * E, 0, 1), 2, N, E, 0);
    fin(&c, mk, 2, N, E, 0);
    run(&c, bwd ? OP_MASKED_NORM_BWD : OP_MASKED_NORM, 0, 0, 0, 0);
  }
  for (int bwd = 0; bwd < 2; bwd++) {
    Case c = begin(bwd ? "combine_routes_bwd" : "combine_routes");
    c.reduce = true;
    if (bwd) fin(&c, vals(N * D, -1, 1), 2, N, D, 0);
    fin(&c, vals(RS * D, -1, 1), 2, RS, D, 0);
    fin(&c, vals(N * E, 0, 1), 2, N, E, 0);
    iin(&c, copy_i(rows, RS), 1, RS, 0);
    iin(&c, copy_i(roff, E + 1), 1, E + 1, 0);
    run(&c, bwd ? OP_COMBINE_ROUTES_BWD : OP_COMBINE_ROUTES, 0, 0, 0, 0);
  }
  for (int bwd = 0; bwd < 2; bwd++) {
    Case c = begin(bwd ? "threshold_loss_bwd" : "threshold_loss");
    c.reduce = true;
    double *mk = mc_malloc((size_t)(N * E) * 8);
    memcpy(mk, mask, (size_t)(N * E) * 8);
    if (bwd) fin(&c, vals(1, 0.5, 1.5), 0, 0, 0, 0);
    fin(&c, vals(N * E, 0, 1), 2, N, E, 0);
    fin(&c, mk, 2, N, E, 0);
    fin(&c, vals(E, 0.3, 0.7), 1, E, 0, 0);
    run(&c, bwd ? OP_THRESHOLD_LOSS_BWD : OP_THRESHOLD_LOSS, 0, 0, 0, 0);
  }
  mc_free(rows);
  mc_free(roff);
  mc_free(mask);
}

/* The sequence ops (translation models): ids with a pad id 0 at row ends and a row all
 * padding, attention scores and the masked softmax at the shapes of a small batch. */
static int32_t *padded_ids(int64_t B, int64_t L, int32_t V) {
  int32_t *v = ints(B * L, 1, V);
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = 0; j < L; j++)
      if (b == B - 1 || j >= L - b % 3) v[b * L + j] = 0;
  return v;
}

static void seq_cases(void) {
  const int64_t Bt = 4, Tn = 7, S = 9, A = 24;
  {
    Case c = begin("pad_mask");
    iin(&c, padded_ids(Bt, S, 30), 2, Bt, S);
    run(&c, OP_PAD_MASK, 0, 0, 0, 0);
  }
  {
    Case c = begin("count_nonpad");
    iin(&c, padded_ids(Bt, S, 30), 2, Bt, S);
    run(&c, OP_COUNT_NONPAD, 0, 0, 0, 0);
  }
  {
    Case c = begin("xent_pad");
    c.reduce = true;
    fin(&c, vals(Bt * Tn * 50, -3, 3), 2, Bt * Tn, 50, 0);
    iin(&c, padded_ids(1, Bt * Tn, 50), 1, Bt * Tn, 0);
    fin(&c, vals(1, 13, 13), 0, 0, 0, 0);
    run(&c, OP_XENT_PAD, 0, 0, 0, 0);
  }
  {
    Case c = begin("xent_pad_bwd");
    fin(&c, vals(1, 0.5, 2), 0, 0, 0, 0);
    fin(&c, vals(Bt * Tn * 50, 0, 0.04), 2, Bt * Tn, 50, 0);
    iin(&c, padded_ids(1, Bt * Tn, 50), 1, Bt * Tn, 0);
    fin(&c, vals(1, 13, 13), 0, 0, 0, 0);
    run(&c, OP_XENT_PAD_BWD, 0, 0, 0, 0);
  }
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      char nm[64];
      snprintf(nm, sizeof nm, "bmm transA=%d transB=%d", ta, tb);
      Case c = begin(nm);
      c.reduce = true; /* y[Bt,Tn,A] = a[Bt,Tn,S] . b[Bt,S,A] in the four forms */
      if (ta) fin(&c, vals(Bt * S * Tn, -1, 1), 3, Bt, S, Tn);
      else fin(&c, vals(Bt * Tn * S, -1, 1), 3, Bt, Tn, S);
      if (tb) fin(&c, vals(Bt * A * S, -1, 1), 3, Bt, A, S);
      else fin(&c, vals(Bt * S * A, -1, 1), 3, Bt, S, A);
      run(&c, OP_BMM, ta, tb, 0, 0);
    }
  {
    Case c = begin("attn_score");
    c.reduce = true;
    fin(&c, vals(Bt * Tn * A, -2, 2), 3, Bt, Tn, A);
    fin(&c, vals(Bt * S * A, -2, 2), 3, Bt, S, A);
    fin(&c, vals(A, -1, 1), 1, A, 0, 0);
    run(&c, OP_ATTN_SCORE, 0, 0, 0, 0);
  }
  {
    Case c = begin("attn_score_bwd");
    c.reduce = true;
    double *g = vals(Bt * Tn * S, -1, 1);
    for (int64_t i = 0; i < Bt * Tn * S; i += 5) g[i] = 0; /* masked positions: skipped */
    fin(&c, g, 3, Bt, Tn, S);
    fin(&c, vals(Bt * Tn * A, -2, 2), 3, Bt, Tn, A);
    fin(&c, vals(Bt * S * A, -2, 2), 3, Bt, S, A);
    fin(&c, vals(A, -1, 1), 1, A, 0, 0);
    run(&c, OP_ATTN_SCORE_BWD, 0, 0, 0, 0);
  }
  {
    Case c = begin("masked_softmax");
    c.reduce = true;
    fin(&c, vals(Bt * Tn * S, -20, 20), 3, Bt, Tn, S);
    double *m = vals(Bt * S, 0, 1);
    int32_t *ids = padded_ids(Bt, S, 30);
    for (int64_t i = 0; i < Bt * S; i++) m[i] = ids[i] != 0; /* the last row: all padding */
    mc_free(ids);
    fin(&c, m, 2, Bt, S, 0);
    run(&c, OP_MASKED_SOFTMAX, 0, 0, 0, 0);
  }
  {
    Case c = begin("col_scale");
    fin(&c, vals(Bt * Tn * A, -2, 2), 3, Bt, Tn, A);
    fin(&c, vals(A, -1, 1), 1, A, 0, 0);
    run(&c, OP_COL_SCALE, 0, 0, 0, 0);
  }
  {
    Case c = begin("concat_last");
    fin(&c, vals(Bt * Tn * 5, -1, 1), 3, Bt, Tn, 5);
    fin(&c, vals(Bt * Tn * 11, -1, 1), 3, Bt, Tn, 11);
    run(&c, OP_CONCAT_LAST, 0, 0, 0, 0);
  }
  {
    Case c = begin("slice_last");
    fin(&c, vals(Bt * Tn * 16, -1, 1), 3, Bt, Tn, 16);
    run(&c, OP_SLICE_LAST, 5, 9, 0, 0);
  }
}

/* ---------------------------------------------------------------- checks in a child */

/* --bad-offsets: grouped_matmul on the GPU with offsets[E] past the rows; the host copy
 * of the offsets is checked, so this must die (exit 1) naming the op, never launch a
 * GEMM outside its operands. */
static int bad_offsets_child(void) {
  cuda = rt_backend_cuda();
  if (!cuda) return 77;
  Case c = begin("bad offsets");
  fin(&c, vals(8 * 4, -1, 1), 2, 8, 4, 0);
  fin(&c, vals(2 * 4 * 3, -1, 1), 3, 2, 4, 3);
  int32_t *off = mc_malloc(3 * sizeof(int32_t));
  off[0] = 0, off[1] = 4, off[2] = 9; /* 9 > 8 rows */
  iin(&c, off, 1, 3, 0);
  int64_t ia[IR_MAX_ATTR] = {0};
  double fa[IR_MAX_ATTR] = {0};
  Node *n = ir_node(c.g, OP_GROUPED_MATMUL, c.nin, c.in, ia, fa);
  ir_bind(c.g, 1, 1);
  void *din[3], *dout[1];
  for (int k = 0; k < 3; k++) {
    void *h = host_input(&c, k, PREC_F32);
    din[k] = cuda->alloc(tbytes(n->in[k], PREC_F32));
    cuda->upload(din[k], h, tbytes(n->in[k], PREC_F32));
    mc_free(h);
  }
  dout[0] = cuda->alloc(tbytes(n->out[0], PREC_F32));
#ifdef MOEC_HAVE_CUDA
  KernelCtx ctx = {.device = 0, .ndevices = 1, .batch_local = 1, .dev = rt_cuda_dev(0)};
  cuda->kernels(PREC_F32)[OP_GROUPED_MATMUL](&ctx, n, din, dout);
  cuda->sync();
#else
  (void)dout; /* without CUDA, rt_backend_cuda() returned NULL above */
#endif
  return 0; /* not reached when the offsets are checked */
}

/* The expert GEMMs with TF32 on: a grouped call that fails in TF32 (for any reason) is
 * made again in FP32, so either way the results hold to TF32's tolerance. */
static void tf32_check(void) {
#ifdef MOEC_HAVE_CUDA
  const int64_t N = 64, E = 8, k = 2, D = 48, H = 40;
  int32_t *idx = route(N, E, k), *off, *pos;
  dispatch_host(idx, N, k, E, &off, &pos);
  rt_cuda_set_tf32(true);
  tf32 = true;
  Case c = begin("grouped_matmul (TF32)");
  c.reduce = true;
  fin(&c, vals(N * k * D, -1, 1), 2, N * k, D, 0);
  fin(&c, vals(E * D * H, -1, 1), 3, E, D, H);
  iin(&c, copy_i(off, E + 1), 1, E + 1, 0);
  run(&c, OP_GROUPED_MATMUL, 0, 0, 0, 0);
  tf32 = false;
  rt_cuda_set_tf32(false);
  mc_free(idx);
  mc_free(off);
  mc_free(pos);
#endif
}

/* Runs this program with `arg` and checks it exits 1 with `want` in its stderr. */
static void expect_child_death(const char *self, const char *arg, const char *want) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", self, arg);
  FILE *p = popen(cmd, "r");
  char out[4096] = {0};
  size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
  out[n] = 0;
  int st = p ? pclose(p) : -1;
  bool ok = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(out, want);
  CHECK(ok);
  printf("%-4s %s: exit 1 with '%s'\n", ok ? "ok" : "FAIL", arg, want);
  if (!ok) fprintf(stderr, "  status %d, output:\n%s\n", st, out);
}

/* The pinned upload ring grows while the GPU is busy instead of making the host wait
 * (a step's grouped GEMMs each upload a pointer array), and every upload lands. */
static void ring_check(void) {
#ifdef MOEC_HAVE_CUDA
  enum { U = 64, W = 1024 };
  Case c = begin("busy matmul");
  int64_t S = 4096;
  fin(&c, vals(S * S, -1, 1), 2, S, S, 0);
  fin(&c, vals(S * S, -1, 1), 2, S, S, 0);
  int64_t ia[IR_MAX_ATTR] = {0};
  double fa[IR_MAX_ATTR] = {0};
  Node *n = ir_node(c.g, OP_MATMUL, 2, c.in, ia, fa);
  ir_bind(c.g, 1, 1);
  void *din[2], *dout[1];
  for (int k = 0; k < 2; k++) {
    void *h = host_input(&c, k, PREC_F32);
    din[k] = cuda->alloc(tbytes(n->in[k], PREC_F32));
    cuda->upload(din[k], h, tbytes(n->in[k], PREC_F32));
    mc_free(h);
  }
  dout[0] = cuda->alloc(tbytes(n->out[0], PREC_F32));
  int32_t *dst = cuda->alloc(U * W * sizeof(int32_t)), *src = mc_malloc(W * sizeof(int32_t)),
          *back = mc_malloc(U * W * sizeof(int32_t));
  KernelCtx ctx = {.device = 0, .ndevices = 1, .batch_local = 1, .dev = cuda_dev};
  int before = rt_cuda_ring_slots(cuda_dev);
  cuda->kernels(PREC_F32)[OP_MATMUL](&ctx, n, din, dout); /* ~137 GFLOP: milliseconds */
  double t0 = mc_now();
  for (int u = 0; u < U; u++) {
    for (int i = 0; i < W; i++)
      src[i] = u * W + i;
    rt_cuda_upload_input(cuda_dev, dst + u * W, src, W * sizeof(int32_t)); /* src reused at once */
  }
  double host_ms = (mc_now() - t0) * 1e3;
  rt_cuda_sync_dev(cuda_dev);
  cuda->download(back, dst, U * W * sizeof(int32_t));
  int bad = 0;
  for (int i = 0; i < U * W; i++)
    bad += back[i] != i;
  int slots = rt_cuda_ring_slots(cuda_dev);
  CHECK(bad == 0);
  CHECK(slots > 4 && slots > before); /* it grew instead of waiting for the GEMM */
  printf("%-4s upload ring: %d uploads behind a busy GPU in %.2f ms of host time, %d slots (was "
         "%d), every byte landed\n",
         bad == 0 && slots > 4 ? "ok" : "FAIL", U, host_ms, slots, before);
  for (int k = 0; k < 2; k++)
    cuda->release(din[k]);
  cuda->release(dout[0]);
  cuda->release(dst);
  mc_free(src);
  mc_free(back);
  for (int k = 0; k < c.nin; k++)
    mc_free(c.f[k]);
  ir_graph_free(c.g);
#endif
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--bad-offsets")) return bad_offsets_child();
  cuda = rt_backend_cuda();
  if (!cuda) {
#ifdef MOEC_HAVE_CUDA
    printf("SKIP: %s\n", rt_cuda_unavailable_reason());
#else
    printf("SKIP: no CUDA device (moec was built without CUDA: MOEC_CUDA=OFF or no nvcc)\n");
#endif
    return 77;
  }
#ifdef MOEC_HAVE_CUDA
  cuda_dev = rt_cuda_dev(0);
#endif
  /* --sanitizer: run under compute-sanitizer (bench/gpu_quick.sh), which reports the
   * deliberate failed allocation below as an error and is slow on the ring check's GEMM */
  bool sanitizer = argc > 1 && !strcmp(argv[1], "--sanitizer");
  /* out of memory: NULL, no abort, and the next allocation still works */
  if (!sanitizer) {
    void *huge = cuda->alloc((size_t)1 << 52);
    CHECK(huge == NULL);
    void *small = cuda->alloc(1024);
    CHECK(small != NULL);
    cuda->release(small);
    printf("%-4s alloc of 4 PiB returns NULL, the next alloc works\n",
           huge == NULL && small != NULL ? "ok" : "FAIL");
  }
  dense_cases();
  moe_cases();
  seq_cases();
  expect_child_death(argv[0], "--bad-offsets", "offsets end 9 is outside [0, 9)");
  tf32_check();
  if (!sanitizer) ring_check();
  /* every op that has a kernel on both backends was exercised */
  for (int op = 0; op < OP_COUNT; op++) {
    /* the cpu-only ops (collectives, the sampled softmax, capacity) have no cuda kernel */
    if (!rt_cpu_kernels(PREC_F32)[op] || !cuda->kernels(PREC_F32)[op]) continue;
    if (op == OP_FUSED) continue; /* its program comes from the fusion pass: test_cuda_model */
    /* collectives need a communicator: tests/test_comm_dev.c (their orchestration, no GPU),
     * test_cuda_nccl and test_cuda_train.sh's N-device runs (on GPUs) */
    if (op == OP_ALL_REDUCE || op == OP_ALL_TO_ALL || op == OP_ALL_TO_ALL_BACK ||
        op == OP_RESHARD || op == OP_ALL_GATHER_TOPM)
      continue;
    test_checks++;
    if (!tested[op]) {
      test_failures++;
      fprintf(stderr, "op '%s' has a kernel but no case in test_cuda_ops.c\n", ir_ops[op].name);
    }
  }
  printf("%d cases\n", ncases);
  TEST_DONE();
}
