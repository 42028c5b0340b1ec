/* test_guard.c: the divergence guard's gradient scan (runtime/guard.c), split over the
 * threads. After one step of tests/fold_dw.moe (whole gradients and, with the JIT, a
 * folded expert dW), a value that is not finite is planted in one gradient element; the
 * update (rt_run_update) must stop the run naming that parameter, or the first in order
 * when two are bad, before the optimizer changes a parameter: a child process makes the
 * update, and at its exit compares every parameter with the bits it had before.
 *
 *   test_guard tests/fold_dw.moe */
#include <math.h>
#include <string.h>

#include "driver/driver.h"
#include "runtime/run.h"
#include "tests/test.h"
#include "tests/test_model.h"

static char tmpdir[] = "/tmp/moec_test_guard.XXXXXX";
#include "tests/test_death.h"

static Run run;
static float **before; /* every parameter's values before the update */
static double loss;

/* At the child's exit (mc_die): whether the update left every parameter as it was. */
static void params_check(void) {
  const Graph *g = run.p->g;
  bool same = true;
  for (int i = 0; i < g->nparams; i++)
    same &= !memcmp(before[i], run.params[i], (size_t)g->params[i]->numel * sizeof(float));
  fprintf(stderr, "\n%s\n", same ? "parameters bit-identical" : "parameters CHANGED");
}

typedef struct Plant {
  float *at[2]; /* where to plant (NULL: nowhere) */
  float v[2];
} Plant;

static void update(void *arg) {
  const Plant *pl = arg;
  for (int k = 0; k < 2; k++)
    if (pl->at[k]) *pl->at[k] = pl->v[k];
  atexit(params_check);
  rt_run_update(&run, loss, 0);
}

/* Plants pl in a child, expects the run stopped naming `name`, parameters intact. */
static void expect_stop(Plant pl, const char *name) {
  char want[256], path[300];
  snprintf(want, sizeof want, "training diverged at step 1: the gradient of '%s' is not finite",
           name);
  expect_death(update, &pl, want);
  snprintf(path, sizeof path, "%s/stderr.txt", tmpdir);
  char *err = mc_read_file(path, NULL);
  CHECK(err && strstr(err, "parameters bit-identical"));
  free(err);
}

static int param_index(const char *name) {
  const Graph *g = run.p->g;
  for (int i = 0; i < g->nparams; i++)
    if (!strcmp(g->params[i]->name, name)) return i;
  return -1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_guard tests/fold_dw.moe\n");
    return 2;
  }
  MOEC_ASSERT(mkdtemp(tmpdir));
  rt_threads_set(2); /* the scan's tasks on two threads, whatever the machine has */
  Config cfg;
  char *text = NULL;
  AstFile *f = test_load_model(argv[1], &cfg, &text);
  Options o;
  drv_options_init(&o, "run");
  o.path = argv[1];
  Target t = {.devices = 1,
              .training = true,
              .prec = PREC_F32,
              .be = &rt_backend_cpu,
              .fold_dw = true}; /* as driver/launch.c compiles moec run's program */
  Program *p = drv_compile(f, &cfg, &o, &t);
  MOEC_ASSERT(p);
  RunOpts ro = {.quiet = true, .no_eval = true};
  rt_run_open(&run, rt_comm_self(), p, &cfg, &ro);
  run.corpus = rt_corpus_load_ckpt(&cfg, p->vocab, NULL);
  rt_run_start(&run, NULL);
  const Graph *g = p->g;
  size_t nl = (size_t)run.Bl * (size_t)run.T;
  int32_t *ids = mc_malloc(nl * sizeof(int32_t)), *tg = mc_malloc(nl * sizeof(int32_t));
  Batcher b;
  rt_batcher_init_rows(&b, run.corpus, SPLIT_TRAIN, run.Bl, run.T, 0, run.Bl);
  rt_batcher_seek(&b, 0);
  rt_batcher_next(&b, ids, tg);
  rt_batcher_free(&b);
  rt_feed(p, p->ids, ids);
  rt_feed(p, p->targets, tg);
  double xent, aux;
  loss = rt_run_step(&run, 0, &xent, &aux, NULL);
  CHECK(isfinite(loss));
  before = mc_calloc((size_t)g->nparams, sizeof(float *));
  for (int i = 0; i < g->nparams; i++) {
    size_t bytes = (size_t)g->params[i]->numel * sizeof(float);
    before[i] = mc_malloc(bytes);
    memcpy(before[i], run.params[i], bytes);
  }

  /* the last element of the largest whole gradient (its last task), then an earlier
   * parameter's middle element beside it: the first in parameter order is named */
  int big = -1, early = -1;
  for (int i = 0; i < g->nparams; i++) {
    if (run.opt->fold && run.opt->fold[i].off) continue;
    if (big < 0 || g->params[i]->numel > g->params[big]->numel) big = i;
  }
  for (int i = 0; i < big && early < 0; i++)
    if (!(run.opt->fold && run.opt->fold[i].off)) early = i;
  MOEC_ASSERT(big >= 0 && early >= 0);
  int64_t nb = g->params[big]->numel;
  expect_stop((Plant){{&run.grads[big][nb - 1]}, {NAN}}, g->params[big]->name);
  expect_stop((Plant){{&run.grads[big][nb / 2], &run.grads[early][g->params[early]->numel / 2]},
                      {INFINITY, -INFINITY}},
              g->params[early]->name);

  /* a folded expert dW (the JIT's fusion): a few-row expert's factor, and an expert the
   * kernel wrote, each seen where the scan reads it */
  int w = param_index("m.w1");
  const FoldDW *fd = w >= 0 && run.opt->fold ? &run.opt->fold[w] : NULL;
  if (fd && fd->off && (const void *)run.grads[w] == fd->dw) {
    const int32_t *off = fd->off;
    int few = -1, many = -1;
    for (int64_t x = 0; x < fd->E; x++) {
      int64_t rows = off[x + 1] - off[x];
      if (rows > 0 && rows <= RT_FOLD_ROWS && few < 0) few = (int)x;
      if (rows > RT_FOLD_ROWS && many < 0) many = (int)x;
    }
    if (few >= 0) /* a row of xs: its dW is made by the optimizer, never written */
      expect_stop((Plant){{(float *)fd->xs + (size_t)off[few] * (size_t)fd->K}, {NAN}}, "m.w1");
    if (many >= 0)
      expect_stop((Plant){{(float *)fd->dw + (size_t)(many * fd->K * fd->M)}, {NAN}}, "m.w1");
    CHECK(few >= 0);
  } else {
    printf("test_guard: no folded expert dW here (built without LLVM?): that part skipped\n");
  }

  /* nothing planted: the update goes on and changes the parameters */
  rt_run_update(&run, loss, 0);
  bool changed = false;
  for (int i = 0; i < g->nparams; i++)
    changed |= memcmp(before[i], run.params[i], (size_t)g->params[i]->numel * sizeof(float)) != 0;
  CHECK(changed);

  for (int i = 0; i < g->nparams; i++)
    mc_free(before[i]);
  mc_free(before);
  mc_free(ids);
  mc_free(tg);
  rt_run_close(&run);
  rt_corpus_free(run.corpus);
  drv_program_free(p);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmpdir);
  mc_free(text);
  TEST_DONE();
}
