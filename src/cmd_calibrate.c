/* cmd_calibrate.c: `moec calibrate [-o PROFILE] [--quick]`: this machine's cost-model
 * constants, measured: GEMMs over a grid of shapes through the runtime's GEMM (rt_sgemm,
 * what every CPU kernel calls), fitted as t = launch + F / G + F / (G s) * h (F = 2MNK,
 * s the smallest side: a GEMM at s / (s + h) of G); elementwise bandwidth; the global
 * norm's pass of several devices (ns an element, on the thread's clock); the in-process
 * communicator's all-reduce latency and bandwidth between two devices; the cores other
 * processes kept busy meanwhile (what the timings shared the machine with). Writes a JSON
 * profile that `moec plan` and `moec simulate` read (--profile; MOEC_PROFILE_DEFAULT when
 * present). cli_read_profile is its reader (docs/placement.md, "Calibration").
 * `mpirun -np N moec calibrate --mpi` adds the MPI ranks' figures to a profile: their
 * all-reduce's link, and the kernels and collectives in situ on ranks (calibrate_kernels.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../runtime/train.h"
#include "../runtime/runtime.h"
#include "cli.h"

/* The in-situ kernels' rounds, each instruction's least kept (calibrate_kernels.c): on a
 * machine shared with other work, one round in a few finds the other cores free. */
#define KERNEL_ROUNDS(quick) ((quick) ? 2 : 5)

/* Best of `reps` timings (seconds) of one GEMM [M, K] x [K, N]. */
static double time_gemm(int64_t M, int64_t N, int64_t K, int reps) {
  float *A = mc_calloc((size_t)(M * K), sizeof(float));
  float *B = mc_calloc((size_t)(K * N), sizeof(float));
  float *C = mc_calloc((size_t)(M * N), sizeof(float));
  for (int64_t i = 0; i < M * K; i++)
    A[i] = (float)(i % 7) * 0.1f;
  for (int64_t i = 0; i < K * N; i++)
    B[i] = (float)(i % 5) * 0.1f;
  double best = 1e30;
  /* enough calls per timing to last ~2 ms */
  double F = 2.0 * (double)M * (double)N * (double)K;
  int inner = (int)fmax(1, fmin(10000, 2e-3 / (F / 20e9)));
  for (int r = 0; r < reps; r++) {
    double t0 = mc_now();
    for (int i = 0; i < inner; i++)
      rt_sgemm(false, false, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    best = fmin(best, (mc_now() - t0) / inner);
  }
  mc_free(A);
  mc_free(B);
  mc_free(C);
  return best;
}

/* Solves the 3 x 3 system a x = b (Gaussian elimination); false if singular. */
static bool solve3(double a[3][3], double b[3], double x[3]) {
  for (int c = 0; c < 3; c++) {
    int p = c;
    for (int r = c + 1; r < 3; r++)
      if (fabs(a[r][c]) > fabs(a[p][c])) p = r;
    if (fabs(a[p][c]) < 1e-300) return false;
    for (int j = 0; j < 3; j++) {
      double t = a[c][j];
      a[c][j] = a[p][j];
      a[p][j] = t;
    }
    double t = b[c];
    b[c] = b[p];
    b[p] = t;
    for (int r = c + 1; r < 3; r++) {
      double f = a[r][c] / a[c][c];
      for (int j = c; j < 3; j++)
        a[r][j] -= f * a[c][j];
      b[r] -= f * b[c];
    }
  }
  for (int c = 2; c >= 0; c--) {
    double s = b[c];
    for (int j = c + 1; j < 3; j++)
      s -= a[c][j] * x[j];
    x[c] = s / a[c][c];
  }
  return true;
}

typedef struct CommBench {
  int64_t n;
  int reps;
  double seconds; /* rank 0's median */
} CommBench;

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median of `reps` timings of 8 all-reduces: a run's step is its median, and the
 * devices' waits for each other on shared cores are part of a collective's time there
 * (the best of a few would leave them out). */
static void comm_bench(Comm *c, void *arg) {
  CommBench *b = arg;
  float *buf = mc_calloc((size_t)b->n, sizeof(float));
  double t[16];
  int reps = MC_MIN(b->reps, 16);
  for (int r = 0; r < reps; r++) {
    c->barrier(c);
    double t0 = mc_now();
    for (int i = 0; i < 8; i++)
      c->all_reduce_sum_f32(c, buf, b->n);
    t[r] = (mc_now() - t0) / 8;
  }
  qsort(t, (size_t)reps, sizeof(double), by_value);
  if (c->rank == 0) b->seconds = t[reps / 2];
  mc_free(buf);
}

typedef struct GridBench {
  int64_t M, N, K;
  int reps;
  double seconds;
} GridBench;

/* On a thread of its own: rt_sgemm runs inline there (the pool is the main thread's),
 * so the rate is one core's, as each in-process device's when several share the cores. */
static void gemm_on_thread(Comm *c, void *arg) {
  (void)c;
  GridBench *g = arg;
  g->seconds = time_gemm(g->M, g->N, g->K, g->reps);
}

/* y += x over [lo, hi) (the memory-bandwidth probe's work) */
static void add_range(void *arg, int64_t lo, int64_t hi) {
  float *const *v = arg;
  for (int64_t i = lo; i < hi; i++)
    v[1][i] += v[0][i];
}

/* The machine's memory bandwidth with every core streaming: y += x over 2 x 128 MiB (8 x
 * a 32 MiB last-level cache), 12 bytes an element; what a phase whose devices together
 * touch more than the cache gets (docs/placement.md, "Memory-bound phases"). */
static double time_dram(int reps) {
  int64_t n = 32 << 20;
  float *v[2] = {mc_calloc((size_t)n, sizeof(float)), mc_calloc((size_t)n, sizeof(float))};
  rt_parallel_rows(n, 1, add_range, v); /* the pages mapped before timing */
  double t = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = mc_now();
    rt_parallel_rows(n, 1, add_range, v);
    t = fmin(t, mc_now() - t0);
  }
  mc_free(v[0]);
  mc_free(v[1]);
  return 12.0 * (double)n / t / 1e9;
}

/* Nanoseconds an element of the multi-device global norm's pass (rt_sumsq over each
 * device's gradients in rt_md_optim_step: 8 lanes of double adds, in the cache), the least
 * of `reps` on the thread's CPU clock (what another process takes from the core is not
 * counted). */
static double time_norm_ns(int reps) {
  int64_t n = 1 << 18; /* 1 MiB: in the cache (past it the step's memory rule applies) */
  float *g = mc_malloc((size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; i++)
    g[i] = (float)(i % 7) * 0.25f;
  double t = 1e30, sink = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = mc_thread_cpu_now();
    sink += rt_sumsq(g, n, sizeof(float));
    t = fmin(t, mc_thread_cpu_now() - t0);
  }
  mc_free(g);
  return sink >= 0 ? t / (double)n * 1e9 : 0; /* sink: the passes are not optimised away */
}

/* The last-level cache's bytes (the largest cache sysfs lists for cpu0), 0 if unknown. */
static double llc_bytes(void) {
  double best = 0;
  for (int i = 0; i < 8; i++) {
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    double x = 0;
    char unit = 0;
    if (fscanf(f, "%lf%c", &x, &unit) >= 1)
      best = fmax(best, x * (unit == 'K' ? 1024 : unit == 'M' ? 1048576 : 1));
    fclose(f);
  }
  return best;
}

/* Seconds the machine's cores were busy (/proc/stat: every core's time but idle and
 * iowait, steal included) and this process's CPU seconds; false where /proc/stat is not. */
static bool cpu_seconds(double *all, double *mine) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return false;
  unsigned long long v[8] = {0}; /* user nice system idle iowait irq softirq steal */
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                 &v[4], &v[5], &v[6], &v[7]);
  fclose(f);
  struct rusage ru;
  if (n < 4 || getrusage(RUSAGE_SELF, &ru) != 0) return false;
  *all = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
  *mine = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
          ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
  return true;
}

/* The cores other processes kept busy since cpu_seconds gave all0, mine0 at t0 (-1 if
 * unknown): what the timings shared the machine with. */
static double busy_cores(double all0, double mine0, double t0) {
  double all, mine, dt = mc_now() - t0;
  if (all0 < 0 || !cpu_seconds(&all, &mine) || dt <= 0) return -1;
  return fmax(0, (all - all0 - (mine - mine0)) / dt);
}

static void usage(FILE *out) {
  fprintf(out, "usage: moec calibrate [-o PROFILE] [--quick]\n"
               "       mpirun -np N moec calibrate --mpi [-o PROFILE] [--quick]\n\n"
               "Measures this machine for the cost model of `moec plan` and `moec simulate`:\n"
               "GEMM rates over a grid of shapes through the runtime's GEMM, elementwise\n"
               "bandwidth, and the in-process communicator's latency and bandwidth. Writes a\n"
               "JSON profile (default " MOEC_PROFILE_DEFAULT ", which plan and simulate read when\n"
               "present; elsewhere pass --profile PROFILE).\n\n"
               "options:\n"
               "  -o PROFILE   where to write the profile\n"
               "  --quick      fewer shapes and repetitions (a few seconds; noisier)\n"
               "  --mpi        under mpirun (N >= 2 ranks): measure the MPI ranks' collectives\n"
               "               (latency, bandwidth, in-situ call times) and kernels (in-situ\n"
               "               factors of a rank) and add them to the existing PROFILE\n"
               "               (`moec plan --mpi` uses them)\n");
}

/* Best all-reduce seconds of rank 0 at 1 KiB and 32 MiB (past the caches, as gradients
 * are) on c, every rank at once; ts[] on every rank. */
static void all_reduce_times(Comm *c, int reps, double ts[2]) {
  static const int64_t sizes[] = {256, 8 << 20};
  for (int i = 0; i < 2; i++) {
    CommBench cb = {.n = sizes[i], .reps = reps};
    comm_bench(c, &cb);
    ts[i] = cb.seconds;
  }
  c->broadcast(c, ts, 2 * sizeof(double), 0);
}

/* A ring all-reduce of P devices: each sends 2(P-1)/P of the vector in 2(P-1) steps. From
 * the times at 1 KiB and 32 MiB: the link's GB/s and a step's latency (us). */
static void fit_link(int P, const double ts[2], double *gbs, double *lat_us) {
  double v0 = 2.0 * (P - 1) / P * 4 * 256, v1 = 2.0 * (P - 1) / P * 4 * (8 << 20);
  *gbs = (v1 - v0) / fmax(ts[1] - ts[0], 1e-9) / 1e9;
  *lat_us = fmax(0.1, (ts[0] - v0 / (*gbs * 1e9)) / (2 * (P - 1)) * 1e6);
}

/* `mpirun -np N moec calibrate --mpi`: every rank measures; rank 0 adds the "mpi" section
 * to the profile at out (replacing an earlier one). The profile must exist: its compute
 * constants are the formulas the ranks' in-situ factors are measured against. */
static int calibrate_mpi(const char *out, bool quick) {
  if (!rt_comm_mpi_launched()) {
    fprintf(stderr, "moec calibrate: error: --mpi measures MPI ranks: start it as `mpirun -np 2 "
                    "moec calibrate --mpi -o PROFILE`\n");
    return 2;
  }
  CommOpts co = comm_opts_from_env();
  const char *why = NULL;
  int argc = 0;
  char **argv = NULL;
  Comm *c = rt_comm_mpi_init(&argc, &argv, &co, &why);
  if (!c) {
    fprintf(stderr, "moec calibrate: error: --mpi: %s\n", why ? why : "MPI did not start");
    return 1;
  }
  int ok = 1; /* rank 0 reads the profile first: a missing one fails before any measuring */
  char *text = NULL;
  CostConsts k = plan_consts_cpu;
  char msg[512] = "";
  if (c->rank == 0) {
    text = mc_read_file(out, NULL);
    if (!text || !cli_read_profile(out, &k, msg, sizeof msg)) {
      fprintf(stderr,
              "moec calibrate: error: --mpi: %s: %s (measure this machine first: moec calibrate "
              "-o %s)\n",
              out, text ? msg : "cannot read it", out);
      ok = 0;
    }
  }
  if (ok && c->size < 2) {
    if (c->rank == 0) fprintf(stderr, "moec calibrate: error: --mpi needs 2 or more ranks\n");
    ok = 0;
  }
  c->broadcast(c, &ok, sizeof ok, 0);
  if (!ok) {
    mc_free(text);
    rt_comm_mpi_finalize(c);
    return 1;
  }
  c->broadcast(c, &k, sizeof k, 0); /* rank 0's constants model every rank's kernels */
  k.name = "calibrated";
  rt_threads_set(1); /* one thread per rank, as moec run under mpirun */
  const int reps = quick ? 2 : 5;
  double ts[2], gbs, lat;
  all_reduce_times(c, reps, ts);
  fit_link(c->size, ts, &gbs, &lat);
  k.link_gbs = gbs;
  k.latency_us = lat;
  k.per_node = 0;
  k.inproc = false;
  McBuf kern = {0};
  double ratio = 0;
  bool built = cli_calibrate_ranks(c, &k, quick ? 3 : 12, KERNEL_ROUNDS(quick), &kern, &ratio);
  int rc = built ? 0 : 1;
  if (c->rank == 0 && built) {
    /* the profile less its last '}' (and an earlier "mpi" section), then the new one */
    char *cut = strstr(text, ",\n \"mpi\": {");
    if (!cut) cut = strrchr(text, '}');
    if (cut) *cut = 0;
    FILE *f = fopen(out, "w");
    if (!cut || !f ||
        fprintf(f,
                "%s,\n \"mpi\": {\"ranks\": %d, \"link_gbs\": %.6g, \"latency_us\": %.6g,\n"
                "   \"rank_kernels\": %s}}\n",
                text, c->size, gbs, lat, kern.data) < 0 ||
        fclose(f) != 0) {
      fprintf(stderr, "moec calibrate: error: cannot write '%s'\n", out);
      rc = 1;
    } else {
      printf("profile %s: MPI, %d ranks: link %.3g GB/s, %.3g us a step; a call beyond the "
             "model: all_to_all %.3g us, all_to_all_back %.3g us, all_reduce %.3g us\n",
             out, c->size, gbs, lat, k.kcoll_us[OP_ALL_TO_ALL], k.kcoll_us[OP_ALL_TO_ALL_BACK],
             k.kcoll_us[OP_ALL_REDUCE]);
      printf("kernels in situ on %d of the ranks at once (measured / modelled, the reference "
             "models): step %.2fx on a rank; optimizer %.2fx\n",
             MC_MIN(c->size, MC_MAX(k.cores, 1)), ratio, k.kfactor_optim[1]);
    }
  } else if (!built) {
    fprintf(stderr, "moec calibrate: error: a reference model did not compile\n");
  }
  mc_buf_free(&kern);
  mc_free(text);
  rt_comm_mpi_finalize(c);
  return rc;
}

int cmd_calibrate(int argc, char **argv) {
  const char *out = MOEC_PROFILE_DEFAULT;
  bool quick = false, mpi = false;
  for (int i = 1; i < argc; i++) {
    bool bad = false;
    const char *v;
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!strcmp(argv[i], "--mpi")) {
      mpi = true;
    } else if ((v = cli_value(argc, argv, &i, "-o", "calibrate", &bad))) {
      out = v;
    } else {
      if (!bad) fprintf(stderr, "moec calibrate: error: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (mpi) return calibrate_mpi(out, quick);
  double all0 = -1, mine0 = 0, t0 = mc_now();
  if (!cpu_seconds(&all0, &mine0)) all0 = -1;
  const int reps = quick ? 2 : 5;
  time_gemm(256, 256, 256, 1); /* the main thread takes the worker pool */
  static const int64_t Ms[] = {4, 16, 64, 256, 1024}, NKs[] = {32, 128, 512};
  McBuf grid = {0};
  double a[3][3] = {{0}}, b[3] = {0};
  int ng = 0;
  double peak = 0;
  for (size_t i = 0; i < MC_ARRAY_LEN(Ms); i++)
    for (size_t j = 0; j < MC_ARRAY_LEN(NKs); j++) {
      if (quick && (i % 2 || j == 1)) continue;
      int64_t M = Ms[i], N = NKs[j] * 4, K = NKs[j];
      GridBench gb = {M, N, K, reps, 0};
      if (rt_inproc_run(1, gemm_on_thread, &gb)) return 1;
      double t = gb.seconds, F = 2.0 * (double)(M * N * K);
      double s = (double)MC_MIN(M, MC_MIN(N, K));
      peak = fmax(peak, F / t);
      /* least squares of t = c0 + c1 F + c2 F / s, relative error (rows / t) */
      double row[3] = {1 / t, F / t, F / s / t};
      for (int p = 0; p < 3; p++) {
        for (int q = 0; q < 3; q++)
          a[p][q] += row[p] * row[q];
        b[p] += row[p];
      }
      mc_buf_printf(&grid, "%s\n    {\"M\": %lld, \"N\": %lld, \"K\": %lld, \"gflops\": %.4g}",
                    ng++ ? "," : "", (long long)M, (long long)N, (long long)K, F / t / 1e9);
      fprintf(stderr, "gemm %5lld x %5lld x %5lld: %8.2f GFLOP/s\n", (long long)M, (long long)N,
              (long long)K, F / t / 1e9);
    }
  double x[3] = {0, 1 / peak, 0};
  if (!solve3(a, b, x) || x[1] <= 0) {
    x[0] = 0;
    x[1] = 1 / peak;
    x[2] = 0;
  }
  double gflops = 1 / x[1] / 1e9, half = fmax(0, x[2] / x[1]), launch = fmax(0, x[0]) * 1e6;
  /* elementwise: y = x + y over 16 MiB (12 bytes an element: two reads, one write) */
  int64_t n = 4 << 20;
  float *ex = mc_calloc((size_t)n, sizeof(float)), *ey = mc_calloc((size_t)n, sizeof(float));
  double et = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = mc_now();
    for (int64_t i = 0; i < n; i++)
      ey[i] += ex[i];
    et = fmin(et, mc_now() - t0);
  }
  double elem_gbs = 12.0 * (double)n / et / 1e9;
  mc_free(ex);
  mc_free(ey);
  double dram_gbs = time_dram(reps), llc = llc_bytes(), norm_ns = time_norm_ns(reps);
  /* in-process all-reduce between 2 devices: each sends 2(n-1)/n = 1 x the vector */
  static const int64_t sizes[] = {256, 8 << 20}; /* as all_reduce_times */
  double ts[2];
  for (int i = 0; i < 2; i++) {
    CommBench cb = {.n = sizes[i], .reps = reps};
    if (rt_inproc_run(2, comm_bench, &cb)) {
      fprintf(stderr, "moec calibrate: error: the in-process communicator failed\n");
      mc_buf_free(&grid);
      return 1;
    }
    ts[i] = cb.seconds;
  }
  double link_gbs, latency_us;
  fit_link(2, ts, &link_gbs, &latency_us);
  /* the kernels in situ, against the formulas with the constants above */
  CostConsts k = plan_consts_cpu;
  k.gflops = gflops;
  k.gemm_half = half;
  k.launch_us = launch;
  k.elem_gbs = elem_gbs;
  k.dram_gbs = dram_gbs;
  k.llc_bytes = llc;
  k.norm_ns = norm_ns;
  k.cores = rt_threads();
  k.link_gbs = link_gbs; /* the collectives' addends: beyond the model the profile gives */
  k.latency_us = latency_us;
  k.inproc = true;
  McBuf kern = {0};
  double ratio[2];
  if (!cli_calibrate_kernels(&k, quick ? 3 : 12, KERNEL_ROUNDS(quick), &kern, ratio)) {
    fprintf(stderr, "moec calibrate: error: a reference model did not compile\n");
    mc_buf_free(&grid);
    return 1;
  }
  double busy = busy_cores(all0, mine0, t0);
  FILE *f = fopen(out, "w");
  if (!f) {
    fprintf(stderr, "moec calibrate: error: cannot write '%s'\n", out);
    mc_buf_free(&grid);
    return 1;
  }
  fprintf(f,
          "{\"moec_profile\": 1, \"name\": \"calibrated\",\n"
          " \"gflops\": %.6g, \"gemm_half\": %.6g, \"launch_us\": %.6g, \"elem_gbs\": %.6g,\n"
          " \"dram_gbs\": %.6g, \"llc_mib\": %.6g, \"norm_ns\": %.6g,\n"
          " \"link_gbs\": %.6g, \"latency_us\": %.6g, \"cores\": %d, \"busy_cores\": %.3g,\n"
          " \"gemm\": [%s],\n"
          " \"kernels\": %s}\n",
          gflops, half, launch, elem_gbs, dram_gbs, llc / 1048576, norm_ns, link_gbs, latency_us,
          rt_threads(), busy, grid.data ? grid.data : "", kern.data);
  mc_buf_free(&grid);
  mc_buf_free(&kern);
  if (fclose(f) != 0) {
    fprintf(stderr, "moec calibrate: error: cannot write '%s'\n", out);
    return 1;
  }
  printf("profile %s: GEMM %.4g GFLOP/s a core (s/(s+%.3g) of it at smallest side s), "
         "launch %.3g us, elementwise %.3g GB/s (%.3g GB/s from memory, every core; a "
         "%.3g MiB cache), in-process link %.3g GB/s, %.3g us a step, %d cores\n",
         out, gflops, half, launch, elem_gbs, dram_gbs, llc / 1048576, link_gbs, latency_us,
         rt_threads());
  printf("kernels in situ (measured / modelled, the reference models): step %.2fx on every "
         "core, %.2fx on one thread; optimizer %.2fx, %.2fx\n",
         ratio[0], ratio[1], k.kfactor_optim[0], k.kfactor_optim[1]);
  if (busy >= 0)
    printf("other processes kept %.2f of the %d cores busy meanwhile%s\n", busy, rt_threads(),
           busy > 0.25 ? ": the profile is what the machine did beside them (calibrate again when "
                         "it is quieter)"
                       : "");
  return 0;
}

/* The number after "key": in a flat JSON object; false if absent. */
static bool json_number(const char *s, const char *key, double *v) {
  char pat[64];
  if (snprintf(pat, sizeof pat, "\"%s\"", key) >= (int)sizeof pat) return false;
  const char *p = strstr(s, pat);
  if (!p) return false;
  p += strlen(pat);
  while (*p == ' ' || *p == ':')
    p++;
  char *end;
  double x = strtod(p, &end);
  if (end == p || !isfinite(x)) return false;
  *v = x;
  return true;
}

bool cli_read_profile(const char *path, CostConsts *k, char *why, size_t wlen) {
  size_t n = 0;
  char *s = mc_read_file(path, &n);
  if (!s) {
    snprintf(why, wlen, "cannot read it");
    return false;
  }
  double v[6];
  static const char *keys[] = {"gflops",   "gemm_half", "launch_us",
                               "elem_gbs", "link_gbs",  "latency_us"};
  bool ok = strstr(s, "\"moec_profile\"") != NULL;
  for (int i = 0; ok && i < 6; i++)
    if (!json_number(s, keys[i], &v[i]) || v[i] < 0 || (i == 0 && v[i] <= 0)) {
      snprintf(why, wlen, "no valid \"%s\" (write it with moec calibrate)", keys[i]);
      ok = false;
    }
  if (!strstr(s, "\"moec_profile\"")) snprintf(why, wlen, "not a moec calibrate profile");
  double cores = 0;
  bool have_cores = ok && json_number(s, "cores", &cores) && cores >= 1 && cores <= 4096;
  if (ok && !cli_read_kernel_factors(s, k)) {
    snprintf(why, wlen, "its \"kernels\" factors are malformed (write it with moec calibrate)");
    ok = false;
  }
  double dram = 0, llc = 0, norm = 0; /* optional: profiles written before they were measured */
  if (ok && !(json_number(s, "dram_gbs", &dram) && json_number(s, "llc_mib", &llc))) dram = 0;
  if (ok && !json_number(s, "norm_ns", &norm)) norm = -1; /* not measured: the default's */
  mc_free(s);
  if (!ok) return false;
  k->name = "calibrated";
  k->gflops = v[0];
  k->gemm_half = v[1];
  k->launch_us = v[2];
  k->elem_gbs = v[3];
  if (norm >= 0) k->norm_ns = norm;
  if (k->per_node == 0 || k->inter_gbs == 0) { /* this machine: its link, cores, memory */
    if (dram > 0 && llc > 0) k->dram_gbs = dram, k->llc_bytes = llc * 1048576;
    k->link_gbs = v[4] > 0 ? v[4] : k->link_gbs;
    k->inproc = true; /* measured on the in-process communicator */
    k->latency_us = v[5];
    if (have_cores) k->cores = (int)cores;
  }
  return true;
}

bool cli_profile_mpi(const char *path, CostConsts *k, char *why, size_t wlen) {
  char *s = mc_read_file(path, NULL);
  if (!s) {
    snprintf(why, wlen, "cannot read it");
    return false;
  }
  const char *m = strstr(s, "\"mpi\": {");
  double ranks = 0, gbs = 0, lat = 0;
  bool ok = m && json_number(m, "ranks", &ranks) && json_number(m, "link_gbs", &gbs) &&
            json_number(m, "latency_us", &lat) && ranks >= 2 && gbs > 0 && lat >= 0;
  if (!ok)
    snprintf(why, wlen, "%s (measure them: mpirun -np 2 moec calibrate --mpi -o %s)",
             m ? "its \"mpi\" section is malformed" : "no MPI figures", path);
  if (ok && !cli_read_rank_factors(m, k)) {
    snprintf(why, wlen,
             "its \"mpi\" section has no valid \"rank_kernels\" (measure them again: mpirun "
             "-np 2 moec calibrate --mpi -o %s)",
             path);
    ok = false;
  }
  mc_free(s);
  if (!ok) return false;
  k->link_gbs = gbs;
  k->latency_us = lat;
  k->inproc = false; /* MPI's all-reduce: a ring's bytes and steps */
  k->name = "calibrated, MPI ranks";
  return true;
}
