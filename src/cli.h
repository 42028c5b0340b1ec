/* cli.h: the moec command line: one file per subcommand (cmd_*.c) on the driver's
 * one compile path (driver/driver.h); cli.c parses what every command shares. */
#ifndef MOEC_CLI_H
#define MOEC_CLI_H

#include "../driver/driver.h"

struct ClusterSpec;

typedef struct Command {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
} Command;

int cmd_check(int argc, char **argv);
int cmd_ir(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_grad(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_translate(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

/* A command's own flags: takes argv[*i] (advancing over its value) and returns 1, or 0
 * if it is not one of them, or -1 after printing an error. */
typedef int (*OwnFlags)(int argc, char **argv, int *i, void *ctx);

/* cmd_translate.c: the decoding flags of moec translate and moec eval (--beam, --alpha,
 * --max-len, --rows; translate's second FILE, its sources), an OwnFlags. */
typedef struct DecodeFlags {
  const char *cmd, *sources;
  const Options *o;
  int beam, max_len, rows; /* 0: the default */
  double alpha;            /* < 0: the default */
  bool given;              /* any decoding flag */
} DecodeFlags;
int cli_decode_flags(int argc, char **argv, int *i, void *ctx);
/* Whether f is a translation model (an input over S). */
bool cli_is_translation(const AstFile *f);
/* moec eval of a translation model with its forward program p: perplexity and BLEU on
 * data (NULL: the valid pairs), decoding as fl says. Returns the exit status. */
int cli_eval_pairs(AstFile *f, const Config *cfg, const Options *o, Program *p,
                   const DecodeFlags *fl, const char *data);

/* Parses a command line: the shared options in `which` (driver.h), the command's own
 * (own may be NULL), one FILE into o->path. Returns 0, or the exit status after
 * printing an error (2) or the help (-1: exit 0). */
int cli_parse(int argc, char **argv, Options *o, int which, OwnFlags own, void *ctx,
              void (*usage)(FILE *out));
/* The model of a command that uses a trained model (eval, score, sample, translate), after
 * cli_parse returned *rc: requires --load CKPT, loads o->path into cfg. NULL with o freed
 * and *rc the exit status (2 without --load, 0 after --help). */
AstFile *cli_load_trained(Options *o, Config *cfg, int *rc, void (*usage)(FILE *out));
/* cmd_plan.c, shared with cmd_simulate.c: loads o->path, compiles its training step on
 * the plan's devices (the global graph, bound at the whole batch), and the cost of it
 * under constants k with every device's allocated memory from its own passes. NULL after
 * printing the errors, *rc the exit status. */
Graph *plan_compile(const Options *o, Config *cfg, AstFile **f, McBuf *notes, struct PlanCost *c,
                    const struct CostConsts *k, int *rc);

/* cmd_plan.c: the cost model's constants, each device's step (routed expert rows, kernel
 * and collective time, bytes inside and between nodes) and the busiest device and why. */
void plan_print_step(const Graph *g, const struct PlanCost *c, const char *routing);

/* The routing the cost model assumes (--loads, --skew, or uniform), in words. */
const char *plan_routing_desc(const Options *o, char *buf, size_t n);
/* The cost constants: a cluster's (--cluster, cs filled), else this machine's: moec
 * calibrate's profile (`profile`, or MOEC_PROFILE_DEFAULT when present) over the built-in
 * cpu constants. 0, or the exit status after printing an error. */
int plan_constants(const char *cmd, const char *profile, const char *cluster, struct CostConsts *k,
                   struct ClusterSpec *cs);

/* plan_search.c: moec plan --search. Each candidate re-parses the command line
 * (reparse: 0 on success) and adds its strategy, experts, mesh and recompute. */
typedef struct SearchArgs {
  const char *model, *routing, *write_plan;
  const char *format, *out; /* a picture of the top candidates (dot, svg, png), or NULL */
  int devices, nodes, top;  /* nodes: the physical mesh's (the cluster's, else 1) */
  bool have_loads;          /* measured loads or a skew: the balanced policy is a candidate */
  const int *counts;        /* --search-devices: the counts searched, ascending; NULL: devices */
  int ncounts;
  const struct CostConsts *k;
  int (*reparse)(Options *o, void *ctx);
  void *ctx;
} SearchArgs;
int plan_search(const SearchArgs *s);
/* The nodes of a mesh of `devices` in `nodes` that P of them take, filling the nodes in
 * order: 1 for a node's worth or fewer, else P / (devices / nodes) when that is whole; 0
 * when it is not (a count --search-devices refuses). */
int plan_search_nodes(int devices, int nodes, int P);

/* cmd_simulate.c: a cluster spec ([NODES x] N x DEVICE [: LINK]) as cost constants, its
 * device count and nodes, and a description; false with *why set. */
typedef struct ClusterSpec {
  int devices, nodes, per_node;
  double mem_gib;
  char desc[256];
  const char *device, *node_link, *cluster_link; /* cluster_link NULL: one group */
} ClusterSpec;
bool cli_parse_cluster(const char *spec, ClusterSpec *cs, struct CostConsts *k, char *why,
                       size_t wlen);
/* cmd_calibrate.c: the profile `moec calibrate` writes (JSON): its constants over k's
 * compute and in-process link terms; false with *why set. MOEC_PROFILE_DEFAULT: the
 * path plan and simulate read without --profile, when it exists. */
#define MOEC_PROFILE_DEFAULT "moec-profile.json"
bool cli_read_profile(const char *path, struct CostConsts *k, char *why, size_t wlen);
/* calibrate_kernels.c: the in-situ kernel factors of k (its formulas' constants set) from
 * reference models timed on every core and on one thread (steps a round, the least of
 * `rounds` alternated rounds per instruction), as JSON into json, ratio[j] the
 * models' whole measured step over the modelled one; and their
 * reader (a profile without them: none, true). False: a model did not compile / bad JSON. */
bool cli_calibrate_kernels(struct CostConsts *k, int steps, int rounds, McBuf *json,
                           double ratio[2]);
bool cli_read_kernel_factors(const char *profile_text, struct CostConsts *k);
/* The same on the c->size MPI ranks of c (every rank calls it, k the same on every rank):
 * the reference models on one thread per rank, as many at once as there are cores (k's),
 * and their collectives on all the ranks; into k's one-thread set (kfactor[1], kcall_us[1],
 * kfactor_optim[1], kcoll_us) and as that set's JSON object into json. The reader of that
 * object in a profile's "mpi" section (its "rank_kernels"): false when absent or
 * malformed. */
bool cli_calibrate_ranks(Comm *c, struct CostConsts *k, int steps, int rounds, McBuf *json,
                         double *ratio);
bool cli_read_rank_factors(const char *mpi_section, struct CostConsts *k);
/* The MPI ranks of the profile at path (its "mpi" section, `mpirun -np N moec calibrate
 * --mpi`): their link, latency, per-call terms and one-thread kernel factors into k;
 * false with *why set. */
bool cli_profile_mpi(const char *path, struct CostConsts *k, char *why, size_t wlen);

/* plan_dot.c: the plan as a picture. view: "forward", "backward" or "all"; expand: the
 * layers drawn op by op ("all": every one); loads: measured expert loads (may be NULL). */
typedef struct PlotOpts {
  const char *view;
  const char **expand;
  int nexpand;
  const struct PlanLoads *loads;
} PlotOpts;
void plan_dot(const Graph *g, const struct PlanCost *c, const Config *cfg, const PlotOpts *o,
              McBuf *out);
/* Renders DOT text as format ("svg", "png") into path (NULL: stdout) with Graphviz's
 * library; false with a message in err (moec built without it, a failed layout). */
bool plan_render(const char *dot, const char *format, const char *path, char *err, size_t errlen);
/* DOT text as format ("dot", "svg", "png") to out (NULL: stdout; png needs a file): 0, or
 * the exit status after an error it printed. */
int plan_write_picture(const char *dot, const char *format, const char *out);
/* A search's top candidates side by side in one picture: each added with its title (DOT
 * text, \n between lines) in a cluster of its own, one legend for all (devices P, by
 * the physical mesh's nodes); _end writes the DOT and frees. */
typedef struct PlanDotSearch PlanDotSearch;
PlanDotSearch *plan_dot_search_new(const char *title, int P, int nodes);
void plan_dot_search_add(PlanDotSearch *s, const Graph *g, const struct PlanCost *c,
                         const Config *cfg, const PlotOpts *o, const char *label);
void plan_dot_search_end(PlanDotSearch *s, McBuf *out);

/* The value of --name VALUE or --name=VALUE at argv[*i] (advancing *i), or NULL when
 * argv[*i] is not --name; *bad set when the value is missing (error printed). */
const char *cli_value(int argc, char **argv, int *i, const char *name, const char *cmd, bool *bad);

#endif
