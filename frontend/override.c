/* override.c: settings given outside the file (the command line's --batch 16,
 * --set train.optimizer.lr=3e-3) merged into a parsed file before sema, so that sema
 * checks them like the file's own and its messages point at the flag's text.
 *
 * The overrides are a text of train and plan blocks (fe_parse_settings). Rules:
 *   NAME = VALUE          replaces the file's setting NAME (or adds it)
 *   NAME = _(K = V, ...)  sets arguments K of the file's call NAME = f(...), keeping the
 *                         others and f (a bare `adam` becomes adam(K = V); an absent
 *                         setting starts from its default call: adam, synthetic)
 *   place PATTERN : RULE  is appended: later rules override earlier ones
 * (`devices` and a file's `mesh` must then agree: sema says so if they do not.) */
#include <string.h>

#include "frontend.h"

/* The call an absent setting defaults to (language.md), for argument overrides. */
static const char *default_call(const char *key) {
  if (!strcmp(key, "optimizer")) return "adam";
  if (!strcmp(key, "data")) return "synthetic";
  return NULL;
}

static Block *block_of(AstFile *f, int which, Loc loc) {
  Block **b = which == 1 ? &f->train : &f->plan;
  if (!*b) {
    *b = mc_arena_alloc(&f->arena, sizeof **b);
    (*b)->loc = loc;
  }
  return *b;
}

/* The link that points at the setting named key in b, or NULL. */
static Stmt **find_setting(Block *b, const char *key) {
  for (Stmt **p = &b->stmts; *p; p = &(*p)->next)
    if ((*p)->kind == ST_SETTING && (*p)->name && !strcmp((*p)->name, key)) return p;
  return NULL;
}

static void append(Block *b, Stmt *s) {
  Stmt **p = &b->stmts;
  while (*p)
    p = &(*p)->next;
  s->next = NULL;
  *p = s;
}

/* NAME = _(K = V, ...): the args of s's call onto the file's setting. */
static void merge_args(AstFile *f, Block *b, Stmt *s, Diag *d) {
  Stmt **p = find_setting(b, s->name);
  Expr *call = p ? (*p)->value : NULL;
  if (!p) {
    const char *def = default_call(s->name);
    if (!def) {
      fe_error(d, s->name_loc, "'%s' takes no arguments (set it as a whole)", s->name);
      return;
    }
    call = mc_arena_alloc(&f->arena, sizeof *call);
    *call = (Expr){.kind = EX_CALL, .loc = s->value->loc, .str = def, .layer = -1};
    Stmt *n = mc_arena_alloc(&f->arena, sizeof *n);
    *n = (Stmt){.kind = ST_SETTING, .loc = s->loc, .name = s->name, .name_loc = s->name_loc,
                .value = call};
    append(b, n);
  } else if (call->kind == EX_NAME) { /* adam -> adam(...) */
    call->kind = EX_CALL;
    call->args = NULL;
  } else if (call->kind != EX_CALL) {
    fe_error(d, s->value->loc, "'%s' is not a call here, so it has no arguments to set",
             s->name);
    fe_note(d, call->loc, "'%s' is set here", s->name);
    return;
  }
  for (Arg *a = s->value->args, *next; a; a = next) {
    next = a->next;
    if (!a->key) {
      fe_error(d, a->value->loc, "an argument override needs a name (K = V)");
      continue;
    }
    Arg **q = &call->args;
    while (*q && !((*q)->key && !strcmp((*q)->key, a->key)))
      q = &(*q)->next;
    a->next = *q ? (*q)->next : NULL;
    *q = a; /* replaces the file's argument of that name, or is appended */
  }
}

void fe_merge_settings(AstFile *f, AstFile *o, Diag *d) {
  for (int which = 1; which <= 2; which++) {
    Block *ob = which == 1 ? o->train : o->plan;
    if (!ob) continue;
    for (Stmt *s = ob->stmts, *next; s; s = next) {
      next = s->next;
      Block *b = block_of(f, which, ob->loc);
      if (s->kind == ST_PLACE) {
        append(b, s);
      } else if (s->kind == ST_SETTING && s->value && s->value->kind == EX_CALL &&
                 !strcmp(s->value->str, "_")) {
        merge_args(f, b, s, d);
      } else if (s->kind == ST_SETTING) {
        Stmt **p = find_setting(b, s->name);
        if (p) {
          s->next = (*p)->next;
          *p = s;
        } else {
          append(b, s);
        }
      }
    }
  }
  o->overrides = f->overrides; /* o lives as long as f: its statements are f's now */
  f->overrides = o;
}
