/* sema.c: the semantic half of the frontend. Owns every check a parsed file
 * must pass before anything is built from it:
 *
 *   model : names (defined before use, assigned once, B, T and S reserved), `let`
 *           constants, inputs and their pad ids, layer calls (layer exists, tensor
 *           and keyword arguments, kinds, ranges, cross-argument rules), dtypes,
 *           symbolic shapes (Dim = c * B^b * T^t * S^s), an attention's mask, the
 *           outputs (exactly one scalar loss, a softmax_xent result);
 *   train : settings, their ranges, the synthetic corpus against the model's
 *           vocabulary;
 *   plan  : devices / mesh, strategy, expert placement policy, recompute,
 *           memory budget, fusion, backend, `place` rules and what they match.
 *
 * It annotates the AST (Expr.ty, .layer, .argv, .targ, .param_name) and fills
 * Config. Every error goes through fe_error at the exact source location; an
 * erroneous value becomes V_ERR, which later checks accept silently, so one
 * mistake gives one message. docs/language.md is the user-facing reference of
 * every rule here. */
#include <string.h>

#include "frontend.h"

/* Integer arguments and settings stay well inside int32 and exactly
 * representable doubles; bigger values are almost certainly typos. */
#define SEMA_INT_MAX 2147483647.0
/* No layer, and no model, may hold more parameters than this (the counts must
 * fit int64 and any real allocation): 2^50. */
#define SEMA_MAX_PARAMS 1125899906842624.0
/* synthetic(topics, vocab): topics x vocab at most this (runtime/train.h's
 * RT_SYNTH_MAX_STATES; the frontend does not include the runtime). */
#define SEMA_SYNTH_MAX_STATES (1 << 20)
/* memory_budget: at most 2^53 bytes (8 PiB), exact as a double and as int64. */
#define SEMA_MAX_BUDGET 9007199254740992.0
/* check_expr recursion guard (the parser already limits nesting to 256). */
#define SEMA_MAX_DEPTH 400

/* ---------------------------------------------------------------- symbols */

typedef enum SymKind {
  SY_CONST,  /* let, or NAME = NUMBER */
  SY_TENSOR, /* input, or NAME = tensor expression */
  SY_ERR,    /* defined by an erroneous statement: uses are silent */
} SymKind;

typedef struct Sym {
  const char *name;
  Loc loc; /* the defining name */
  SymKind kind;
  double value;
  bool is_int;
  Type ty;
  bool xent;  /* a softmax_xent result (or an alias of one) */
  Expr *call; /* the layer call that made it, if its whole right side is one */
  bool input; /* an input statement's */
  bool has_pad;
  int64_t pad; /* its pad id */
} Sym;

typedef struct SymTab {
  Sym **slot; /* open addressing, power-of-two capacity */
  size_t cap, n;
  Sym **order; /* in definition order, for suggestions and place matching */
  size_t norder, ocap;
} SymTab;

static Sym *sym_find(const SymTab *t, const char *name) {
  if (!t->cap) return NULL;
  for (size_t i = mc_hash_str(name) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    if (!t->slot[i]) return NULL;
    if (!strcmp(t->slot[i]->name, name)) return t->slot[i];
  }
}

static void sym_insert(SymTab *t, Sym *s) {
  if (2 * (t->n + 1) > t->cap) {
    size_t ncap = t->cap ? 2 * t->cap : 64;
    Sym **ns = mc_calloc(ncap, sizeof *ns);
    for (size_t i = 0; i < t->cap; i++) {
      Sym *o = t->slot[i];
      if (!o) continue;
      size_t j = mc_hash_str(o->name) & (ncap - 1);
      while (ns[j])
        j = (j + 1) & (ncap - 1);
      ns[j] = o;
    }
    mc_free(t->slot);
    t->slot = ns;
    t->cap = ncap;
  }
  size_t j = mc_hash_str(s->name) & (t->cap - 1);
  while (t->slot[j])
    j = (j + 1) & (t->cap - 1);
  t->slot[j] = s;
  t->n++;
  if (t->norder == t->ocap) {
    t->ocap = t->ocap ? 2 * t->ocap : 64;
    t->order = mc_realloc(t->order, t->ocap * sizeof *t->order);
  }
  t->order[t->norder++] = s;
}

/* ---------------------------------------------------------------- values */

typedef enum VKind { V_ERR, V_NUM, V_TENSOR } VKind;

typedef struct Val {
  VKind k;
  double num;
  bool is_int, is_size;
  Type ty;
  bool xent;
} Val;

static const Val verr = {.k = V_ERR};

typedef struct Sema {
  AstFile *f;
  Diag *d;
  Config *cfg;
  McArena *arena; /* the AST's: strings kept in Config live as long as the AST */
  SymTab syms;
  int depth;
  /* what the train block checks against the model */
  Expr *loss_call; /* the softmax_xent of the loss output */
  Expr **embeds;   /* embedding calls */
  int nembeds, embcap;
  double params; /* the model's parameters so far (SEMA_MAX_PARAMS in all) */
  bool has_source; /* an input has the source length S: a translation model */
  Loc wd_loc, accumulate_loc;            /* weight_decay=, accumulate = (line 0: not given) */
  Expr *tokenizer_expr, *tok_vocab_expr; /* text(tokenizer=...), its vocab= */
} Sema;

/* A location covering the first n characters at loc's start (a name). */
static Loc loc_span(Loc l, size_t n) {
  Loc r = l;
  r.end_line = l.line;
  r.end_col = l.col + (n ? (int)MC_MIN(n, 1000) - 1 : 0);
  return r;
}

/* ---------------------------------------------------------------- suggestions */

/* Levenshtein distance, capped (names longer than 63 get no suggestion). */
static int edit_distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b);
  if (n > 63 || m > 63) return 99;
  int prev[64], cur[64];
  for (size_t j = 0; j <= m; j++)
    prev[j] = (int)j;
  for (size_t i = 1; i <= n; i++) {
    cur[0] = (int)i;
    for (size_t j = 1; j <= m; j++) {
      int c = prev[j - 1] + (a[i - 1] != b[j - 1]);
      c = MC_MIN(c, prev[j] + 1);
      c = MC_MIN(c, cur[j - 1] + 1);
      cur[j] = c;
    }
    memcpy(prev, cur, (m + 1) * sizeof(int));
  }
  return prev[m];
}

/* Close enough to suggest: distance <= 2 and less than the word's length. */
typedef struct Suggest {
  const char *best;
  int dist;
} Suggest;

static void suggest_add(Suggest *s, const char *word, const char *cand) {
  if (!cand || !strcmp(word, cand)) return;
  int d = edit_distance(word, cand);
  int len = (int)strlen(word);
  size_t lw = strlen(word), lc = strlen(cand);
  if (d > 2 && MC_MIN(lw, lc) >= 3 && !strncmp(word, cand, MC_MIN(lw, lc)))
    d = 2; /* one is a prefix of the other: batchsize / batch */
  if (d <= 2 && d < len && (!s->best || d < s->dist)) {
    s->best = cand;
    s->dist = d;
  }
}

/* " (did you mean 'x'?)" or "" in buf. */
static const char *suggest_str(const Suggest *s, char *buf, size_t n) {
  if (s->best)
    snprintf(buf, n, " (did you mean '%s'?)", s->best);
  else
    buf[0] = 0;
  return buf;
}

/* ---------------------------------------------------------------- formatting */

static const char *tystr(const Type *t, char *buf, size_t n) {
  return type_str(t, buf, n);
}

static const char *numstr(double v, char *buf, size_t n) {
  snprintf(buf, n, "%.10g", v);
  return buf;
}

static bool type_eq(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!dim_eq(a->dim[i], b->dim[i])) return false;
  return true;
}

/* ---------------------------------------------------------------- expressions */

static Val check_expr(Sema *S, Expr *e, const char *assigned);

static Val num_val(double v, bool is_int) {
  Val r = {.k = V_NUM, .num = v, .is_int = is_int};
  return r;
}

static Val tensor_val(Expr *e, Type ty, bool xent) {
  e->ty = ty;
  Val r = {.k = V_TENSOR, .ty = ty, .xent = xent};
  return r;
}

static bool is_sym_BT(const char *s) {
  return !strcmp(s, "B") || !strcmp(s, "T") || !strcmp(s, "S");
}

static const char *sym_meaning(const char *s) {
  return s[0] == 'B' ? "batch size" : s[0] == 'T' ? "unroll length" : "source length";
}

static Val check_name(Sema *S, Expr *e) {
  Sym *s = sym_find(&S->syms, e->str);
  if (!s) {
    if (is_sym_BT(e->str)) {
      fe_error(S->d, e->loc,
               "'%s' (the %s) is only known at run time; it can only be used in input dimensions",
               e->str, sym_meaning(e->str));
      return verr;
    }
    Suggest sg = {0};
    if (S->d->errors < 1000)
      for (size_t i = 0; i < S->syms.norder; i++)
        suggest_add(&sg, e->str, S->syms.order[i]->name);
    char sb[128];
    fe_error(S->d, e->loc, "'%s' is not defined%s", e->str, suggest_str(&sg, sb, sizeof sb));
    return verr;
  }
  switch (s->kind) {
  case SY_CONST:
    return num_val(s->value, s->is_int);
  case SY_TENSOR:
    return tensor_val(e, s->ty, s->xent);
  default:
    return verr;
  }
}

static const char *op_name(int op) {
  return op == '+' ? "+" : op == '-' ? "-" : "*";
}

static Val check_binop(Sema *S, Expr *e) {
  Val l = check_expr(S, e->lhs, NULL);
  Val r = check_expr(S, e->rhs, NULL);
  if (l.k == V_ERR || r.k == V_ERR) return verr;
  if (l.k == V_NUM && r.k == V_NUM) {
    double v = e->op == '+' ? l.num + r.num : e->op == '-' ? l.num - r.num : l.num * r.num;
    Val out = num_val(v, l.is_int && r.is_int && fabs(v) <= 9007199254740992.0);
    out.is_size = (l.is_size || r.is_size);
    return out;
  }
  char b1[160], b2[160];
  /* tensors in arithmetic are f32 */
  if (l.k == V_TENSOR && l.ty.dtype != DT_F32) {
    fe_error(S->d, e->lhs->loc, "arithmetic needs f32 tensors; this is %s",
             tystr(&l.ty, b1, sizeof b1));
    return verr;
  }
  if (r.k == V_TENSOR && r.ty.dtype != DT_F32) {
    fe_error(S->d, e->rhs->loc, "arithmetic needs f32 tensors; this is %s",
             tystr(&r.ty, b1, sizeof b1));
    return verr;
  }
  if (l.k == V_NUM) return tensor_val(e, r.ty, false);
  if (r.k == V_NUM) return tensor_val(e, l.ty, false);
  /* a rank-0 tensor broadcasts against anything */
  if (l.ty.rank == 0) return tensor_val(e, r.ty, false);
  if (r.ty.rank == 0) return tensor_val(e, l.ty, false);
  if (!type_eq(&l.ty, &r.ty)) {
    fe_error(S->d, e->loc,
             "shapes differ: %s %s %s (both sides must have the same shape, or one be a number)",
             tystr(&l.ty, b1, sizeof b1), op_name(e->op), tystr(&r.ty, b2, sizeof b2));
    return verr;
  }
  return tensor_val(e, l.ty, false);
}

static Val check_layer_call(Sema *S, Expr *e, const char *assigned);

static Val check_expr(Sema *S, Expr *e, const char *assigned) {
  if (!e) return verr;
  if (S->depth >= SEMA_MAX_DEPTH) {
    fe_error(S->d, e->loc, "expression nested too deeply");
    return verr;
  }
  S->depth++;
  Val v = verr;
  e->layer = -1;
  switch (e->kind) {
  case EX_NUM:
    v = num_val(e->is_int ? (double)e->ival : e->num, e->is_int);
    v.is_size = e->is_size;
    break;
  case EX_STR:
    fe_error(S->d, e->loc, "a string is not a value in a model");
    break;
  case EX_NAME:
    v = check_name(S, e);
    break;
  case EX_CALL:
    v = check_layer_call(S, e, assigned);
    break;
  case EX_BINOP:
    v = check_binop(S, e);
    break;
  case EX_NEG: {
    Val x = check_expr(S, e->lhs, NULL);
    if (x.k == V_NUM) {
      v = num_val(-x.num, x.is_int);
    } else if (x.k == V_TENSOR) {
      char b[160];
      if (x.ty.dtype != DT_F32)
        fe_error(S->d, e->loc, "arithmetic needs f32 tensors; this is %s",
                 tystr(&x.ty, b, sizeof b));
      else
        v = tensor_val(e, x.ty, false);
    }
    break;
  }
  case EX_LIST:
    fe_error(S->d, e->loc, "a list is not a value in a model");
    break;
  }
  S->depth--;
  return v;
}

/* ---------------------------------------------------------------- constants */

/* A constant number for a setting or a layer argument: numbers, lets, + - *. */
static bool const_number(Sema *S, Expr *e, const char *what, Val *out) {
  if (!e) return false;
  if (e->kind == EX_CALL) {
    fe_error(S->d, loc_span(e->loc, strlen(e->str ? e->str : "")),
             "'%s' must be a number, not a call of '%s'", what, e->str ? e->str : "?");
    return false;
  }
  if (e->kind == EX_STR || e->kind == EX_LIST) {
    fe_error(S->d, e->loc, "'%s' must be a number", what);
    return false;
  }
  Val v = check_expr(S, e, NULL);
  if (v.k == V_ERR) return false;
  if (v.k == V_TENSOR) {
    fe_error(S->d, e->loc, "'%s' must be a constant number, not a tensor", what);
    return false;
  }
  *out = v;
  return true;
}

/* 'units' for a setting or argument name; a phrase ("an input dimension") as is. */
static const char *q(const char *what, char *buf, size_t n) {
  if (strchr(what, ' '))
    snprintf(buf, n, "%s", what);
  else
    snprintf(buf, n, "'%s'", what);
  return buf;
}

/* An integer in [lo, hi]. */
static bool const_int(Sema *S, Expr *e, const char *what, double lo, double hi, int64_t *out) {
  Val v;
  if (!const_number(S, e, what, &v)) return false;
  char b[64], w[96];
  q(what, w, sizeof w);
  if (v.is_size) {
    fe_error(S->d, e->loc, "%s is a count, not a size in bytes", w);
    return false;
  }
  if (!(v.num == floor(v.num))) {
    fe_error(S->d, e->loc, "%s must be an integer, got %s", w, numstr(v.num, b, sizeof b));
    return false;
  }
  if (v.num < lo) {
    fe_error(S->d, e->loc, "%s must be at least %.0f, got %s", w, lo, numstr(v.num, b, sizeof b));
    return false;
  }
  if (v.num > hi) {
    fe_error(S->d, e->loc, "%s must be at most %.0f, got %s", w, hi, numstr(v.num, b, sizeof b));
    return false;
  }
  *out = (int64_t)v.num;
  return true;
}

/* A real number in the interval lo..hi, each end open or closed (NAN: none). */
static bool const_real(Sema *S, Expr *e, const char *what, double lo, bool lo_open, double hi,
                       bool hi_open, double *out) {
  Val v;
  if (!const_number(S, e, what, &v)) return false;
  if (v.is_size) {
    fe_error(S->d, e->loc, "'%s' is not a size in bytes", what);
    return false;
  }
  char b[64];
  bool bad_lo = !isnan(lo) && (lo_open ? !(v.num > lo) : !(v.num >= lo));
  bool bad_hi = !isnan(hi) && (hi_open ? !(v.num < hi) : !(v.num <= hi));
  if (bad_lo || bad_hi) {
    char range[96];
    if (!isnan(lo) && !isnan(hi))
      snprintf(range, sizeof range, "in %c%g, %g%c", lo_open ? '(' : '[', lo, hi,
               hi_open ? ')' : ']');
    else if (!isnan(lo))
      snprintf(range, sizeof range, "%s %g", lo_open ? "greater than" : "at least", lo);
    else
      snprintf(range, sizeof range, "%s %g", hi_open ? "less than" : "at most", hi);
    fe_error(S->d, e->loc, "'%s' must be %s, got %s", what, range, numstr(v.num, b, sizeof b));
    return false;
  }
  *out = v.num;
  return true;
}

/* One of a fixed set of identifiers (a bare name, or a string). Returns the
 * index, or -1 after an error. */
static int const_choice(Sema *S, Expr *e, const char *what, const char *const *choices, int n) {
  const char *word = NULL;
  if (e && (e->kind == EX_NAME || e->kind == EX_STR)) word = e->str;
  if (word)
    for (int i = 0; i < n; i++)
      if (!strcmp(word, choices[i])) return i;
  char list[256] = "";
  size_t k = 0;
  for (int i = 0; i < n && k < sizeof list; i++)
    k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? (i == n - 1 ? " or " : ", ") : "",
                          choices[i]);
  if (word) {
    Suggest sg = {0};
    for (int i = 0; i < n; i++)
      suggest_add(&sg, word, choices[i]);
    char sb[128];
    fe_error(S->d, e->loc, "'%s' must be %s, got '%s'%s", what, list, word,
             suggest_str(&sg, sb, sizeof sb));
  } else if (e) {
    fe_error(S->d, e->loc, "'%s' must be %s", what, list);
  }
  return -1;
}

static const char *const bool_names[] = {"true", "false"}; /* index 0 = true */
static const char *const act_names[] = {"none", "relu", "tanh", "sigmoid"};
static const char *const gating_names[] = {"noisy_topk", "softmax", "batchwise"};
static const char *const score_names[] = {"additive", "product"};

/* ---------------------------------------------------------------- keyword calls */

/* Matches a call's arguments to a parameter list: positional ones in order,
 * then key=value. vals[i] = the expression for keys[i] or NULL; locs for
 * messages. Reports unknown keys, duplicates, too many positionals and a
 * positional after a keyword. Returns false if anything was wrong. */
static bool match_args(Sema *S, Expr *call, const char *what, const char *const *keys, int nkeys,
                       Expr **vals) {
  bool ok = true, seen_key = false;
  int pos = 0;
  Loc first[16];
  for (int i = 0; i < nkeys; i++)
    vals[i] = NULL;
  for (Arg *a = call->args; a; a = a->next) {
    int idx = -1;
    if (!a->key) {
      if (seen_key) {
        fe_error(S->d, a->value->loc, "a positional argument cannot follow a keyword argument");
        ok = false;
        continue;
      }
      if (pos >= nkeys) {
        fe_error(S->d, a->value->loc, "too many arguments for '%s' (it takes %d)", what, nkeys);
        ok = false;
        break;
      }
      idx = pos++;
    } else {
      seen_key = true;
      for (int i = 0; i < nkeys; i++)
        if (!strcmp(a->key, keys[i])) idx = i;
      if (idx < 0) {
        Suggest sg = {0};
        for (int i = 0; i < nkeys; i++)
          suggest_add(&sg, a->key, keys[i]);
        char sb[128];
        fe_error(S->d, loc_span(a->key_loc, strlen(a->key)), "unknown argument '%s' for '%s'%s",
                 a->key, what, suggest_str(&sg, sb, sizeof sb));
        ok = false;
        continue;
      }
    }
    Loc here = a->key ? loc_span(a->key_loc, strlen(a->key)) : a->value->loc;
    if (vals[idx]) {
      fe_error(S->d, here, "argument '%s' is given twice", keys[idx]);
      fe_note(S->d, first[idx], "first given here");
      ok = false;
      continue;
    }
    vals[idx] = a->value;
    first[idx] = here;
  }
  return ok;
}

/* ---------------------------------------------------------------- layer calls */

static bool layer_has_params(int id) {
  switch (id) {
  case L_DROPOUT:
  case L_RELU:
  case L_TANH:
  case L_SIGMOID:
  case L_CONCAT:
    return false;
  default:
    return true;
  }
}

static const char *tensor_arg_name(int layer, int i) {
  if (layer == L_EMBEDDING) return "ids";
  if (layer == L_ATTENTION) return i == 0 ? "query" : "memory";
  if (layer == L_CONCAT) return i == 0 ? "a" : "b";
  return i == 0 ? "x" : "targets";
}

/* The layer's signature for messages: "dropout(x, p)". */
static const char *signature(int id, char *buf, size_t n) {
  const LayerSpec *ls = &fe_layers[id];
  size_t k = (size_t)snprintf(buf, n, "%s(", ls->name);
  for (int i = 0; i < ls->ntensors && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? ", " : "", tensor_arg_name(id, i));
  for (int i = 0; i < ls->nargs && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, ", %s%s", ls->args[i].key,
                          ls->args[i].required ? "" : "=");
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}

/* Checks one non-tensor argument's value against its spec; stores it in argv. */
static bool check_layer_arg(Sema *S, Expr *call, const LayerArgSpec *as, Expr *v) {
  double x = 0;
  int64_t iv = 0;
  int c;
  switch (as->kind) {
  case AK_INT:
    if (!const_int(S, v, as->key, isnan(as->lo) ? -SEMA_INT_MAX : as->lo,
                   isnan(as->hi) ? SEMA_INT_MAX : as->hi, &iv))
      return false;
    x = (double)iv;
    break;
  case AK_FLOAT:
    if (!const_real(S, v, as->key, as->lo, false, as->hi, false, &x)) return false;
    break;
  case AK_PROB:
    if (!const_real(S, v, as->key, 0, false, 1, true, &x)) return false;
    break;
  case AK_BOOL:
    if ((c = const_choice(S, v, as->key, bool_names, 2)) < 0) return false;
    x = c == 0;
    break;
  case AK_ENUM_ACT:
    if ((c = const_choice(S, v, as->key, act_names, 4)) < 0) return false;
    x = c;
    break;
  case AK_ENUM_GATING:
    if ((c = const_choice(S, v, as->key, gating_names, 3)) < 0) return false;
    x = c;
    break;
  case AK_ENUM_SCORE:
    if ((c = const_choice(S, v, as->key, score_names, 2)) < 0) return false;
    x = c;
    break;
  }
  call->argv[as->id] = x;
  return true;
}

/* The input's last dim as the layer's fixed input width; 0 after an error. */
static int64_t input_width(Sema *S, Expr *call, Expr *x, const Type *t) {
  char b[160];
  if (t->rank == 0) {
    fe_error(S->d, x->loc, "'%s' needs a tensor with a feature dimension, got the scalar %s",
             call->str, tystr(t, b, sizeof b));
    return 0;
  }
  Dim d = t->dim[t->rank - 1];
  if (!dim_is_const(d)) {
    char db[48];
    fe_error(S->d, x->loc, "'%s' needs a fixed input width, but the last dimension of %s is %s",
             call->str, tystr(t, b, sizeof b), dim_str(d, db, sizeof db));
    return 0;
  }
  return d.c;
}

static bool need_f32(Sema *S, Expr *call, Expr *x, const Type *t) {
  if (t->dtype == DT_F32) return true;
  char b[160];
  fe_error(S->d, x->loc, "'%s' takes an f32 tensor, got %s", call->str, tystr(t, b, sizeof b));
  return false;
}

/* Where argument `id` was given (for cross-argument messages), or the call. */
static Loc arg_loc(Expr *call, const LayerSpec *ls, LayerArgId id) {
  int pos = 0;
  for (Arg *a = call->args; a; a = a->next) {
    if (a->key) {
      for (int i = 0; i < ls->nargs; i++)
        if (ls->args[i].id == id && !strcmp(ls->args[i].key, a->key)) return a->value->loc;
    } else {
      int ai = pos++ - ls->ntensors;
      if (ai >= 0 && ai < ls->nargs && ls->args[ai].id == id) return a->value->loc;
    }
  }
  return loc_span(call->loc, strlen(call->str));
}

/* The fixed part of t's element count (a dim c * B^b * T^t counts c) is at most
 * MOEC_MAX_NUMEL; ir_bind checks the rest once B and T are known. */
__attribute__((format(printf, 4, 5))) static bool type_fits(Sema *S, Loc loc, const Type *t,
                                                            const char *what, ...) {
  int64_t n = 1;
  bool ok = true;
  for (int i = 0; i < t->rank && ok; i++)
    ok = mc_mul_ok(n, t->dim[i].c, &n) && n <= MOEC_MAX_NUMEL;
  if (ok) return true;
  char w[160], b[160];
  va_list ap;
  va_start(ap, what);
  vsnprintf(w, sizeof w, what, ap);
  va_end(ap);
  fe_error(S->d, loc, "%s, %s, would hold more than %lld elements (2^48 - 1, the limit per tensor)",
           w, tystr(t, b, sizeof b), (long long)MOEC_MAX_NUMEL);
  return false;
}

/* The mask of an attention over memory [b, X, D]: the padded input [b, X] (its pad ids
 * mark the padding positions), none (every position is real), or an error when two
 * padded inputs could give it. */
static bool attention_mask(Sema *S, Expr *e, const Type *mem) {
  Sym *found = NULL;
  for (size_t i = 0; i < S->syms.norder; i++) {
    Sym *y = S->syms.order[i];
    if (y->kind != SY_TENSOR || !y->input || !y->has_pad || y->ty.rank != 2) continue;
    if (!dim_eq(y->ty.dim[0], mem->dim[0]) || !dim_eq(y->ty.dim[1], mem->dim[1])) continue;
    if (found) {
      char b[160], db[48];
      fe_error(S->d, e->targ[1]->loc,
               "the attention's memory %s has two padded inputs over its %s positions, '%s' and "
               "'%s': its mask would be ambiguous (give only the source ids a pad)",
               tystr(mem, b, sizeof b), dim_str(mem->dim[1], db, sizeof db), found->name, y->name);
      fe_note(S->d, found->loc, "'%s' is declared here", found->name);
      fe_note(S->d, y->loc, "'%s' is declared here", y->name);
      return false;
    }
    found = y;
  }
  e->mask_input = found ? found->name : NULL;
  return true;
}

/* Output type of a layer from its (checked) tensor inputs; V_ERR after an error. */
static Val layer_type(Sema *S, Expr *e, const Val *tv) {
  const double *av = e->argv;
  Expr *x = e->targ[0];
  const Type *t = &tv[0].ty;
  Type out = *t;
  char b1[160], b2[160];
  switch ((LayerId)e->layer) {
  case L_EMBEDDING:
    if (t->dtype != DT_I32) {
      fe_error(S->d, x->loc, "'embedding' takes i32 token ids, got %s", tystr(t, b1, sizeof b1));
      return verr;
    }
    if (t->rank >= MAX_RANK) {
      fe_error(S->d, x->loc, "the embedding of %s would have rank %d (limit %d)",
               tystr(t, b1, sizeof b1), t->rank + 1, MAX_RANK);
      return verr;
    }
    out.dtype = DT_F32;
    out.dim[out.rank++] = dim_int((int64_t)av[LA_DIM]);
    return tensor_val(e, out, false);
  case L_LSTM:
    if (!need_f32(S, e, x, t)) return verr;
    if (t->rank != 3) {
      fe_error(S->d, x->loc, "'lstm' needs a [batch, time, features] input (rank 3), got %s",
               tystr(t, b1, sizeof b1));
      return verr;
    }
    if (!input_width(S, e, x, t)) return verr;
    if (e->argv[LA_CARRY] < 0) { /* not given: by the model */
      e->argv[LA_CARRY] = !S->has_source;
    } else if (e->argv[LA_CARRY] && S->has_source) {
      fe_error(S->d, arg_loc(e, &fe_layers[L_LSTM], LA_CARRY),
               "an lstm in a translation model cannot carry its state across batches (each "
               "batch holds new sentences): drop carry=true");
      return verr;
    }
    /* LSTMP (Sak et al. 2014): the output is the projection, [B, T, proj] */
    out.dim[2] = dim_int((int64_t)(av[LA_PROJ] >= 1 ? av[LA_PROJ] : av[LA_UNITS]));
    return tensor_val(e, out, false);
  case L_DENSE:
    if (!need_f32(S, e, x, t) || !input_width(S, e, x, t)) return verr;
    out.dim[out.rank - 1] = dim_int((int64_t)av[LA_UNITS]);
    return tensor_val(e, out, false);
  case L_DROPOUT:
  case L_RELU:
  case L_TANH:
  case L_SIGMOID:
    if (!need_f32(S, e, x, t)) return verr;
    return tensor_val(e, out, false);
  case L_MOE:
  case L_HMOE: {
    if (!need_f32(S, e, x, t)) return verr;
    int64_t in = input_width(S, e, x, t);
    if (!in) return verr;
    if (av[LA_OUT] >= 1) out.dim[out.rank - 1] = dim_int((int64_t)av[LA_OUT]);
    return tensor_val(e, out, false);
  }
  case L_ATTENTION: {
    Expr *m = e->targ[1];
    const Type *mt = &tv[1].ty;
    if (!need_f32(S, e, x, t) || !need_f32(S, e, m, mt)) return verr;
    if (t->rank != 3) {
      fe_error(S->d, x->loc, "'attention' needs a query [batch, time, features] (rank 3), got %s",
               tystr(t, b1, sizeof b1));
      return verr;
    }
    if (mt->rank != 3) {
      fe_error(S->d, m->loc, "'attention' needs a memory [batch, time, features] (rank 3), got %s",
               tystr(mt, b1, sizeof b1));
      return verr;
    }
    if (!input_width(S, e, x, t) || !input_width(S, e, m, mt)) return verr;
    if (!dim_eq(t->dim[0], mt->dim[0])) {
      fe_error(S->d, e->loc,
               "the attention's query %s and memory %s have different batch dimensions",
               tystr(t, b1, sizeof b1), tystr(mt, b2, sizeof b2));
      return verr;
    }
    if (!attention_mask(S, e, mt)) return verr;
    out.dim[2] = mt->dim[2]; /* [b, t, memory width]: a weighted sum of memory rows */
    return tensor_val(e, out, false);
  }
  case L_CONCAT: {
    Expr *y = e->targ[1];
    const Type *yt = &tv[1].ty;
    if (!need_f32(S, e, x, t) || !need_f32(S, e, y, yt)) return verr;
    if (t->rank == 0 || t->rank != yt->rank) {
      fe_error(S->d, e->loc,
               "'concat' joins two tensors of the same rank (1 or more) along the last "
               "dimension, got %s and %s",
               tystr(t, b1, sizeof b1), tystr(yt, b2, sizeof b2));
      return verr;
    }
    for (int i = 0; i + 1 < t->rank; i++)
      if (!dim_eq(t->dim[i], yt->dim[i])) {
        fe_error(S->d, e->loc,
                 "'concat' needs the same leading dimensions, got %s and %s (they are joined "
                 "along the last one)",
                 tystr(t, b1, sizeof b1), tystr(yt, b2, sizeof b2));
        return verr;
      }
    if (!input_width(S, e, x, t) || !input_width(S, e, y, yt)) return verr;
    out.dim[out.rank - 1] = dim_int(t->dim[t->rank - 1].c + yt->dim[yt->rank - 1].c);
    return tensor_val(e, out, false);
  }
  case L_SOFTMAX_XENT:
  case L_SAMPLED_SOFTMAX_XENT: {
    Expr *tg = e->targ[1];
    const Type *tt = &tv[1].ty;
    const char *ln = fe_layers[e->layer].name;
    if (!need_f32(S, e, x, t)) return verr;
    if (t->rank < 2) {
      fe_error(S->d, x->loc, "'%s' needs x with positions and features (rank 2 or more), got %s",
               ln, tystr(t, b1, sizeof b1));
      return verr;
    }
    if (!input_width(S, e, x, t)) return verr;
    if (tt->dtype != DT_I32) {
      fe_error(S->d, tg->loc, "%s targets must be i32 token ids, got %s", ln,
               tystr(tt, b1, sizeof b1));
      return verr;
    }
    Type want = *t;
    want.dtype = DT_I32;
    want.rank = t->rank - 1;
    if (!type_eq(tt, &want)) {
      char b3[160];
      fe_error(S->d, tg->loc, "%s targets %s must have the leading dimensions of x %s, i.e. %s", ln,
               tystr(tt, b1, sizeof b1), tystr(t, b2, sizeof b2), tystr(&want, b3, sizeof b3));
      return verr;
    }
    Type sc = {.dtype = DT_F32, .rank = 0};
    return tensor_val(e, sc, true);
  }
  default:
    break;
  }
  return verr;
}

/* Parameters of the layer (for the size guard); in = input width, in2 = the second
 * tensor's (attention's memory). */
static double layer_param_estimate(const Expr *e, double in, double in2) {
  const double *av = e->argv;
  double out = av[LA_OUT] >= 1 ? av[LA_OUT] : in;
  switch ((LayerId)e->layer) {
  case L_EMBEDDING:
    return av[LA_VOCAB] * av[LA_DIM];
  case L_LSTM: {
    double h = av[LA_PROJ] >= 1 ? av[LA_PROJ] : av[LA_UNITS];
    return 4 * av[LA_UNITS] * (in + h + 1) + (av[LA_PROJ] >= 1 ? h * av[LA_UNITS] : 0);
  }
  case L_DENSE:
    return av[LA_UNITS] * (in + 1);
  case L_MOE:
    return av[LA_EXPERTS] *
           (2 * in + in * av[LA_HIDDEN] + av[LA_HIDDEN] * out + av[LA_HIDDEN] + out);
  case L_HMOE:
    return av[LA_GROUPS] * (2 * in + av[LA_EXPERTS] * (2 * in + in * av[LA_HIDDEN] +
                                                       av[LA_HIDDEN] * out + av[LA_HIDDEN] + out));
  case L_ATTENTION:
    return av[LA_UNITS] * (in + in2 + 1);
  case L_SOFTMAX_XENT:
  case L_SAMPLED_SOFTMAX_XENT:
    return av[LA_VOCAB] * (in + 1);
  default:
    return 0;
  }
}

static Val check_layer_call(Sema *S, Expr *e, const char *assigned) {
  Diag *d = S->d;
  const char *name = e->str ? e->str : "";
  Loc nloc = loc_span(e->loc, strlen(name));
  int id = fe_layer_lookup(name);
  if (id < 0) {
    Suggest sg = {0};
    for (int i = 0; i < L_COUNT; i++)
      suggest_add(&sg, name, fe_layers[i].name);
    char sb[128];
    fe_error(d, nloc, "unknown layer '%s'%s", name, suggest_str(&sg, sb, sizeof sb));
    return verr;
  }
  const LayerSpec *ls = &fe_layers[id];
  e->layer = id;
  e->param_name = assigned;
  e->targ[0] = e->targ[1] = NULL;
  for (int i = 0; i < MAX_LAYER_ARGS; i++)
    e->argv[i] = 0;
  for (int i = 0; i < ls->nargs; i++)
    e->argv[ls->args[i].id] = ls->args[i].def;
  bool ok = true;
  char sig[256];
  if (!assigned && layer_has_params(id)) {
    fe_error(d, nloc,
             "layer calls must be assigned to a name: '%s' creates parameters, so write "
             "'NAME = %s(...)' as its own statement",
             name, name);
    ok = false;
  }
  /* match arguments: tensors first (positional), then the rest */
  Expr *given[MAX_LAYER_ARGS] = {0};
  Loc given_loc[MAX_LAYER_ARGS];
  Val tv[2] = {verr, verr};
  int pos = 0, nt = 0;
  bool seen_key = false;
  for (Arg *a = e->args; a; a = a->next) {
    if (!a->value) continue;
    int ai = -1;
    if (!a->key) {
      if (seen_key) {
        fe_error(d, a->value->loc, "a positional argument cannot follow a keyword argument");
        ok = false;
        continue;
      }
      if (pos < ls->ntensors) {
        e->targ[pos] = a->value;
        tv[pos] = check_expr(S, a->value, NULL);
        if (tv[pos].k == V_NUM) {
          fe_error(d, a->value->loc, "'%s' needs a tensor as its %s argument '%s', not a number",
                   name, pos == 0 ? "first" : "second", tensor_arg_name(id, pos));
          tv[pos] = verr;
        }
        if (tv[pos].k == V_ERR) ok = false;
        pos++;
        nt++;
        continue;
      }
      ai = pos - ls->ntensors;
      if (ai >= ls->nargs) {
        fe_error(d, a->value->loc, "too many arguments for '%s'", signature(id, sig, sizeof sig));
        ok = false;
        break;
      }
      pos++;
    } else {
      seen_key = true;
      for (int i = 0; i < ls->nargs; i++)
        if (!strcmp(a->key, ls->args[i].key)) ai = i;
      if (ai < 0) {
        Suggest sg = {0};
        for (int i = 0; i < ls->nargs; i++)
          suggest_add(&sg, a->key, ls->args[i].key);
        char sb[128];
        bool is_tensor = false;
        for (int i = 0; i < ls->ntensors; i++)
          if (!strcmp(a->key, tensor_arg_name(id, i))) is_tensor = true;
        if (is_tensor)
          fe_error(d, loc_span(a->key_loc, strlen(a->key)),
                   "the tensor argument '%s' of '%s' is positional: write %s", a->key, name,
                   signature(id, sig, sizeof sig));
        else
          fe_error(d, loc_span(a->key_loc, strlen(a->key)), "unknown argument '%s' for '%s'%s",
                   a->key, name, suggest_str(&sg, sb, sizeof sb));
        ok = false;
        continue;
      }
    }
    Loc here = a->key ? loc_span(a->key_loc, strlen(a->key)) : a->value->loc;
    if (given[ai]) {
      fe_error(d, here, "argument '%s' is given twice", ls->args[ai].key);
      fe_note(d, given_loc[ai], "first given here");
      ok = false;
      continue;
    }
    given[ai] = a->value;
    given_loc[ai] = here;
    if (!check_layer_arg(S, e, &ls->args[ai], a->value)) ok = false;
  }
  if (nt < ls->ntensors) {
    if (ls->ntensors == 1)
      fe_error(d, e->loc, "'%s' needs a tensor argument: %s", name, signature(id, sig, sizeof sig));
    else
      fe_error(d, e->loc, "'%s' needs %d tensor arguments, got %d: %s", name, ls->ntensors, nt,
               signature(id, sig, sizeof sig));
    return verr;
  }
  for (int i = 0; i < ls->nargs; i++)
    if (ls->args[i].required && !given[i]) {
      fe_error(d, nloc, "'%s' needs '%s'", name, ls->args[i].key);
      ok = false;
    }
  if (!ok) return verr;
  /* cross-argument rules */
  const double *av = e->argv;
  if (id == L_MOE || id == L_HMOE) { /* the sizes the IR builder and kernels index with */
    static const LayerArgId sizes[] = {LA_EXPERTS, LA_HIDDEN, LA_K, LA_GROUPS, LA_K_GROUP};
    for (size_t i = 0; i < MC_ARRAY_LEN(sizes); i++)
      if (av[sizes[i]] > 1e9) {
        fe_error(d, arg_loc(e, ls, sizes[i]), "%s = %.0f is too large (at most 1000000000)",
                 sizes[i] == LA_EXPERTS  ? "experts"
                 : sizes[i] == LA_HIDDEN ? "hidden"
                 : sizes[i] == LA_K      ? "k"
                 : sizes[i] == LA_GROUPS ? "groups"
                                         : "k_group",
                 av[sizes[i]]);
        return verr;
      }
  }
  if (id == L_MOE && av[LA_GATING] != LAE_SOFTMAX && av[LA_K] > av[LA_EXPERTS]) {
    fe_error(d, arg_loc(e, ls, LA_K), "k = %.0f is more than experts = %.0f", av[LA_K],
             av[LA_EXPERTS]);
    return verr;
  }
  if (id == L_HMOE && av[LA_GATING] == LAE_BATCHWISE) {
    fe_error(d, arg_loc(e, ls, LA_GATING),
             "hmoe does not support gating = batchwise (the paper defines balanced gating for "
             "a flat moe only): use noisy_topk or softmax, or a moe layer");
    return verr;
  }
  if (id == L_MOE && av[LA_CAPACITY] > 0 && av[LA_GATING] == LAE_BATCHWISE) {
    fe_error(d, arg_loc(e, ls, LA_CAPACITY),
             "capacity does not apply to gating=batchwise: its experts already take exactly "
             "k*N/experts rows each");
    return verr;
  }
  if (id == L_SAMPLED_SOFTMAX_XENT && av[LA_SAMPLES] > av[LA_VOCAB]) {
    fe_error(d, arg_loc(e, ls, LA_SAMPLES), "samples = %.0f is more than vocab = %.0f",
             av[LA_SAMPLES], av[LA_VOCAB]);
    return verr;
  }
  if (id == L_HMOE && av[LA_GATING] != LAE_SOFTMAX) {
    bool bad = false;
    if (av[LA_K_GROUP] > av[LA_GROUPS]) {
      fe_error(d, arg_loc(e, ls, LA_K_GROUP), "k_group = %.0f is more than groups = %.0f",
               av[LA_K_GROUP], av[LA_GROUPS]);
      bad = true;
    }
    if (av[LA_K] > av[LA_EXPERTS]) {
      fe_error(d, arg_loc(e, ls, LA_K), "k = %.0f is more than experts = %.0f (per group)",
               av[LA_K], av[LA_EXPERTS]);
      bad = true;
    }
    if (bad) return verr;
  }
  if (id == L_HMOE && av[LA_GROUPS] * av[LA_EXPERTS] > 1073741824.0) {
    fe_error(d, arg_loc(e, ls, LA_EXPERTS),
             "groups x experts = %.0f is more than 1073741824 (2^30): expert ids are i32",
             av[LA_GROUPS] * av[LA_EXPERTS]);
    return verr;
  }
  Val out = layer_type(S, e, tv);
  if (out.k == V_ERR) return verr;
  const Type *t = &tv[0].ty;
  double in = t->rank ? (double)t->dim[t->rank - 1].c : 0;
  const Type *t2 = &tv[1].ty;
  double in2 = ls->ntensors > 1 && t2->rank ? (double)t2->dim[t2->rank - 1].c : 0;
  double np = layer_param_estimate(e, in, in2);
  if (!(np <= SEMA_MAX_PARAMS)) {
    fe_error(d, nloc, "'%s' is too large: %.3g parameters (limit %.3g)", name, np, SEMA_MAX_PARAMS);
    return verr;
  }
  if (!(S->params + np <= SEMA_MAX_PARAMS)) {
    fe_error(d, nloc,
             "the model is too large: with this '%s' it has %.0f parameters, more than %.0f "
             "(2^50)",
             name, S->params + np, SEMA_MAX_PARAMS);
    return verr;
  }
  S->params += np;
  if (!type_fits(S, nloc, &out.ty, "the output of '%s'", name)) return verr;
  return out;
}

/* ---------------------------------------------------------------- model */

static Sym *define(Sema *S, const char *name, Loc loc, SymKind kind) {
  if (is_sym_BT(name)) {
    fe_error(S->d, loc, "'%s' is reserved: it is the %s symbol of input dimensions", name,
             sym_meaning(name));
    return NULL;
  }
  Sym *old = sym_find(&S->syms, name);
  if (old) {
    fe_error(S->d, loc, "'%s' is already defined", name);
    fe_note(S->d, old->loc, "'%s' was first defined here", name);
    return NULL;
  }
  Sym *s = mc_arena_alloc(S->arena, sizeof *s);
  s->name = name;
  s->loc = loc;
  s->kind = kind;
  sym_insert(&S->syms, s);
  return s;
}

static void model_let(Sema *S, Stmt *s) {
  Val v = check_expr(S, s->value, NULL);
  if (v.k == V_TENSOR) {
    fe_error(S->d, s->value->loc,
             "'let %s' needs a constant number; write '%s = ...' for a tensor value", s->name,
             s->name);
    v = verr;
  }
  Sym *sym = define(S, s->name, s->name_loc, v.k == V_NUM ? SY_CONST : SY_ERR);
  if (sym) {
    sym->value = v.num;
    sym->is_int = v.is_int;
  }
}

/* `input NAME : i32[B, X] pad N`: token ids whose positions with id N are padding. */
static bool input_pad(Sema *S, Stmt *s, const Type *ty, int64_t *pad) {
  char b[160];
  if (ty->dtype != DT_I32) {
    fe_error(S->d, s->pad->loc, "only i32 token ids have a pad id; '%s' is %s", s->name,
             tystr(ty, b, sizeof b));
    return false;
  }
  if (ty->rank != 2 || dim_is_const(ty->dim[1])) {
    fe_error(S->d, s->pad->loc,
             "a pad id marks padding in sequences: '%s' must be [batch, length] with a "
             "length T or S, not %s",
             s->name, tystr(ty, b, sizeof b));
    return false;
  }
  return const_int(S, s->pad, "the pad id", 0, SEMA_INT_MAX, pad);
}

/* A translation model reads one source sequence: at most one i32 input over S. */
static void check_source_inputs(Sema *S) {
  Sym *src = NULL;
  for (size_t i = 0; i < S->syms.norder; i++) {
    Sym *y = S->syms.order[i];
    if (y->kind != SY_TENSOR || !y->input || y->ty.dtype != DT_I32) continue;
    bool over_s = false;
    for (int d = 0; d < y->ty.rank; d++)
      if (y->ty.dim[d].s) over_s = true;
    if (!over_s) continue;
    if (src) {
      fe_error(S->d, y->loc, "a model reads one source sequence: '%s' is a second i32 input over S",
               y->name);
      fe_note(S->d, src->loc, "the source ids '%s' are declared here", src->name);
      continue;
    }
    src = y;
  }
}

static void model_input(Sema *S, Stmt *s) {
  Type ty = {.dtype = s->dtype};
  bool ok = true;
  for (Arg *a = s->dims; a; a = a->next) {
    Expr *e = a->value;
    if (!e) continue;
    if (ty.rank == MAX_RANK) { /* the parser reported it */
      ok = false;
      break;
    }
    if (e->kind == EX_NAME && is_sym_BT(e->str)) {
      ty.dim[ty.rank++] = dim_sym(e->str[0]);
      continue;
    }
    int64_t v = 0;
    if (e->kind == EX_NAME && !sym_find(&S->syms, e->str)) {
      fe_error(S->d, e->loc,
               "'%s' is not defined: an input dimension is a positive integer, B, T, S "
               "or a 'let' constant",
               e->str);
      ok = false;
      continue;
    }
    if (!const_int(S, e, "an input dimension", 1, SEMA_INT_MAX, &v)) {
      ok = false;
      continue;
    }
    ty.dim[ty.rank++] = dim_int(v);
  }
  if (ok && !type_fits(S, s->name_loc, &ty, "input '%s'", s->name)) ok = false;
  int64_t pad = -1;
  if (s->pad && ok) ok = input_pad(S, s, &ty, &pad);
  Sym *sym = define(S, s->name, s->name_loc, ok ? SY_TENSOR : SY_ERR);
  if (!sym) return;
  sym->ty = ty;
  sym->input = true;
  sym->has_pad = pad >= 0;
  sym->pad = pad;
}

static void model_assign(Sema *S, Stmt *s) {
  Val v = check_expr(S, s->value, s->name);
  Sym *sym = define(S, s->name, s->name_loc,
                    v.k == V_NUM      ? SY_CONST
                    : v.k == V_TENSOR ? SY_TENSOR
                                      : SY_ERR);
  if (!sym) return;
  sym->value = v.num;
  sym->is_int = v.is_int;
  sym->ty = v.ty;
  sym->xent = v.xent;
  Expr *e = s->value;
  if (e && e->kind == EX_CALL && e->layer >= 0) sym->call = e; /* a layer, even if erroneous */
  if (v.k == V_TENSOR && e && e->kind == EX_CALL && e->layer >= 0) {
    if (e->layer == L_EMBEDDING) {
      if (S->nembeds == S->embcap) {
        S->embcap = S->embcap ? 2 * S->embcap : 8;
        S->embeds = mc_realloc(S->embeds, (size_t)S->embcap * sizeof *S->embeds);
      }
      S->embeds[S->nembeds++] = e;
    }
  }
  /* an alias of a loss keeps pointing at its softmax_xent */
  if (v.k == V_TENSOR && v.xent && e && e->kind == EX_NAME) {
    Sym *src = sym_find(&S->syms, e->str);
    if (src) sym->call = src->call;
  }
}

static void model_outputs(Sema *S, Block *m) {
  Diag *d = S->d;
  int nout = 0;
  Sym *loss = NULL;
  Loc loss_loc = {0};
  SymTab seen = {0};
  McArena tmp = {0};
  for (Stmt *s = m->stmts; s; s = s->next) {
    if (s->kind != ST_OUTPUT) continue;
    for (Arg *a = s->names; a; a = a->next) {
      Expr *e = a->value;
      if (!e || e->kind != EX_NAME) continue;
      nout++;
      Sym *prev = sym_find(&seen, e->str);
      if (prev) {
        fe_error(d, e->loc, "'%s' is already an output", e->str);
        fe_note(d, prev->loc, "first listed here");
        continue;
      }
      Sym *mark = mc_arena_alloc(&tmp, sizeof *mark);
      mark->name = e->str;
      mark->loc = e->loc;
      sym_insert(&seen, mark);
      Sym *sym = sym_find(&S->syms, e->str);
      if (!sym) {
        Val v = check_name(S, e); /* reports it, with a suggestion */
        (void)v;
        continue;
      }
      if (sym->kind == SY_ERR) continue;
      if (sym->kind == SY_CONST) {
        fe_error(d, e->loc, "'%s' is a constant; an output must be a tensor", e->str);
        continue;
      }
      e->ty = sym->ty;
      if (sym->ty.rank != 0) continue;
      if (loss) {
        fe_error(d, e->loc, "a model has one scalar output, its loss; '%s' is a second one",
                 e->str);
        fe_note(d, loss_loc, "the loss is '%s'", loss->name);
        continue;
      }
      if (!sym->xent) {
        fe_error(d, e->loc,
                 "the scalar output '%s' must be a softmax_xent or sampled_softmax_xent result (it "
                 "is the training loss; "
                 "the aux losses of MoE layers are added to it)",
                 e->str);
        continue;
      }
      loss = sym;
      loss_loc = e->loc;
      S->loss_call = sym->call;
    }
  }
  mc_free(seen.slot);
  mc_free(seen.order);
  mc_arena_free(&tmp);
  if (d->errors) return;
  if (!nout) {
    fe_error(d, loc_span(m->loc, 5),
             "model '%s' has no 'output': name its loss, e.g. 'output loss' after "
             "'loss = softmax_xent(...)'",
             m->name ? m->name : "?");
    return;
  }
  if (!loss)
    fe_error(d, loc_span(m->loc, 5),
             "model '%s' has no scalar output: one output must be the softmax_xent loss",
             m->name ? m->name : "?");
}

static void check_model(Sema *S, Block *m) {
  /* whether the model is a translation model decides lstm's default carry */
  for (Stmt *s = m->stmts; s; s = s->next)
    if (s->kind == ST_INPUT)
      for (Arg *a = s->dims; a; a = a->next)
        if (a->value && a->value->kind == EX_NAME && !strcmp(a->value->str, "S"))
          S->has_source = true;
  for (Stmt *s = m->stmts; s; s = s->next) {
    switch (s->kind) {
    case ST_LET:
      model_let(S, s);
      break;
    case ST_INPUT:
      model_input(S, s);
      break;
    case ST_ASSIGN:
      model_assign(S, s);
      break;
    default: /* outputs after every definition; settings/places: the parser reported them */
      break;
    }
  }
  check_source_inputs(S);
  model_outputs(S, m);
}

/* ---------------------------------------------------------------- settings */

typedef struct Setting {
  const char *name;
  Stmt *stmt;
} Setting;

static const char *const train_keys[] = {"data",      "batch", "unroll", "steps",      "eval_every",
                                         "optimizer", "clip",  "seed",   "accumulate", "max_time"};
static const char *const plan_keys[] = {
    "devices", "mesh",    "strategy", "experts",         "recompute", "memory_budget",
    "fuse",    "backend", "tf32",     "expert_headroom", "tables",    "expert_bwd"};
enum {
  TK_DATA,
  TK_BATCH,
  TK_UNROLL,
  TK_STEPS,
  TK_EVAL_EVERY,
  TK_OPTIMIZER,
  TK_CLIP,
  TK_SEED,
  TK_ACCUMULATE,
  TK_MAX_TIME,
  TK_N
};
enum {
  PK_DEVICES,
  PK_MESH,
  PK_STRATEGY,
  PK_EXPERTS,
  PK_RECOMPUTE,
  PK_MEMORY,
  PK_FUSE,
  PK_BACKEND,
  PK_TF32,
  PK_HEADROOM,
  PK_TABLES,
  PK_EXPERT_BWD,
  PK_N
};

static const char *const strategy_names[] = {"paper", "data_parallel", "hmoe"};
static const char *const policy_names[] = {"contiguous", "round_robin", "balanced"};
static const char *const backend_names[] = {"auto", "cpu", "cuda"};
static const char *const tables_names[] = {"replicated", "sharded"};
static const char *const expert_bwd_names[] = {"fused", "split"};

/* Collects a block's settings by key into out[] (NULL = absent); reports
 * unknown and repeated settings. */
static void collect_settings(Sema *S, Block *b, const char *block, const char *const *keys, int n,
                             const char *const *other_keys, int nother, const char *other,
                             Stmt **out) {
  for (int i = 0; i < n; i++)
    out[i] = NULL;
  if (!b) return;
  for (Stmt *s = b->stmts; s; s = s->next) {
    if (s->kind != ST_SETTING || !s->name) continue;
    int idx = -1;
    for (int i = 0; i < n; i++)
      if (!strcmp(s->name, keys[i])) idx = i;
    Loc nl = loc_span(s->name_loc, strlen(s->name));
    if (idx < 0) {
      for (int i = 0; i < nother; i++)
        if (!strcmp(s->name, other_keys[i])) {
          fe_error(S->d, nl, "unknown %s setting '%s' ('%s' belongs in the '%s' block)", block,
                   s->name, s->name, other);
          goto next;
        }
      Suggest sg = {0};
      for (int i = 0; i < n; i++)
        suggest_add(&sg, s->name, keys[i]);
      char sb[128];
      fe_error(S->d, nl, "unknown %s setting '%s'%s", block, s->name,
               suggest_str(&sg, sb, sizeof sb));
      continue;
    }
    if (out[idx]) {
      fe_error(S->d, nl, "'%s' is set twice", s->name);
      fe_note(S->d, loc_span(out[idx]->name_loc, strlen(s->name)), "first set here");
      continue;
    }
    out[idx] = s;
  next:;
  }
}

static bool call_named(const Expr *e, const char *name) {
  return e && e->kind == EX_CALL && e->str && !strcmp(e->str, name);
}

static const char *resolve_path(Sema *S, const char *p) {
  const char *src = S->f->src.path;
  if (p[0] == '/' || !src) return p;
  const char *slash = strrchr(src, '/');
  if (!slash) return p;
  return mc_arena_printf(S->arena, "%.*s/%s", (int)(slash - src), src, p);
}

/* Parallel data feeds a translation model (a source over S) its shared BPE vocabulary:
 * the loss's vocab, which every embedding must hold; pads are the vocabulary's <pad>, 0. */
static void check_parallel_model(Sema *S, Expr *e) {
  if (!S->has_source) {
    fe_error(S->d, e->loc,
             "parallel data feeds a translation model: the model needs source ids over S, e.g. "
             "'input src : i32[B, S] pad 0'");
    return;
  }
  Expr *sx = S->loss_call;
  int vocab = sx && sx->layer == L_SOFTMAX_XENT ? (int)sx->argv[LA_VOCAB] : 0;
  if (vocab && vocab < 259) {
    fe_error(S->d, e->loc,
             "parallel data's vocabulary has at least 259 ids (3 specials, 256 bytes), but the "
             "model's softmax_xent vocab is %d",
             vocab);
    return;
  }
  for (int i = 0; i < S->nembeds && vocab; i++)
    if (S->embeds[i]->argv[LA_VOCAB] < vocab)
      fe_error(S->d, arg_loc(S->embeds[i], &fe_layers[L_EMBEDDING], LA_VOCAB),
               "embedding '%s' has vocab %.0f, fewer ids than the parallel data's shared "
               "vocabulary (the softmax_xent vocab, %d)",
               S->embeds[i]->param_name ? S->embeds[i]->param_name : "?",
               S->embeds[i]->argv[LA_VOCAB], vocab);
  for (size_t i = 0; i < S->syms.norder; i++) {
    Sym *y = S->syms.order[i];
    if (y->input && y->has_pad && y->pad != 0)
      fe_error(S->d, y->loc,
               "parallel data pads with id 0 (the vocabulary's <pad>): '%s' must have pad 0",
               y->name);
  }
}

/* data = parallel("train.tsv", valid=, max_len=, batch_tokens=) */
static void train_parallel(Sema *S, Expr *e) {
  Config *c = S->cfg;
  static const char *const keys[] = {"path", "valid", "max_len", "batch_tokens"};
  Expr *v[4];
  if (!match_args(S, e, "parallel", keys, 4, v)) return;
  c->data = DATA_PARALLEL;
  for (int i = 0; i < 2; i++) {
    if (!v[i]) continue;
    if (v[i]->kind != EX_STR || !v[i]->str || !v[i]->str[0]) {
      fe_error(S->d, v[i]->loc, "parallel's '%s' must be a file path in quotes", keys[i]);
      continue;
    }
    /* a path from the command line is the user's, relative to the working directory */
    *(i ? &c->data_valid_path : &c->data_path) =
        v[i]->loc.src && v[i]->loc.src->cmdline ? v[i]->str : resolve_path(S, v[i]->str);
  }
  if (!v[0])
    fe_error(S->d, e->loc, "parallel(...) needs the training pairs' path: parallel(\"train.tsv\")");
  int64_t x;
  if (v[2] && const_int(S, v[2], "max_len", 2, 65536, &x)) c->max_len = (int)x;
  if (v[3] && const_int(S, v[3], "batch_tokens", 1, 1 << 24, &x)) c->batch_tokens = (int)x;
  check_parallel_model(S, e);
}

/* A data file's path: relative to the .moe file, or (given on the command line) to the
 * working directory. NULL after an error. */
static const char *data_file(Sema *S, Expr *e, const char *what) {
  if (e->kind != EX_STR || !e->str || !e->str[0]) {
    fe_error(S->d, e->loc, "%s must be a file path in quotes", what);
    return NULL;
  }
  return e->loc.src && e->loc.src->cmdline ? e->str : resolve_path(S, e->str);
}

/* tokenizer = words | words(lower=, split_punct=, vocab=N, spell=none|chars) | chars | bpe |
 * bpe(vocab=N) */
static void data_tokenizer(Sema *S, Expr *e) {
  Config *c = S->cfg;
  static const char *const names[] = {"words", "chars", "bpe"};
  const char *name = e->kind == EX_NAME || e->kind == EX_CALL ? e->str : NULL;
  int k = -1;
  for (int i = 0; name && i < 3; i++)
    if (!strcmp(name, names[i])) k = i;
  if (k < 0) {
    Suggest sg = {0};
    for (int i = 0; name && i < 3; i++)
      suggest_add(&sg, name, names[i]);
    char sb[128];
    fe_error(S->d, name ? loc_span(e->loc, strlen(name)) : e->loc,
             "'tokenizer' must be words, words(lower=true, split_punct=true, vocab=N, "
             "spell=chars), chars or bpe(vocab=N)%s",
             suggest_str(&sg, sb, sizeof sb));
    return;
  }
  c->tokenizer = k == 0 ? TOK_WORDS : k == 1 ? TOK_CHARS : TOK_BPE;
  if (e->kind != EX_CALL) return;
  Expr *v[4];
  int64_t n;
  if (k == 0) {
    static const char *const keys[] = {"lower", "split_punct", "vocab", "spell"};
    static const char *const spell_names[] = {"none", "chars"};
    if (!match_args(S, e, "words", keys, 4, v)) return;
    int x;
    if (v[0] && (x = const_choice(S, v[0], "lower", bool_names, 2)) >= 0) c->tok_lower = x == 0;
    if (v[1] && (x = const_choice(S, v[1], "split_punct", bool_names, 2)) >= 0)
      c->tok_split_punct = x == 0;
    /* 2: <unk> and the line end; what spelling needs on top is known at load */
    if (v[2] && const_int(S, v[2], "vocab", 2, 1 << 30, &n)) {
      c->tok_vocab = (int)n;
      S->tok_vocab_expr = v[2];
    }
    if (v[3] && (x = const_choice(S, v[3], "spell", spell_names, 2)) >= 0) c->tok_spell = x == 1;
  } else if (k == 1) {
    if (e->args) fe_error(S->d, e->args->value->loc, "'chars' takes no arguments");
  } else {
    static const char *const keys[] = {"vocab"};
    if (!match_args(S, e, "bpe", keys, 1, v)) return;
    /* 259: <pad>, <s>, </s> and the 256 bytes (runtime/bpe.c) */
    if (v[0] && const_int(S, v[0], "vocab", 259, 65536, &n)) {
      c->tok_vocab = (int)n;
      S->tok_vocab_expr = v[0];
    }
  }
}

/* text("path", tokenizer=, valid=, test=) | bin("path", valid=, test=) */
static void train_file_data(Sema *S, Expr *e, bool bin) {
  Config *c = S->cfg;
  static const char *const keys[] = {"path", "valid", "test", "tokenizer"};
  const char *what = bin ? "bin" : "text";
  Expr *v[4];
  if (!match_args(S, e, what, keys, bin ? 3 : 4, v)) return;
  c->data = bin ? DATA_BIN : DATA_TEXT;
  if (!v[0]) {
    fe_error(S->d, e->loc, "%s(...) needs the training file's path: %s(\"%s\")", what, what,
             bin ? "train.bin" : "corpus.txt");
    return;
  }
  c->data_path = data_file(S, v[0], "the training file");
  if (v[1]) c->data_valid_path = data_file(S, v[1], "'valid'");
  if (v[2]) c->data_test_path = data_file(S, v[2], "'test'");
  if (v[2] && !v[1])
    fe_error(S->d, v[2]->loc,
             "a test file needs a valid file too (valid=\"...\"): without both, the training "
             "file is split 90/5/5");
  if (!bin && v[3]) data_tokenizer(S, v[3]);
  S->tokenizer_expr = bin ? NULL : v[3];
}

/* data = synthetic(topics=, vocab=, seed=) | parallel(...) | text(...) | bin(...) | "path" */
static Expr *train_data(Sema *S, Expr *e, bool *seed_given) {
  Config *c = S->cfg;
  Expr *vocab_expr = NULL;
  if (e->kind == EX_STR) {
    if (!e->str || !e->str[0]) {
      fe_error(S->d, e->loc, "'data' names an empty path");
      return NULL;
    }
    size_t n = strlen(e->str);
    c->data = n > 4 && !strcmp(e->str + n - 4, ".bin") ? DATA_BIN : DATA_TEXT;
    /* a path from the command line is the user's, relative to the working directory */
    c->data_path = e->loc.src && e->loc.src->cmdline ? e->str : resolve_path(S, e->str);
    return NULL;
  }
  if (call_named(e, "synthetic")) {
    static const char *const keys[] = {"topics", "vocab", "seed"};
    Expr *v[3];
    if (!match_args(S, e, "synthetic", keys, 3, v)) return NULL;
    int64_t topics = c->topics, vocab = c->vocab, seed = 0;
    c->data = DATA_SYNTHETIC;
    if (v[0] && const_int(S, v[0], "topics", 1, SEMA_SYNTH_MAX_STATES / 2, &topics))
      c->topics = (int)topics;
    if (v[1] && const_int(S, v[1], "vocab", 2, 65536, &vocab)) c->vocab = (int)vocab;
    if (v[2] && const_int(S, v[2], "seed", 0, 9007199254740992.0, &seed)) {
      c->data_seed = (uint64_t)seed;
      *seed_given = true;
    }
    if (v[0] && v[1] && topics * vocab > SEMA_SYNTH_MAX_STATES)
      fe_error(S->d, e->loc, "synthetic data: topics x vocab = %lld is too large (at most %d)",
               (long long)(topics * vocab), SEMA_SYNTH_MAX_STATES);
    vocab_expr = v[1];
    return vocab_expr;
  }
  if (call_named(e, "parallel")) {
    train_parallel(S, e);
    return NULL;
  }
  if (call_named(e, "text") || call_named(e, "bin")) {
    train_file_data(S, e, call_named(e, "bin"));
    return NULL;
  }
  fe_error(S->d, e->loc,
           "'data' must be synthetic(topics=, vocab=, seed=), text(\"corpus.txt\", tokenizer=, "
           "valid=, test=), bin(\"train.bin\", valid=, test=), parallel(\"pairs.tsv\", valid=) "
           "or a file path in quotes (\"corpus.txt\", \"tokens.bin\")");
  return NULL;
}

/* optimizer = adam(lr, beta1, beta2, eps, ...) | factored(lr, beta2, eps, ...) | adam |
 * factored; both take the schedule (warmup, decay, hold, min_lr) and weight_decay */
static void train_optimizer(Sema *S, Expr *e) {
  Config *c = S->cfg;
  static const char *const adam_keys[] = {"lr",    "beta1", "beta2",  "eps",         "warmup",
                                          "decay", "hold",  "min_lr", "weight_decay"};
  static const char *const fact_keys[] = {"lr",    "beta2", "eps",    "warmup",
                                          "decay", "hold",  "min_lr", "weight_decay"};
  const char *name = e->kind == EX_NAME || e->kind == EX_CALL ? e->str : NULL;
  bool adam = name && !strcmp(name, "adam"), fact = name && !strcmp(name, "factored");
  if (!adam && !fact) {
    Suggest sg = {0};
    if (name) {
      suggest_add(&sg, name, "adam");
      suggest_add(&sg, name, "factored");
    }
    char sb[128];
    fe_error(S->d, name ? loc_span(e->loc, strlen(name)) : e->loc,
             "'optimizer' must be adam(lr, beta1, beta2, eps, ...) or factored(lr, beta2, eps, "
             "...)%s",
             suggest_str(&sg, sb, sizeof sb));
    return;
  }
  c->optimizer = adam ? OPT_ADAM : OPT_FACTORED;
  if (fact) c->beta1 = 0; /* no first moment */
  if (e->kind != EX_CALL) return;
  /* v[]: lr, beta1, beta2, eps, warmup, decay, hold, min_lr, weight_decay (factored: no beta1) */
  Expr *v[9], *f[8];
  if (adam) {
    if (!match_args(S, e, "adam", adam_keys, 9, v)) return;
  } else {
    if (!match_args(S, e, "factored", fact_keys, 8, f)) return;
    v[0] = f[0];
    v[1] = NULL;
    for (int i = 1; i < 8; i++)
      v[i + 1] = f[i];
  }
  bool lr_ok = true;
  int64_t n;
  if (v[0]) lr_ok = const_real(S, v[0], "lr", 0, true, NAN, false, &c->lr);
  if (v[1]) const_real(S, v[1], "beta1", 0, false, 1, true, &c->beta1);
  if (v[2]) const_real(S, v[2], "beta2", 0, false, 1, true, &c->beta2);
  if (v[3]) const_real(S, v[3], "eps", 0, true, NAN, false, &c->eps);
  if (v[4] && const_int(S, v[4], "warmup", 0, SEMA_INT_MAX, &n)) c->warmup = (int)n;
  if (v[5]) {
    static const char *const decays[] = {"none", "rsqrt", "cosine", "linear"};
    int k = const_choice(S, v[5], "decay", decays, 4);
    if (k >= 0) c->decay = (LrDecay)k;
  }
  if (v[6] && const_int(S, v[6], "hold", 0, SEMA_INT_MAX, &n)) c->hold = (int)n;
  if (v[7] && const_real(S, v[7], "min_lr", 0, false, NAN, false, &c->min_lr) && lr_ok) {
    if (c->min_lr > c->lr)
      fe_error(S->d, v[7]->loc, "'min_lr' (%g) is above the learning rate lr = %g", c->min_lr,
               c->lr);
    else if (c->decay == DECAY_NONE)
      fe_error(S->d, v[7]->loc,
               "'min_lr' is the end of a decay: give decay=rsqrt, cosine or linear too");
  }
  if (v[8] && const_real(S, v[8], "weight_decay", 0, false, NAN, false, &c->weight_decay)) {
    S->wd_loc = v[8]->loc;
    if (lr_ok && c->lr * c->weight_decay >= 1)
      fe_error(S->d, v[8]->loc,
               "lr x weight_decay = %g: each step would scale the weights by 1 - %g, not "
               "shrink them a little (use lr x weight_decay < 1)",
               c->lr * c->weight_decay, c->lr * c->weight_decay);
  }
}

/* The synthetic corpus's vocabulary against the model's (see docs/language.md):
 * equal to the loss's softmax_xent vocab, at most each embedding's. */
static void check_data_vocab(Sema *S, Expr *vocab_expr) {
  Config *c = S->cfg;
  if (c->data != DATA_SYNTHETIC) return;
  Expr *sx = S->loss_call;
  if (!sx || (sx->layer != L_SOFTMAX_XENT && sx->layer != L_SAMPLED_SOFTMAX_XENT)) return;
  int mv = (int)sx->argv[LA_VOCAB];
  if (!vocab_expr) {
    c->vocab = mv; /* default: the model's vocabulary */
  } else if (c->vocab != mv) {
    fe_error(S->d, vocab_expr->loc,
             "synthetic(vocab=%d) differs from the model's softmax_xent vocab %d", c->vocab, mv);
    fe_note(S->d, arg_loc(sx, &fe_layers[sx->layer], LA_VOCAB), "the model's vocab is set here");
    return;
  }
  /* a default corpus the model's vocabulary cannot use (more than 65536 ids) is
   * reported by `moec run`, not here: a file without `data` can still be checked */
  if (!vocab_expr && (c->vocab < 2 || c->vocab > 65536)) return;
  if ((int64_t)c->topics * c->vocab > SEMA_SYNTH_MAX_STATES) {
    fe_error(S->d, vocab_expr ? vocab_expr->loc : arg_loc(sx, &fe_layers[sx->layer], LA_VOCAB),
             "synthetic data: topics x vocab = %lld is too large (at most %d)",
             (long long)c->topics * c->vocab, SEMA_SYNTH_MAX_STATES);
    return;
  }
  for (int i = 0; i < S->nembeds; i++) {
    Expr *em = S->embeds[i];
    if (em->argv[LA_VOCAB] < c->vocab) {
      Loc l = vocab_expr ? vocab_expr->loc : arg_loc(sx, &fe_layers[sx->layer], LA_VOCAB);
      fe_error(S->d, l,
               "the synthetic corpus has %d token ids, more than embedding '%s' has (%.0f)",
               c->vocab, em->param_name ? em->param_name : "?", em->argv[LA_VOCAB]);
      fe_note(S->d, arg_loc(em, &fe_layers[L_EMBEDDING], LA_VOCAB),
              "the embedding's vocab is set here");
    }
  }
}

/* bpe(vocab=N), words(vocab=N): ids below every embedding's and the loss's vocabulary;
 * bpe without N: the loss's vocabulary, which must hold the 259 base ids. */
static void check_tok_vocab(Sema *S) {
  Config *c = S->cfg;
  Expr *sx = S->loss_call;
  if (c->data != DATA_TEXT || c->tokenizer == TOK_CHARS || !sx || sx->layer != L_SOFTMAX_XENT)
    return;
  if (c->tokenizer == TOK_WORDS && !c->tok_vocab) return;
  int mv = (int)sx->argv[LA_VOCAB];
  for (int i = 0; i < S->nembeds; i++)
    mv = MC_MIN(mv, (int)S->embeds[i]->argv[LA_VOCAB]);
  Loc at = S->tok_vocab_expr ? S->tok_vocab_expr->loc : S->tokenizer_expr->loc;
  if (c->tokenizer == TOK_BPE && !c->tok_vocab && mv < 259)
    fe_error(S->d, at,
             "a byte-pair encoding has at least 259 ids (<pad>, <s>, </s> and 256 bytes), but the "
             "model's vocabulary has %d",
             mv);
  else if (c->tok_vocab > mv)
    fe_error(S->d, at, "%s(vocab=%d) has more ids than the model's vocabulary (%d)",
             c->tokenizer == TOK_BPE ? "bpe" : "words", c->tok_vocab, mv);
  else
    return;
  fe_note(S->d, arg_loc(sx, &fe_layers[L_SOFTMAX_XENT], LA_VOCAB), "the model's vocab is set here");
}

/* accumulate = K is the batch of K micro-batches to float rounding only where each row's
 * output and aux statistics depend on that row alone: not batchwise gating (each expert
 * takes its top rows of the batch), capacity= (drops counted over the batch) nor hmoe (its
 * load is a product of batch sums). */
static void check_accumulate(Sema *S) {
  if (S->has_source) {
    fe_error(S->d, S->accumulate_loc,
             "accumulate = %d: not for a translation model (its batches differ in shape); "
             "give a larger batch_tokens instead",
             S->cfg->accumulate);
    return;
  }
  for (size_t i = 0; i < S->syms.norder; i++) {
    Sym *y = S->syms.order[i];
    if (!y->call) continue;
    bool bw = y->call->layer == L_MOE && (int)y->call->argv[LA_GATING] == LAE_BATCHWISE;
    bool cap = y->call->layer == L_MOE && y->call->argv[LA_CAPACITY] > 0;
    if (!bw && !cap && y->call->layer != L_HMOE) continue;
    fe_error(S->d, S->accumulate_loc,
             "accumulate = %d: the micro-batches would not add up to one batch of %d rows: %s",
             S->cfg->accumulate, S->cfg->accumulate * S->cfg->batch,
             bw    ? "batchwise gating picks each expert's rows from the whole batch"
             : cap ? "capacity= drops the routes beyond each expert's share of the whole batch"
                   : "an hmoe layer's load is a product of sums over the whole batch");
    fe_note(S->d, y->loc, "layer '%s' is defined here", y->name);
    return;
  }
}

static void check_train(Sema *S, Block *b) {
  Config *c = S->cfg;
  Stmt *st[TK_N];
  collect_settings(S, b, "train", train_keys, TK_N, plan_keys, PK_N, "plan", st);
  int64_t v;
  double x;
  bool seed_given = false;
  Expr *vocab_expr = NULL;
  /* in source order, so the messages are too */
  for (Stmt *s = b ? b->stmts : NULL; s; s = s->next) {
    int key = -1;
    for (int i = 0; i < TK_N; i++)
      if (st[i] == s) key = i;
    Expr *e = s->value;
    if (key < 0 || !e) continue;
    switch (key) {
    case TK_BATCH:
      if (const_int(S, e, "batch", 1, 1 << 20, &v)) c->batch = (int)v;
      c->batch_loc = e->loc;
      break;
    case TK_UNROLL:
      if (const_int(S, e, "unroll", 1, 1 << 20, &v)) c->unroll = (int)v;
      break;
    case TK_STEPS:
      if (const_int(S, e, "steps", 0, SEMA_INT_MAX, &v)) c->steps = (int)v;
      break;
    case TK_EVAL_EVERY:
      if (const_int(S, e, "eval_every", 0, SEMA_INT_MAX, &v)) c->eval_every = (int)v;
      break;
    case TK_SEED:
      if (const_int(S, e, "seed", 0, 9007199254740992.0, &v)) c->seed = (uint64_t)v;
      break;
    case TK_CLIP:
      if (e->kind == EX_NAME && !strcmp(e->str, "none"))
        c->clip = 0;
      else if (const_real(S, e, "clip", 0, false, NAN, false, &x))
        c->clip = x;
      break;
    case TK_OPTIMIZER:
      train_optimizer(S, e);
      break;
    case TK_DATA:
      vocab_expr = train_data(S, e, &seed_given);
      break;
    case TK_ACCUMULATE:
      if (const_int(S, e, "accumulate", 1, 65536, &v)) c->accumulate = (int)v;
      S->accumulate_loc = e->loc;
      break;
    case TK_MAX_TIME: /* seconds; the flag --max-time turns 10m, 1h30m into them */
      if (const_real(S, e, "max_time", 0, false, 1e9, false, &x)) c->max_time = x;
      break;
    }
  }
  if (!seed_given) c->data_seed = c->seed;
  if (c->data == DATA_PARALLEL && !c->batch_tokens) c->batch_tokens = c->batch * c->unroll;
  if ((int64_t)c->batch * c->unroll > (int64_t)1 << 24)
    fe_error(S->d, st[TK_BATCH] ? st[TK_BATCH]->value->loc : st[TK_UNROLL]->value->loc,
             "batch x unroll = %lld positions per step is too many (at most 16777216)",
             (long long)c->batch * c->unroll);
  if (S->d->errors == 0) check_data_vocab(S, vocab_expr);
  if (S->d->errors == 0) check_tok_vocab(S);
  if (c->accumulate > 1) check_accumulate(S);
}

/* ---------------------------------------------------------------- plan */

/* Glob match with '*' (any run, including empty). Iterative: no recursion. */
static bool glob_match(const char *p, const char *s) {
  const char *star = NULL, *ss = NULL;
  while (*s) {
    if (*p == '*') {
      star = p++;
      ss = s;
    } else if (*p == *s) {
      p++;
      s++;
    } else if (star) {
      p = star + 1;
      s = ++ss;
    } else {
      return false;
    }
  }
  while (*p == '*')
    p++;
  return !*p;
}

static bool is_moe_layer(const Sym *s) {
  return s->call && (s->call->layer == L_MOE || s->call->layer == L_HMOE);
}

static void plan_place(Sema *S, Stmt *s, PlaceRule **tail) {
  Diag *d = S->d;
  const char *pat = s->pattern ? s->pattern : "";
  Loc pl = s->pattern_loc;
  /* LAYERPATTERN[.PART] */
  char lp[256];
  const char *dot = strchr(pat, '.');
  const char *part = dot ? dot + 1 : NULL;
  snprintf(lp, sizeof lp, "%.*s", dot ? (int)(dot - pat) : (int)strlen(pat), pat);
  if (!lp[0]) {
    fe_error(d, pl, "place pattern '%s' names no layer", pat);
    return;
  }
  if (part && strcmp(part, "experts") && strcmp(part, "gate")) {
    fe_error(d, pl,
             "unknown part '%s' in place pattern '%s' (a MoE layer has 'experts' and 'gate')", part,
             pat);
    return;
  }
  Expr *e = s->value;
  if (!e) return;
  PlaceRule r = {.pattern = pat, .loc = pl};
  if (e->kind == EX_NAME && !strcmp(e->str, "replicate")) {
    r.kind = PK_REPLICATE;
  } else if (call_named(e, "shard")) {
    Arg *a = e->args;
    if (!a || a->next || a->key || !a->value || a->value->kind != EX_NAME ||
        strcmp(a->value->str, "experts")) {
      fe_error(d, e->loc, "only shard(experts) is supported: experts are split across devices");
      return;
    }
    r.kind = PK_SHARD_EXPERTS;
    if (part && !strcmp(part, "gate")) {
      fe_error(d, e->loc, "a gate has no experts to shard; use replicate or on(DEVICE, ...)");
      return;
    }
  } else if (call_named(e, "on")) {
    r.kind = PK_ON;
    bool ok = true;
    for (Arg *a = e->args; a; a = a->next) {
      if (a->key) {
        fe_error(d, loc_span(a->key_loc, strlen(a->key)), "on(...) takes device numbers, not '%s='",
                 a->key);
        ok = false;
        continue;
      }
      int64_t dev;
      if (!const_int(S, a->value, "device", 0, 65535, &dev)) {
        ok = false;
        continue;
      }
      if (r.ndevices == (int)MC_ARRAY_LEN(r.devices)) {
        fe_error(d, a->value->loc, "on(...) lists more than %d devices",
                 (int)MC_ARRAY_LEN(r.devices));
        ok = false;
        break;
      }
      for (int i = 0; i < r.ndevices; i++)
        if (r.devices[i] == dev) {
          fe_error(d, a->value->loc, "device %lld is listed twice", (long long)dev);
          ok = false;
        }
      r.devices[r.ndevices++] = (int)dev;
    }
    if (ok && r.ndevices == 0) {
      fe_error(d, e->loc, "on(...) needs at least one device number");
      ok = false;
    }
    if (!ok) return;
  } else {
    fe_error(d, e->loc, "a place rule must be replicate, shard(experts) or on(DEVICE, ...)");
    return;
  }
  /* what it matches */
  int nmatch = 0, nmoe = 0;
  for (size_t i = 0; i < S->syms.norder; i++) {
    Sym *y = S->syms.order[i];
    if (!y->call || !glob_match(lp, y->name)) continue;
    nmatch++;
    if (is_moe_layer(y)) nmoe++;
  }
  if (part && !nmoe) {
    fe_error(d, pl, "place pattern '%s' matches no moe or hmoe layer", pat);
    return;
  }
  if (!nmatch) {
    fe_error(d, pl, "place pattern '%s' matches no layer", pat);
    return;
  }
  if (r.kind == PK_SHARD_EXPERTS && !nmoe) {
    fe_error(d, pl,
             "place pattern '%s' matches no moe or hmoe layer, so it has no experts to shard", pat);
    return;
  }
  PlaceRule *n = mc_arena_alloc(S->arena, sizeof *n);
  *n = r;
  *tail = n;
}

static void plan_mesh(Sema *S, Expr *e, Stmt *devices_stmt) {
  Config *c = S->cfg;
  Diag *d = S->d;
  int64_t nd[2] = {1, 1};
  int n = 0;
  bool ok = e->kind == EX_LIST;
  if (ok)
    for (Arg *a = e->args; a; a = a->next, n++)
      if (n < 2 && (a->key || !const_int(S, a->value, n ? "per_node" : "nodes", 1, 65536, &nd[n])))
        ok = false;
  if (e->kind != EX_LIST || n != 2) {
    fe_error(d, e->loc, "'mesh' must be a list [nodes, per_node]");
  } else if (ok) {
    if (nd[0] * nd[1] > 65536) {
      fe_error(d, e->loc, "'mesh' has %lld devices (at most 65536)", (long long)(nd[0] * nd[1]));
    } else if (devices_stmt && c->devices != nd[0] * nd[1]) {
      fe_error(d, e->loc, "'mesh' = [%lld, %lld] has %lld devices, but 'devices' is %d",
               (long long)nd[0], (long long)nd[1], (long long)(nd[0] * nd[1]), c->devices);
      fe_note(d, devices_stmt->value->loc, "'devices' is set here");
    } else {
      c->mesh_nodes = (int)nd[0];
      c->mesh_per_node = (int)nd[1];
      c->devices = (int)(nd[0] * nd[1]);
    }
  }
}

static void plan_recompute(Sema *S, Expr *e) {
  Config *c = S->cfg;
  Diag *d = S->d;
  if (e->kind != EX_LIST) {
    static const char *const rc[] = {"none", "all", "auto"};
    int k = const_choice(S, e, "recompute", rc, 3);
    if (k >= 0) c->recompute = k == 0 ? RC_NONE : k == 1 ? RC_ALL : RC_AUTO;
    return;
  }
  int n = 0;
  for (Arg *a = e->args; a; a = a->next)
    n++;
  c->recompute = n ? RC_LIST : RC_NONE;
  c->recompute_names = mc_arena_alloc(S->arena, (size_t)(n ? n : 1) * sizeof(char *));
  c->n_recompute = 0;
  for (Arg *a = e->args; a; a = a->next) {
    Expr *x = a->value;
    if (!x || x->kind != EX_NAME) {
      fe_error(d, x ? x->loc : e->loc, "'recompute' lists layer names");
      continue;
    }
    Sym *y = sym_find(&S->syms, x->str);
    if (!y || !y->call) {
      fe_error(d, x->loc, "recompute: '%s' is not a layer of the model", x->str);
      continue;
    }
    bool dup = false;
    for (int i = 0; i < c->n_recompute; i++)
      if (!strcmp(c->recompute_names[i], x->str)) dup = true;
    if (dup) {
      fe_error(d, x->loc, "recompute: '%s' is listed twice", x->str);
      continue;
    }
    c->recompute_names[c->n_recompute++] = x->str;
  }
}

static void check_plan(Sema *S, Block *b) {
  Config *c = S->cfg;
  Diag *d = S->d;
  Stmt *st[PK_N];
  collect_settings(S, b, "plan", plan_keys, PK_N, train_keys, TK_N, "train", st);
  int64_t v;
  int k;
  /* devices first: mesh is checked against it wherever it stands */
  if (st[PK_DEVICES] && const_int(S, st[PK_DEVICES]->value, "devices", 1, 65536, &v))
    c->devices = (int)v;
  if (st[PK_DEVICES]) c->devices_loc = st[PK_DEVICES]->value->loc;
  if (st[PK_MESH]) c->devices_loc = st[PK_MESH]->value->loc;
  if (st[PK_MEMORY]) c->memory_budget_loc = st[PK_MEMORY]->value->loc;
  if (st[PK_BACKEND]) c->backend_loc = st[PK_BACKEND]->value->loc;
  c->mesh_nodes = 1;
  c->mesh_per_node = c->devices;
  for (Stmt *s = b ? b->stmts : NULL; s; s = s->next) {
    int key = -1;
    for (int i = 0; i < PK_N; i++)
      if (st[i] == s) key = i;
    Expr *e = s->value;
    if (key < 0 || !e) continue;
    switch (key) {
    case PK_MESH:
      plan_mesh(S, e, st[PK_DEVICES]);
      break;
    case PK_STRATEGY:
      if ((k = const_choice(S, e, "strategy", strategy_names, 3)) >= 0)
        c->strategy = strategy_names[k];
      break;
    case PK_EXPERTS:
      if ((k = const_choice(S, e, "experts", policy_names, 3)) >= 0)
        c->expert_policy = policy_names[k];
      break;
    case PK_FUSE:
      if ((k = const_choice(S, e, "fuse", bool_names, 2)) >= 0) c->fuse = k == 0;
      break;
    case PK_TF32:
      if ((k = const_choice(S, e, "tf32", bool_names, 2)) >= 0) c->tf32 = k == 0;
      break;
    case PK_BACKEND:
      if ((k = const_choice(S, e, "backend", backend_names, 3)) >= 0)
        c->backend = k == 0 ? BK_AUTO : k == 1 ? BK_CPU : BK_CUDA;
      break;
    case PK_MEMORY: {
      Val x;
      if (const_number(S, e, "memory_budget", &x)) {
        if (!(x.num >= 1))
          fe_error(d, e->loc, "'memory_budget' must be a positive size, e.g. 8GiB");
        else if (!(x.num <= SEMA_MAX_BUDGET))
          fe_error(d, e->loc,
                   "'memory_budget' must be at most 8192TiB (2^53 bytes), got %.3g bytes", x.num);
        else
          c->memory_budget = floor(x.num);
      }
      break;
    }
    case PK_RECOMPUTE:
      plan_recompute(S, e);
      break;
    case PK_HEADROOM:
      if (const_int(S, e, "expert_headroom", 1, 65536, &v)) c->expert_headroom = (int)v;
      break;
    case PK_TABLES:
      if ((k = const_choice(S, e, "tables", tables_names, 2)) >= 0) c->tables_sharded = k == 1;
      break;
    case PK_EXPERT_BWD:
      if ((k = const_choice(S, e, "expert_bwd", expert_bwd_names, 2)) >= 0)
        c->expert_bwd_split = k == 1;
      break;
    default:
      break;
    }
  }
  /* place rules, in order (a later rule overrides an earlier one) */
  PlaceRule **tail = &c->rules;
  if (b)
    for (Stmt *s = b->stmts; s; s = s->next) {
      if (s->kind != ST_PLACE) continue;
      plan_place(S, s, tail);
      if (*tail) {
        PlaceRule *r = *tail;
        for (int i = 0; i < r->ndevices; i++)
          if (r->devices[i] >= c->devices)
            fe_error(d, s->value->loc, "device %d does not exist: the plan has %d device%s",
                     r->devices[i], c->devices, c->devices == 1 ? "" : "s");
        tail = &r->next;
      }
    }
}

/* Each device trains on its share of the batch: the batch must split evenly. */
static void check_batch_split(Sema *S) {
  const Config *c = S->cfg;
  if (c->devices <= 1 || c->batch % c->devices == 0) return;
  Loc at = c->devices_loc.line ? c->devices_loc : c->batch_loc;
  if (c->batch < c->devices)
    fe_error(S->d, at, "%d devices but a batch has %d rows: each device needs at least one row",
             c->devices, c->batch);
  else
    fe_error(S->d, at,
             "batch %d does not split evenly over %d devices: use a batch that is a multiple "
             "of the device count",
             c->batch, c->devices);
  if (c->batch_loc.line && at.line != c->batch_loc.line)
    fe_note(S->d, c->batch_loc, "the batch is set here");
}

/* What the cuda backend's training step does not do yet (docs/cuda.md). */
static void check_cuda_train(Sema *S) {
  const Config *c = S->cfg;
  if (c->backend != BK_CUDA) return;
  Loc at = c->weight_decay > 0 ? S->wd_loc : S->accumulate_loc;
  if (c->weight_decay > 0 || c->accumulate > 1) {
    fe_error(S->d, at, "%s runs on the cpu backend only for now (the cuda optimizer has no %s)",
             c->weight_decay > 0 ? "weight decay" : "gradient accumulation",
             c->weight_decay > 0 ? "decay" : "accumulation buffers");
    fe_note(S->d, c->backend_loc, "the cuda backend is chosen here");
  }
}

/* ---------------------------------------------------------------- entry points */

void fe_config_defaults(Config *c) {
  *c = (Config){0};
  c->data = DATA_SYNTHETIC;
  c->topics = 8;
  c->vocab = 0; /* sema: the model's vocabulary */
  c->data_seed = 1;
  c->batch = 32;
  c->unroll = 20;
  c->max_len = 100;
  c->batch_tokens = 0; /* parallel data: batch * unroll unless given */
  c->steps = 1000;
  c->eval_every = 0; /* evaluate at the end only */
  c->optimizer = OPT_ADAM;
  c->lr = 1e-3;
  c->beta1 = 0.9;
  c->beta2 = 0.999;
  c->eps = 1e-8;
  c->warmup = c->hold = 0;
  c->decay = DECAY_NONE;
  c->min_lr = 0;
  c->weight_decay = 0;
  c->accumulate = 1;
  c->tokenizer = TOK_WORDS;
  c->clip = 0;
  c->seed = 1;
  c->devices = 1;
  c->mesh_nodes = 1;
  c->mesh_per_node = 1;
  c->strategy = "paper";
  c->expert_policy = "contiguous";
  c->recompute = RC_NONE;
  c->memory_budget = 0;
  c->fuse = true;
  c->backend = BK_AUTO;
  c->tf32 = false;
  c->tables_sharded = false;
}

const char *fe_optimizer_str(const Config *c, char *buf, size_t n) {
  static const char *const decays[] = {"none", "rsqrt", "cosine", "linear"};
  size_t k;
  if (c->optimizer == OPT_ADAM)
    k = (size_t)snprintf(buf, n, "adam(lr=%g, beta1=%g, beta2=%g, eps=%g", c->lr, c->beta1,
                         c->beta2, c->eps);
  else
    k = (size_t)snprintf(buf, n, "factored(lr=%g, beta2=%g, eps=%g", c->lr, c->beta2, c->eps);
  if (k < n && c->warmup) k += (size_t)snprintf(buf + k, n - k, ", warmup=%d", c->warmup);
  if (k < n && c->hold) k += (size_t)snprintf(buf + k, n - k, ", hold=%d", c->hold);
  if (k < n && c->decay != DECAY_NONE)
    k += (size_t)snprintf(buf + k, n - k, ", decay=%s", decays[c->decay]);
  if (k < n && c->min_lr > 0) k += (size_t)snprintf(buf + k, n - k, ", min_lr=%g", c->min_lr);
  if (k < n && c->weight_decay > 0)
    k += (size_t)snprintf(buf + k, n - k, ", weight_decay=%g", c->weight_decay);
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}

const char *fe_tokenizer_str(const Config *c, char *buf, size_t n) {
  if (c->tokenizer == TOK_CHARS)
    snprintf(buf, n, "chars");
  else if (c->tokenizer == TOK_BPE && c->tok_vocab)
    snprintf(buf, n, "bpe(vocab=%d)", c->tok_vocab);
  else if (c->tokenizer == TOK_BPE)
    snprintf(buf, n, "bpe");
  else if (!c->tok_lower && !c->tok_split_punct && !c->tok_vocab && !c->tok_spell)
    snprintf(buf, n, "words");
  else { /* what checkpoints store (data.tokenizer): only the arguments given */
    size_t k = (size_t)snprintf(buf, n, "words(");
    const char *sep = "";
    if (k < n && (c->tok_lower || c->tok_split_punct)) {
      k += (size_t)snprintf(buf + k, n - k, "lower=%s, split_punct=%s",
                            c->tok_lower ? "true" : "false", c->tok_split_punct ? "true" : "false");
      sep = ", ";
    }
    if (k < n && c->tok_vocab) {
      k += (size_t)snprintf(buf + k, n - k, "%svocab=%d", sep, c->tok_vocab);
      sep = ", ";
    }
    if (k < n && c->tok_spell) k += (size_t)snprintf(buf + k, n - k, "%sspell=chars", sep);
    if (k < n) snprintf(buf + k, n - k, ")");
  }
  return buf;
}

bool fe_sema(AstFile *f, Config *cfg, Diag *d) {
  if (!f || d->errors > 0) return false; /* a broken AST is never checked further */
  Sema S = {.f = f, .d = d, .cfg = cfg, .arena = &f->arena};
  if (!f->model) {
    fe_error(d, (Loc){1, 1, 1, 1, NULL},
             "no 'model' block: a file describes one model, 'model NAME { ... }'");
    return false;
  }
  check_model(&S, f->model);
  check_train(&S, f->train);
  check_plan(&S, f->plan);
  if (d->errors == 0) check_batch_split(&S);
  if (d->errors == 0) check_cuda_train(&S);
  mc_free(S.syms.slot);
  mc_free(S.syms.order);
  mc_free(S.embeds);
  return d->errors == 0;
}
