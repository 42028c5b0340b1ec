/* test_comm_mpi.c: the MPI communicator (runtime/comm_mpi.c) under mpirun.
 *
 *   test_comm_mpi --driver NP CASE   what ctest runs: starts `mpirun -np NP
 *                                    --oversubscribe test_comm_mpi --case CASE`,
 *                                    captures its output, bounds its time and
 *                                    checks its exit status and messages; exit 77
 *                                    (skipped) without mpirun or MPI
 *   test_comm_mpi --case CASE        one rank
 *
 * Cases: basic (comm_checks.h with MOEC_COMM_CHECK=1), chunk (the same through the
 * pairwise all_to_allv path: MOEC_COMM_MPI_CHUNK=1000), die (rank 1 _exit(3)s mid-run;
 * mpirun ends the job), die_nokill (the same with mpirun told not to end the job on a
 * non-zero exit: the survivors' watchdog fires after MOEC_COMM_TIMEOUT=1 s), hang (the last rank
 * stops calling collectives: the others' watchdog fires after MOEC_COMM_TIMEOUT=1 s), mismatch
 * (comm_check_same with one odd rank), badcount (all_to_allv counts that do not match, caught by
 * MOEC_COMM_CHECK). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/common.h"
#include "../runtime/comm.h"
#include "comm_checks.h"

#ifndef MOEC_MPIEXEC
#define MOEC_MPIEXEC ""
#endif

/* ---------------------------------------------------------------- one rank */

static int rank_main(const char *cas, int *argc, char ***argv) {
  const char *why = NULL;
  CommOpts opts = comm_opts_from_env(); /* the test's knobs: MOEC_COMM_* */
  Comm *c = rt_comm_mpi_init(argc, argv, &opts, &why);
  if (!c) {
    printf("skip: %s\n", why);
    return 77;
  }
  int rc = 0;
  if (!strcmp(cas, "basic") || !strcmp(cas, "chunk")) {
    CommErrors e = {0};
    double t0 = mc_now();
    comm_basic_checks(c, &e);
    printf("rank %d of %d: %d checks, %d failed%s%s (%.2f s)\n", c->rank, c->size, e.checks,
           e.failures, e.failures ? ": " : "", e.first, mc_now() - t0);
    rc = e.failures || e.checks < 60;
  } else if (!strcmp(cas, "die") || !strcmp(cas, "die_nokill")) {
    float v[64] = {0};
    c->all_reduce_sum_f32(c, v, 64);
    if (c->rank == 1) {
      fflush(stdout);
      _exit(3);
    }
    for (int i = 0; i < 1000; i++)
      c->all_reduce_sum_f32(c, v, 64);
    printf("rank %d: not stopped\n", c->rank);
  } else if (!strcmp(cas, "hang")) {
    float v[64] = {0};
    c->all_reduce_sum_f32(c, v, 64);
    if (c->rank == c->size - 1) sleep(60);
    c->all_reduce_sum_f32(c, v, 64);
    printf("rank %d: not stopped\n", c->rank);
  } else if (!strcmp(cas, "mismatch")) {
    comm_check_same(c, "parameter count", 12345);
    comm_check_same(c, "model file hash", c->rank == 1 ? 0xbad : 0x600d);
    printf("rank %d: not stopped\n", c->rank);
  } else if (!strcmp(cas, "badcount")) {
    int64_t sc[64], sd[64], rcnt[64], rd[64];
    char sbuf[1024] = {0}, rbuf[1024];
    for (int p = 0; p < c->size; p++)
      sc[p] = rcnt[p] = 4;
    if (c->rank == 0) sc[1] = 6;
    comm_displs(sc, c->size, sd);
    comm_displs(rcnt, c->size, rd);
    c->all_to_allv(c, sbuf, sc, sd, rbuf, rcnt, rd);
    printf("rank %d: not stopped\n", c->rank);
  } else {
    fprintf(stderr, "unknown case %s\n", cas);
    rc = 2;
  }
  rt_comm_mpi_finalize(c);
  return rc;
}

/* ---------------------------------------------------------------- the driver */

typedef struct Expect {
  const char *cas;
  const char *env[3];
  const char *mpirun_args[3]; /* extra mpirun arguments */
  int ok;                     /* exit status: 1 zero, 0 non-zero, -1 any */
  const char *text[2];        /* substrings the output must contain */
  double max_s;
} Expect;

static const Expect expects[] = {
    {"basic", {"MOEC_COMM_CHECK=1"}, {NULL}, 1, {" 0 failed"}, 25},
    {"chunk", {"MOEC_COMM_MPI_CHUNK=1000", "MOEC_COMM_CHECK=0"}, {NULL}, 1, {" 0 failed"}, 25},
    /* mpirun ends the job when a rank exits non-zero */
    {"die", {"MOEC_COMM_TIMEOUT=3"}, {NULL}, 0, {"Exit code:    3"}, 15},
    /* ... unless told not to: then the survivors' watchdogs end it */
    {"die_nokill",
     {"MOEC_COMM_TIMEOUT=1"},
     {"--mca", "orte_abort_on_non_zero_status", "0"},
     0, /* the first survivor's watchdog ends the job with MPI_Abort: non-zero */
     {"collective all_reduce_sum_f32 timed out after 1 s (a peer rank probably died)"},
     15},
    {"hang",
     {"MOEC_COMM_TIMEOUT=1"},
     {NULL},
     0,
     {"collective all_reduce_sum_f32 timed out after 1 s (a peer rank probably died)"},
     15},
    {"mismatch",
     {NULL},
     {NULL},
     0,
     {"inconsistent model file hash across ranks", "rank 1 has 0xbad"},
     15},
    {"badcount",
     {"MOEC_COMM_CHECK=1"},
     {NULL},
     0,
     {"rank 0 sends 6 bytes to rank 1, which expects 4"},
     15},
};

static int driver(int np, const char *cas) {
  const Expect *x = NULL;
  for (size_t i = 0; i < MC_ARRAY_LEN(expects); i++)
    if (!strcmp(expects[i].cas, cas)) x = &expects[i];
  if (!x) {
    fprintf(stderr, "unknown case %s\n", cas);
    return 2;
  }
#ifndef MOEC_HAVE_MPI
  printf("skip: moec was built without MPI\n");
  return 77;
#endif
  const char *mpirun = MOEC_MPIEXEC;
  if (!*mpirun || access(mpirun, X_OK) != 0) {
    printf("skip: mpirun not found ('%s')\n", mpirun);
    return 77;
  }
  char self[4096];
  ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
  if (k <= 0) {
    perror("readlink /proc/self/exe");
    return 1;
  }
  self[k] = 0;
  char nps[16];
  snprintf(nps, sizeof nps, "%d", np);
  const char *av[32];
  int ac = 0;
  av[ac++] = mpirun;
  av[ac++] = "-np";
  av[ac++] = nps;
  av[ac++] = "--oversubscribe";
  for (int i = 0; i < 3 && x->mpirun_args[i]; i++)
    av[ac++] = x->mpirun_args[i];
  for (int i = 0; i < 3 && x->env[i]; i++) {
    av[ac++] = "-x";
    av[ac++] = x->env[i];
    putenv((char *)x->env[i]);
  }
  /* OpenMPI's own allocations are reported as leaks in sanitizer builds (the
   * in-process test covers our code's leaks) */
  static char asan[512];
  const char *prev = getenv("ASAN_OPTIONS");
  snprintf(asan, sizeof asan, "%s%sdetect_leaks=0", prev ? prev : "", prev && *prev ? ":" : "");
  setenv("ASAN_OPTIONS", asan, 1);
  av[ac++] = "-x";
  av[ac++] = "ASAN_OPTIONS";
  av[ac++] = self;
  av[ac++] = "--case";
  av[ac++] = cas;
  av[ac] = NULL;
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  printf("$");
  for (int i = 0; i < ac; i++)
    printf(" %s", av[i]);
  printf("\n");
  fflush(stdout);

  int fd[2];
  if (pipe(fd)) {
    perror("pipe");
    return 1;
  }
  double t0 = mc_now();
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 1;
  }
  if (pid == 0) {
    setpgid(0, 0);
    dup2(fd[1], 1);
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    execv(mpirun, (char *const *)av);
    perror("execv");
    _exit(127);
  }
  close(fd[1]);
  McBuf out = {0};
  double hard = x->max_s + 20;
  bool killed = false;
  for (;;) {
    struct pollfd p = {.fd = fd[0], .events = POLLIN};
    int r = poll(&p, 1, 200);
    if (r > 0) {
      char b[4096];
      ssize_t n = read(fd[0], b, sizeof b);
      if (n <= 0) break;
      for (ssize_t i = 0; i < n; i++)
        mc_buf_putc(&out, b[i]);
    } else if (r < 0 && errno != EINTR) {
      break;
    }
    if (!killed && mc_now() - t0 > hard) {
      kill(-pid, SIGKILL);
      killed = true;
    }
  }
  close(fd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  double secs = mc_now() - t0;
  int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  printf("%s", out.data ? out.data : "");
  printf("--- exit %d after %.2f s\n", code, secs);
  int fails = 0;
  if (out.data && strstr(out.data, "skip: ")) {
    mc_buf_free(&out);
    return 77;
  }
  if (x->ok >= 0 && (x->ok ? code != 0 : code == 0)) {
    printf("FAIL: exit status %d, expected %s\n", code, x->ok ? "0" : "non-zero");
    fails++;
  }
  if (killed || secs > x->max_s) {
    printf("FAIL: took %.2f s, bound %.0f s\n", secs, x->max_s);
    fails++;
  }
  for (int i = 0; i < 2; i++)
    if (x->text[i] && !(out.data && strstr(out.data, x->text[i]))) {
      printf("FAIL: output lacks \"%s\"\n", x->text[i]);
      fails++;
    }
  if (x->ok == 1) { /* every rank reported */
    int ranks = 0;
    for (const char *s = out.data; s && (s = strstr(s, " 0 failed")); s++)
      ranks++;
    if (ranks != np) {
      printf("FAIL: %d of %d ranks reported success\n", ranks, np);
      fails++;
    }
  }
  if (x->ok < 0) { /* every survivor says so itself */
    int ranks = 0;
    for (const char *s = out.data; s && (s = strstr(s, x->text[0])); s++)
      ranks++;
    if (ranks != np - 1) {
      printf("FAIL: %d of %d surviving ranks reported \"%s\"\n", ranks, np - 1, x->text[0]);
      fails++;
    }
  }
  if (x->ok != 1 && out.data && strstr(out.data, "not stopped")) {
    printf("FAIL: a rank went on after the failure\n");
    fails++;
  }
  mc_buf_free(&out);
  printf("%s\n", fails ? "FAILED" : "ok");
  return fails ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "--driver")) return driver(atoi(argv[2]), argv[3]);
  if (argc == 3 && !strcmp(argv[1], "--case")) return rank_main(argv[2], &argc, &argv);
  fprintf(stderr, "usage: %s --driver NP CASE | --case CASE\n", argv[0]);
  return 2;
}
