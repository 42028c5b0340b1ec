/* plan_search.c: `moec plan FILE --search`: every strategy x expert policy x mesh x
 * recompute choice on the plan's devices (or on each count of --search-devices), each
 * compiled as `moec run` would compile it (plan_compile) and costed
 * (passes/costmodel.c); what does not compile or does not fit
 * the memory budget is dropped; the rest ranked by the predicted step time (the busiest
 * device's), and the winner can be written as a plan { } block; --format draws the top
 * candidates side by side (plan_dot.c) (docs/placement.md). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define PLAN_SEARCH_TOP 3 /* candidates drawn without --top */

typedef struct Cand {
  const char *strategy, *policy, *recompute;
  int devices, nodes, per_node;
  bool ok, fits;
  char why[160]; /* refused: the compile's first error */
  double step_s, tokens, mem, comm, compute_s, comm_s;
  int busiest, idx; /* idx: enumeration order, the tie-break */
} Cand;

static int by_step(const void *a, const void *b) {
  const Cand *x = a, *y = b;
  if (x->ok != y->ok) return x->ok ? -1 : 1;
  if (x->fits != y->fits) return x->fits ? -1 : 1;
  if (x->step_s != y->step_s) return x->step_s < y->step_s ? -1 : 1;
  return x->idx - y->idx;
}

int plan_search_nodes(int devices, int nodes, int P) {
  int per = devices / MC_MAX(nodes, 1);
  if (nodes <= 1 || P <= per) return 1;
  return P % per ? 0 : P / per;
}

/* "8 devices", or the searched counts: "1, 2, 4 or 8 devices" */
static void devices_desc(const SearchArgs *s, char *buf, size_t len) {
  if (s->ncounts == 0) {
    snprintf(buf, len, "%d device%s", s->devices, s->devices > 1 ? "s" : "");
    return;
  }
  size_t o = 0;
  for (int i = 0; i < s->ncounts && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%d",
                          i == 0                ? ""
                          : i == s->ncounts - 1 ? " or "
                                                : ", ",
                          s->counts[i]);
  if (o < len) snprintf(buf + o, len - o, " device%s", s->counts[s->ncounts - 1] > 1 ? "s" : "");
}

/* Compiles and costs one candidate: the command line's options (into o) with its
 * settings on top. The compile's messages go to a temporary file: a refusal keeps its
 * first error line in c->why. NULL when refused. */
static Graph *compile(Cand *c, const SearchArgs *s, Options *o, Config *cfg, AstFile **f,
                      McBuf *notes, PlanCost *pc) {
  drv_options_init(o, "plan");
  if (s->reparse(o, s->ctx)) {
    snprintf(c->why, sizeof c->why, "bad options");
    return NULL;
  }
  char mesh[32], ndev[16];
  snprintf(mesh, sizeof mesh, "[%d, %d]", c->nodes, c->per_node);
  snprintf(ndev, sizeof ndev, "%d", c->devices);
  if (s->ncounts > 0) drv_add_setting(o, "plan", "devices", ndev, "--search-devices");
  drv_add_setting(o, "plan", "strategy", c->strategy, "--search");
  drv_add_setting(o, "plan", "experts", c->policy, "--search");
  drv_add_setting(o, "plan", "mesh", mesh, "--search");
  drv_add_setting(o, "plan", "recompute", c->recompute, "--search");
  fflush(stderr);
  FILE *tmp = tmpfile();
  int saved = dup(2);
  if (tmp) dup2(fileno(tmp), 2);
  mc_buf_printf(notes, "%s", "");
  int rc = 0;
  Graph *g = plan_compile(o, cfg, f, notes, pc, s->k, &rc);
  fflush(stderr);
  if (saved >= 0) {
    dup2(saved, 2);
    close(saved);
  }
  if (!g && tmp) {
    char line[512] = "";
    rewind(tmp);
    while (fgets(line, sizeof line, tmp))
      if (strstr(line, "error")) break;
    line[strcspn(line, "\n")] = 0;
    const char *err = strstr(line, "error: ");
    snprintf(c->why, sizeof c->why, "%.*s", (int)sizeof c->why - 1, err ? err + 7 : line);
  }
  if (tmp) fclose(tmp);
  return g;
}

static void evaluate(Cand *c, const SearchArgs *s) {
  Options o;
  Config cfg;
  AstFile *f = NULL;
  McBuf notes = {0};
  PlanCost pc;
  Graph *g = compile(c, s, &o, &cfg, &f, &notes, &pc);
  if (g) {
    c->ok = true;
    c->step_s = pc.step_s;
    c->compute_s = pc.compute_s;
    c->comm_s = pc.comm_s;
    c->tokens = (double)g->B * (double)g->T;
    c->mem = pc.max_planned;
    c->comm = pc.comm_bytes_expected;
    c->busiest = pc.busiest;
    double budget = cfg.memory_budget > 0 ? cfg.memory_budget : s->k->mem_bytes;
    c->fits = budget <= 0 || c->mem <= budget;
    if (!c->fits)
      snprintf(c->why, sizeof c->why, "needs %.1f MiB a device, the budget is %.1f MiB",
               c->mem / 1048576.0, budget / 1048576.0);
    plan_cost_free(&pc);
    ir_graph_free(g);
    fe_ast_free(f);
  }
  mc_buf_free(&notes);
  drv_options_free(&o);
}

/* The first `top` candidates that fit (ranked) side by side in one picture: each compiled
 * again and drawn as `moec plan --format` draws one plan (forward view). */
static int draw(Cand *c, int n, int top, const SearchArgs *s) {
  char title[512], on[256];
  devices_desc(s, on, sizeof on);
  snprintf(title, sizeof title,
           "moec plan --search %s on %s (%s): the %d fastest, by predicted step time", s->model, on,
           s->k->name, top);
  int most = 0;
  for (int i = 0; i < n; i++)
    most = MC_MAX(most, c[i].devices);
  PlanDotSearch *ds =
      plan_dot_search_new(title, most, plan_search_nodes(s->devices, s->nodes, most));
  int rank = 0, rc = 0;
  for (int i = 0; i < n && rank < top && !rc; i++) {
    if (!c[i].ok || !c[i].fits) continue;
    Options o;
    Config cfg;
    AstFile *f = NULL;
    McBuf notes = {0};
    PlanCost pc;
    Graph *g = compile(&c[i], s, &o, &cfg, &f, &notes, &pc);
    if (!g) { /* it compiled a moment ago */
      fprintf(stderr, "moec plan: error: candidate %d: %s\n", rank + 1, c[i].why);
      rc = 1;
    } else {
      PlanLoads *loads = NULL;
      if (o.loads_path) {
        const char *err = NULL;
        loads = plan_read_loads(o.loads_path, &err);
      }
      PlotOpts po = {.view = "forward", .loads = loads};
      char label[512];
      char dev[32] = ""; /* the count, when several are searched */
      if (s->ncounts > 1)
        snprintf(dev, sizeof dev, "%d device%s, ", c[i].devices, c[i].devices > 1 ? "s" : "");
      snprintf(label, sizeof label,
               "#%d  %s%s, experts %s, mesh %dx%d, recompute %s\\n%.3f ms a step (predicted, "
               "busiest device %d), %.3g MiB a device",
               ++rank, dev, c[i].strategy, c[i].policy, c[i].nodes, c[i].per_node, c[i].recompute,
               c[i].step_s * 1e3, c[i].busiest, c[i].mem / 1048576.0);
      plan_dot_search_add(ds, g, &pc, &cfg, &po, label);
      plan_free_loads(loads);
      plan_cost_free(&pc);
      ir_graph_free(g);
      fe_ast_free(f);
    }
    mc_buf_free(&notes);
    drv_options_free(&o);
  }
  McBuf dot = {0};
  plan_dot_search_end(ds, &dot);
  if (!rc) rc = plan_write_picture(dot.data, s->format, s->out);
  mc_buf_free(&dot);
  return rc;
}

static void write_plan(const Cand *c, const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "moec plan: error: cannot write '%s'\n", path);
    return;
  }
  fprintf(f,
          "# moec plan --search: predicted %.3f ms a step (%.4g tokens/s), %.1f MiB a device\n"
          "plan {\n  devices = %d\n  mesh = [%d, %d]\n  strategy = %s\n  experts = %s\n"
          "  recompute = %s\n}\n",
          c->step_s * 1e3, c->tokens / c->step_s, c->mem / 1048576.0, c->devices, c->nodes,
          c->per_node, c->strategy, c->policy, c->recompute);
  if (fclose(f) != 0) fprintf(stderr, "moec plan: error: cannot write '%s'\n", path);
}

/* Per device count (with --search-devices): its fastest candidate that fits, its speed-up
 * over the fewest devices that fit and that speed-up per device added (1: linear). */
static void print_counts(const Cand *c, int n, const SearchArgs *s) {
  printf("\n  by device count (the fastest that fits on each):\n");
  printf("  %7s %10s %12s %9s %10s  %s\n", "devices", "step ms", "tokens/s", "speed-up",
         "per device", "best");
  double base = 0;
  int base_p = 0;
  for (int k = 0; k < s->ncounts; k++) {
    const Cand *b = NULL;
    for (int i = 0; i < n && !b; i++) /* ranked: the first of this count is its fastest */
      if (c[i].ok && c[i].fits && c[i].devices == s->counts[k]) b = &c[i];
    if (!b) {
      printf("  %7d %10s %12s %9s %10s  no candidate fits\n", s->counts[k], "-", "-", "-", "-");
      continue;
    }
    if (!base_p) {
      base = b->step_s;
      base_p = b->devices;
    }
    double up = base / b->step_s;
    printf("  %7d %10.3f %12.4g %8.2fx %10.2f  %s, %s, %dx%d, recompute %s\n", b->devices,
           b->step_s * 1e3, b->tokens / b->step_s, up, up / ((double)b->devices / base_p),
           b->strategy, b->policy, b->nodes, b->per_node, b->recompute);
  }
}

static void print_table(const Cand *c, int n, int fit, int refused, const SearchArgs *s) {
  char on[256];
  devices_desc(s, on, sizeof on);
  bool many = s->ncounts > 1;
  printf("search %s on %s (%s): %d candidates, %d fit, %d do not fit, %d refused; "
         "ranked by the predicted step time (the busiest device's)\n",
         s->model, on, s->k->name, n, fit, n - fit - refused, refused);
  printf("  routing: %s\n\n", s->routing);
  printf("  %4s  %s%-13s %-11s %-6s %-9s %10s %12s %12s %12s %7s\n", "rank", many ? "devices " : "",
         "strategy", "experts", "mesh", "recompute", "step ms", "tokens/s", "MiB/device",
         "MiB/step", "busiest");
  int shown = 0;
  for (int i = 0; i < n; i++) {
    if (!c[i].ok || !c[i].fits) continue;
    if (s->top > 0 && shown >= s->top) break;
    char mesh[16], dev[16] = "";
    snprintf(mesh, sizeof mesh, "%dx%d", c[i].nodes, c[i].per_node);
    if (many) snprintf(dev, sizeof dev, "%7d ", c[i].devices);
    printf("  %4d  %s%-13s %-11s %-6s %-9s %10.3f %12.4g %12.3f %12.3f %7d\n", ++shown, dev,
           c[i].strategy, c[i].policy, mesh, c[i].recompute, c[i].step_s * 1e3,
           c[i].tokens / c[i].step_s, c[i].mem / 1048576.0, c[i].comm / 1048576.0, c[i].busiest);
  }
  if (many) print_counts(c, n, s);
  if (n - fit > 0) printf("\n  dropped:\n");
  for (int i = 0; i < n; i++) {
    if (c[i].ok && c[i].fits) continue;
    char dev[16] = "";
    if (many) snprintf(dev, sizeof dev, "%d: ", c[i].devices);
    printf("    %s%-13s %-11s %dx%-4d %-9s %s\n", dev, c[i].strategy, c[i].policy, c[i].nodes,
           c[i].per_node, c[i].recompute, c[i].why);
  }
}

int plan_search(const SearchArgs *s) {
  static const char *strategies[] = {"paper", "data_parallel", "hmoe"};
  static const char *policies[] = {"contiguous", "round_robin", "balanced"};
  static const char *recomputes[] = {"none", "auto", "all"};
  enum { PER_COUNT = 3 * 3 * 3 * 64 };
  const int npol = s->have_loads ? 3 : 2, ncounts = s->ncounts > 0 ? s->ncounts : 1;
  Cand *c = mc_calloc((size_t)ncounts * PER_COUNT, sizeof(Cand));
  int n = 0;
  for (int ci = 0; ci < ncounts; ci++) {
    const int P = s->ncounts > 0 ? s->counts[ci] : s->devices;
    const int phys = plan_search_nodes(s->devices, s->nodes, P); /* >= 1: cmd_plan.c checked */
    const int end = n + PER_COUNT;
    for (int si = 0; si < 3; si++)
      for (int pi = 0; pi < npol; pi++)
        for (int ri = 0; ri < 3; ri++)
          for (int nodes = 1; nodes <= P && n < end; nodes++) {
            if (P % nodes) continue;
            /* the mesh changes where hmoe puts its groups; the other strategies run on the
             * physical mesh (the cluster's, or one node) */
            bool hm = !strcmp(strategies[si], "hmoe");
            if (!hm && nodes != phys) continue;
            if (hm && phys > 1 && nodes != phys && nodes != 1) continue;
            if (P == 1 && (si > 0 || pi > 0)) continue;
            c[n++] = (Cand){.strategy = strategies[si],
                            .policy = policies[pi],
                            .recompute = recomputes[ri],
                            .devices = P,
                            .nodes = nodes,
                            .per_node = P / nodes,
                            .idx = n};
          }
  }
  for (int i = 0; i < n; i++)
    evaluate(&c[i], s);
  qsort(c, (size_t)n, sizeof(Cand), by_step);
  int fit = 0, refused = 0;
  for (int i = 0; i < n; i++) {
    fit += c[i].ok && c[i].fits;
    refused += !c[i].ok;
  }
  /* a picture to stdout replaces the table; with -o FILE both */
  if (!s->format || s->out) print_table(c, n, fit, refused, s);
  int rc = 0;
  if (fit == 0) {
    fprintf(stderr, "moec plan: error: no candidate fits\n");
    rc = 1;
  } else if (s->write_plan) {
    write_plan(&c[0], s->write_plan);
    fprintf(s->format && !s->out ? stderr : stdout, "\nwrote the winner to %s\n", s->write_plan);
  }
  fflush(stdout);
  if (!rc && s->format) rc = draw(c, n, MC_MIN(s->top > 0 ? s->top : PLAN_SEARCH_TOP, fit), s);
  mc_free(c);
  return rc;
}
