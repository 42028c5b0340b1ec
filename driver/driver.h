/* driver.h: the one compile path every command shares, and the launchers.
 *
 *   options.c : the options of every command as data: the file's train/plan settings
 *               overridden by flags (--batch 16, --set train.optimizer.lr=3e-3), the
 *               run's options, and the documented environment overrides, read once
 *   load.c    : read, parse, merge the flags' settings, check (sema): file:line:col
 *   compile.c : build the graph, run every pass (the shard and bind passes for one
 *               device of N included), lower, and compile every kernel up front: the
 *               Program a device runs, or the graph a plan reports
 *   launch.c  : one device, N in-process devices (threads) or one device per MPI rank:
 *               each compiles its program, then the runtime runs it
 *
 * Data walks one way: options -> AST -> graph -> program -> runtime. Prefix: drv_.
 */
#ifndef MOEC_DRIVER_H
#define MOEC_DRIVER_H

#include "../codegen/codegen.h"
#include "../passes/plan.h"
#include "../runtime/comm.h"
#include "../runtime/train.h"
#include "../runtime/train_dev.h"

/* ---------------------------------------------------------------- options.c */

/* Every option of the commands that compile a model (check, ir, plan, simulate, run,
 * eval, grad): which a command takes is a mask of these. */
enum {
  DRV_SETTINGS = 1, /* the train/plan settings flags and --set */
  DRV_RUN = 2,      /* --save --save-every --trace --load --metrics --json --quiet --f64
                       --no-eval */
  DRV_DEBUG = 4,    /* --no-jit --no-memplan --poison-arena --no-nvrtc */
  DRV_LOADS = 8,    /* --loads FILE */
};

typedef struct Options {
  const char *cmd;  /* "run", ...: for messages */
  const char *path; /* the .moe file */
  McBuf train, plan; /* settings from flags, as the bodies of train and plan blocks */
  int nsettings;
  /* the run */
  const char *save, *load, *metrics, *loads_path, *trace;
  int64_t save_every;
  const char *resume_cmd; /* moec run: the command line that resumes the run */
  double zipf; /* --skew zipf:S: the routing assumed without measured loads (0: uniform) */
  bool json, quiet, f64, no_eval;
  bool devices_given; /* --devices, --mesh or --set plan.devices/mesh */
  /* debugging and tests: how to lower (codegen.h) */
  CgOpts cg;
  /* the device backend: --no-nccl, --cuda-alloc-limit (tf32 comes from the plan) */
  DevOpts dev;
  /* documented environment overrides, read once at startup (drv_options_init) */
  CommOpts comm;       /* MOEC_COMM_TIMEOUT, MOEC_COMM_CHECK, MOEC_COMM_MPI_CHUNK */
  double memory_limit; /* MOEC_MEMORY_LIMIT bytes; 0: the machine's available memory */
} Options;

/* An Options for command cmd with the environment's overrides read. */
void drv_options_init(Options *o, const char *cmd);
void drv_options_free(Options *o);
/* Takes argv[*i] (and its value) if it is one of the options in `which`, advancing *i.
 * Returns 1 if taken, 0 if not one of them, -1 after printing an error (exit 2). */
int drv_take_option(Options *o, int which, int argc, char **argv, int *i);
/* Adds a setting as if given by a flag: block "train" or "plan", key ("optimizer.lr":
 * an argument of a call setting), value in .moe syntax; `flag` is shown in messages. */
void drv_add_setting(Options *o, const char *block, const char *key, const char *value,
                     const char *flag);
/* Help text for the options in `which` (for a command's --help). */
void drv_options_help(FILE *out, int which);
/* The effective settings as one JSON object (data, batch, ..., backend), for --json. */
char *drv_settings_json(const Config *cfg, const Options *o);
/* A hash of the model file and the effective settings: ranks compare it. */
uint64_t drv_settings_hash(const Config *cfg, const Options *o);

/* ---------------------------------------------------------------- load.c */

/* Reads and checks o->path with o's settings merged in; fills cfg. Prints the
 * diagnostics and returns NULL on any error, *rc the exit status: 2 when only the
 * command line's settings were wrong (a usage error), else 1. */
AstFile *drv_load(const Options *o, Config *cfg, int *rc);
/* The same for a model given as text (moec calibrate's reference models); `name` stands
 * for the file in messages. */
AstFile *drv_load_text(const Options *o, const char *name, const char *text, Config *cfg,
                       int *rc);

/* ---------------------------------------------------------------- compile.c */

/* What to compile: the training graph (forward + backward) or forward only; for the
 * global graph (a plan: rank < 0) or for device rank of `devices`. */
typedef struct Target {
  int devices, rank; /* rank < 0: the global graph */
  bool training;
  Precision prec;
  const Backend *be; /* lowering: where the program runs */
  const char *print_after; /* moec ir: print the graph after this pass ("build": as built) */
  const BatchShape *shapes; /* the batches a run feeds when they change shape (Graph.shapes);
                               0: the train block's (a translation model's length buckets) */
  int nshapes;
  bool fold_dw;   /* moec run's training: the optimizer is the gradients' one reader
                     (PassCtx.fold_dw) */
  BuildPart part; /* decoding a translation model: its encoder, or one decoder step
                     (forward only; ir_build_part) */
  FILE *print_to;
} Target;

/* Builds the graph of f and runs every pass for the target, reporting user errors at
 * their .moe location (what `moec check` reports too). notes (may be NULL) collects
 * the passes' notes. NULL after printing errors. */
Graph *drv_compile_graph(AstFile *f, const Config *cfg, const Options *o, const Target *t,
                         McBuf *notes);
/* The program of device t->rank: drv_compile_graph, then lowering on t->be with every
 * kernel compiled, the inputs the runtime feeds found, and the memory checked first
 * against what is available. NULL after printing errors. drv_program_free frees it and
 * its graph. */
Program *drv_compile(AstFile *f, const Config *cfg, const Options *o, const Target *t);
void drv_program_free(Program *p);
/* The forward program of f on one device for B streams of T steps (moec eval, score,
 * sample: whatever the file's batch, unroll and plan). NULL after printing errors. */
Program *drv_compile_forward(AstFile *f, const Config *cfg, const Options *o, int B, int T);
/* The model's vocabulary as training feeds it: the smallest embedding and softmax_xent
 * vocab of a checked file (at most 65536). */
int drv_model_vocab(const AstFile *f);
/* The backend cfg asks for (cpu; cuda when plan { backend = cuda } or --backend cuda),
 * configured with o's device options and cfg->tf32 (rt_dev_configure); NULL after
 * printing why cuda cannot run here. Called before any device starts. */
const Backend *drv_backend(const Config *cfg, const Options *o);
/* What device d of a placed global graph g (drv_compile_graph, rank < 0) allocates:
 * the memory plan of its graph (its experts, its rows), its parameters and optimizer
 * state, computed by the passes and runtime functions its own compile would use. */
typedef struct DeviceMemory {
  int64_t persist, arena, params, optimizer;
  int64_t live_max; /* the memory plan's lower bound */
  /* the expert rows sized per step (0 without; in the arena at their slots, these are the
   * region apart they move to past them): that region at the fair share of the routes, at
   * the rows the plan's routing brings each exchange level (rows_scale: DeviceCost's, NULL
   * uniform) and at the most a step can bring (plan_rows_of); outgrow: whether that
   * routing outgrows the slots (plan_rows_outgrow) */
  int64_t rows_fair, rows_expected, rows_worst;
  bool rows_outgrow;
} DeviceMemory;
DeviceMemory drv_device_memory(Graph *g, const Config *cfg, const Options *o, int d, int devices,
                               const double *rows_scale);
/* moec plan --memory: device d's arena (planned as drv_device_memory plans it) and the top
 * largest tensors alive at its peak (pass_memplan_top), to out. */
void drv_memory_top(Graph *g, const Config *cfg, int d, int devices, int top, FILE *out);

/* ---------------------------------------------------------------- launch.c */

/* moec run: the devices of the run (o's --devices, else the file's plan, or the MPI
 * job's ranks), each compiling its program and training it. Returns the exit status. */
int drv_train(AstFile *f, const Config *cfg, const Options *o);
/* True when started by an MPI launcher with more than one rank. */
bool drv_mpi_launched(void);
/* The ranks of the MPI job that started this process (0 when not under MPI). */
int drv_mpi_size(void);

#endif
