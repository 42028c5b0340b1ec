/* launch.c: the devices of a run. One device; N in-process devices, one thread each; or
 * one device per MPI rank. Every device compiles its own program (its experts, its rows:
 * drv_compile for its rank), then the runtime trains it (rt_train): the same code path
 * on 1 and N devices. The compile errors every device would hit alike are found once,
 * before the devices start. On cuda each device thread or rank is bound to its GPU and
 * trains on a Comm that takes device buffers (NCCL: ncclCommInitAll for the threads,
 * ncclCommInitRank with the unique id broadcast over MPI for the ranks; runtime/comm.h). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver.h"

bool drv_mpi_launched(void) {
  return rt_comm_mpi_launched() && drv_mpi_size() > 1;
}

int drv_mpi_size(void) {
  if (!rt_comm_mpi_launched()) return 0;
  const char *s = getenv("OMPI_COMM_WORLD_SIZE");
  if (!s) s = getenv("PMI_SIZE");
  return s ? atoi(s) : 1;
}

/* This rank's index among the ranks on its machine (its GPU: that modulo the GPUs), as
 * the launcher says; the world rank when it says nothing. */
static int mpi_local_rank(int rank) {
  const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                        "PMIX_LOCAL_RANK"};
  for (size_t i = 0; i < MC_ARRAY_LEN(vars); i++) {
    const char *v = getenv(vars[i]);
    if (v && *v) return atoi(v);
  }
  return rank;
}

typedef struct Launch {
  AstFile *f;
  const Config *cfg;
  const Options *o;
  const RunOpts *ro;
  const Backend *be;
  RtNcclGroup *gpus; /* cuda on N threads: their GPUs and NCCL */
  int rc[RT_INPROC_MAX];
} Launch;

static int run_device(Comm *c, const Launch *l) {
  Target t = {.devices = c->size,
              .rank = c->rank,
              .training = true,
              .prec = l->o->f64 ? PREC_F64 : PREC_F32,
              .be = l->be,
              .fold_dw = true};
  Program *p = drv_compile(l->f, l->cfg, l->o, &t);
  if (!p) return 1;
  int rc = p->source ? rt_train_pairs(c, p, l->cfg, l->ro) : rt_train(c, p, l->cfg, l->ro);
  drv_program_free(p);
  return rc;
}

static void device_thread(Comm *c, void *arg) {
  Launch *l = arg;
  Comm *dc = l->gpus ? rt_comm_nccl_attach(l->gpus, c) : c; /* binds the thread to its GPU */
  l->rc[c->rank] = run_device(dc, l);
  if (dc != c) rt_comm_nccl_free(dc);
}

int drv_train(AstFile *f, const Config *cfg, const Options *o) {
  const Backend *be = drv_backend(cfg, o);
  if (!be) return 1;
  int P = cfg->devices > 0 ? cfg->devices : 1;
  if (o->f64 && (o->save || o->load)) {
    fprintf(stderr, "moec %s: error: --f64 runs cannot --save or --load checkpoints (they are "
                    "float32)\n",
            o->cmd);
    return 2;
  }
  if (be != &rt_backend_cpu && o->f64) {
    fprintf(stderr,
            "moec %s: error: --f64 trains on the cpu backend only (an equivalence check): drop "
            "--f64 or use --backend cpu\n",
            o->cmd);
    return 1;
  }
  bool gpus = be != &rt_backend_cpu;
  char *settings = drv_settings_json(cfg, o);
  RunOpts ro = {.save = o->save,
                .load = o->load,
                .metrics = o->metrics,
                .save_every = o->save_every,
                .trace = o->trace,
                .resume_cmd = o->resume_cmd,
                .json = o->json,
                .quiet = o->quiet,
                .f64 = o->f64,
                .no_eval = o->no_eval,
                .settings_hash = drv_settings_hash(cfg, o),
                .settings = settings};
  Launch l = {f, cfg, o, &ro, be, NULL, {0}};
  int rc = 0;
  if (rt_comm_mpi_launched()) { /* one device per rank; load.c set devices = ranks */
    const char *why = NULL;
    int argc = 0;
    char **argv = NULL;
    Comm *c = rt_comm_mpi_init(&argc, &argv, &o->comm, &why);
    if (!c) mc_die("started by an MPI launcher, but %s", why ? why : "MPI did not start");
    if (c->size != P)
      mc_die("the plan has %d devices, but mpirun started %d ranks (one device per rank)", P,
             c->size);
    rt_threads_set(1); /* one thread per rank */
    Comm *dc = gpus ? rt_comm_nccl_init_rank(c, mpi_local_rank(c->rank), !o->dev.no_nccl) : c;
    rc = run_device(dc, &l);
    if (dc != c) rt_comm_nccl_free(dc);
    if (rc == 128 + SIGINT || rc == 128 + SIGTERM) {
      /* Stopped by a signal (every rank after the same step, the checkpoint complete).
       * OpenMPI's mpirun relays a Ctrl-C as SIGTERM, then SIGKILLs the ranks after a
       * second or as soon as one of them exits; MPI_Finalize would wait for mpirun
       * through that second and be killed. So the ranks leave together, without it
       * (docs/training.md). */
      fflush(NULL);
      c->barrier(c);
      _exit(rc);
    }
    rt_comm_mpi_finalize(c);
  } else if (P > 1) {
    if (P > RT_INPROC_MAX)
      mc_die("%d devices: at most %d in-process devices (use mpirun for more)", P, RT_INPROC_MAX);
    /* what every device would report alike, once: the placement on P devices, the file */
    Target t = {.devices = P, .rank = -1, .training = true, .prec = PREC_F32, .be = be};
    Graph *g = drv_compile_graph(f, cfg, o, &t, NULL);
    if (!g) {
      mc_free(settings);
      return 1;
    }
    ir_graph_free(g);
    if (o->load) rt_st_close(rt_st_open(o->load));
    rt_threads_set(1); /* once, before the device threads start: each runs its kernels inline */
    if (gpus) l.gpus = rt_comm_nccl_init_all(P, !o->dev.no_nccl);
    if (rt_inproc_run_opts(P, device_thread, &l, &o->comm, NULL))
      rc = 1;
    else
      for (int r = 0; r < P && !rc; r++)
        rc = l.rc[r];
    rt_comm_nccl_group_free(l.gpus);
  } else {
    rc = run_device(rt_comm_self(), &l);
  }
  mc_free(settings);
  return rc;
}
