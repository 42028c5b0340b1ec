/* cmd_plot.c: `moec plot METRICS.jsonl [-o FILE.png|.svg]`: a run's metrics (moec run
 * --metrics) drawn with gnuplot: perplexity (train, valid, test) against steps and
 * tokens, the learning rate, and for each MoE layer its importance CV and max/mean load
 * and a heat map of every expert's load over time. The data and the gnuplot script go to
 * a temporary directory; gnuplot draws the file. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

static void usage(FILE *out) {
  fprintf(out, "usage: moec plot METRICS.jsonl [-o FILE.png|FILE.svg] [--title TEXT]\n\n"
               "Draws the metrics file of a run (moec run --metrics) with gnuplot: perplexity of\n"
               "train (each step, and a running mean), valid and test against steps (and tokens,\n"
               "the top axis); the learning rate; for each MoE layer the importance CV and the\n"
               "max/mean expert load, and a heat map of each expert's load / the mean load over\n"
               "the steps.\n\n"
               "options:\n"
               "  -o FILE        the picture: .png (default: METRICS with .png) or .svg\n"
               "  --title TEXT   its title (default: the metrics file's name)\n");
}

/* ---------------------------------------------------------------- reading */

typedef struct Moe {
  char name[64];
  double *cv, *ratio; /* per step line */
  double *load;       /* [line][E] */
  int E;
} Moe;

typedef struct Metrics {
  int64_t n, cap;
  double *step, *ppl, *lr, *tokens;
  int nmoe;
  Moe moe[16];
  int64_t ne, ecap;
  double *estep, *eppl;
  int *esplit; /* 0 valid, 1 test */
} Metrics;

/* The number after "key": in [s, end), or NAN. */
static double field(const char *s, const char *end, const char *key) {
  char k[64];
  snprintf(k, sizeof k, "\"%s\":", key);
  const char *p = strstr(s, k);
  if (!p || p >= end) return NAN;
  char *e;
  double v = strtod(p + strlen(k), &e);
  return e == p + strlen(k) ? NAN : v;
}

static void grow(double **a, int64_t cap) {
  *a = mc_realloc(*a, (size_t)cap * sizeof(double));
}

/* The "moe":[{...}, ...] entries of a step line. */
static void read_moe(Metrics *m, const char *line, int64_t row) {
  const char *s = strstr(line, "\"moe\":[");
  int i = 0;
  for (const char *o = s ? strchr(s, '{') : NULL; o && i < 16; o = strchr(o + 1, '{'), i++) {
    const char *close = strchr(o, '}');
    if (!close) break;
    Moe *x = &m->moe[i];
    if (i >= m->nmoe) { /* a layer first seen here: earlier rows unknown */
      const char *q = strstr(o, "\"name\":\"");
      const char *e = q ? strchr(q + 8, '"') : NULL;
      if (e && e < close) snprintf(x->name, sizeof x->name, "%.*s", (int)(e - q - 8), q + 8);
      m->nmoe = i + 1;
      x->E = 0;
      const char *l = strstr(o, "\"load\":["); /* its length: one more than its commas */
      if (l && l < close && l[8] != ']') {
        x->E = 1;
        for (const char *c = l + 8; *c && *c != ']'; c++)
          x->E += *c == ',';
      }
    }
    grow(&x->cv, m->cap);
    grow(&x->ratio, m->cap);
    x->cv[row] = field(o, close, "importance_cv");
    x->ratio[row] = field(o, close, "load_max_over_mean");
    if (x->E) {
      x->load = mc_realloc(x->load, (size_t)m->cap * (size_t)x->E * sizeof(double));
      const char *l = strstr(o, "\"load\":[");
      char *c = l && l < close ? (char *)l + 8 : NULL;
      for (int e = 0; e < x->E; e++) {
        double v = NAN;
        if (c) {
          char *end;
          v = strtod(c, &end);
          c = end == c ? NULL : end + (*end == ',');
        }
        x->load[row * x->E + e] = v;
      }
    }
  }
  for (; i < m->nmoe; i++) { /* absent from this line */
    grow(&m->moe[i].cv, m->cap);
    grow(&m->moe[i].ratio, m->cap);
    m->moe[i].cv[row] = m->moe[i].ratio[row] = NAN;
    if (m->moe[i].E) {
      m->moe[i].load =
          mc_realloc(m->moe[i].load, (size_t)m->cap * (size_t)m->moe[i].E * sizeof(double));
      for (int e = 0; e < m->moe[i].E; e++)
        m->moe[i].load[row * m->moe[i].E + e] = NAN;
    }
  }
}

static bool read_metrics(const char *path, Metrics *m) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "moec plot: error: cannot read '%s': %s\n", path, strerror(errno));
    return false;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    const char *end = line + len;
    if (strstr(line, "\"event\":\"step\"")) {
      if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 1024;
        grow(&m->step, m->cap);
        grow(&m->ppl, m->cap);
        grow(&m->lr, m->cap);
        grow(&m->tokens, m->cap);
      }
      m->step[m->n] = field(line, end, "step");
      m->ppl[m->n] = field(line, end, "ppl");
      m->lr[m->n] = field(line, end, "lr");
      m->tokens[m->n] = field(line, end, "tokens");
      read_moe(m, line, m->n);
      if (isfinite(m->step[m->n])) m->n++;
    } else if (strstr(line, "\"event\":\"eval\"")) {
      if (m->ne == m->ecap) {
        m->ecap = m->ecap ? 2 * m->ecap : 64;
        grow(&m->estep, m->ecap);
        grow(&m->eppl, m->ecap);
        m->esplit = mc_realloc(m->esplit, (size_t)m->ecap * sizeof(int));
      }
      m->estep[m->ne] = field(line, end, "step");
      m->eppl[m->ne] = field(line, end, "ppl");
      m->esplit[m->ne] = strstr(line, "\"split\":\"test\"") ? 1 : 0;
      m->ne++;
    }
  }
  free(line);
  fclose(f);
  if (m->n == 0) {
    fprintf(stderr,
            "moec plot: error: '%s' has no step lines (is it a moec run --metrics "
            "file?)\n",
            path);
    return false;
  }
  return true;
}

/* ---------------------------------------------------------------- drawing */

static FILE *open_in(const char *dir, const char *name) {
  char p[4200];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  if (!f) mc_die("cannot write '%s': %s", p, strerror(errno));
  return f;
}

/* A string for gnuplot's single quotes ('' is one quote). */
static void gp_str(FILE *f, const char *s) {
  fputc('\'', f);
  for (; *s; s++) {
    if (*s == '\'') fputc('\'', f);
    fputc(*s, f);
  }
  fputc('\'', f);
}

/* Writes the data files and the script; returns the panels' count. */
static int write_plot(const Metrics *m, const char *dir, const char *out, const char *title,
                      bool svg) {
  const int64_t n = m->n;
  const int64_t win = MC_MAX(1, n / 50); /* the running mean's window */
  FILE *d = open_in(dir, "train.dat");
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    double lp = log(m->ppl[i]);
    sum += lp;
    if (i >= win) sum -= log(m->ppl[i - win]);
    fprintf(d, "%.17g %.9g %.9g %.9g\n", m->step[i], m->ppl[i],
            exp(sum / (double)MC_MIN(i + 1, win)), m->lr[i]);
  }
  fclose(d);
  bool has_eval[2] = {false, false};
  for (int s = 0; s < 2; s++) {
    d = open_in(dir, s ? "test.dat" : "valid.dat");
    for (int64_t i = 0; i < m->ne; i++)
      if (m->esplit[i] == s && isfinite(m->eppl[i])) {
        fprintf(d, "%.17g %.9g\n", m->estep[i], m->eppl[i]);
        has_eval[s] = true;
      }
    fclose(d);
  }
  /* heat maps: each expert's load / the mean load, at most 600 columns of steps */
  const int64_t every = MC_MAX(1, n / 600);
  for (int k = 0; k < m->nmoe; k++) {
    const Moe *x = &m->moe[k];
    if (!x->E) continue;
    char name[64];
    snprintf(name, sizeof name, "heat%d.dat", k);
    d = open_in(dir, name);
    for (int64_t i = 0; i < n; i += every) {
      double mean = 0;
      for (int e = 0; e < x->E; e++)
        mean += x->load[i * x->E + e] / x->E;
      for (int e = 0; e < x->E; e++)
        fprintf(d, "%.17g %d %.6g\n", m->step[i], e, mean > 0 ? x->load[i * x->E + e] / mean : NAN);
      fprintf(d, "\n");
    }
    fclose(d);
  }
  int panels = 2;
  for (int k = 0; k < m->nmoe; k++)
    panels += 1 + (m->moe[k].E > 0);
  const double s0 = m->step[0], s1 = m->step[n - 1] > s0 ? m->step[n - 1] : s0 + 1;
  const double tps = isfinite(m->tokens[0]) && m->step[0] > 0 ? m->tokens[0] / m->step[0] : NAN;
  FILE *g = open_in(dir, "plot.gp");
  fprintf(g, "set terminal %s size 1000,%d font 'Sans,10'\nset output ",
          svg ? "svg dynamic noenhanced" : "pngcairo noenhanced", 260 * panels + 40);
  gp_str(g, out);
  fprintf(g, "\nset multiplot layout %d,1 title ", panels);
  gp_str(g, title);
  fprintf(g,
          " font 'Sans,12'\n"
          "set grid lc rgb '#dddddd'\nset key top right opaque\nset xrange [%.17g:%.17g]\n"
          "set lmargin 12\nset rmargin 14\nset xtics nomirror\nset xlabel 'step'\n",
          s0, s1);
  /* perplexity, steps below and tokens above */
  fprintf(g, "set title '%s'\nset logscale y\nset ylabel 'perplexity (log scale)'\n",
          isfinite(tps) ? "perplexity against steps (below) and tokens (above)" : "perplexity");
  if (isfinite(tps)) fprintf(g, "set x2range [%.17g:%.17g]\nset x2tics\n", s0 * tps, s1 * tps);
  fprintf(g,
          "plot '%s/train.dat' u 1:2 w l lc rgb '#c6dbef' t 'train (each step)', '' u 1:3 w l "
          "lw 2 lc rgb '#08519c' t 'train (mean of %lld steps)'",
          dir, (long long)win);
  if (has_eval[0])
    fprintf(g, ", '%s/valid.dat' u 1:2 w lp pt 7 ps 0.8 lw 1.5 lc rgb '#d95f02' t 'valid'", dir);
  if (has_eval[1])
    fprintf(g, ", '%s/test.dat' u 1:2 w p pt 9 ps 1.6 lc rgb '#1b9e77' t 'test'", dir);
  fprintf(g, "\nunset logscale y\nunset x2tics\n");
  /* the learning rate */
  fprintf(g,
          "set title 'learning rate'\nset ylabel 'lr'\nset format y '%%.1e'\nset yrange "
          "[0:*]\nplot '%s/train.dat' u 1:4 w l lw 2 lc rgb '#6a3d9a' t 'lr'\nset format y "
          "'%%g'\nset autoscale y\n",
          dir);
  for (int k = 0; k < m->nmoe; k++) {
    const Moe *x = &m->moe[k];
    char name[64];
    snprintf(name, sizeof name, "moe%d.dat", k);
    d = open_in(dir, name);
    for (int64_t i = 0; i < n; i++)
      fprintf(d, "%.17g %.9g %.9g\n", m->step[i], x->cv[i], x->ratio[i]);
    fclose(d);
    fprintf(g, "set title ");
    char t[160];
    snprintf(t, sizeof t, "MoE layer %s: load balance (1 = even)", x->name);
    gp_str(g, t);
    fprintf(g,
            "\nset ylabel 'ratio'\nset key top left horizontal\nset offsets 0, 0, graph 0.25, 0\n"
            "plot '%s/%s' u 1:2 w l lw 1.5 lc rgb '#e31a1c' t 'importance CV (std / mean)', '' "
            "u 1:3 w l lw 1.5 lc rgb '#1f78b4' t 'max / mean expert load'\nset offsets 0, 0, 0, "
            "0\nset key top right vertical\n",
            dir, name);
    if (!x->E) continue;
    fprintf(g, "set title ");
    snprintf(t, sizeof t, "MoE layer %s: each expert's load / the mean load", x->name);
    gp_str(g, t);
    fprintf(g,
            "\nset ylabel 'expert'\nset yrange [-0.5:%d.5]\nset ytics 1\nset cbrange [0:3]\nset cblabel "
            "'load / mean'\nset palette defined (0 '#ffffff', 1 '#fee8c8', 2 '#fc8d59', 3 "
            "'#7f0000')\nset colorbox vertical user origin graph 1.02, graph 0 size graph 0.025, "
            "graph 1\nset key off\nplot '%s/heat%d.dat' u 1:2:3 w image\nset key on\n"
            "set autoscale y\nset ytics autofreq\nunset cbrange\n",
            x->E - 1, dir, k);
  }
  fprintf(g, "unset multiplot\n");
  fclose(g);
  return panels;
}

static int run_gnuplot(const char *script) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", script, (char *)NULL);
    _exit(127);
  }
  int st;
  if (waitpid(pid, &st, 0) < 0) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void remove_dir(const char *dir) {
  static const char *const files[] = {"train.dat", "valid.dat", "test.dat", "plot.gp"};
  char p[4200];
  for (size_t i = 0; i < MC_ARRAY_LEN(files); i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    unlink(p);
  }
  for (int k = 0; k < 16; k++) {
    snprintf(p, sizeof p, "%s/heat%d.dat", dir, k);
    unlink(p);
    snprintf(p, sizeof p, "%s/moe%d.dat", dir, k);
    unlink(p);
  }
  rmdir(dir);
}

static bool ends_with(const char *s, const char *x) {
  size_t n = strlen(s), k = strlen(x);
  return n >= k && !strcmp(s + n - k, x);
}

int cmd_plot(int argc, char **argv) {
  const char *in = NULL, *out = NULL, *title = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if ((!strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--title")) && i + 1 < argc) {
      *(strcmp(a, "--title") ? &out : &title) = argv[++i];
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "moec plot: error: unknown option '%s'%s\n", a,
              !strcmp(a, "-o") || !strcmp(a, "--title") ? " (it needs a value)" : "");
      usage(stderr);
      return 2;
    } else if (in) {
      fprintf(stderr, "moec plot: error: more than one metrics file ('%s', '%s')\n", in, a);
      return 2;
    } else {
      in = a;
    }
  }
  if (!in) {
    fprintf(stderr, "moec plot: error: no METRICS.jsonl given\n");
    usage(stderr);
    return 2;
  }
  char def[4096];
  if (!out) { /* METRICS.jsonl -> METRICS.png */
    snprintf(def, sizeof def, "%s", in);
    char *dot = strrchr(def, '.'), *slash = strrchr(def, '/');
    if (dot && (!slash || dot > slash)) *dot = 0;
    snprintf(def + strlen(def), sizeof def - strlen(def), ".png");
    out = def;
  }
  bool svg = ends_with(out, ".svg");
  if (!svg && !ends_with(out, ".png")) {
    fprintf(stderr, "moec plot: error: -o '%s': the picture is a .png or .svg file\n", out);
    return 2;
  }
  Metrics m = {0};
  if (!read_metrics(in, &m)) return 1;
  char dir[] = "/tmp/moec_plot.XXXXXX";
  if (!mkdtemp(dir)) mc_die("cannot make a temporary directory: %s", strerror(errno));
  write_plot(&m, dir, out, title ? title : in, svg);
  char script[4200];
  snprintf(script, sizeof script, "%s/plot.gp", dir);
  int rc = run_gnuplot(script);
  remove_dir(dir);
  for (int k = 0; k < m.nmoe; k++) {
    mc_free(m.moe[k].cv);
    mc_free(m.moe[k].ratio);
    mc_free(m.moe[k].load);
  }
  mc_free(m.step);
  mc_free(m.ppl);
  mc_free(m.lr);
  mc_free(m.tokens);
  mc_free(m.estep);
  mc_free(m.eppl);
  mc_free(m.esplit);
  if (rc == 127) {
    fprintf(stderr, "moec plot: error: gnuplot was not found: install it (Debian: apt-get install "
                    "gnuplot-nox; scripts/setup does)\n");
    return 1;
  }
  if (rc != 0) {
    fprintf(stderr, "moec plot: error: gnuplot failed (exit %d) drawing '%s'\n", rc, out);
    return 1;
  }
  printf("moec plot: %s: %lld steps, %lld evaluations, %d MoE layer%s\n", out, (long long)m.n,
         (long long)m.ne, m.nmoe, m.nmoe == 1 ? "" : "s");
  return 0;
}
