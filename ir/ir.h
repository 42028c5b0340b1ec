/* ir.h: the dataflow graph every pass reads and writes.
 *
 *   ops.def / ops.c : the op table (name, arity, flags, shape rule, grad rule)
 *   shapes.c        : the shape rule of every op
 *   grads_dense.c   : gradient rules of the dense ops
 *   grads_moe.c     : gradient rules of the MoE ops
 *   shapes_seq.c    : shape rules of the sequence ops (attention, masks, bmm)
 *   grads_seq.c     : gradient rules of the sequence ops
 *   graph.c         : tensors, nodes, the graph; binding B, T and S
 *   build.c         : checked AST -> graph (layers expand into primitive ops)
 *   devices.c       : device sets and expert shards of a placed graph (queries)
 *   print.c         : the text printer (moec ir)
 *
 * A graph is a list of nodes in a valid execution order (the order they were
 * added: builders add an op after its inputs' producers). Tensors are typed
 * with symbolic dims (B, T, and S in translation models) and, once bound,
 * concrete shapes.
 * Prefix: ir_ for functions.
 */
#ifndef MOEC_IR_H
#define MOEC_IR_H

#include "../frontend/frontend.h"

typedef struct Graph Graph;
typedef struct Node Node;
typedef struct Tensor Tensor;

/* ---------------------------------------------------------------- ops.c */

enum { OPF_ELEMENTWISE = 1, OPF_RANDOM = 2, OPF_COLLECTIVE = 4, OPF_NODIFF = 8, OPF_INPLACE0 = 16,
       OPF_CLOBBER1 = 32 };

typedef const char *(*ShapeRule)(Graph *g, Node *n);
typedef void (*GradRule)(Graph *g, Node *n, Tensor *const *gout, Tensor **gin);

typedef enum OpKind {
#define OP(id, name, nin, nout, flags, shape, grad) id,
#include "ops.def"
#undef OP
  OP_COUNT
} OpKind;

typedef struct OpInfo {
  const char *name;
  int nin, nout, flags;
  ShapeRule shape;
  GradRule grad;
} OpInfo;

extern const OpInfo ir_ops[OP_COUNT];
int ir_op_lookup(const char *name); /* -1 if none */

/* Shape and grad rules named in ops.def. */
#define OP(id, name, nin, nout, flags, shape, grad) const char *shape(Graph *g, Node *n);
#include "ops.def"
#undef OP
#define NOGRAD ir_nograd_decl_ /* NOGRAD entries declare this unused name */
#define OP(id, name, nin, nout, flags, shape, grad) void grad(Graph *g, Node *n, Tensor *const *gout, Tensor **gin);
#include "ops.def"
#undef OP
#undef NOGRAD

/* ---------------------------------------------------------------- graph.c */

typedef enum TensorKind {
  TK_INPUT, /* fed each step: token ids, targets */
  TK_PARAM, /* trainable parameter: named as in language.md */
  TK_STATE, /* carried across steps (LSTM h, c); not trained */
  TK_ACT,   /* produced by a forward op */
  TK_GRAD,  /* produced by a backward op */
} TensorKind;

/* What an input holds, so a runtime finds it without guessing (set by ir_build). */
typedef enum InputRole {
  IN_NONE,   /* not fed by the data (a gradcheck's R, an unused input) */
  IN_TOKENS, /* a language model's token ids [B, T] */
  IN_SOURCE, /* a translation model's source ids [B, S] */
  IN_TARGET, /* a translation model's target inputs [B, T] (teacher forcing) */
  IN_LABELS, /* the loss's targets: next tokens, or the target labels [B, T] */
  IN_MEMORY, /* a decoder step's encoder value (ir_build_part): fed from the encoder's */
} InputRole;

typedef enum InitKind {
  INIT_ZERO,    /* gates (w_gate, w_noise) and biases, as in the paper */
  INIT_UNIFORM, /* U(-init_scale, init_scale) */
  INIT_NORMAL,  /* N(0, init_scale^2) */
} InitKind;

/* How a tensor is laid over devices (set by the placement pass). */
typedef enum PartKind {
  PART_NONE,       /* not yet placed */
  PART_REPLICATED, /* full copy on every device */
  PART_BATCH,      /* split along dim 0 (rows / batch) */
  PART_EXPERTS,    /* expert-sharded: dim 0 indexes experts (or expert rows) */
  PART_PARTIAL,    /* each device holds a partial sum over its rows (all_reduce: replicated) */
  PART_ROWS,       /* a table sharded by rows: dim 0 in contiguous ranges, one per device */
} PartKind;

struct Tensor {
  int id;
  const char *name; /* params: "lm.weight"; others: a readable name "h1", "m.gates" */
  TensorKind kind;
  Type ty;          /* dtype and symbolic dims */
  Node *producer;   /* NULL for inputs, params, state */
  int producer_slot;
  Loc loc;          /* .moe source of the layer that made it */
  /* inputs */
  InputRole role;
  int32_t pad;      /* `pad N`: the id of padding positions; -1 = none */
  /* bound by ir_bind */
  int64_t shape[MAX_RANK];
  int64_t numel;
  /* params */
  InitKind init; double init_scale;
  Tensor *grad;     /* after autodiff: d loss / d this (params) */
  /* placement and memory (passes) */
  PartKind part;
  int64_t mem_offset; /* -1 = unplanned */
  bool rows_per_step; /* an expert-row tensor sized per step (bind.c): its slot in the arena */
};

#define IR_MAX_ATTR 4

/* The expression program of an OP_FUSED node (made by passes/fusion.c; compiled by
 * codegen/jit.c on the cpu and codegen/nvrtc.c on cuda). Slots [0, nin) are the node's
 * inputs, slot nin + k the value of instruction k; outs[j] the slot of output j. */
typedef struct FusedInstr {
  OpKind op;     /* OP_ADD ... OP_SOFTPLUS_BWD (elementwise, not random) */
  int a, b;      /* operand slots (b = -1 for unary ops) */
  double f0, f1; /* OP_SCALE's fa[0], fa[1] */
} FusedInstr;

typedef struct FusedProg {
  int nin, nops, nout;
  FusedInstr *ops; /* nops */
  int *outs;       /* nout slots */
} FusedProg;

struct Node {
  int id;
  OpKind op;
  int nin, nout;
  Tensor **in, **out;
  int64_t ia[IR_MAX_ATTR];
  double fa[IR_MAX_ATTR];
  const char *layer; /* name of the .moe layer it came from ("m"), for place rules */
  const char *role;  /* part of that layer: "gate", "experts", "combine", ... or NULL */
  Loc loc;
  bool backward;     /* emitted by autodiff */
  /* passes */
  int device;        /* -1 = every device (data-parallel) */
  const int *devices; int ndevices; /* placement: an explicit device set (on(...)); 0 = none */
  int fused_group;   /* -1 = none */
  const FusedProg *fused; /* OP_FUSED: its program (in the graph's arena) */
  int recompute_seg; /* -1 = none */
  Node *recompute_of; /* a recompute clone (passes/recompute.c): the forward node it repeats */
};

typedef struct StatePair {
  Tensor *state; /* TK_STATE input */
  Tensor *next;  /* value to copy into it after the step */
} StatePair;

/* A batch's shape: B rows (the whole batch's), T target and S source positions. A graph
 * may run batches of several shapes (translation models: one per length bucket): its
 * `shapes` list the largest, and a batch runs when one of them holds it (each of B, T and S
 * at most that shape's); the memory plan gives every tensor its largest size over them. */
typedef struct BatchShape {
  int64_t B, T, S;
} BatchShape;

/* passes/memplan.c's figures for a graph, in bytes, at the B, T it planned for. */
typedef struct MemFigures {
  int64_t B, T, elem;
  int64_t persist;  /* params, inputs, state */
  int64_t arena;    /* activations and gradients, lifetimes overlaid (0 = not planned) */
  int64_t live_max; /* most bytes live at one instant: the arena's lower bound */
} MemFigures;

struct Graph {
  McArena arena;
  const char *name;
  Tensor **tensors; int ntensors, tcap;
  Node **nodes; int nnodes, ncap;
  Tensor **params; int nparams, pcap;   /* in creation order = checkpoint order */
  Tensor **inputs; int ninputs, icap;
  StatePair *states; int nstates, scap;
  Tensor *loss;      /* scalar total loss (xent + aux) */
  Tensor *xent;      /* scalar cross-entropy part */
  Tensor *aux;       /* scalar sum of aux losses, or NULL */
  Tensor *xent_count; /* scalar: target positions the xent averages over (targets with a
                         pad id: the non-pad ones), or NULL (all B*T) */
  /* decoding (ir_build_part): the encoder values a decoder step reads, in one order for
   * both graphs (the encoder's outputs; the decoder's IN_MEMORY inputs), and the decoder's
   * logits [B*T, V]; the host reads both after a run */
  Tensor **bridge; int nbridge;
  Tensor *logits;
  Tensor **moe_importance, **moe_load; const char **moe_names; int nmoe; /* for monitoring */
  Tensor **moe_drop; /* per moe: the routes each expert dropped (capacity=), NULL without */
  int **moe_expert_dev; int *moe_nexperts; /* placement: each expert's device per moe (NULL before) */
  int expert_headroom; /* plan.expert_headroom, set by bind (0: expert rows x P; bind.c) */
  /* placement, strategy = hmoe: an hmoe layer's group -> device map (the device that
   * receives the group's rows and runs its second dispatch and combine); NULL per layer
   * (and moe_ngroups 0) where the exchange is one all-to-all of every expert row */
  int **moe_group_dev; int *moe_ngroups;
  bool experts_local; int experts_rank; /* pass_shard_experts: holds only experts_rank's experts */
  int64_t B, T, S;   /* bound values, 0 until ir_bind (S = T unless ir_bind_seq says; a
                        device graph: its rows) */
  /* the bind pass: whose graph this is. Global: rank 0 of ndev 1 at the whole batch */
  int rank, ndev;    /* device rank of ndev (1 on the global graph of any placement) */
  int64_t B_global;  /* rows of the whole batch */
  bool has_backward;
  int nrng;          /* random-op streams handed out so far (ir_next_rng_stream) */
  BatchShape *shapes;
  int nshapes;       /* the batch shapes it runs (see BatchShape); 0: one
                        shape, B and T of the bind pass */
  MemFigures mem;    /* memplan pass: zero until planned */
  struct RtStepRows *step_rows; /* runtime/rows.c: the program's per-step expert rows, or NULL */
  const char **name_idx; int name_cap, name_n; /* every name a tensor has had (ir_name_taken) */
};

Graph *ir_graph_new(const char *name);
void ir_graph_free(Graph *g);

Tensor *ir_tensor(Graph *g, TensorKind kind, const char *name, Type ty, Loc loc);
Tensor *ir_param(Graph *g, const char *name, Type ty, InitKind init, double scale, Loc loc);
Tensor *ir_input(Graph *g, const char *name, Type ty, Loc loc);
Tensor *ir_state(Graph *g, const char *name, Type ty, Loc loc);
/* Builders' naming in O(1): has any tensor of g been given this name (by ir_tensor
 * or ir_rename)? ir_rename gives t the name (an arena copy) and records it. */
bool ir_name_taken(const Graph *g, const char *name);
void ir_rename(Graph *g, Tensor *t, const char *name);

/* Adds a node; creates its nout output tensors (kind TK_ACT, or TK_GRAD when
 * g is building the backward pass), runs the op's shape rule and dies with an
 * internal error if it fails. Returns the node; outputs in n->out[]. */
Node *ir_node(Graph *g, OpKind op, int nin, Tensor *const *in, const int64_t *ia, const double *fa);
/* Shorthands for the common one-output case. */
Tensor *ir_op1(Graph *g, OpKind op, Tensor *a);
Tensor *ir_op2(Graph *g, OpKind op, Tensor *a, Tensor *b);
/* Context copied into every node ir_node adds: source layer, role, loc, backward. */
void ir_set_context(Graph *g, const char *layer, const char *role, Loc loc);
void ir_set_backward(Graph *g, bool backward);

Type ir_type(DType dt, int rank, const Dim *dims);
/* Evaluates every tensor's dims with B and T; dies on a non-positive size, a
 * tensor over MOEC_MAX_NUMEL elements or a dimension over MOEC_MAX_DIM. A graph
 * with a source length S gets S = T (the size plans assume). */
void ir_bind(Graph *g, int64_t B, int64_t T);
/* The same with S bound on its own (translation models: source and target lengths). */
void ir_bind_seq(Graph *g, int64_t B, int64_t T, int64_t S);
/* Whether shape s fits in one of g's shapes (true for a graph without a list). */
bool ir_shape_fits(const Graph *g, BatchShape s);
/* Element count of t at shape s, for this graph's devices (B / ndev rows). */
int64_t ir_numel_at(const Graph *g, const Tensor *t, BatchShape s);
/* t's elements at (B, T) (S = T) without binding; dies naming t past MOEC_MAX_NUMEL. */
int64_t ir_numel_bt(const Tensor *t, int64_t B, int64_t T);
/* Whether any tensor has the symbol S in its dims. */
bool ir_has_source_dim(const Graph *g);
/* The input of a role, or NULL (the first one; ir_build gives each role at most one). */
Tensor *ir_input_role(const Graph *g, InputRole role);
/* Checks structural invariants: inputs produced before use, arities, shapes. */
void ir_verify(const Graph *g);

/* ---------------------------------------------------------------- build.c */

/* Builds the forward graph of a checked file: inputs, params (named as in
 * language.md), ops, loss. */
Graph *ir_build(AstFile *f, const Config *cfg);
/* What ir_build_part builds of a translation model for decoding (docs/ir.md, "Decoding"):
 * the whole model (ir_build); its encoder: the statements that do not read the target
 * inputs, with the values the decoder reads as outputs (Graph.bridge); or one decoder
 * step (bound at T = 1): the statements that read the target inputs, the encoder's values
 * as inputs (IN_MEMORY), each LSTM's state carried from step to step, the softmax's
 * logits (Graph.logits) instead of the loss. */
typedef enum BuildPart { BUILD_ALL, BUILD_ENCODER, BUILD_DECODER } BuildPart;
/* NULL after reporting to d (at the .moe location) what step-by-step decoding cannot
 * compute: an attention over target positions. */
Graph *ir_build_part(AstFile *f, const Config *cfg, BuildPart part, Diag *d);
/* The next stable rng stream id (0, 1, ... in build order) for a random op's ia[0]. */
int ir_next_rng_stream(Graph *g);
/* x -> OP_RESHAPE to type `to` (same dtype and element count; shapes.c). */
Tensor *ir_reshape(Graph *g, Tensor *x, Type to);
/* A Dim packed into one int64 (c | b<<40 | t<<48 | s<<56; never 0) for int attributes. */
int64_t ir_dim_pack(Dim d);
Dim ir_dim_unpack(int64_t v);
/* Appends a StatePair: `state` takes the value of `next` after each step. */
void ir_add_state(Graph *g, Tensor *state, Tensor *next);
/* build_moe.c: one moe / hmoe layer on x[..., in] (every position at once);
 * returns the output with x's leading dims and sets *aux to its scalar aux loss. */
Tensor *ir_build_moe(Graph *g, Expr *call, Tensor *x, const char *name, Tensor **aux);
/* The routes one expert keeps under moe(capacity=C): ceil(C*k*N/E) (at least 1) for N rows
 * of k routes over E experts (docs/moe.md, "Capacity"). */
int64_t ir_capacity_rows(double C, int64_t k, int64_t N, int64_t E);
Tensor *ir_build_hmoe(Graph *g, Expr *call, Tensor *x, const char *name, Tensor **aux);

/* The program of an OP_FUSED node (NULL for any other node). */
static inline const FusedProg *ir_fused_prog(const Node *n) {
  return n && n->op == OP_FUSED ? n->fused : NULL;
}

/* ---------------------------------------------------------------- devices.c */

/* Device sets are bit masks (bit d = device d; P <= 64 devices). */
uint64_t ir_all_mask(int P);
/* The devices node n runs on: all P, one (n->device), or its on(...) list. NULL: all. */
uint64_t ir_node_mask(const Node *n, int P);
int ir_node_set_size(const Node *n, int P);
/* The devices holding tensor t's batch rows: its producer's set (a reshard's: the set it
 * moves rows to; all_to_all_back's: the batch side's); inputs, params and states: all. */
uint64_t ir_tensor_mask(const Tensor *t, int P);
/* Does device rank run node n? Devices outside a node's set skip it. */
bool ir_runs_on(const Node *n, int rank, int P);
/* True when some node runs on a subset of the P devices. */
bool ir_has_subsets(const Graph *g, int P);
/* Where node n's rows are on device rank of P (global batch B): on a subset S, this
 * device's index in S, |S| devices, and its rows of the batch split over S; otherwise
 * rank, P and B/P rows. Kernels see these as their KernelCtx. */
typedef struct IrSubCtx {
  int64_t batch0, batch_local;
  int device, ndevices;
} IrSubCtx;
IrSubCtx ir_node_subctx(const Node *n, int rank, int P, int64_t B);

/* An expert-sharded parameter: dim 0 indexes experts [first, first + count) of MoE layer
 * `moe`; expert e lives on g->moe_expert_dev[moe][e] (its owner map). */
typedef struct ExpertShard {
  int moe;
  int64_t first, count;
} ExpertShard;
/* True (and *s filled; s may be NULL) when t is such a parameter of a placed graph (moe
 * layers' LAYER.w1, b1, w2, b2; an hmoe's LAYER.gJ.w1 ...: first J*Eg, count Eg) and its
 * layer is sharded (every expert parameter of it attributed). */
bool ir_expert_shard(const Graph *g, const Tensor *t, ExpertShard *s);
/* ir_expert_shard of every parameter at once: ok[i], s[i] for g->params[i]; linear in
 * the parameters per layer (an hmoe of hundreds of groups has thousands of them). */
void ir_expert_shards(const Graph *g, ExpertShard *s, bool *ok);
/* True when every expert parameter of MoE layer m is attributed (it can be sharded). */
bool ir_layer_sharded(const Graph *g, int m);
/* hmoe layer m under the two-level exchange (Graph.moe_group_dev) with every expert on its
 * group's device: its expert-level all_to_alls move nothing between devices. */
bool ir_hmoe_experts_local(const Graph *g, int m);
/* The experts of s on device `rank`, in global order, into list (NULL: only count). */
int64_t ir_expert_local(const Graph *g, const ExpertShard *s, int rank, int64_t *list);

/* Tables sharded by rows (plan.tables = sharded): V rows over P devices in contiguous
 * ranges; device r holds [ir_table_first(V, P, r), ir_table_first(V, P, r + 1)). */
int64_t ir_table_first(int64_t V, int P, int r);
int ir_table_owner(int64_t V, int P, int64_t row);
/* True (with V and P) when parameter t is such a table in a placed graph (PART_ROWS, read
 * by table_gather nodes). */
bool ir_table_shard(const Graph *g, const Tensor *t, int64_t *V, int *P);

/* ---------------------------------------------------------------- print.c */

void ir_print(const Graph *g, FILE *out);

#endif
