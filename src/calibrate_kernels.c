/* calibrate_kernels.c: moec calibrate's in-situ kernel factors. The cost model's formulas
 * (a GEMM at s/(s+h) of the core's rate, elementwise bytes at the measured bandwidth)
 * leave out what a kernel does around its arithmetic: random draws, exp and log, gathers,
 * caches shared with the rest of a step. So reference models (below: not the examples,
 * whose plans are then predictions) are compiled as `moec run` compiles them, every
 * instruction is timed over a few training steps (its median step) in a few alternated
 * rounds (the least of them: on a shared machine another process only ever adds time,
 * and a round or two find the cores free), and per op the
 * measured seconds less a call's own time are set against the modelled ones: factor =
 * sum measured / sum modelled. Twice: one device alone on every core, and one thread (an
 * in-process device of several: a copy on each core at once; timed with the thread's CPU
 * clock, its kernels' work whatever else holds the cores). The optimizer's pass has its own
 * (docs/placement.md). Under mpirun (cli_calibrate_ranks) the one-thread set again with the
 * copies as MPI ranks, separate processes, for the plans whose devices are ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../driver/driver.h"
#include "../runtime/profile.h"
#include "cli.h"

/* Reference models: every op kind the language models use (embedding, dropout, lstm,
 * moe and hmoe gating and experts, residual adds, softmax_xent), at shapes other than
 * the examples'. */
static const char *const ref_models[] = {
    "model ref_moe {\n"
    "  let V = 1500\n"
    "  let D = 96\n"
    "  input tokens : i32[B, T]\n"
    "  input targets : i32[B, T]\n"
    "  emb = embedding(tokens, vocab=V, dim=D)\n"
    "  e = dropout(emb, 0.2)\n"
    "  h1 = lstm(e, units=D)\n"
    "  m = moe(h1, experts=8, k=2, hidden=192)\n"
    "  r1 = h1 + dropout(m, 0.2)\n"
    "  h2 = lstm(r1, units=D)\n"
    "  r2 = r1 + dropout(h2, 0.2)\n"
    "  loss = softmax_xent(r2, targets, vocab=V)\n"
    "  output loss\n"
    "}\n"
    "train {\n"
    "  data = synthetic(topics=4, vocab=V, seed=1)\n"
    "  batch = 16\n"
    "  unroll = 24\n"
    "  optimizer = adam(lr=1e-3)\n"
    "  seed = 3\n"
    "}\n",
    "model ref_hmoe {\n"
    "  let V = 800\n"
    "  let D = 48\n"
    "  input tokens : i32[B, T]\n"
    "  input targets : i32[B, T]\n"
    "  emb = embedding(tokens, vocab=V, dim=D)\n"
    "  h1 = lstm(emb, units=D)\n"
    "  m = hmoe(h1, groups=4, experts=8, k_group=2, k=2, hidden=96)\n"
    "  r1 = h1 + dropout(m, 0.1)\n"
    "  h2 = lstm(r1, units=D)\n"
    "  loss = softmax_xent(h2, targets, vocab=V)\n"
    "  output loss\n"
    "}\n"
    "train {\n"
    "  data = synthetic(topics=4, vocab=V, seed=1)\n"
    "  batch = 48\n"
    "  unroll = 12\n"
    "  optimizer = adam(lr=1e-3)\n"
    "  seed = 5\n"
    "}\n",
};

/* One timed instruction: its op, measured and modelled seconds a step. */
typedef struct KernelTime {
  int op;
  double meas, model;
} KernelTime;

typedef struct KernelSums {
  KernelTime *t[2]; /* [set]: every instruction of every reference model */
  int n[2], cap[2];
  double opt_meas[2], opt_model[2];
} KernelSums;

static void add_time(KernelSums *s, int j, int op, double meas, double model) {
  if (s->n[j] == s->cap[j]) {
    s->cap[j] = s->cap[j] ? 2 * s->cap[j] : 256;
    s->t[j] = mc_realloc(s->t[j], (size_t)s->cap[j] * sizeof(KernelTime));
  }
  s->t[j][s->n[j]++] = (KernelTime){op, meas, model};
}

static int by_meas(const void *a, const void *b) {
  double x = ((const KernelTime *)a)->meas, y = ((const KernelTime *)b)->meas;
  return x < y ? -1 : x > y;
}

typedef struct RefRun {
  Program *p;
  const Config *cfg;
  int steps;
  double (*clock)(void); /* the set's clock: mc_now, or mc_thread_cpu_now (one thread) */
  double clock_own;      /* a reading's own cost on that clock (clock_cost) */
  RtProfile prof;        /* the last round's */
  RtProfile best;        /* the least of the rounds' (rt_profile_keep_min) */
} RefRun;

/* Reference model i read and checked with o's options (plan.strategy = strategy unless
 * NULL); NULL after printing errors. The caller frees o (and the AST). */
static AstFile *load_ref(int i, const char *strategy, Options *o, Config *cfg) {
  drv_options_init(o, "calibrate");
  if (strategy) drv_add_setting(o, "plan", "strategy", strategy, "--strategy");
  static const char *const names[] = {"<reference model 0>", "<reference model 1>"};
  MOEC_ASSERT(i >= 0 && i < (int)MC_ARRAY_LEN(names) &&
              MC_ARRAY_LEN(names) == MC_ARRAY_LEN(ref_models));
  int rc = 0;
  return drv_load_text(o, names[i], ref_models[i], cfg, &rc); /* names outlive the AST */
}

/* Each instruction's median step leaves out the rare call a time slice of another
 * process (a shared machine) falls into, but every step has some: the median step over
 * the sum of the medians, by which each median is scaled (1 on a quiet machine). */
static double time_lost(const RtProfile *r, const Program *p) {
  double sum = r->optim_med;
  for (int q = 0; q < p->ninstrs; q++)
    sum += r->instr_med[q];
  return sum > 0 && r->step_med > sum ? r->step_med / sum : 1;
}

/* Rank r's copy on a thread of its own: kernels run inline there, as an in-process
 * device's, beside the other copies (the cores shared as the devices share them). */
static void profile_on_thread(Comm *c, void *arg) {
  RefRun *r = (RefRun *)arg + c->rank;
  r->prof = rt_profile_steps(r->p, r->cfg, r->steps, r->clock, NULL);
}

/* A timing's own cost in clock's readings: the least of many back-to-back reads (the
 * thread's CPU clock is a system call, ~0.5 us, where the wall clock is ~30 ns). */
static double clock_cost(double (*clock)(void)) {
  double best = 1;
  for (int i = 0; i < 2000; i++) {
    double t0 = clock();
    best = fmin(best, clock() - t0);
  }
  return best;
}

/* Reference model i in set j (0: one device on every core; 1: a device on one thread, as
 * many copies at once as there are cores), compiled once and profiled in rounds. mpi
 * non-NULL (j = 1): the copies are MPI ranks, one each (ranks past k->cores wait: the
 * cost model shares the cores itself). */
typedef struct RefJob {
  int i, j, copies, mine; /* mine: the copies this process runs */
  bool runs, ok;
  Comm *mpi;
  Options o;
  Config cfg;
  AstFile *f;
  RefRun run[RT_MAX_THREADS];
} RefJob;

static void job_open(RefJob *b, int i, int j, int steps, const CostConsts *k, Comm *mpi) {
  memset(b, 0, sizeof *b);
  b->i = i;
  b->j = j;
  b->mpi = mpi;
  b->f = load_ref(i, NULL, &b->o, &b->cfg);
  Target t = {.devices = 1, .rank = 0, .training = true, .prec = PREC_F32, .be = &rt_backend_cpu};
  b->copies = j == 0 ? 1 : MC_MAX(k->cores, 1);
  if (mpi) b->copies = MC_MIN(b->copies, mpi->size);
  b->mine = mpi ? 1 : b->copies;
  b->runs = !mpi || mpi->rank < b->copies;
  b->ok = b->f != NULL;
  double (*clock)(void) = j == 0 ? mc_now : mc_thread_cpu_now;
  double own = b->ok ? clock_cost(clock) : 0;
  for (int c = 0; b->ok && c < b->mine; c++) {
    b->run[c] = (RefRun){.p = drv_compile(b->f, &b->cfg, &b->o, &t),
                         .cfg = &b->cfg,
                         .steps = steps,
                         .clock = clock,
                         .clock_own = own};
    b->ok = b->run[c].p != NULL;
  }
}

/* r's round into its best: the medians scaled by the round's time lost, less the clock's
 * own cost, each kept where less than the earlier rounds'. */
static void keep_round(RefRun *r) {
  int ni = r->p->ninstrs;
  double lost = time_lost(&r->prof, r->p), own = r->clock_own;
  for (int q = 0; q < ni; q++)
    r->prof.instr_med[q] = fmax(r->prof.instr_med[q] * lost - own, 0);
  r->prof.optim_med = fmax(r->prof.optim_med * lost - own, 0);
  rt_profile_keep_min(&r->best, &r->prof, ni);
  rt_profile_free(&r->prof);
}

/* One round: every copy profiled at once; each copy's medians, scaled by its time lost,
 * kept where less than the earlier rounds' (a round that caught another process busy on a
 * core counts only where it was no slower). */
static void job_round(RefJob *b) {
  if (!b->ok) return;
  if (b->mpi) {
    b->mpi->barrier(b->mpi); /* the copies at once */
    if (b->runs)
      b->run[0].prof =
          rt_profile_steps(b->run[0].p, &b->cfg, b->run[0].steps, b->run[0].clock, NULL);
  } else if (b->j == 0) {
    b->run[0].prof = rt_profile_steps(b->run[0].p, &b->cfg, b->run[0].steps, b->run[0].clock, NULL);
  } else if (rt_inproc_run(b->copies, profile_on_thread, b->run)) {
    mc_die("moec calibrate: a reference model's thread failed");
  }
  for (int c = 0; c < b->mine && b->runs; c++)
    keep_round(&b->run[c]);
}

/* Adds the job's measured and modelled seconds per op to s (set j; the copies' mean); k:
 * the profile's formulas (no factors yet). Under MPI every rank adds the same. */
static void job_add(RefJob *b, const CostConsts *k, KernelSums *s) {
  if (!b->ok) return;
  const Program *p = b->run[0].p;
  int ni = p->ninstrs, copies = b->copies, j = b->j;
  /* [copy][instruction, then the optimizer]: each copy's least medians */
  double *each = mc_calloc((size_t)copies * (size_t)(ni + 1), sizeof(double));
  for (int c = 0; c < b->mine && b->runs; c++) {
    double *e = each + (size_t)c * (size_t)(ni + 1);
    memcpy(e, b->run[c].best.instr_med, sizeof(double) * (size_t)ni);
    e[ni] = b->run[c].best.optim_med;
  }
  if (b->mpi) { /* every rank's row; a rank past the copies sends zeros it drops */
    double *all = mc_calloc((size_t)b->mpi->size * (size_t)(ni + 1), sizeof(double));
    b->mpi->all_gather(b->mpi, each, all, sizeof(double) * (size_t)(ni + 1));
    memcpy(each, all, sizeof(double) * (size_t)copies * (size_t)(ni + 1));
    mc_free(all);
  }
  /* one device alone: each kernel's modelled time over the cores the runtime splits it
   * on (plan_node_cores), the optimizer's over all of them */
  double cores = j == 0 ? k->cores : 1;
  double param_bytes = 0;
  for (int q = 0; q < p->g->nparams; q++)
    param_bytes += 4.0 * (double)p->g->params[q]->numel;
  for (int q = 0; q <= ni; q++) {
    double meas = 0;
    for (int c = 0; c < copies; c++)
      meas += each[(size_t)c * (size_t)(ni + 1) + (size_t)q] / copies;
    if (q < ni)
      add_time(s, j, p->instrs[q].node->op, meas,
               plan_node_seconds(p->g, p->instrs[q].node, k) /
                   (j == 0 ? plan_node_cores(p->g, p->instrs[q].node, k) : 1));
    else
      s->opt_meas[j] += meas;
  }
  mc_free(each);
  s->opt_model[j] += plan_optim_seconds(param_bytes, b->cfg.optimizer, k) / cores;
}

static void job_close(RefJob *b) {
  for (int c = 0; c < b->mine; c++) {
    rt_profile_free(&b->run[c].best);
    drv_program_free(b->run[c].p);
  }
  fe_ast_free(b->f);
  drv_options_free(&b->o);
}

/* The reference models of the sets j0..j1 in `rounds` alternated rounds (each round every
 * model of every set once: a busy spell of another process falls on one round of each
 * rather than on every round of one), each instruction's least median into s. False after
 * printing an error (a model did not compile). */
static bool profile_models(int j0, int j1, int steps, int rounds, const CostConsts *k, Comm *mpi,
                           KernelSums *s) {
  const int nm = (int)MC_ARRAY_LEN(ref_models);
  RefJob *jobs = mc_calloc((size_t)((j1 - j0 + 1) * nm), sizeof(RefJob));
  int n = 0;
  bool ok = true;
  for (int j = j0; j <= j1; j++)
    for (int i = 0; i < nm; i++) {
      job_open(&jobs[n], i, j, steps, k, mpi);
      ok &= jobs[n++].ok;
    }
  for (int r = 0; ok && r < MC_MAX(rounds, 1); r++)
    for (int q = 0; q < n; q++)
      job_round(&jobs[q]);
  for (int q = 0; q < n; q++) {
    if (ok) job_add(&jobs[q], k, s);
    job_close(&jobs[q]);
  }
  mc_free(jobs);
  return ok;
}

/* Rank c->rank's program of a model on c->size in-process devices, profiled at once. */
static void profile_rank(Comm *c, void *arg) {
  RefRun *r = (RefRun *)arg + c->rank;
  r->prof = rt_profile_steps(r->p, r->cfg, r->steps, r->clock, c);
}

/* The collectives of model i on P devices under `strategy`: each collective's measured
 * seconds against its modelled ones on the placed global graph, added to the one-thread
 * set. Measured: the least over the ranks of its median, i.e. the rank that arrived last
 * and waited for no other (the cost model has each phase end at its slowest device, so
 * the others' wait is in it already). mpi NULL: P in-process devices; else this rank's
 * device of mpi's P ranks (every rank adds the same). False after printing an error. */
static bool profile_collectives(int i, int P, const char *strategy, int steps, int rounds,
                                const CostConsts *k, Comm *mpi, KernelSums *s) {
  Options o;
  Config cfg;
  AstFile *f = load_ref(i, strategy, &o, &cfg);
  Target tg = {.devices = P, .rank = -1, .training = true, .prec = PREC_F32};
  Graph *g = f ? drv_compile_graph(f, &cfg, &o, &tg, NULL) : NULL;
  RefRun run[RT_MAX_THREADS] = {{0}};
  bool ok = g != NULL;
  double own = ok ? clock_cost(mc_now) : 0;
  for (int r = 0; ok && r < P; r++) {
    if (mpi && r != mpi->rank) continue;
    Target t = {.devices = P, .rank = r, .training = true, .prec = PREC_F32, .be = &rt_backend_cpu};
    run[r] = (RefRun){.p = drv_compile(f, &cfg, &o, &t),
                      .cfg = &cfg,
                      .steps = steps,
                      .clock = mc_now,
                      .clock_own = own};
    ok = run[r].p != NULL;
  }
  for (int round = 0; ok && round < MC_MAX(rounds, 1); round++) {
    if (mpi)
      profile_rank(mpi, run);
    else if (rt_inproc_run(P, profile_rank, run))
      mc_die("moec calibrate: a reference model's device failed");
    for (int r = 0; r < P; r++)
      if (!mpi || r == mpi->rank) keep_round(&run[r]);
  }
  if (ok) { /* the q-th collective of every device is the q-th of the global graph */
    int ng = 0;
    const Node **coll = mc_calloc((size_t)g->nnodes + 1, sizeof(Node *));
    for (int q = 0; q < g->nnodes; q++)
      if (ir_ops[g->nodes[q]->op].flags & OPF_COLLECTIVE) coll[ng++] = g->nodes[q];
    double *each = mc_calloc((size_t)P * (size_t)(ng + 1), sizeof(double)); /* [rank][q] */
    double *meas = mc_calloc((size_t)ng + 1, sizeof(double));
    for (int r = 0; r < P; r++) {
      if (mpi && r != mpi->rank) continue;
      int nd = 0;
      for (int q = 0; q < run[r].p->ninstrs; q++) {
        const Node *n = run[r].p->instrs[q].node;
        if (!(ir_ops[n->op].flags & OPF_COLLECTIVE)) continue;
        MOEC_ASSERT(nd < ng && coll[nd]->op == n->op); /* the same passes placed both */
        each[(size_t)r * (size_t)(ng + 1) + (size_t)nd++] = run[r].best.instr_med[q];
      }
      MOEC_ASSERT(nd == ng);
    }
    if (mpi) { /* every rank's row (send and receive may not overlap) */
      double *mine = mc_calloc((size_t)ng + 1, sizeof(double));
      memcpy(mine, each + (size_t)mpi->rank * (size_t)(ng + 1), sizeof(double) * (size_t)(ng + 1));
      mpi->all_gather(mpi, mine, each, sizeof(double) * (size_t)(ng + 1));
      mc_free(mine);
    }
    for (int q = 0; q < ng; q++) { /* the last rank to arrive: no wait for the others */
      meas[q] = each[q];
      for (int r = 1; r < P; r++)
        meas[q] = fmin(meas[q], each[(size_t)r * (size_t)(ng + 1) + (size_t)q]);
    }
    mc_free(each);
    for (int q = 0; q < ng; q++)
      add_time(s, 1, coll[q]->op, meas[q], plan_collective_seconds(g, coll[q], P, k));
    mc_free(meas);
    mc_free(coll);
  }
  for (int r = 0; r < P; r++) {
    rt_profile_free(&run[r].best);
    drv_program_free(run[r].p);
  }
  if (g) ir_graph_free(g);
  fe_ast_free(f);
  drv_options_free(&o);
  return ok;
}

/* The reference models' collectives measured in situ: the moe model under paper and
 * data_parallel, the hmoe model under hmoe. */
static const struct {
  int model;
  const char *strategy;
} coll_runs[] = {{0, "paper"}, {0, "data_parallel"}, {1, "hmoe"}};

/* Per collective op of set j: a call's measured time beyond its model (waiting for the
 * slowest device, syncing), the mean over its calls, into us[op] and json (", NAME_us"). */
static void coll_addends(const KernelSums *s, int j, double *us, McBuf *json) {
  for (int op = 0; op < OP_COUNT; op++) {
    if (!(ir_ops[op].flags & OPF_COLLECTIVE)) continue;
    double extra = 0;
    int calls = 0;
    for (int i = 0; i < s->n[j]; i++)
      if (s->t[j][i].op == op) {
        extra += fmax(s->t[j][i].meas - s->t[j][i].model, 0);
        calls++;
      }
    if (!calls) continue;
    us[op] = extra / calls * 1e6;
    mc_buf_printf(json, ", \"%s_us\": %.4g", ir_ops[op].name, us[op]);
  }
}

/* Set j of s as factors into k (call_us, kcoll_us, kfactor, kfactor_optim) and as a JSON
 * object into json; *ratio: the models' whole measured step over the modelled one. */
static void set_factors(KernelSums *s, int j, CostConsts *k, McBuf *json, double *ratio) {
  /* a call's own time: the median instruction of those modelled at under a microsecond */
  KernelTime *tiny = mc_calloc((size_t)s->n[j] + 1, sizeof(KernelTime));
  int nt = 0;
  double meas = s->opt_meas[j], model = s->opt_model[j], m[OP_COUNT] = {0}, d[OP_COUNT] = {0};
  for (int i = 0; i < s->n[j]; i++)
    if (s->t[j][i].model < 1e-6 && !(ir_ops[s->t[j][i].op].flags & OPF_COLLECTIVE))
      tiny[nt++] = s->t[j][i];
  qsort(tiny, (size_t)nt, sizeof(KernelTime), by_meas);
  double call = nt ? tiny[nt / 2].meas : 0;
  mc_free(tiny);
  for (int i = 0; i < s->n[j]; i++) {
    const KernelTime *t = &s->t[j][i];
    m[t->op] += fmax(t->meas - call, 0); /* (a collective's: kcoll_us below) */
    d[t->op] += t->model;
    meas += t->meas;
    model += t->model;
  }
  *ratio = model > 0 ? meas / model : 0;
  k->kcall_us[j] = call * 1e6;
  mc_buf_printf(json, "{\"call_us\": %.4g", call * 1e6);
  coll_addends(s, j, k->kcoll_us, json);
  for (int op = 0; op < OP_COUNT; op++) {
    if (ir_ops[op].flags & OPF_COLLECTIVE) continue; /* coll_addends' */
    if (d[op] <= 0) continue;
    k->kfactor[j][op] = fmax(m[op] / d[op], 1e-3);
    mc_buf_printf(json, ", \"%s\": %.4g", ir_ops[op].name, k->kfactor[j][op]);
  }
  if (s->opt_model[j] > 0) k->kfactor_optim[j] = s->opt_meas[j] / s->opt_model[j];
  mc_buf_printf(json, ", \"optimizer\": %.4g}", k->kfactor_optim[j]);
}

bool cli_calibrate_ranks(Comm *c, CostConsts *k, int steps, int rounds, McBuf *json,
                         double *ratio) {
  KernelSums s = {0};
  bool ok = profile_models(1, 1, steps, rounds, k, c, &s);
  for (size_t i = 0; ok && i < MC_ARRAY_LEN(coll_runs); i++)
    ok = profile_collectives(coll_runs[i].model, c->size, coll_runs[i].strategy, steps, rounds, k,
                             c, &s);
  if (ok) set_factors(&s, 1, k, json, ratio);
  mc_free(s.t[0]);
  mc_free(s.t[1]);
  return ok;
}

bool cli_calibrate_kernels(CostConsts *k, int steps, int rounds, McBuf *json, double ratio[2]) {
  KernelSums s = {0};
  int nthreads = rt_threads();
  if (!profile_models(0, 1, steps, rounds, k, NULL, &s)) return false;
  /* collectives on as many devices as cores and twice as many (sharing them) */
  int cores = MC_MAX(k->cores, 1);
  for (int P = MC_MAX(2, cores); P <= MC_MAX(2, cores) * 2 && P <= RT_MAX_THREADS; P *= 2)
    for (size_t i = 0; i < MC_ARRAY_LEN(coll_runs); i++)
      if (!profile_collectives(coll_runs[i].model, P, coll_runs[i].strategy, steps, rounds, k, NULL,
                               &s))
        return false;
  rt_threads_set(nthreads);
  const char *set[2] = {"all_cores", "one_thread"};
  mc_buf_printf(json, "{");
  for (int j = 0; j < 2; j++) {
    mc_buf_printf(json, "%s\n   \"%s\": ", j ? "," : "", set[j]);
    set_factors(&s, j, k, json, &ratio[j]);
    mc_free(s.t[j]);
  }
  mc_buf_printf(json, "}");
  return true;
}

/* Set j's factors from the flat JSON object at b ("{...}") into k; false if malformed. */
static bool read_set(const char *b, int j, CostConsts *k) {
  const char *e = b ? strchr(b, '}') : NULL;
  if (!b || !e) return false;
  for (const char *p = strchr(b, '{'); p && p < e;) {
    const char *q = strchr(p, '"');
    if (!q || q > e) break;
    const char *qe = strchr(q + 1, '"');
    if (!qe || qe > e) return false;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(qe - q - 1), q + 1);
    const char *v = qe + 1;
    while (*v == ' ' || *v == ':')
      v++;
    char *end;
    double x = strtod(v, &end);
    if (end == v || !(x >= 0 && x < 1e6)) return false;
    if (!strcmp(name, "optimizer")) k->kfactor_optim[j] = x;
    if (!strcmp(name, "call_us")) k->kcall_us[j] = x;
    size_t nl = strlen(name);
    for (int op = 0; op < OP_COUNT && nl > 3 && !strcmp(name + nl - 3, "_us"); op++)
      if ((ir_ops[op].flags & OPF_COLLECTIVE) && strlen(ir_ops[op].name) == nl - 3 &&
          !strncmp(ir_ops[op].name, name, nl - 3))
        k->kcoll_us[op] = x;
    for (int op = 0; op < OP_COUNT; op++)
      if (!strcmp(ir_ops[op].name, name)) k->kfactor[j][op] = x;
    p = end;
  }
  return true;
}

bool cli_read_kernel_factors(const char *s, CostConsts *k) {
  const char *set[2] = {"\"all_cores\"", "\"one_thread\""};
  const char *kern = strstr(s, "\"kernels\"");
  if (!kern) return true; /* a profile without them: the formulas alone */
  for (int j = 0; j < 2; j++)
    if (!read_set(strstr(kern, set[j]), j, k)) return false;
  return true;
}

bool cli_read_rank_factors(const char *mpi, CostConsts *k) {
  const char *b = strstr(mpi, "\"rank_kernels\"");
  if (!b) return false;
  /* the in-process devices' one-thread set replaced whole: an op the ranks' reference
   * models lack keeps factor 1, as in-process */
  memset(k->kfactor[1], 0, sizeof k->kfactor[1]);
  memset(k->kcoll_us, 0, sizeof k->kcoll_us);
  k->kfactor_optim[1] = 0;
  k->kcall_us[1] = 0;
  return read_set(b, 1, k);
}
