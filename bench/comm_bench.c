/* comm_bench.c: bandwidth of the communicator's all_to_allv and all_reduce_sum_f32
 * (runtime/comm.h) at message sizes 1 KiB .. 16 MiB.
 *
 *   build/bench/comm_bench [--devices N]        in-process, N threads (default 2)
 *   mpirun -np N build/bench/comm_bench          MPI, one rank per process
 *
 * Size S is the bytes one rank contributes: all_to_allv sends S/N bytes to every
 * rank (itself included), all_reduce sums S bytes of floats. Times are the slowest
 * rank's mean over the iterations after one warm-up, best of 3 such blocks. algbw = S / time; busbw
 * follows nccl-tests: all-to-all S*(N-1)/N / time, all-reduce 2*S*(N-1)/N / time
 * (the bytes each rank must move over its link). Under MPI a last column times the
 * library's own MPI_Allreduce (not deterministic; the price of determinism). */
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../runtime/comm.h"
#ifdef MOEC_HAVE_MPI
#include <mpi.h>
#endif

/* One all_to_allv (what 0) or all_reduce (what 1) of `bytes` per rank. */
static void bench_one(Comm *c, int what, size_t bytes, void *a, void *b, int64_t *cnt) {
  int n = c->size;
  int64_t *sc = cnt, *sd = cnt + n;
  for (int p = 0; p < n; p++) {
    sc[p] = (int64_t)(bytes / (size_t)n);
    sd[p] = sc[p] * p;
  }
  if (what == 0)
    c->all_to_allv(c, a, sc, sd, b, sc, sd);
  else if (what == 1)
    c->all_reduce_sum_f32(c, a, (int64_t)(bytes / sizeof(float)));
#ifdef MOEC_HAVE_MPI
  else if (MPI_Allreduce(MPI_IN_PLACE, a, (int)(bytes / sizeof(float)), MPI_FLOAT, MPI_SUM,
                         MPI_COMM_WORLD) != MPI_SUCCESS)
    c->abort(c, "MPI_Allreduce failed");
#endif
}

static void run(Comm *c, void *arg) {
  (void)arg;
  int n = c->size;
  bool native = !strcmp(c->name, "mpi");
  size_t maxb = (size_t)16 << 20;
  float *a = mc_calloc(maxb / sizeof(float), sizeof(float));
  float *b = mc_calloc(maxb / sizeof(float), sizeof(float));
  int64_t *cnt = mc_malloc(sizeof(int64_t) * 2 * (size_t)n);
  double *times = mc_malloc(sizeof(double) * (size_t)n);
  if (c->rank == 0) {
    printf("# comm_bench: backend %s, %d ranks; S = bytes per rank; GB/s = 1e9 B/s\n", c->name, n);
    printf("%10s | %10s %9s %9s | %10s %9s %9s%s\n", "S", "a2a us", "algbw", "busbw", "allred us",
           "algbw", "busbw", native ? " | MPI_Allreduce us" : "");
  }
  for (size_t bytes = 1024; bytes <= maxb; bytes *= 4) {
    int iters = (int)MC_MAX(3, MC_MIN(100, ((size_t)32 << 20) / bytes));
    double t[3] = {0};
    for (int what = 0; what < 2 + native; what++) {
      t[what] = 1e30;
      for (int rep = 0; rep < 3; rep++) { /* best of 3 blocks: the machine is shared */
        c->barrier(c);
        double t0 = 0;
        for (int it = -1; it < iters; it++) {
          if (it == 0) t0 = mc_now();
          bench_one(c, what, bytes, a, b, cnt);
        }
        double mine = (mc_now() - t0) / iters, slowest = 0;
        c->all_gather(c, &mine, times, sizeof(double));
        for (int p = 0; p < n; p++)
          slowest = MC_MAX(slowest, times[p]);
        t[what] = MC_MIN(t[what], slowest);
      }
    }
    if (c->rank == 0) {
      double f = n > 1 ? (double)(n - 1) / n : 1.0;
      printf("%9zuK | %10.1f %9.3f %9.3f | %10.1f %9.3f %9.3f", bytes >> 10, t[0] * 1e6,
             bytes / t[0] / 1e9, f * bytes / t[0] / 1e9, t[1] * 1e6, bytes / t[1] / 1e9,
             2 * f * bytes / t[1] / 1e9);
      if (native) printf(" | %16.1f", t[2] * 1e6);
      printf("\n");
      fflush(stdout);
    }
  }
  mc_free(a);
  mc_free(b);
  mc_free(cnt);
  mc_free(times);
}

int main(int argc, char **argv) {
  if (rt_comm_mpi_launched()) {
    const char *why = NULL;
    CommOpts opts = comm_opts_from_env();
    Comm *c = rt_comm_mpi_init(&argc, &argv, &opts, &why);
    if (!c) mc_die("launched under MPI, but %s", why);
    run(c, NULL);
    rt_comm_mpi_finalize(c);
    return 0;
  }
  int n = 2;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--devices") && i + 1 < argc)
      n = atoi(argv[++i]);
    else
      mc_die("usage: comm_bench [--devices N]   (or: mpirun -np N comm_bench)");
  }
  return rt_inproc_run(n, run, NULL);
}
