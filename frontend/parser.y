/* parser.y: the .moe grammar (bison, pure, with locations) -> AST.
 *
 * Owns: the grammar, the syntax-error messages (parse.error custom), error
 * recovery at statement and block level, and the checks that belong to the
 * shape of a file (one model block, at most one train and one plan, which
 * statements go in which block, dtype names, nesting limits). The AST
 * constructors and fe_parse live in ast.c; the shared parser/lexer state
 * (PState) is declared in %code requires so that both see it in parser.h.
 *
 * Statements are newline-insensitive, optionally separated by ';'. No
 * expression juxtaposes two operands, so the end of one statement is always
 * where the next token cannot continue it. See docs/grammar.md. */

%code requires {
#include <stdbool.h>
#include <stdint.h>

#include "frontend/frontend.h"

#ifndef YY_TYPEDEF_YY_SCANNER_T
#define YY_TYPEDEF_YY_SCANNER_T
typedef void *yyscan_t;
#endif

/* Limits that keep every later recursive walk and the parser stack bounded. */
#define FE_MAX_NEST 256          /* expression tree depth, open ( and [ */
#define FE_MAX_BRACKETS 512      /* bracket stack kept for messages */
#define FE_MAX_ARGS 10000        /* arguments of a call, elements of a list */
#define FE_MAX_STMTS 100000      /* statements in one block */
#define FE_MAX_SOURCE (1u << 30) /* bytes */

/* A number token: the lexer parses it, the parser makes the node. */
typedef struct NumVal {
  double num;
  int64_t ival;
  bool is_int, is_size;
} NumVal;

/* An expression with the depth of its tree (to enforce FE_MAX_NEST). */
typedef struct XV {
  Expr *e;
  int depth;
} XV;

typedef struct ArgList {
  Arg *head, *tail;
  int n, depth;
} ArgList;

typedef struct StmtList {
  Stmt *head, *tail;
  int n;
} StmtList;

/* The last tokens the lexer returned: syntax errors describe them. */
typedef struct TokInfo {
  int kind;
  Loc loc;
  char text[44]; /* first bytes of the token's text */
  size_t len;    /* full length */
} TokInfo;

typedef struct Bracket {
  char ch;
  Loc loc;
} Bracket;

typedef struct PState {
  Diag *diag;
  AstFile *file;
  /* lexer */
  int line, col;          /* position of the next byte */
  Loc last;               /* last token returned (for the end-of-file location) */
  bool any_token;
  Bracket brackets[FE_MAX_BRACKETS];
  int depth;              /* open brackets on the stack */
  int depth_before;       /* ... before the lookahead token was lexed */
  bool stray;             /* the lookahead is a closer that closes nothing */
  bool skip;              /* after an error: drop the rest of the statement */
  int skip_line;          /* ... the tokens on this line and inside brackets */
  int nest;               /* open ( and [ */
  int unary_run;          /* consecutive prefix '-' */
  bool nest_reported;      /* one nesting error per too-deep run */
  bool saw_model;
  bool pad_next;          /* the parser is after an input's dims: `pad` is a keyword */
  TokInfo hist[2];        /* [0] = lookahead, [1] = the token before */
  char scratch[4][64];     /* names once the AST is dead (messages only) */
  int scratch_i;
  /* parser */
  int errors0;             /* diag->errors when the parse began */
  int stmt_counter, nest_err_stmt;
  int cur_block;           /* 0 model, 1 train, 2 plan: the one being parsed */
  Loc block_kw[3];        /* first model/train/plan keyword */
  bool have_block[3];
  Expr poison;            /* shared node once the AST is known to be dead */
  Arg poison_arg;
  Stmt poison_stmt;
} PState;

/* ast.c: constructors. Once an error is reported the AST is never used, so
 * they hand out one shared node instead of allocating (bounded memory on
 * garbage input). */
bool fe_ast_dead(PState *ps);
Expr *fe_new_expr(PState *ps, ExprKind kind, Loc loc);
Arg *fe_new_arg(PState *ps, const char *key, Loc key_loc, Expr *value);
Stmt *fe_new_stmt(PState *ps, StmtKind kind, Loc loc);
const char *fe_intern(PState *ps, const char *s, size_t n);
void fe_nest_error(PState *ps, Loc loc);
/* lexer.l: drops the open ( and [ above the innermost '{'. */
void fe_lex_forget_brackets(PState *ps);
}

%code provides {
int yylex(YYSTYPE *yylval_param, YYLTYPE *yylloc_param, yyscan_t yyscanner);
}

%define api.pure full
%define api.location.type {Loc}
%define parse.error custom
%define parse.lac full /* exact expected-token lists in messages */
%define lr.default-reduction consistent
%locations
%expect 0
%param {yyscan_t scanner}
%parse-param {PState *ps}

%code {
#include <string.h>

/* Bison's default location merge, for Loc. */
#define YYLLOC_DEFAULT(Cur, Rhs, N)                                                               \
  do {                                                                                            \
    if (N) {                                                                                      \
      (Cur).src = YYRHSLOC(Rhs, 1).src;                                                           \
      (Cur).line = YYRHSLOC(Rhs, 1).line;                                                         \
      (Cur).col = YYRHSLOC(Rhs, 1).col;                                                           \
      (Cur).end_line = YYRHSLOC(Rhs, N).end_line;                                                 \
      (Cur).end_col = YYRHSLOC(Rhs, N).end_col;                                                   \
    } else {                                                                                      \
      (Cur).src = YYRHSLOC(Rhs, 0).src;                                                           \
      (Cur).line = (Cur).end_line = YYRHSLOC(Rhs, 0).end_line;                                    \
      (Cur).col = (Cur).end_col = YYRHSLOC(Rhs, 0).end_col + 1;                                   \
    }                                                                                             \
  } while (0)

static void yyerror(Loc *loc, yyscan_t scanner, PState *ps, const char *msg);
static XV mk_binop(PState *ps, int op, XV l, XV r, Loc loc);
static XV mk_neg(PState *ps, XV x, Loc loc);
static XV mk_num(PState *ps, NumVal v, Loc loc);
static XV mk_leaf(PState *ps, ExprKind kind, const char *s, Loc loc);
static XV mk_call(PState *ps, const char *name, ArgList args, Loc loc);
static XV mk_list(PState *ps, ArgList items, Loc loc);
static ArgList args_add(PState *ps, ArgList l, Arg *a, int depth, Loc loc, const char *what);
static ArgList list1(PState *ps, ArgList l, XV x, Loc loc, const char *what);
static StmtList stmts_add(PState *ps, StmtList l, Stmt *s, Loc loc);
static void add_block(PState *ps, int which, Loc loc, Loc kw, const char *name, StmtList body);
static void check_stmt(PState *ps, Stmt *s, Loc loc);
static DType parse_dtype(PState *ps, const char *s, Loc loc);
}

%union {
  int i;
  const char *str;
  NumVal num;
  XV x;
  ArgList args;
  Stmt *stmt;
  StmtList stmts;
}

%token <str> NAME "name"
%token <num> NUMBER "number"
%token <str> STRING "string"
%token <str> PATTERN "place pattern"
%token MODEL "'model'" TRAIN "'train'" PLAN "'plan'" LET "'let'" INPUT "'input'"
%token OUTPUT "'output'" PLACE "'place'" PAD "'pad'"

%type <x> expr primary pad_opt
%type <args> args arglist items itemlist dims names
%type <stmt> stmt
%type <stmts> stmts
%type <i> dtype

%left '+' '-'
%left '*'
%precedence NEG

%%

/* file: { block } */
file:
  %empty
| file block
| file error
;

/* block: 'model' NAME '{' stmts '}' | 'train' '{' stmts '}' | 'plan' '{' stmts '}' */
block:
  MODEL NAME '{' { ps->cur_block = 0; } stmts '}' { add_block(ps, 0, @$, @1, $2, $5); }
| TRAIN '{'      { ps->cur_block = 1; } stmts '}' { add_block(ps, 1, @$, @1, NULL, $4); }
| PLAN '{'       { ps->cur_block = 2; } stmts '}' { add_block(ps, 2, @$, @1, NULL, $4); }
;

/* stmts: { stmt | ';' } -- an error skips to the next statement or '}' */
stmts:
  %empty      { $$ = (StmtList){0}; }
| stmts stmt  { check_stmt(ps, $2, @2); $$ = stmts_add(ps, $1, $2, @2); ps->stmt_counter++; }
| stmts ';'   { $$ = $1; }
| stmts error { $$ = $1; ps->stmt_counter++; }
;

/* stmt: 'let' NAME '=' expr
 *     | 'input' NAME ':' dtype '[' dims ']' [ 'pad' expr ]
 *     | NAME '=' expr
 *     | 'output' NAME { ',' NAME }
 *     | 'place' PATTERN ':' expr */
stmt:
  LET NAME '=' expr {
    $$ = fe_new_stmt(ps, ST_LET, @$);
    $$->name = $2; $$->name_loc = @2; $$->value = $4.e;
  }
| INPUT NAME ':' dtype '[' dims { ps->pad_next = true; } ']' pad_opt {
    $$ = fe_new_stmt(ps, ST_INPUT, @$);
    $$->name = $2; $$->name_loc = @2;
    $$->dtype = (DType)$4;
    $$->dims = $6.head;
    $$->pad = $9.e;
    if ($6.n > MAX_RANK)
      fe_error(ps->diag, @6, "too many dimensions (%d; limit %d)", $6.n, MAX_RANK);
  }
| NAME '=' expr {
    $$ = fe_new_stmt(ps, ST_ASSIGN, @$);
    $$->name = $1; $$->name_loc = @1; $$->value = $3.e;
  }
| OUTPUT names {
    $$ = fe_new_stmt(ps, ST_OUTPUT, @$);
    $$->names = $2.head;
  }
| PLACE PATTERN ':' expr {
    $$ = fe_new_stmt(ps, ST_PLACE, @$);
    $$->pattern = $2; $$->pattern_loc = @2; $$->value = $4.e;
  }
;

/* pad_opt: [ 'pad' expr ] -- the id of padding positions of an input's sequences */
pad_opt:
  %empty                 { $$ = (XV){0}; }
| PAD expr               { $$ = $2; }
;

/* dtype: NAME ('i32' or 'f32'), checked at once while its text is at hand */
dtype:
  NAME { $$ = parse_dtype(ps, $1, @1); }
;

/* dims: dim { ',' dim }    dim: NUMBER | NAME */
dims:
  NUMBER           { $$ = list1(ps, (ArgList){0}, mk_num(ps, $1, @1), @1, "dimensions"); }
| NAME             { $$ = list1(ps, (ArgList){0}, mk_leaf(ps, EX_NAME, $1, @1), @1, "dimensions"); }
| dims ',' NUMBER  { $$ = list1(ps, $1, mk_num(ps, $3, @3), @3, "dimensions"); }
| dims ',' NAME    { $$ = list1(ps, $1, mk_leaf(ps, EX_NAME, $3, @3), @3, "dimensions"); }
;

/* names: NAME { ',' NAME } */
names:
  NAME             { $$ = list1(ps, (ArgList){0}, mk_leaf(ps, EX_NAME, $1, @1), @1, "outputs"); }
| names ',' NAME   { $$ = list1(ps, $1, mk_leaf(ps, EX_NAME, $3, @3), @3, "outputs"); }
;

/* expr: expr ('+' | '-' | '*') expr | '-' expr | primary   (usual precedence, left assoc) */
expr:
  expr '+' expr          { $$ = mk_binop(ps, '+', $1, $3, @$); }
| expr '-' expr          { $$ = mk_binop(ps, '-', $1, $3, @$); }
| expr '*' expr          { $$ = mk_binop(ps, '*', $1, $3, @$); }
| '-' expr %prec NEG     { $$ = mk_neg(ps, $2, @$); }
| primary
;

/* primary: NUMBER | STRING | NAME | NAME '(' args ')' | '(' expr ')' | '[' items ']' */
primary:
  NUMBER                 { $$ = mk_num(ps, $1, @1); }
| STRING                 { $$ = mk_leaf(ps, EX_STR, $1, @1); }
| NAME                   { $$ = mk_leaf(ps, EX_NAME, $1, @1); }
| NAME '(' args ')'      { $$ = mk_call(ps, $1, $3, @$); }
| '(' expr ')'           { $$ = $2; }
| '[' items ']'          { $$ = mk_list(ps, $2, @$); }
;

/* args: [ arg { ',' arg } [ ',' ] ]    arg: expr | NAME '=' expr */
args:
  %empty                 { $$ = (ArgList){0}; }
| arglist
| arglist ','
;
arglist:
  expr                   { $$ = list1(ps, (ArgList){0}, $1, @1, "arguments"); }
| NAME '=' expr {
    $$ = args_add(ps, (ArgList){0}, fe_new_arg(ps, $1, @1, $3.e), $3.depth, @$, "arguments");
  }
| arglist ',' expr       { $$ = list1(ps, $1, $3, @3, "arguments"); }
| arglist ',' NAME '=' expr {
    Loc l = @3; l.end_line = @5.end_line; l.end_col = @5.end_col;
    $$ = args_add(ps, $1, fe_new_arg(ps, $3, @3, $5.e), $5.depth, l, "arguments");
  }
;

/* items: [ expr { ',' expr } [ ',' ] ] */
items:
  %empty                 { $$ = (ArgList){0}; }
| itemlist
| itemlist ','
;
itemlist:
  expr                   { $$ = list1(ps, (ArgList){0}, $1, @1, "list elements"); }
| itemlist ',' expr      { $$ = list1(ps, $1, $3, @3, "list elements"); }
;

%%

/* ------------------------------------------------------------------ helpers */

static XV mk_binop(PState *ps, int op, XV l, XV r, Loc loc) {
  int depth = 1 + MC_MAX(l.depth, r.depth);
  if (depth > FE_MAX_NEST) {
    fe_nest_error(ps, loc);
    return l; /* keeps every tree within the limit, even after the error */
  }
  Expr *e = fe_new_expr(ps, EX_BINOP, loc);
  if (!fe_ast_dead(ps)) {
    e->op = op;
    e->lhs = l.e;
    e->rhs = r.e;
  }
  return (XV){e, depth};
}

static XV mk_neg(PState *ps, XV v, Loc loc) {
  if (fe_ast_dead(ps)) return (XV){&ps->poison, MC_MIN(v.depth + 1, FE_MAX_NEST)};
  /* -NUMBER folds into a negative literal: sema sees one number. */
  if (v.e->kind == EX_NUM) {
    v.e->num = -v.e->num;
    v.e->ival = -v.e->ival;
    v.e->loc = loc;
    return v;
  }
  if (v.depth + 1 > FE_MAX_NEST) {
    fe_nest_error(ps, loc);
    return v;
  }
  Expr *e = fe_new_expr(ps, EX_NEG, loc);
  if (!fe_ast_dead(ps)) e->lhs = v.e;
  return (XV){e, v.depth + 1};
}

static XV mk_num(PState *ps, NumVal v, Loc loc) {
  Expr *e = fe_new_expr(ps, EX_NUM, loc);
  if (!fe_ast_dead(ps)) {
    e->num = v.num;
    e->ival = v.ival;
    e->is_int = v.is_int;
    e->is_size = v.is_size;
  }
  return (XV){e, 1};
}

static XV mk_leaf(PState *ps, ExprKind kind, const char *s, Loc loc) {
  Expr *e = fe_new_expr(ps, kind, loc);
  if (!fe_ast_dead(ps)) e->str = s;
  return (XV){e, 1};
}

/* Calls and lists nested too deeply keep their name but lose their arguments. */
static XV mk_call(PState *ps, const char *name, ArgList args, Loc loc) {
  int depth = 1 + args.depth;
  if (depth > FE_MAX_NEST) fe_nest_error(ps, loc);
  Expr *e = fe_new_expr(ps, EX_CALL, loc);
  if (!fe_ast_dead(ps)) {
    e->str = name;
    if (depth <= FE_MAX_NEST) e->args = args.head;
  }
  return (XV){e, depth > FE_MAX_NEST ? 1 : depth};
}

static XV mk_list(PState *ps, ArgList items, Loc loc) {
  int depth = 1 + items.depth;
  if (depth > FE_MAX_NEST) fe_nest_error(ps, loc);
  Expr *e = fe_new_expr(ps, EX_LIST, loc);
  if (!fe_ast_dead(ps) && depth <= FE_MAX_NEST) e->args = items.head;
  return (XV){e, depth > FE_MAX_NEST ? 1 : depth};
}

/* Appends in O(1); lists stop growing once the AST is dead (no cycles through
 * the shared poison node) or past FE_MAX_ARGS. */
static ArgList args_add(PState *ps, ArgList l, Arg *a, int depth, Loc loc, const char *what) {
  l.depth = MC_MAX(l.depth, depth);
  if (l.n == FE_MAX_ARGS) fe_error(ps->diag, loc, "too many %s (limit %d)", what, FE_MAX_ARGS);
  if (l.n < INT32_MAX) l.n++;
  if (fe_ast_dead(ps)) return l;
  if (l.tail)
    l.tail->next = a;
  else
    l.head = a;
  l.tail = a;
  return l;
}

/* Appends a positional argument (or list element, dimension, output name). */
static ArgList list1(PState *ps, ArgList l, XV x, Loc loc, const char *what) {
  return args_add(ps, l, fe_new_arg(ps, NULL, loc, x.e), x.depth, loc, what);
}

static StmtList stmts_add(PState *ps, StmtList l, Stmt *s, Loc loc) {
  if (l.n == FE_MAX_STMTS)
    fe_error(ps->diag, loc, "too many statements in one block (limit %d)", FE_MAX_STMTS);
  if (l.n < INT32_MAX) l.n++;
  if (fe_ast_dead(ps)) return l;
  if (l.tail)
    l.tail->next = s;
  else
    l.head = s;
  l.tail = s;
  return l;
}

static DType parse_dtype(PState *ps, const char *s, Loc loc) {
  if (!strcmp(s, "f32")) return DT_F32;
  if (!strcmp(s, "i32")) return DT_I32;
  fe_error(ps->diag, loc, "unknown dtype '%s' (expected 'i32' or 'f32')", s);
  return DT_F32;
}

static const char *const block_kw[3] = {"model", "train", "plan"};

/* Which statements a block may hold; '=' in train/plan is a setting. */
static void check_stmt(PState *ps, Stmt *s, Loc loc) {
  Diag *d = ps->diag;
  StmtKind k = s->kind;
  if (s == &ps->poison_stmt) return;
  if (ps->cur_block == 0) {
    if (k == ST_PLACE) fe_error(d, loc, "'place' rules belong in the 'plan' block");
    return;
  }
  if (k == ST_ASSIGN) s->kind = ST_SETTING;
  else if (k == ST_PLACE && ps->cur_block == 1)
    fe_error(d, loc, "'place' rules belong in the 'plan' block");
  else if (k == ST_LET)
    fe_error(d, loc, "'let' is only allowed in the 'model' block");
  else if (k == ST_INPUT)
    fe_error(d, loc, "'input' is only allowed in the 'model' block");
  else if (k == ST_OUTPUT)
    fe_error(d, loc, "'output' is only allowed in the 'model' block");
}

/* Files the block; a second block of a kind is an error with a note at the
 * first. */
static void add_block(PState *ps, int which, Loc loc, Loc kw, const char *name, StmtList body) {
  Diag *d = ps->diag;
  Loc kwloc = kw;
  if (ps->have_block[which]) {
    fe_error(d, kwloc, "duplicate '%s' block", block_kw[which]);
    fe_note(d, ps->block_kw[which], "first '%s' block is here", block_kw[which]);
    return;
  }
  ps->have_block[which] = true;
  ps->block_kw[which] = kwloc;
  Block *b = mc_arena_alloc(&ps->file->arena, sizeof *b);
  b->loc = loc;
  b->name = name;
  b->stmts = body.head;
  if (which == 0) ps->file->model = b;
  else if (which == 1) ps->file->train = b;
  else ps->file->plan = b;
}

/* Called by bison only for "memory exhausted" (parser stack): nesting beyond
 * what the lexer's limits let through. */
static void yyerror(Loc *loc, yyscan_t scanner, PState *ps, const char *msg) {
  (void)scanner;
  if (!strcmp(msg, "memory exhausted"))
    fe_error(ps->diag, *loc, "expressions nested too deeply (limit %d)", FE_MAX_NEST);
  else
    fe_error(ps->diag, *loc, "%s", msg);
}

/* ------------------------------------------------------------------ syntax errors */

/* Describes a token of the input for a message: 'x', string "..", end of file. */
static void describe_tok(const TokInfo *t, char *buf, size_t n) {
  char text[64];
  size_t k = 0;
  for (size_t i = 0; i < t->len && i < sizeof t->text && k + 4 < sizeof text; i++) {
    unsigned char c = (unsigned char)t->text[i];
    text[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  if (t->len > sizeof t->text || t->len > k) {
    if (k > 32) k = 32;
    memcpy(text + k, "...", 3);
    k += 3;
  }
  text[k] = 0;
  if (t->kind == YYEOF)
    snprintf(buf, n, "end of file");
  else if (t->kind == STRING)
    snprintf(buf, n, "string %s", text);
  else
    snprintf(buf, n, "'%s'", text);
}

static const char *expected_name(yysymbol_kind_t k) {
  switch (k) {
  case YYSYMBOL_YYEOF: return "end of file";
  case YYSYMBOL_NAME: return "name";
  case YYSYMBOL_NUMBER: return "number";
  case YYSYMBOL_STRING: return "string";
  case YYSYMBOL_PATTERN: return "place pattern";
  default: return yysymbol_name(k); /* "'model'", "'('", ... */
  }
}

/* Token number -> symbol kind (for char tokens: '(' ...). */
static yysymbol_kind_t sym_of(int tok) { return YYTRANSLATE(tok); }

static char closer_of(char open) { return open == '(' ? ')' : open == '[' ? ']' : '}'; }

static bool is_closer(int kind) { return kind == ')' || kind == ']' || kind == '}'; }

/* A token that cannot appear inside an expression: seeing it where a closer
 * is expected means the closer was forgotten. */
static bool is_structural(int kind) {
  return kind == YYEOF || kind == ';' || is_closer(kind) || kind == MODEL || kind == TRAIN ||
         kind == PLAN || kind == LET || kind == INPUT || kind == OUTPUT || kind == PLACE;
}

static int yyreport_syntax_error(const yypcontext_t *ctx, yyscan_t scanner, PState *ps) {
  (void)scanner;
  Diag *d = ps->diag;
  const TokInfo *la = &ps->hist[0], *prev = &ps->hist[1];
  Loc loc = *yypcontext_location(ctx);
  char latxt[96], prtxt[96], exp[256], what[512];
  describe_tok(la, latxt, sizeof latxt);
  describe_tok(prev, prtxt, sizeof prtxt);
  const char *before = la->kind == YYEOF ? "at" : "before";
  /* a token on a later line: point just after the previous one, where the
   * missing piece belongs */
  Loc at_la = loc, after_prev = loc;
  if (prev->kind != YYEOF && la->kind != YYEOF && la->loc.line > prev->loc.end_line)
    after_prev = (Loc){prev->loc.end_line, prev->loc.end_col + 1, prev->loc.end_line,
                       prev->loc.end_col + 1, prev->loc.src};

  yysymbol_kind_t ex[YYNTOKENS];
  int nex = yypcontext_expected_tokens(ctx, ex, YYNTOKENS);
  if (nex < 0) nex = 0;
  bool has[YYNTOKENS] = {0};
  for (int i = 0; i < nex; i++) has[ex[i]] = true;

  /* 1. a closer that closes nothing */
  if (is_closer(la->kind) && ps->stray) {
    fe_error(d, loc, "unexpected %s", latxt);
    return 0;
  }
  /* 2. a forgotten closer: point back at the opener */
  if (ps->depth_before > 0 && ps->depth_before <= FE_MAX_BRACKETS) {
    const Bracket *b = &ps->brackets[ps->depth_before - 1];
    char c = closer_of(b->ch);
    yysymbol_kind_t ck = sym_of(c);
    bool new_line = b->ch != '{' && la->loc.line > prev->loc.end_line;
    if (has[ck] && (is_structural(la->kind) || new_line)) {
      fe_error(d, b->ch == '{' ? at_la : after_prev, "expected '%c' to close '%c' at %d:%d", c,
               b->ch, b->loc.line, b->loc.col);
      fe_lex_forget_brackets(ps); /* the closer is missing: resume at statement level */
      return 0;
    }
  }
  /* The rest of the line and of open brackets belongs to the broken
   * statement: the lexer drops it (see yylex in lexer.l). */
  ps->skip = true;
  ps->skip_line = la->loc.end_line;
  /* 3. top level: only blocks */
  if (has[YYSYMBOL_MODEL] && has[YYSYMBOL_TRAIN]) {
    fe_error(d, loc, "unexpected %s outside a block; expected 'model', 'train' or 'plan'", latxt);
    return 0;
  }
  /* 4. summarise the expected set: expression, operator, statement */
  const char *items[16];
  int n = 0;
  bool expr_start = has[YYSYMBOL_NUMBER] && has[YYSYMBOL_NAME];
  bool ops = has[sym_of('+')] && has[sym_of('*')];
  bool stmt = has[YYSYMBOL_LET];
  if (expr_start) items[n++] = "expression";
  if (ops) items[n++] = "operator";
  if (stmt) items[n++] = "statement";
  for (int i = 0; i < nex && n < 16; i++) {
    yysymbol_kind_t k = ex[i];
    if (expr_start && (k == YYSYMBOL_NUMBER || k == YYSYMBOL_NAME || k == YYSYMBOL_STRING ||
                       k == sym_of('(') || k == sym_of('[') || k == sym_of('-')))
      continue;
    if (ops && (k == sym_of('+') || k == sym_of('-') || k == sym_of('*') ||
                k == sym_of('(')))
      continue; /* '(' after a name: the call, implied by "operator" */
    if (stmt && (k == YYSYMBOL_LET || k == YYSYMBOL_INPUT || k == YYSYMBOL_OUTPUT ||
                 k == YYSYMBOL_PLACE || k == YYSYMBOL_NAME || k == sym_of(';')))
      continue;
    items[n++] = expected_name(k);
  }
  if (n == 0) {
    fe_error(d, loc, "unexpected %s", latxt);
    return 0;
  }
  size_t k = 0;
  exp[0] = 0;
  for (int i = 0; i < n; i++) {
    const char *sep = i == 0 ? "" : i == n - 1 ? " or " : ", ";
    int w = snprintf(exp + k, sizeof exp - k, "%s%s", sep, items[i]);
    if (w < 0 || (size_t)w >= sizeof exp - k) break;
    k += (size_t)w;
  }
  /* 5. one thing expected right after a token: "expected '=' after 'x'" */
  if (n == 1 && !expr_start && prev->kind != YYEOF) /* YYEOF here: no token before */
    snprintf(what, sizeof what, "expected %s after %s", exp, prtxt);
  else
    snprintf(what, sizeof what, "expected %s %s %s", exp, before, latxt);
  bool missing_piece = n == 1 || (expr_start && n <= 2);
  fe_error(d, missing_piece ? after_prev : at_la, "%s", what);
  return 0;
}
