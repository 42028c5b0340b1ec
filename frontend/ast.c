/* ast.c: fe_parse (runs the flex scanner and the bison parser over a
 * buffer with an explicit length), the AST constructors the grammar actions
 * call, and fe_ast_free. Every node and string lives in AstFile.arena.
 *
 * Once an error has been reported the AST is never used (the driver does not
 * run sema), so constructors then hand out one shared "poison" node instead
 * of allocating: memory stays bounded on garbage input, and nothing links
 * the poison node to itself. */
#include <string.h>

#include "parser.h"
/* lexer.h after parser.h: it needs YYSTYPE and YYLTYPE */
#include "lexer.h"

bool fe_ast_dead(PState *ps) {
  return ps->diag->errors > ps->errors0;
}

Expr *fe_new_expr(PState *ps, ExprKind kind, Loc loc) {
  if (fe_ast_dead(ps)) return &ps->poison;
  Expr *e = mc_arena_alloc(&ps->file->arena, sizeof *e);
  e->kind = kind;
  e->loc = loc;
  e->layer = -1;
  return e;
}

Arg *fe_new_arg(PState *ps, const char *key, Loc key_loc, Expr *value) {
  if (fe_ast_dead(ps)) return &ps->poison_arg;
  Arg *a = mc_arena_alloc(&ps->file->arena, sizeof *a);
  a->key = key;
  a->key_loc = key_loc;
  a->value = value;
  return a;
}

Stmt *fe_new_stmt(PState *ps, StmtKind kind, Loc loc) {
  if (fe_ast_dead(ps)) return &ps->poison_stmt;
  Stmt *s = mc_arena_alloc(&ps->file->arena, sizeof *s);
  s->kind = kind;
  s->loc = loc;
  return s;
}

const char *fe_intern(PState *ps, const char *s, size_t n) {
  if (!fe_ast_dead(ps)) return mc_arena_strndup(&ps->file->arena, s, n);
  /* dead AST: a truncated copy in a small ring, enough for a message */
  char *b = ps->scratch[ps->scratch_i++ & 3];
  size_t k = MC_MIN(n, sizeof ps->scratch[0] - 1);
  memcpy(b, s, k);
  b[k] = 0;
  return b;
}

/* One "nested too deeply" per statement: the lexer (brackets, prefix '-')
 * and the parser (tree depth) both guard the limit. */
void fe_nest_error(PState *ps, Loc loc) {
  if (ps->nest_err_stmt == ps->stmt_counter) return;
  ps->nest_err_stmt = ps->stmt_counter;
  fe_error(ps->diag, loc, "expressions nested too deeply (limit %d)", FE_MAX_NEST);
}

static AstFile *parse(const Source *src, Diag *d, bool settings_only) {
  AstFile *f = mc_calloc(1, sizeof *f);
  f->src = *src;
  const char *text = src->text ? src->text : "";
  size_t len = src->text ? src->len : 0;
  if (len > FE_MAX_SOURCE) {
    fe_error(d, (Loc){0}, "file too large (%zu bytes; limit %u)", len, FE_MAX_SOURCE);
    return f;
  }
  PState *ps = mc_calloc(1, sizeof *ps); /* ~20 KB: not on the stack */
  ps->diag = d;
  ps->file = f;
  ps->line = ps->col = 1;
  ps->errors0 = d->errors;
  ps->nest_err_stmt = -1;
  ps->poison.kind = EX_NAME;
  ps->poison.str = "<error>";
  ps->poison.layer = -1;
  ps->poison_arg.value = &ps->poison;
  ps->poison_stmt.kind = ST_ASSIGN;
  ps->poison_stmt.name = "<error>";
  ps->poison_stmt.value = &ps->poison;

  yyscan_t sc;
  if (yylex_init_extra(ps, &sc)) mc_fatal("cannot initialise the scanner");
  yy_scan_bytes(text, (int)len, sc);
  yyparse(sc, ps);
  yylex_destroy(sc);

  if (settings_only && f->model) {
    fe_error(d, f->model->loc, "settings cannot define a model");
  } else if (!settings_only && !ps->saw_model) {
    Loc at = {1, 1, 1, 1, NULL};
    if (ps->any_token)
      at = (Loc){ps->last.end_line, ps->last.end_col + 1, ps->last.end_line, ps->last.end_col + 1,
                 ps->last.src};
    fe_error(d, at, "expected 'model' block");
  }
  mc_free(ps);
  return f;
}

AstFile *fe_parse(const Source *src, Diag *d) {
  return parse(src, d, false);
}

AstFile *fe_parse_settings(const Source *src, Diag *d) {
  return parse(src, d, true);
}

void fe_ast_free(AstFile *f) {
  if (!f) return;
  fe_ast_free(f->overrides);
  mc_free(f->owned_text);
  mc_arena_free(&f->arena);
  mc_free(f);
}
