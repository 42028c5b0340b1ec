/* run_syntax.c: tests of the frontend's syntax half (lexer.l, parser.y,
 * ast.c, diag.c), calling fe_parse directly (no moec binary needed).
 *
 *   run_syntax golden DIR   each .moe file in DIR: the diagnostics printed must be
 *                           exactly the file's "# expect: L:C: error: msg"
 *                           lines, in order ("# expect-errors: N" checks the
 *                           count when the cap hides some)
 *   run_syntax ok DIR       each .moe file in DIR parses with no diagnostic
 *   run_syntax ast          the AST of every construct, values and locations
 *   run_syntax display      the source line and caret: tabs, UTF-8, windows
 *   run_syntax stress       generated inputs: NULs, junk, huge names, deep
 *                           nesting, a 10 MB file, the error cap
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frontend/frontend.h"
#include "tests/test.h"

typedef struct Res {
  AstFile *f;
  char *out; /* everything printed to the Diag */
  size_t len;
  int errors;
  double secs;
} Res;


static Res parse_n(const char *path, const char *text, size_t len) {
  Res r = {0};
  FILE *ms = open_memstream(&r.out, &r.len);
  Source src = {.path = path, .text = text, .len = len};
  Diag d;
  fe_diag_init(&d, &src);
  d.out = ms;
  double t0 = mc_cpu_now(); /* CPU seconds: a loaded shared machine stretches wall time */
  r.f = fe_parse(&src, &d);
  r.secs = mc_cpu_now() - t0;
  r.errors = d.errors;
  fclose(ms);
  return r;
}

static Res parse_s(const char *text) {
  return parse_n("t.moe", text, strlen(text));
}

static void res_free(Res *r) {
  fe_ast_free(r->f);
  free(r->out);
}

/* The first diagnostic header line, without "path:". */
static char *first_diag(const Res *r, char *buf, size_t n) {
  buf[0] = 0;
  if (!r->out) return buf;
  const char *p = strchr(r->out, ':');
  if (!p) return buf;
  p++;
  const char *e = strchr(p, '\n');
  size_t k = e ? (size_t)(e - p) : strlen(p);
  if (k >= n) k = n - 1;
  memcpy(buf, p, k);
  buf[k] = 0;
  return buf;
}

static int count_lines(const char *s) {
  int n = 0;
  for (; s && *s; s++)
    n += *s == '\n';
  return n;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted *.moe names in dir. */
static int list_moe(const char *dir, char ***names) {
  DIR *dp = opendir(dir);
  if (!dp) {
    fprintf(stderr, "cannot open %s\n", dir);
    exit(1);
  }
  int n = 0, cap = 0;
  *names = NULL;
  struct dirent *de;
  while ((de = readdir(dp))) {
    size_t l = strlen(de->d_name);
    if (l < 5 || strcmp(de->d_name + l - 4, ".moe")) continue;
    if (n == cap) *names = realloc(*names, sizeof(char *) * (size_t)(cap = cap ? 2 * cap : 64));
    (*names)[n++] = strdup(de->d_name);
  }
  closedir(dp);
  qsort(*names, (size_t)n, sizeof(char *), cmp_str);
  return n;
}

/* ------------------------------------------------------------------ golden */

static int run_golden(const char *dir) {
  char **names;
  int n = list_moe(dir, &names), files = 0;
  for (int i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    size_t len;
    char *text = mc_read_file(path, &len);
    CHECK(text != NULL);
    if (!text) continue;
    files++;
    /* expectations: "# expect: ..." lines, anywhere (by convention at the end) */
    char *exp[64];
    int nexp = 0, want_errors = -1;
    for (const char *p = text; p && p < text + len;) {
      const char *e = memchr(p, '\n', (size_t)(text + len - p));
      size_t l = e ? (size_t)(e - p) : (size_t)(text + len - p);
      if (l > 10 && !strncmp(p, "# expect: ", 10) && nexp < 64)
        exp[nexp++] = strndup(p + 10, l - 10);
      if (l > 17 && !strncmp(p, "# expect-errors: ", 17)) want_errors = atoi(p + 17);
      p = e ? e + 1 : NULL;
    }
    if (nexp == 0) {
      fprintf(stderr, "%s: no '# expect:' line\n", names[i]);
      CHECK(nexp > 0);
    }
    Res r = parse_n(names[i], text, len);
    /* the header lines the parse printed, without the path */
    size_t plen = strlen(names[i]);
    int got = 0;
    bool ok = true;
    for (const char *p = r.out; p && *p;) {
      const char *e = strchr(p, '\n');
      size_t l = e ? (size_t)(e - p) : strlen(p);
      if (l > plen && !strncmp(p, names[i], plen) && p[plen] == ':') {
        const char *h = p + plen + 1;
        size_t hl = l - plen - 1;
        while (hl && *h == ' ')
          h++, hl--;
        if (got >= nexp || strlen(exp[got]) != hl || strncmp(exp[got], h, hl)) {
          ok = false;
          fprintf(stderr, "%s: diagnostic %d is\n  %.*s\nexpected\n  %s\n", names[i], got + 1,
                  (int)hl, h, got < nexp ? exp[got] : "(none)");
        }
        got++;
      }
      p = e ? e + 1 : NULL;
    }
    if (got < nexp) {
      ok = false;
      fprintf(stderr, "%s: %d diagnostics, expected %d; missing: %s\n", names[i], got, nexp,
              exp[got]);
    }
    if (r.errors == 0) {
      ok = false;
      fprintf(stderr, "%s: no error counted\n", names[i]);
    }
    if (want_errors >= 0 && r.errors != want_errors) {
      ok = false;
      fprintf(stderr, "%s: %d errors counted, expected %d\n", names[i], r.errors, want_errors);
    }
    if (!ok) fprintf(stderr, "---- full output of %s:\n%s----\n", names[i], r.out);
    CHECK(ok);
    res_free(&r);
    for (int k = 0; k < nexp; k++)
      free(exp[k]);
    free(text);
  }
  printf("%d golden files\n", files);
  CHECK(files >= 45);
  for (int i = 0; i < n; i++)
    free(names[i]);
  free(names);
  TEST_DONE();
}

/* ------------------------------------------------------------------ ok */

static int run_ok(const char *dir) {
  char **names;
  int n = list_moe(dir, &names);
  for (int i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    size_t len;
    char *text = mc_read_file(path, &len);
    CHECK(text != NULL);
    if (!text) continue;
    Res r = parse_n(names[i], text, len);
    if (r.errors || r.len) fprintf(stderr, "%s: unexpected diagnostics:\n%s", names[i], r.out);
    CHECK(r.errors == 0);
    CHECK(r.len == 0);
    CHECK(r.f->model != NULL);
    res_free(&r);
    free(text);
  }
  printf("%d valid files\n", n);
  CHECK(n >= 5);
  for (int i = 0; i < n; i++)
    free(names[i]);
  free(names);
  TEST_DONE();
}

/* ------------------------------------------------------------------ ast */

static Stmt *nth(Block *b, int i) {
  Stmt *s = b ? b->stmts : NULL;
  while (s && i-- > 0)
    s = s->next;
  return s;
}

static int count_args(const Arg *a) {
  int n = 0;
  for (; a; a = a->next)
    n++;
  return n;
}

static bool loc_is(Loc l, int line, int col, int eline, int ecol) {
  bool ok = l.line == line && l.col == col && l.end_line == eline && l.end_col == ecol;
  if (!ok)
    fprintf(stderr, "loc %d:%d-%d:%d, expected %d:%d-%d:%d\n", l.line, l.col, l.end_line, l.end_col,
            line, col, eline, ecol);
  return ok;
}

static void test_ast(void) {
  const char *text = "# a comment\n"
                     "plan {\n"
                     "  mesh = [2, 4,]; devices = 8\n"
                     "  place m.experts : shard(experts)\n"
                     "  place \"lstm*\" : on([0, 1])\n"
                     "  memory_budget = 8GiB\n"
                     "}\n"
                     "model lm {\n"
                     "  let V = 1000\n"
                     "  input tokens : i32[B, T]\n"
                     "  input w : f32[4, V]\n"
                     "  e = embedding(tokens, vocab=V, dim=512)\n"
                     "  y = a + b * c - -d\n"
                     "  z = -3 - 2 - 1\n"
                     "  output loss, aux\n"
                     "}\n"
                     "train {\n"
                     "  optimizer = adam(lr=1e-3, beta1=.9, eps=2.)\n"
                     "  data = \"a\\\"b\\\\c\\nd\\te\"\n"
                     "  fuse = false\n"
                     "  sizes = [512MiB, 4KiB, 1TiB, 10GB, 500MB, 1KB, 1.5KiB, 2TB]\n"
                     "}\n";
  Res r = parse_s(text);
  if (r.errors) fprintf(stderr, "%s", r.out);
  CHECK(r.errors == 0);
  AstFile *f = r.f;
  CHECK(f->model && f->train && f->plan);
  if (!f->model || !f->train || !f->plan) return;
  CHECK(!strcmp(f->model->name, "lm"));
  CHECK(f->train->name == NULL && f->plan->name == NULL);
  CHECK(loc_is(f->model->loc, 8, 1, 16, 1));

  /* plan */
  Stmt *s = nth(f->plan, 0);
  CHECK(s && s->kind == ST_SETTING && !strcmp(s->name, "mesh"));
  CHECK(s->value->kind == EX_LIST && count_args(s->value->args) == 2);
  CHECK(s->value->args->value->ival == 2 && s->value->args->next->value->ival == 4);
  CHECK(loc_is(s->loc, 3, 3, 3, 16));
  CHECK(loc_is(s->value->loc, 3, 10, 3, 16));
  s = nth(f->plan, 1);
  CHECK(s && s->kind == ST_SETTING && !strcmp(s->name, "devices") && s->value->ival == 8);
  s = nth(f->plan, 2);
  CHECK(s && s->kind == ST_PLACE && !strcmp(s->pattern, "m.experts"));
  CHECK(loc_is(s->pattern_loc, 4, 9, 4, 17));
  CHECK(s->value->kind == EX_CALL && !strcmp(s->value->str, "shard"));
  CHECK(s->value->args->value->kind == EX_NAME && !strcmp(s->value->args->value->str, "experts"));
  s = nth(f->plan, 3);
  CHECK(s && s->kind == ST_PLACE && !strcmp(s->pattern, "lstm*"));
  CHECK(s->value->kind == EX_CALL && s->value->args->value->kind == EX_LIST);
  s = nth(f->plan, 4);
  CHECK(s && s->value->kind == EX_NUM && s->value->is_size && s->value->is_int);
  CHECK(s->value->ival == 8589934592LL && s->value->num == 8589934592.0);
  CHECK(nth(f->plan, 5) == NULL);

  /* model */
  s = nth(f->model, 0);
  CHECK(s && s->kind == ST_LET && !strcmp(s->name, "V") && s->value->kind == EX_NUM);
  CHECK(s->value->is_int && s->value->ival == 1000 && !s->value->is_size);
  CHECK(loc_is(s->name_loc, 9, 7, 9, 7));
  s = nth(f->model, 1);
  CHECK(s && s->kind == ST_INPUT && s->dtype == DT_I32 && count_args(s->dims) == 2);
  CHECK(s->dims->value->kind == EX_NAME && !strcmp(s->dims->value->str, "B"));
  CHECK(s->dims->next->value->kind == EX_NAME && !strcmp(s->dims->next->value->str, "T"));
  s = nth(f->model, 2);
  CHECK(s && s->kind == ST_INPUT && s->dtype == DT_F32 && s->dims->value->ival == 4);
  s = nth(f->model, 3);
  CHECK(s && s->kind == ST_ASSIGN && !strcmp(s->name, "e"));
  Expr *e = s->value;
  CHECK(e->kind == EX_CALL && !strcmp(e->str, "embedding") && count_args(e->args) == 3);
  CHECK(e->layer == -1);
  CHECK(e->args->key == NULL && e->args->value->kind == EX_NAME);
  CHECK(!strcmp(e->args->next->key, "vocab") && !strcmp(e->args->next->next->key, "dim"));
  CHECK(loc_is(e->args->next->key_loc, 12, 25, 12, 29));
  CHECK(loc_is(e->loc, 12, 7, 12, 41));
  /* y = a + b * c - -d  ==  (a + (b * c)) - (-d) */
  e = nth(f->model, 4)->value;
  CHECK(e->kind == EX_BINOP && e->op == '-');
  CHECK(e->lhs->kind == EX_BINOP && e->lhs->op == '+');
  CHECK(e->lhs->rhs->kind == EX_BINOP && e->lhs->rhs->op == '*');
  CHECK(e->rhs->kind == EX_NEG && e->rhs->lhs->kind == EX_NAME);
  /* z = -3 - 2 - 1  ==  ((-3) - 2) - 1, with -3 folded into the literal */
  e = nth(f->model, 5)->value;
  CHECK(e->kind == EX_BINOP && e->rhs->ival == 1 && e->lhs->kind == EX_BINOP);
  CHECK(e->lhs->lhs->kind == EX_NUM && e->lhs->lhs->ival == -3 && e->lhs->lhs->num == -3);
  CHECK(loc_is(e->lhs->lhs->loc, 14, 7, 14, 8));
  s = nth(f->model, 6);
  CHECK(s && s->kind == ST_OUTPUT && count_args(s->names) == 2);
  CHECK(!strcmp(s->names->value->str, "loss") && !strcmp(s->names->next->value->str, "aux"));

  /* train */
  e = nth(f->train, 0)->value;
  CHECK(e->kind == EX_CALL && !strcmp(e->str, "adam") && count_args(e->args) == 3);
  CHECK_CLOSE(e->args->value->num, 1e-3, 0, 0);
  CHECK(!e->args->value->is_int);
  CHECK_CLOSE(e->args->next->value->num, 0.9, 0, 0);
  CHECK_CLOSE(e->args->next->next->value->num, 2.0, 0, 0);
  CHECK(!e->args->next->next->value->is_int);
  e = nth(f->train, 1)->value;
  CHECK(e->kind == EX_STR && !strcmp(e->str, "a\"b\\c\nd\te"));
  e = nth(f->train, 2)->value;
  CHECK(e->kind == EX_NAME && !strcmp(e->str, "false"));
  e = nth(f->train, 3)->value;
  const double sizes[] = {512.0 * 1048576, 4096, 1099511627776.0, 1e10, 5e8, 1000, 1536, 2e12};
  int i = 0;
  for (Arg *a = e->args; a; a = a->next, i++) {
    CHECK(a->value->is_size && a->value->is_int);
    if (i < 8) CHECK(a->value->num == sizes[i] && a->value->ival == (int64_t)sizes[i]);
  }
  CHECK(i == 8);
  res_free(&r);

  /* CRLF line endings and no final newline */
  r = parse_s("model m {\r\n  x = 1\r\n}\r\ntrain { steps = 2 }");
  CHECK(r.errors == 0 && r.f->model && r.f->train);
  CHECK(r.f->model && loc_is(r.f->model->stmts->loc, 2, 3, 2, 7));
  res_free(&r);

  /* statements on one line, with and without ';' */
  r = parse_s("model m { a = 1 b = f(a) c = [a, b] ; d = -a output d }");
  CHECK(r.errors == 0 && nth(r.f->model, 4) && nth(r.f->model, 4)->kind == ST_OUTPUT);
  res_free(&r);

  /* blocks in any order, empty blocks, empty calls and lists */
  r = parse_s("train {} plan {} model m { x = f() y = [] }");
  CHECK(r.errors == 0 && r.f->model && r.f->train && r.f->plan);
  CHECK(r.f->model && nth(r.f->model, 0)->value->args == NULL);
  CHECK(r.f->model && nth(r.f->model, 1)->value->kind == EX_LIST);
  res_free(&r);

  /* UTF-8 in comments and strings is fine */
  r = parse_s("# café ✓\nmodel m { s = \"naïve ✓\" }");
  CHECK(r.errors == 0 && r.f->model && !strcmp(r.f->model->stmts->value->str, "naïve ✓"));
  res_free(&r);

  /* keywords are not names, but names may contain them */
  r = parse_s("model m { models = 1 trainer = 2 plan_b = 3 input_x = 4 }");
  CHECK(r.errors == 0 && r.f->model && nth(r.f->model, 3));
  res_free(&r);
}

/* ------------------------------------------------------------------ display */

static void check_output(const char *text, const char *want) {
  Res r = parse_s(text);
  bool ok = r.out && !strcmp(r.out, want);
  if (!ok) fprintf(stderr, "output\n%s\nexpected\n%s\n", r.out ? r.out : "", want);
  CHECK(ok);
  res_free(&r);
}

static void test_display(void) {
  /* caret and range */
  check_output("model m {\n  x = dense(a units=4)\n}\n",
               "t.moe:2:15: error: expected operator, '=', ',' or ')' before 'units'\n"
               "  x = dense(a units=4)\n"
               "              ^~~~~\n");
  /* tabs are kept in the caret line */
  check_output("model m {\n\tx =\t\tdense(a,\tunits=4 5)\n}\n",
               "t.moe:2:24: error: expected operator, ',' or ')' before '5'\n"
               "\tx =\t\tdense(a,\tunits=4 5)\n"
               "\t   \t\t        \t        ^\n");
  /* UTF-8 before the caret counts as one column of the caret line */
  check_output("model m { # é\n  s = \"é\" @\n}\n", "t.moe:2:12: error: invalid character '@'\n"
                                                    "  s = \"é\" @\n"
                                                    "          ^\n");
  /* non-printable bytes show as '?' */
  check_output("model m { x = 1 \x01\x02 }", "t.moe:1:17: error: invalid character '\\x01'\n"
                                             "model m { x = 1 ?? }\n"
                                             "                ^~\n");
  /* notes */
  check_output("model a {}\nmodel b {}\n", "t.moe:2:1: error: duplicate 'model' block\n"
                                           "model b {}\n"
                                           "^~~~~\n"
                                           "t.moe:1:1: note: first 'model' block is here\n"
                                           "model a {}\n"
                                           "^~~~~\n");
  /* end of file: just past the last token */
  check_output("model m {\n  x = (1 + 2\n\n# trailing comment\n",
               "t.moe:2:13: error: expected ')' to close '(' at 2:7\n"
               "  x = (1 + 2\n"
               "            ^\n");

  /* a 1M-character line: a window around the column, cut with "..." */
  size_t n = 1000000;
  char *big = malloc(n + 64);
  strcpy(big, "model m { x = a");
  size_t k = strlen(big);
  while (k < n) {
    memcpy(big + k, " + a", 4);
    k += 4;
  }
  strcpy(big + 500000, " @ ");
  big[500003] = 'a';
  strcpy(big + k, " }\n");
  Res r = parse_n("t.moe", big, strlen(big));
  CHECK(r.errors >= 1);
  char buf[512];
  first_diag(&r, buf, sizeof buf);
  CHECK(strstr(buf, "expressions nested too deeply (limit 256)") != NULL);
  /* header, source window, caret line (+ the same for the '@' error) */
  const char *p = r.out;
  int longest = 0, cur = 0;
  for (; p && *p; p++) {
    cur = *p == '\n' ? 0 : cur + 1;
    if (cur > longest) longest = cur;
  }
  CHECK(longest <= 120);
  CHECK(strstr(r.out, "...") != NULL);
  CHECK(strstr(r.out, "invalid character '@'") != NULL);
  res_free(&r);
  free(big);
}

/* ------------------------------------------------------------------ stress */

/* The 10 MB parse takes about 0.4 s optimised and 1.3 s at -O0 on one core;
 * sanitizers slow it down several times. */
#if defined(__SANITIZE_ADDRESS__)
#define TIME_LIMIT_10MB 30.0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TIME_LIMIT_10MB 30.0
#endif
#endif
#ifndef TIME_LIMIT_10MB
#define TIME_LIMIT_10MB 5.0
#endif

static char *repeat(const char *pre, const char *unit, size_t times, const char *post) {
  size_t lp = strlen(pre), lu = strlen(unit), lq = strlen(post);
  char *s = malloc(lp + lu * times + lq + 1);
  memcpy(s, pre, lp);
  for (size_t i = 0; i < times; i++)
    memcpy(s + lp + i * lu, unit, lu);
  memcpy(s + lp + lu * times, post, lq + 1);
  return s;
}

static void expect_first(const char *what, Res *r, const char *want) {
  char buf[512];
  first_diag(r, buf, sizeof buf);
  bool ok = !strcmp(buf, want);
  if (!ok) fprintf(stderr, "%s: first diagnostic\n  %s\nexpected\n  %s\n", what, buf, want);
  CHECK(ok);
}

static void test_stress(void) {
  char buf[512];
  /* empty input, and no text at all */
  Res r = parse_n("t.moe", "", 0);
  expect_first("empty", &r, "1:1: error: expected 'model' block");
  CHECK(r.errors == 1 && r.f != NULL && r.f->model == NULL);
  res_free(&r);
  r = parse_n("t.moe", NULL, 0);
  CHECK(r.errors == 1);
  res_free(&r);

  /* NUL bytes: input, not terminators */
  static const char nul[] = "model m {\0}\0\0model n {}";
  r = parse_n("t.moe", nul, sizeof nul - 1);
  expect_first("nul", &r, "1:10: error: invalid character '\\x00'");
  CHECK(r.errors >= 2); /* and the second model block is seen */
  res_free(&r);
  static const char nul_only[] = "\0\0\0\0";
  r = parse_n("t.moe", nul_only, 4);
  expect_first("nul only", &r, "1:1: error: invalid character '\\x00'");
  CHECK(r.errors == 2); /* the run of NULs, then no model */
  res_free(&r);

  /* a million-character identifier: fine as a name, truncated in messages */
  char *s = repeat("model m { ", "x", 1000000, " = 1 }");
  r = parse_s(s);
  CHECK(r.errors == 0 && r.f->model && strlen(r.f->model->stmts->name) == 1000000);
  res_free(&r);
  free(s);
  s = repeat("model m { ", "y", 1000000, " 1 }");
  r = parse_s(s);
  first_diag(&r, buf, sizeof buf);
  CHECK(strstr(buf, "expected '=' after 'yyyy") != NULL && strstr(buf, "...'") != NULL);
  CHECK(strlen(buf) < 100);
  CHECK(r.len < 1000);
  res_free(&r);
  free(s);

  /* nesting: 256 open parentheses are fine, the 257th is an error */
  char *open = repeat("model m { x = ", "(", 256, "a");
  char *full = repeat(open, ")", 256, " }");
  r = parse_s(full);
  CHECK(r.errors == 0);
  res_free(&r);
  free(open);
  free(full);
  open = repeat("model m { x = ", "(", 100000, "a");
  full = repeat(open, ")", 100000, "\n  y = 1 }");
  r = parse_s(full);
  expect_first("100000 parens", &r, "1:271: error: expressions nested too deeply (limit 256)");
  CHECK(r.errors == 1 && r.secs < 1.0);
  res_free(&r);
  free(open);
  free(full);
  s = repeat("model m { x = ", "-", 100000, "a }");
  r = parse_s(s);
  expect_first("100000 minus", &r, "1:271: error: expressions nested too deeply (limit 256)");
  CHECK(r.errors == 1);
  res_free(&r);
  free(s);
  open = repeat("model m { x = ", "f(", 100000, "a");
  full = repeat(open, ")", 100000, " }");
  r = parse_s(full);
  expect_first("100000 calls", &r, "1:528: error: expressions nested too deeply (limit 256)");
  CHECK(r.errors == 1);
  res_free(&r);
  free(open);
  free(full);
  open = repeat("model m { x = ", "[", 100000, "a");
  full = repeat(open, "]", 100000, " }");
  r = parse_s(full);
  CHECK(r.errors == 1);
  res_free(&r);
  free(open);
  free(full);
  s = repeat("model m { x = -(", "-(", 100000, "a }");
  r = parse_s(s);
  CHECK(r.errors == 1);
  res_free(&r);
  free(s);
  /* a long chain: the tree is deep even without brackets */
  s = repeat("model m { x = a", " + a", 1000000, " }");
  r = parse_s(s);
  expect_first("long sum", &r, "1:15: error: expressions nested too deeply (limit 256)");
  CHECK(r.errors == 1);
  res_free(&r);
  free(s);
  s = repeat("model m { x = a", " + a", 200, " }");
  r = parse_s(s);
  CHECK(r.errors == 0);
  res_free(&r);
  free(s);
  /* many braces, brackets, closers */
  s = repeat("", "{", 1000000, "");
  r = parse_s(s);
  CHECK(r.errors >= 1);
  res_free(&r);
  free(s);
  s = repeat("model m {", "}", 1000000, "");
  r = parse_s(s);
  CHECK(r.errors >= 1);
  res_free(&r);
  free(s);

  /* size limits: statements per block, list elements */
  s = repeat("model m {\n", "a=1;", 100001, "}\n");
  r = parse_s(s);
  expect_first("statements", &r, "2:400001: error: too many statements in one block (limit 100000)");
  CHECK(r.errors == 1);
  res_free(&r);
  free(s);
  s = repeat("model m { x = [0", ",1", 10000, "] }");
  r = parse_s(s);
  expect_first("list", &r, "1:20016: error: too many list elements (limit 10000)");
  CHECK(r.errors == 1);
  res_free(&r);
  free(s);
  s = repeat("model m { x = [0", ",1", 9999, "] }");
  r = parse_s(s);
  CHECK(r.errors == 0);
  res_free(&r);
  free(s);

  /* the error cap: 30 errors, 20 shown, then one "too many errors" */
  s = repeat("model m {\n", "  x = @\n", 30, "}\n");
  r = parse_s(s);
  CHECK(r.errors == 30);
  int headers = 0, notes = 0;
  for (const char *p = r.out; p && (p = strstr(p, "t.moe:")); p++) {
    headers++;
    if (!strncmp(p, "t.moe: note: too many errors (limit 20)", 39)) notes++;
  }
  CHECK(headers == 21 && notes == 1);
  res_free(&r);
  free(s);

  /* binary junk: 1 MB from a fixed generator */
  size_t n = 1 << 20;
  char *junk = malloc(n);
  uint64_t x = 42;
  for (size_t i = 0; i < n; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    junk[i] = (char)(x >> 56);
  }
  r = parse_n("t.moe", junk, n);
  CHECK(r.errors > 0);
  CHECK(count_lines(r.out) <= 20 * 3 + 1);
  CHECK(r.secs < 2.0);
  res_free(&r);
  /* junk of valid tokens */
  static const char *toks[] = {"model", "train", "plan", "let",   "input", "output", "place",
                               "x",     "1.5",   "8GiB", "\"s\"", "{",     "}",      "(",
                               ")",     "[",     "]",    ",",     ":",     "=",      "+",
                               "-",     "*",     ";",    ".",     "\n",    "#c\n"};
  size_t k = 0;
  while (k < n - 16) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    const char *t = toks[(x >> 33) % MC_ARRAY_LEN(toks)];
    size_t l = strlen(t);
    memcpy(junk + k, t, l);
    junk[k + l] = ' ';
    k += l + 1;
  }
  r = parse_n("t.moe", junk, k);
  CHECK(r.errors > 0 && r.secs < 2.0);
  res_free(&r);
  free(junk);

  /* a 10 MB file parses fast (linear time) */
  size_t cap = 11u << 20, len = 0;
  char *big = malloc(cap);
  len += (size_t)sprintf(big, "model big {\n  input tokens : i32[B, T]\n  h0 = embedding(tokens, "
                              "vocab=1000, dim=64)\n");
  int i = 0;
  while (len < (10u << 20)) {
    i++;
    len += (size_t)sprintf(big + len,
                           "  h%d = dense(h%d + 0.5 * h%d, units=64, act=relu)  # layer %d of "
                           "a long generated model, with a comment\n",
                           i, i - 1, i - 1, i);
  }
  len += (size_t)sprintf(big + len, "  output h%d\n}\n", i);
  r = parse_n("big.moe", big, len);
  printf("10 MB file: %d statements parsed in %.3f s\n", i + 3, r.secs);
  CHECK(r.errors == 0);
  CHECK(r.secs < TIME_LIMIT_10MB);
  int nst = 0;
  for (Stmt *st = r.f->model ? r.f->model->stmts : NULL; st; st = st->next)
    nst++;
  CHECK(nst == i + 3);
  res_free(&r);
  free(big);
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "golden")) return run_golden(argv[2]);
  if (argc == 3 && !strcmp(argv[1], "ok")) return run_ok(argv[2]);
  if (argc == 2 && !strcmp(argv[1], "ast"))
    test_ast();
  else if (argc == 2 && !strcmp(argv[1], "display"))
    test_display();
  else if (argc == 2 && !strcmp(argv[1], "stress"))
    test_stress();
  else {
    fprintf(stderr, "usage: run_syntax golden DIR | ok DIR | ast | display | stress\n");
    return 2;
  }
  TEST_DONE();
}
