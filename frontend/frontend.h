/* frontend.h: the frontend's shared structs, grouped by the file that owns them.
 *
 *   lexer.l  / parser.y : text -> AST (AstFile), with source locations
 *   diag.c              : diagnostics (file:line:col, source line, caret), error cap
 *   sema.c              : names, layer arguments and ranges, dtypes, symbolic
 *                         shapes, train/plan settings -> annotated AST + Config
 *   summary.c           : layer list, parameter and op counts (moec check)
 *
 * Prefix: fe_ for functions. */
#ifndef MOEC_FRONTEND_H
#define MOEC_FRONTEND_H

#include <math.h>
#include <stdbool.h>

#include "../common/common.h"

/* ---------------------------------------------------------------- types */

/* A dimension: c * B^b * T^t * S^s, so [B, T, D] and the flattened [B*T, D] are exact.
 * B is the batch, T the unroll (target) length, S the source length of a translation
 * model's second sequence. */
typedef struct Dim {
  int64_t c;
  int8_t b, t, s; /* powers of the symbols B, T and S */
} Dim;

typedef enum DType { DT_F32, DT_I32 } DType;

#define MAX_RANK 4
/* The most elements one tensor may hold, symbolic dims bound (2^48 - 1): sizes in
 * bytes, sums over a graph and packed dims (ir_dim_pack) then fit int64. Sema
 * checks the fixed part of every type, ir_bind the bound shapes. */
#define MOEC_MAX_NUMEL ((((int64_t)1) << 48) - 1)
/* The most one dimension may be once bound: index tensors are int32. */
#define MOEC_MAX_DIM ((int64_t)2147483647)
typedef struct Type {
  DType dtype;
  int rank; /* 0 = scalar */
  Dim dim[MAX_RANK];
} Type;

Dim dim_int(int64_t c);
Dim dim_sym(char sym); /* 'B', 'T' or 'S' */
Dim dim_mul(Dim a, Dim b);
bool dim_eq(Dim a, Dim b);
bool dim_is_const(Dim d);
/* Binds the symbols (S takes T's value); -1 when the value would exceed MOEC_MAX_NUMEL. */
int64_t dim_eval(Dim d, int64_t B, int64_t T);
int64_t dim_eval3(Dim d, int64_t B, int64_t T, int64_t S);
char *dim_str(Dim d, char *buf, size_t n);    /* "B*T", "512", "4*B" */
char *type_str(const Type *t, char *buf, size_t n); /* "f32[B, T, 512]" */

/* ---------------------------------------------------------------- diag.c */

typedef struct Source Source;

typedef struct Loc {
  int line, col;         /* 1-based, first character */
  int end_line, end_col; /* last character, inclusive */
  const Source *src;     /* the text it is in; NULL: the diagnostics' main file */
} Loc;

struct Source {
  const char *path; /* as given on the command line */
  const char *text; /* whole file, NUL-terminated (may contain NULs: use len) */
  size_t len;
  bool cmdline; /* settings given on the command line: paths in it are relative to the
                   working directory, not to the .moe file */
};

typedef struct Diag {
  const Source *src;
  int errors, warnings;
  int cmdline_errors; /* of them, errors in settings given on the command line */
  int max_errors;   /* further errors are counted, not printed; default 20 */
  FILE *out;        /* stderr by default; tests point it at a buffer */
} Diag;

void fe_diag_init(Diag *d, const Source *src);
/* "file:line:col: error: msg", the source line, a caret under loc. */
void fe_error(Diag *d, Loc loc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void fe_note(Diag *d, Loc loc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------- AST (parser.y) */

typedef enum ExprKind {
  EX_NUM,   /* num (ival too when is_int); sizes like 8GiB are EX_NUM with is_size */
  EX_STR,   /* str */
  EX_NAME,  /* str: a name, or a bare identifier value like relu / true */
  EX_CALL,  /* str(args) */
  EX_BINOP, /* lhs op rhs, op one of '+', '-', '*' */
  EX_NEG,   /* -lhs */
  EX_LIST,  /* [args] */
} ExprKind;

typedef struct Expr Expr;
typedef struct Arg Arg;

struct Arg {
  const char *key; /* NULL for positional */
  Loc key_loc;
  Expr *value;
  Arg *next;
};

#define MAX_LAYER_ARGS 24

struct Expr {
  ExprKind kind;
  Loc loc;
  double num;
  int64_t ival;
  bool is_int, is_size;
  const char *str;
  int op;
  Expr *lhs, *rhs;
  Arg *args;
  /* filled by sema */
  Type ty;           /* for tensor-valued expressions */
  int layer;         /* LayerId for EX_CALL, -1 otherwise */
  double argv[MAX_LAYER_ARGS]; /* resolved layer arguments, by LayerArgId */
  Expr *targ[2];     /* resolved tensor arguments */
  const char *param_name; /* parameter prefix: the assigned NAME */
  const char *mask_input; /* attention: the padded input whose pad ids mask the memory */
};

typedef enum StmtKind {
  ST_LET,     /* let name = value */
  ST_INPUT,   /* input name : dtype[dims] */
  ST_ASSIGN,  /* name = value */
  ST_OUTPUT,  /* output names (args list of EX_NAME) */
  ST_SETTING, /* name = value inside train/plan */
  ST_PLACE,   /* place pattern : rule */
} StmtKind;

typedef struct Stmt Stmt;
struct Stmt {
  StmtKind kind;
  Loc loc;
  const char *name; Loc name_loc;
  Expr *value;            /* let, assign, setting; place rule (EX_NAME or EX_CALL) */
  DType dtype; Arg *dims; /* input: dims are EX_NUM or EX_NAME (B, T, S, or a let) */
  Expr *pad;              /* input: `pad N`, the id of padding positions, or NULL */
  Arg *names;             /* output */
  const char *pattern; Loc pattern_loc; /* place */
  Stmt *next;
};

typedef struct Block {
  Loc loc;
  const char *name; /* model name; NULL for train/plan */
  Stmt *stmts;
} Block;

typedef struct AstFile {
  Source src;
  Block *model, *train, *plan;
  McArena arena; /* owns every node and string */
  char *owned_text; /* src.text when the file owns it (drv_load); freed by fe_ast_free */
  struct AstFile *overrides; /* settings merged in from elsewhere (the command line): their
                                statements live there; freed with this file */
} AstFile;

/* Parses src into a new AstFile (never NULL). Errors go to d; returns with
 * d->errors > 0 on a syntax error. Never crashes or hangs on any input. */
AstFile *fe_parse(const Source *src, Diag *d);
/* The same for a text of train and plan blocks only (settings given on the command
 * line): a model block in it is an error. */
AstFile *fe_parse_settings(const Source *src, Diag *d);
void fe_ast_free(AstFile *f);
/* override.c: merges the settings of o (fe_parse_settings) into f before sema: a
 * setting replaces the file's of the same name; NAME = _(K = V) sets arguments of the
 * file's call; place rules are appended. f takes o over (freed with f). */
void fe_merge_settings(AstFile *f, AstFile *o, Diag *d);

/* ---------------------------------------------------------------- layers (layers.def) */

typedef enum LayerId {
#define LAYER(id, name, nt) id,
#include "layers.def"
  L_COUNT
} LayerId;

typedef enum LayerArgId {
  LA_X = 0, /* unused slot names, for symmetry: tensor inputs are in targ[] */
  LA_VOCAB, LA_DIM, LA_UNITS, LA_ACT, LA_P, LA_EXPERTS, LA_K, LA_HIDDEN, LA_GATING,
  LA_W_IMPORTANCE, LA_W_LOAD, LA_NOISE, LA_OUT, LA_GROUPS, LA_K_GROUP, LA_CARRY, LA_SCORE,
  LA_BIAS, LA_CAPACITY, LA_SAMPLES, LA_PROJ,
  LA_COUNT
} LayerArgId;
_Static_assert(LA_COUNT <= MAX_LAYER_ARGS, "too many layer args");

typedef enum ArgKind {
  AK_INT, AK_FLOAT, AK_BOOL, AK_PROB, AK_ENUM_ACT, AK_ENUM_GATING, AK_ENUM_SCORE
} ArgKind;
typedef enum { LAE_NONE, LAE_RELU, LAE_TANH, LAE_SIGMOID } LayerAct;
typedef enum { LAE_NOISY_TOPK, LAE_SOFTMAX, LAE_BATCHWISE } LayerGating;
/* attention scores: GNMT's v . tanh(mU + qW), or the paper's v . (tanh(mU) * tanh(qW)) */
typedef enum { LAE_ADDITIVE, LAE_PRODUCT } LayerScore;

typedef struct LayerArgSpec {
  LayerArgId id;
  const char *key;
  ArgKind kind;
  bool required;
  double def, lo, hi;
} LayerArgSpec;

typedef struct LayerSpec {
  const char *name;
  int ntensors;
  int nargs;
  LayerArgSpec args[MAX_LAYER_ARGS];
} LayerSpec;

extern const LayerSpec fe_layers[L_COUNT];
int fe_layer_lookup(const char *name); /* -1 if none */

/* ---------------------------------------------------------------- sema.c: Config */

typedef enum DataKind { DATA_SYNTHETIC, DATA_TEXT, DATA_BIN, DATA_PARALLEL } DataKind;
typedef enum OptKind { OPT_ADAM, OPT_FACTORED } OptKind;
/* the learning rate after warm-up and hold (docs/training.md, "Learning-rate schedules") */
typedef enum LrDecay { DECAY_NONE, DECAY_RSQRT, DECAY_COSINE, DECAY_LINEAR } LrDecay;
/* how a text corpus becomes ids (docs/training.md, "Tokenizers") */
typedef enum TokKind { TOK_WORDS, TOK_CHARS, TOK_BPE } TokKind;
typedef enum RecomputeKind { RC_NONE, RC_LIST, RC_ALL, RC_AUTO } RecomputeKind;
typedef enum BackendKind { BK_AUTO, BK_CPU, BK_CUDA } BackendKind;
typedef enum PlaceKind { PK_REPLICATE, PK_SHARD_EXPERTS, PK_ON } PlaceKind;

typedef struct PlaceRule {
  const char *pattern; Loc loc;
  PlaceKind kind;
  int ndevices; int devices[64]; /* for on(...) */
  struct PlaceRule *next;
} PlaceRule;

typedef struct Config {
  /* train */
  DataKind data;
  int topics, vocab; uint64_t data_seed; /* synthetic */
  const char *data_path;                 /* text, bin, or parallel's training pairs */
  const char *data_valid_path;           /* text, bin, parallel: valid=, or NULL */
  const char *data_test_path;            /* text, bin: test=, or NULL */
  TokKind tokenizer;                     /* text */
  bool tok_lower, tok_split_punct;       /* words(lower=, split_punct=) */
  bool tok_spell;                        /* words(spell=chars): unknown words spelled */
  int tok_vocab; /* words(vocab=N), bpe(vocab=N): ids; 0: the model's vocabulary */
  int max_len, batch_tokens;             /* parallel: ids per side, ids per batch */
  int batch, unroll, steps, eval_every;
  OptKind optimizer;
  double lr, beta1, beta2, eps;
  int warmup, hold;    /* the schedule: linear warm-up steps, then steps at lr */
  LrDecay decay;       /* then this decay, */
  double min_lr;       /* down to min_lr */
  double weight_decay; /* decoupled (AdamW), of parameters of rank >= 2; 0 = none */
  int accumulate;      /* micro-batches of `batch` rows per optimizer step (1 = none) */
  double clip; /* 0 = none */
  double max_time; /* seconds of training, checked at step boundaries; 0 = none */
  uint64_t seed;
  /* plan */
  int devices, mesh_nodes, mesh_per_node;
  const char *strategy; /* "paper", "data_parallel", ... validated by sema */
  const char *expert_policy; /* "contiguous", "round_robin", "balanced" */
  RecomputeKind recompute; const char **recompute_names; int n_recompute;
  double memory_budget; /* bytes, 0 = device memory */
  int expert_headroom;  /* expert-row buffers: H x a device's fair share of the routes
                           (0: the worst case, every route to one device: x devices) */
  bool tables_sharded;  /* embedding tables split by rows over the devices (plan.tables) */
  bool expert_bwd_split; /* plan.expert_bwd = split: the experts' hidden gradient GEMM and
                            relu's backward as two ops (fused: one, passes/fusion.c) */
  bool fuse;
  BackendKind backend;
  bool tf32; /* cuda: float32 GEMMs on TF32 tensor cores (off: the CPU's float32 results) */
  PlaceRule *rules;
  /* where some settings were made (line 0: the default), for messages found later */
  Loc batch_loc, devices_loc, memory_budget_loc, backend_loc;
} Config;

void fe_config_defaults(Config *c);
/* "adam(lr=0.001, ...)" with the schedule's and weight decay's arguments when set. */
const char *fe_optimizer_str(const Config *c, char *buf, size_t n);
/* "words", "words(lower=true, split_punct=true)", "chars", "bpe(vocab=2000)". */
const char *fe_tokenizer_str(const Config *c, char *buf, size_t n);

/* Checks the whole file: every error reported to d. Fills each Expr's ty /
 * layer / argv / targ, and cfg from the train and plan blocks (defaults for
 * what is absent). Returns d->errors == 0. */
bool fe_sema(AstFile *f, Config *cfg, Diag *d);

/* ---------------------------------------------------------------- summary.c */

typedef struct LayerSummary {
  const char *name;     /* assigned NAME */
  LayerId layer;
  Loc loc;
  Type out;             /* output type */
  int64_t params;       /* parameter count */
  int64_t ops_per_token;/* forward multiply-adds per position (timestep) */
  int64_t ops_per_pair; /* attention: per (target step, source position) pair */
  bool core;            /* counted in params_core (not embedding/softmax) */
} LayerSummary;

typedef struct ModelSummary {
  const char *model;
  int nlayers; LayerSummary *layers;
  int64_t params, params_core, ops_per_timestep;
  int64_t ops_per_pair; /* the attention layers', not in ops_per_timestep */
  bool translation;     /* an input has the source length S */
} ModelSummary;

/* Requires a checked file. */
ModelSummary fe_summarize(AstFile *f, McArena *a);

#endif
