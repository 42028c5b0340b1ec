/* op_profile.c: where a training step of a .moe model spends its time, by layer
 * and by op, by part (gate, dispatch, expert GEMMs, optimizer, other), and the
 * step's GEMM FLOPs and achieved GFLOP/s (to set against OpenBLAS sgemm peak from
 * bench/gemm_peak.c).
 *
 * It compiles FILE the way `moec run` does (passes with autodiff, bound to the
 * train block's batch and unroll, float32 on the cpu backend), initialises the
 * parameters, feeds random token ids and times every instruction of the program
 * and the optimizer's update (rt_optim_step, the train block's optimizer) over
 * several steps. FLOPs are counted for the GEMM-shaped ops (matmul, grouped_matmul,
 * grouped_matmul_dw, grouped_matmul_relu_bwd: 2*M*N*K; lstm/lstm_bwd: the recurrent
 * GEMMs, 2*B*T*4U*U per pass, twice for backward; linear_xent: its logits GEMM,
 * linear_xent_bwd: its two).
 * The last line is one JSON object (ms per step, its parts, GFLOP per step).
 *
 *   scripts/setup     # CMake builds build/op_profile (tests/bench.cmake), or by hand:
 *   cc -O2 -D_GNU_SOURCE -I. -Ibuild -o build/op_profile bench/op_profile.c \
 *      build/libmoeccore.a -lopenblas -lm -lpthread
 *   OPENBLAS_NUM_THREADS=2 build/op_profile [--cpu-time] [--isa avx2] bench/lm_bench.moe \
 *      [steps] [layer]
 *
 * --isa caps the path of the LSTM's packed recurrent GEMMs (runtime/gemm_pack.c; default
 * the CPU's best): avx2 compares like with like against OpenBLAS's Haswell kernels.
 * --cpu-time times with the process's CPU time (CLOCK_PROCESS_CPUTIME_ID) rather
 * than the wall clock: on a loaded machine it counts the work, not the waiting for a
 * core (with MOEC_THREADS=1 it is the one-thread step; with more it sums the threads).
 * --no-fold compiles without the folded expert dW (grouped_matmul_dw writes every expert's
 * dW, the optimizer reads it): the fold's A/B, as moec grad's programs are.
 * (bench/run_lm_bench.sh runs it.) `layer` names the MoE layer to summarise
 * (default: every moe/hmoe layer, found by its w_gate parameter). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codegen/codegen.h"
#include "passes/passes.h"
#include "runtime/profile.h"

typedef struct Acc {
  const char *layer; /* NULL: no layer (loss, gradient sums) */
  int op;
  bool backward;
  double secs, flops;
  long calls;
} Acc;

static double node_flops(const Node *n) {
  switch (n->op) {
  case OP_MATMUL: {
    const Tensor *a = n->in[0];
    int64_t last = a->shape[a->ty.rank - 1];
    int64_t K = n->ia[0] ? a->numel / last : last; /* transA: contraction over rows */
    return 2.0 * (double)n->out[0]->numel * (double)K;
  }
  case OP_GROUPED_MATMUL: {
    const Tensor *x = n->in[0];
    return 2.0 * (double)n->out[0]->numel * (double)x->shape[x->ty.rank - 1];
  }
  case OP_GROUPED_MATMUL_RELU_BWD: { /* (h[R,H], g[R,O], ...): g . W^T, its relu mask aside */
    const Tensor *g = n->in[1];
    return 2.0 * (double)n->out[0]->numel * (double)g->shape[g->ty.rank - 1];
  }
  case OP_GROUPED_MATMUL_DW: { /* (xs[R,K], g[R,M]) -> [E,K,M] */
    const Tensor *x = n->in[0], *g = n->in[1];
    return 2.0 * (double)x->numel * (double)g->shape[g->ty.rank - 1];
  }
  case OP_LSTM: { /* W_hh[4U,U]: h.W_hh^T over B*T */
    const Tensor *w = n->in[1];
    return 2.0 * (double)n->out[0]->numel * (double)w->shape[0];
  }
  case OP_LSTM_BWD: { /* dh.W_hh and dW_hh */
    const Tensor *w = n->in[1];
    return 4.0 * (double)n->in[0]->numel * (double)w->shape[0];
  }
#ifdef MOEC_HAVE_LINEAR_XENT
  case OP_LINEAR_XENT: /* x[N,D] . W[V,D]^T */
    return 2.0 * (double)n->in[0]->numel * (double)n->in[1]->shape[0];
  case OP_LINEAR_XENT_BWD: /* dx and dW */
    return 4.0 * (double)n->in[1]->numel * (double)n->in[2]->shape[0];
#endif
  default:
    return 0;
  }
}

/* The part of a step a node belongs to: its MoE role, else "other". */
enum { PT_GATE, PT_DISPATCH, PT_EXPERTS, PT_OPTIM, PT_OTHER, NPT };
static const char *const part_names[NPT] = {"gate", "dispatch", "expert GEMMs", "optimizer",
                                            "other"};
static const char *const part_keys[NPT] = {"gate", "dispatch", "experts", "optimizer", "other"};

static int node_part(const Node *n) {
  const char *r = n->role ? n->role : "";
  if (!strcmp(r, "gate") || !strcmp(r, "aux")) return PT_GATE;
  if (!strcmp(r, "dispatch") || !strcmp(r, "combine")) return PT_DISPATCH;
  if (!strcmp(r, "experts")) return PT_EXPERTS;
  switch (n->op) {
  case OP_NOISE:
  case OP_TOPK:
    return PT_GATE;
  default:
    return PT_OTHER;
  }
}

static Acc *acc_find(Acc *a, int *na, const Node *n) {
  for (int i = 0; i < *na; i++)
    if (a[i].op == (int)n->op && a[i].backward == n->backward &&
        ((!a[i].layer && !n->layer) || (a[i].layer && n->layer && !strcmp(a[i].layer, n->layer))))
      return &a[i];
  a[*na] = (Acc){.layer = n->layer, .op = (int)n->op, .backward = n->backward};
  return &a[(*na)++];
}

static int by_time(const void *x, const void *y) {
  double a = ((const Acc *)x)->secs, b = ((const Acc *)y)->secs;
  return a < b ? 1 : a > b ? -1 : 0;
}

static bool use_cpu_time;

/* seconds: the wall clock, or the process's CPU time (--cpu-time) */
static double now(void) {
  return use_cpu_time ? mc_cpu_now() : mc_now();
}

int main(int argc, char **argv) {
  bool fold = true;
  for (;;) {
    if (argc > 1 && !strcmp(argv[1], "--cpu-time"))
      use_cpu_time = true;
    else if (argc > 1 && !strcmp(argv[1], "--no-fold")) /* the few-row dW not folded */
      fold = false;
    else if (argc > 2 && !strcmp(argv[1], "--isa")) { /* the packed GEMMs' widest path */
      int cap = !strcmp(argv[2], "portable") ? RT_ISA_PORTABLE
                : !strcmp(argv[2], "avx2")   ? RT_ISA_AVX2
                : !strcmp(argv[2], "avx512") ? RT_ISA_AVX512
                                             : -1;
      if (cap < 0) {
        fprintf(stderr, "op_profile: --isa takes portable, avx2 or avx512, not '%s'\n", argv[2]);
        return 2;
      }
      rt_gemm_pack_isa(cap);
      argv++;
      argc--;
    } else
      break;
    argv++;
    argc--;
  }
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fprintf(stderr, "usage: op_profile [--cpu-time] [--no-fold] [--isa portable|avx2|avx512] "
                    "FILE.moe [steps (default 10)] [moe-layer]\n");
    return 2;
  }
  const char *nt = getenv("MOEC_THREADS"); /* as moec's command line reads it */
  if (nt && atoi(nt) >= 1) rt_threads_set(MC_MIN(atoi(nt), RT_MAX_THREADS));
  int steps = argc > 2 ? atoi(argv[2]) : 10;
  const char *want = argc > 3 ? argv[3] : NULL;
  if (steps < 1) steps = 1;

  size_t len = 0;
  char *text = mc_read_file(argv[1], &len);
  if (!text) {
    perror(argv[1]);
    return 1;
  }
  Source src = {.path = argv[1], .text = text, .len = len};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  Config cfg;
  fe_config_defaults(&cfg);
  if (d.errors == 0) fe_sema(f, &cfg, &d);
  if (d.errors) return 1;

  Graph *g = ir_build(f, &cfg);
  PassCtx pc = {.cfg = &cfg, .devices = 1, .training = true, .fold_dw = fold};
  pass_run_all(g, &pc, NULL, NULL);
  ir_bind(g, cfg.batch, cfg.unroll);
  Program *p = cg_lower(g, PREC_F32);

  /* every instruction and the optimizer timed over the steps (runtime/profile.c) */
  RtProfile prof = rt_profile_steps(p, &cfg, steps, now, NULL);
  Acc *acc = mc_calloc((size_t)p->ninstrs, sizeof(Acc));
  int nacc = 0;
  double total = 0, optim = prof.optim_s, parts[NPT] = {0}, step_flops = 0;
  for (int k = 0; k < p->ninstrs; k++) {
    const Node *n = p->instrs[k].node;
    double dt = prof.instr_s[k];
    Acc *a = acc_find(acc, &nacc, n);
    a->secs += dt;
    a->flops += node_flops(n) * steps;
    a->calls += steps;
    total += dt;
    parts[node_part(n)] += dt;
    step_flops += node_flops(n);
  }
  rt_profile_free(&prof);
  parts[PT_OPTIM] = optim;

  double tokens = (double)cfg.batch * cfg.unroll;
  double step = (total + optim) / steps;
  printf("op_profile: %s: B=%d T=%d, %d instructions, %d timed steps, %d threads: %.1f ms/step "
         "(instructions %.1f, optimizer %.1f%s): %.0f tokens/s; GEMM work %.2f GFLOP a step, "
         "%.1f GFLOP/s over the step; OpenBLAS %s kernels; LSTM recurrence %s\n",
         argv[1], cfg.batch, cfg.unroll, p->ninstrs, steps, rt_threads(), step * 1e3,
         total / steps * 1e3, optim / steps * 1e3, use_cpu_time ? "; CPU time" : "", tokens / step,
         step_flops / 1e9, step_flops / step / 1e9, rt_blas_core(),
         rt_gemm_pack_isa_name(rt_gemm_pack_isa(-1)));
  printf("op_profile: parts (ms/step):");
  for (int i = 0; i < NPT; i++)
    printf("%s %s %.2f", i ? "," : "", part_names[i], parts[i] / steps * 1e3);
  printf("\n");

  /* by layer */
  printf("\n%-12s %10s %7s %10s\n", "layer", "ms/step", "share", "GFLOP/s");
  const char *seen[256];
  int nseen = 0;
  for (int i = 0; i < nacc && nseen < 256; i++) {
    const char *l = acc[i].layer ? acc[i].layer : "(none)";
    bool dup = false;
    for (int j = 0; j < nseen; j++)
      dup |= !strcmp(seen[j], l);
    if (dup) continue;
    seen[nseen++] = l;
    double secs = 0, fl = 0;
    for (int j = 0; j < nacc; j++)
      if (!strcmp(acc[j].layer ? acc[j].layer : "(none)", l)) {
        secs += acc[j].secs;
        fl += acc[j].flops;
      }
    printf("%-12s %10.2f %6.1f%% %10.1f\n", l, secs / steps * 1e3, 100 * secs / total,
           secs > 0 ? fl / secs / 1e9 : 0);
  }

  /* top ops */
  qsort(acc, (size_t)nacc, sizeof(Acc), by_time);
  printf("\n%-12s %-22s %-4s %10s %7s %10s\n", "layer", "op", "pass", "ms/step", "share",
         "GFLOP/s");
  for (int i = 0; i < nacc && i < 25; i++)
    printf("%-12s %-22s %-4s %10.2f %6.1f%% %10.1f\n", acc[i].layer ? acc[i].layer : "(none)",
           ir_ops[acc[i].op].name, acc[i].backward ? "bwd" : "fwd", acc[i].secs / steps * 1e3,
           100 * acc[i].secs / total, acc[i].secs > 0 ? acc[i].flops / acc[i].secs / 1e9 : 0);

  /* the MoE layers */
  for (int i = 0; i < g->nparams; i++) {
    const char *nm = g->params[i]->name;
    const char *dot = strrchr(nm, '.');
    if (!dot || strcmp(dot, ".w_gate") || strchr(nm, '.') != dot) continue;
    char layer[128];
    snprintf(layer, sizeof layer, "%.*s", (int)(dot - nm), nm);
    if (want && strcmp(want, layer)) continue;
    double secs = 0, fl = 0, gsecs = 0, gfl = 0;
    for (int j = 0; j < nacc; j++) {
      if (!acc[j].layer || strcmp(acc[j].layer, layer)) continue;
      secs += acc[j].secs;
      fl += acc[j].flops;
      if (acc[j].op == OP_GROUPED_MATMUL || acc[j].op == OP_GROUPED_MATMUL_DW ||
          acc[j].op == OP_GROUPED_MATMUL_RELU_BWD) {
        gsecs += acc[j].secs;
        gfl += acc[j].flops;
      }
    }
    printf("\nop_profile: MoE layer '%s': %.2f ms/step (%.1f%% of the step), %.2f GFLOP a step: "
           "%.1f GFLOP/s over the whole layer; expert GEMMs alone %.1f GFLOP/s (%.2f ms/step)\n",
           layer, secs / steps * 1e3, 100 * secs / total, fl / steps / 1e9,
           secs > 0 ? fl / secs / 1e9 : 0, gsecs > 0 ? gfl / gsecs / 1e9 : 0, gsecs / steps * 1e3);
  }
  printf("{\"ms_step\":%.3f,\"tokens_per_s\":%.1f,\"gemm_gflop\":%.4f,\"threads\":%d", step * 1e3,
         tokens / step, step_flops / 1e9, rt_threads());
  for (int i = 0; i < NPT; i++)
    printf(",\"ms_%s\":%.3f", part_keys[i], parts[i] / steps * 1e3);
  printf("}\n");
  return 0;
}
