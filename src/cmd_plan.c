/* cmd_plan.c: `moec plan FILE [settings] [--format text|json|dot|svg|png]`: the placement plan
 * (docs/placement.md). The training graph compiled as a run compiles it (driver:
 * every pass on the plan's devices, bound at the global batch), and printed: ops
 * grouped by layer with their devices and partitioning, every collective with its bytes
 * per step, the recompute segments and what they trade, the fused groups, per device
 * what its program allocates (its own passes: drv_device_memory) beside the estimate,
 * FLOPs, the cost model's constants and its step-time estimate. plan_compile is shared
 * with `moec simulate` (cmd_simulate.c) and `--search` (plan_search.c). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../passes/fusion.h"
#include "cli.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: moec plan FILE [settings] [--format text|json|dot|svg|png] [-o FILE]\n"
          "       moec plan FILE --search [settings] [--search-devices LIST|all] [--top K]\n"
          "                 [--write-plan FILE] [--format dot|svg|png -o FILE]\n\n"
          "The placement plan of FILE's training step over its devices: every op with its\n"
          "devices and partitioning, every collective with its bytes per step, the\n"
          "recomputed segments with the memory and FLOPs they trade, the fused groups, per\n"
          "device what its program allocates (persistent, arena, optimizer: the figures of\n"
          "the same compile `moec run` makes) beside the estimate, FLOPs, and an estimated\n"
          "step time from a cost model whose constants are printed.\n\n"
          "options:\n"
          "  --format F         text (default), json (one object), or a picture: dot, svg,\n"
          "                     png (a box per layer and device set, filled with its\n"
          "                     devices' colours; MoE layers with their expert -> device\n"
          "                     map; collectives with their bytes; a legend)\n"
          "  -o FILE            write the picture (or DOT) to FILE (png: required)\n"
          "  --view V           forward (default), backward or all: the other half as one box\n"
          "  --expand LAYER     draw LAYER op by op (all: every layer); repeatable\n"
          "  --search           every strategy x expert policy x mesh x recompute choice,\n"
          "                     ranked by predicted step time (a table; with --format dot,\n"
          "                     svg or png the top candidates side by side, 3 unless --top)\n"
          "  --search-devices L with --search, on each device count of L (1,2,4 or all: 1,\n"
          "                     2, 4, ... and the plan's count); each count on the first of\n"
          "                     the plan's (or cluster's) nodes it needs\n"
          "  --top K            the K best (table and picture)\n"
          "  --memory [N]       after the text, the arena of the device that allocates the\n"
          "                     most: the node where the most bytes are alive and its N\n"
          "                     largest tensors (12 unless N): op, shape, MiB, lifetime\n"
          "  --write-plan FILE  the winner as a plan { } block\n"
          "  --mpi              the devices are MPI ranks (mpirun): the profile's MPI\n"
          "                     kernels and collectives (mpirun -np 2 moec calibrate --mpi)\n\n"
          "settings (each overrides the train/plan setting of the same name):\n");
  drv_options_help(out, DRV_SETTINGS | DRV_LOADS);
}

static const char *part_name(PartKind p) {
  static const char *n[] = {"-", "replicated", "batch", "experts", "partial", "rows"};
  return n[p];
}

static const char *where(const Node *n, char *buf, size_t len) {
  if (n->device >= 0)
    snprintf(buf, len, "%d", n->device);
  else if (n->ndevices > 0) {
    size_t o = 0;
    for (int i = 0; i < n->ndevices && o + 8 < len; i++)
      o += (size_t)snprintf(buf + o, len - o, "%s%d", i ? "," : "", n->devices[i]);
  } else if (n->nout > 0 && n->out[0]->part == PART_EXPERTS)
    snprintf(buf, len, "experts");
  else
    snprintf(buf, len, "all");
  return buf;
}

static double mib(double b) {
  return b / 1048576.0;
}

/* ---------------------------------------------------------------- recompute, fusion */

typedef struct FuseInfo {
  int groups, members; /* fused nodes, ops inside them */
  int calls_after;     /* kernel calls per step: one per node (codegen/lower.c) */
  int calls_before;    /* the same without fusion */
} FuseInfo;

static FuseInfo fuse_info(const Graph *g) {
  FuseInfo fi = {0};
  for (int k = 0; k < g->nnodes; k++) {
    const FusedProg *p = ir_fused_prog(g->nodes[k]);
    if (!p) continue;
    fi.groups++;
    fi.members += p->nops;
  }
  fi.calls_after = g->nnodes;
  fi.calls_before = g->nnodes - fi.groups + fi.members;
  return fi;
}

static void print_fusion_text(const Graph *g, bool enabled) {
  FuseInfo fi = fuse_info(g);
  printf("\nfused groups: %d (%d elementwise ops); kernel calls per step %d -> %d%s\n", fi.groups,
         fi.members, fi.calls_before, fi.calls_after,
         enabled ? "" : " (fusion off: --no-fuse, fuse = false, MOEC_FUSE=0 or no LLVM)");
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    const FusedProg *p = ir_fused_prog(n);
    if (!p) continue;
    printf("  %s n%-4d %-10s %2d ops:", n->backward ? "bwd" : "fwd", n->id,
           n->layer ? n->layer : "(model)", p->nops);
    for (int i = 0; i < p->nops; i++)
      printf(" %s", ir_ops[p->ops[i].op].name);
    printf("  -> %d output%s\n", p->nout, p->nout == 1 ? "" : "s");
  }
}

/* The cost model's constants, then per device its routed expert rows, kernel and
 * collective time and bytes on each kind of link, the busiest device and why. */
void plan_print_step(const Graph *g, const PlanCost *c, const char *routing) {
  const CostConsts *k = &c->k;
  int P = c->devices;
  printf("\ncost model (%s): %.4g GFLOP/s per device", k->name, k->gflops);
  if (k->gemm_half > 0) printf(", a GEMM at s/(s+%.3g) of it (s: its smallest side)", k->gemm_half);
  if (k->elem_gbs > 0) printf(", elementwise %.3g GB/s", k->elem_gbs);
  if (k->launch_us > 0) printf(", %.3g us a kernel call", k->launch_us);
  if (k->dram_gbs > 0 && k->llc_bytes > 0)
    printf(", memory %.3g GB/s past a %.3g MiB cache", k->dram_gbs, k->llc_bytes / 1048576);
  int j = plan_kernel_set(k, P);
  if (k->kfactor[j][OP_MATMUL] > 0)
    printf(", each op's time x its measured in-situ factor (matmul %.3g, %s), %.3g us a call",
           k->kfactor[j][OP_MATMUL], j ? "one thread" : "every core", k->kcall_us[j]);
  printf("; link %.4g GB/s, %.3g us a collective step", k->link_gbs, k->latency_us);
  if (k->per_node > 0 && k->per_node < P)
    printf("; nodes of %d, %.4g GB/s and %.3g us between them", k->per_node,
           k->inter_gbs > 0 ? k->inter_gbs : k->link_gbs,
           k->inter_latency_us > 0 ? k->inter_latency_us : k->latency_us);
  printf("\n  routing: %s\n", routing && *routing ? routing : "uniform");
  printf("\nstep per device (ms; expert rows: routed rows its experts compute a step, all MoE "
         "layers; MiB its collectives move inside a node / between nodes)\n");
  printf("  %6s %12s %7s %10s %10s %10s %10s %10s\n", "device", "expert rows", "x mean", "compute",
         "comm", "total", "MiB intra", "MiB inter");
  for (int d = 0; d < P; d++) {
    const DeviceCost *dc = &c->dev[d];
    printf("  %6d %12.0f %7.3f %10.3f %10.3f %10.3f %10.3f %10.3f%s\n", d, dc->expert_rows,
           c->mean_expert_rows > 0 ? dc->expert_rows / c->mean_expert_rows : 1, dc->compute_s * 1e3,
           dc->comm_s * 1e3, (dc->compute_s + dc->comm_s) * 1e3, mib(dc->intra_bytes),
           mib(dc->inter_bytes), d == c->busiest && P > 1 ? "  busiest" : "");
  }
  if (P > 1) {
    const DeviceCost *b = &c->dev[c->busiest];
    printf("  busiest: device %d, %.3f ms (kernels %.3f, collectives %.3f): its experts get "
           "%.1f%% of the routed rows (%.3gx the mean), it moves %.3f MiB (%.3f MiB between "
           "nodes)\n",
           c->busiest, (b->compute_s + b->comm_s) * 1e3, b->compute_s * 1e3, b->comm_s * 1e3,
           100 * b->route_share, c->mean_expert_rows > 0 ? b->expert_rows / c->mean_expert_rows : 1,
           mib(b->intra_bytes + b->inter_bytes), mib(b->inter_bytes));
  }
  (void)g;
  printf("  step time ~ %.3f ms = kernels %.3f ms + collectives %.3f ms (each phase between "
         "collectives, and each collective, at its slowest device; no overlap)\n",
         c->step_s * 1e3, c->compute_s * 1e3, c->comm_s * 1e3);
}

static void print_text(const Graph *g, const PlanCost *c, const char *strategy, const char *policy,
                       bool fuse, const char *notes, const char *routing) {
  char buf[256];
  int P = c->devices;
  printf("plan %s: %d device%s, strategy %s, experts %s, B = %lld, T = %lld (global batch)\n",
         g->name, P, P > 1 ? "s" : "", strategy, policy, (long long)g->B, (long long)g->T);
  printf("\nops by layer (devices: all = every device on its batch slice; experts = each "
         "device on its own experts; GFLOP: all devices together)\n");
  printf("  %-10s %-9s %5s %5s  %-10s %-26s %10s\n", "layer", "role", "fwd", "bwd", "devices",
         "outputs", "GFLOP/step");
  /* one row per (layer, role, devices), in order of first appearance */
  bool *seen = mc_calloc((size_t)g->nnodes, sizeof(bool));
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (seen[k] || (ir_ops[n->op].flags & OPF_COLLECTIVE)) continue;
    int fw = 0, bw = 0;
    unsigned parts = 0;
    double fl = 0;
    char w0[64], w1[64], pb[64] = "";
    where(n, w0, sizeof w0);
    for (int q = k; q < g->nnodes; q++) {
      const Node *m = g->nodes[q];
      if (seen[q] || (ir_ops[m->op].flags & OPF_COLLECTIVE)) continue;
      bool same = (m->layer == n->layer || (m->layer && n->layer && !strcmp(m->layer, n->layer))) &&
                  (m->role == n->role || (m->role && n->role && !strcmp(m->role, n->role))) &&
                  !strcmp(where(m, w1, sizeof w1), w0);
      if (!same) continue;
      seen[q] = true;
      fw += !m->backward;
      bw += m->backward;
      fl += plan_node_flops(m);
      for (int j = 0; j < m->nout; j++)
        parts |= 1u << m->out[j]->part;
    }
    for (int p = 1; p <= PART_ROWS; p++)
      if (parts & (1u << p))
        snprintf(pb + strlen(pb), sizeof pb - strlen(pb), "%s%s", pb[0] ? "," : "",
                 part_name((PartKind)p));
    printf("  %-10s %-9s %5d %5d  %-10s %-26s %10.4f\n", n->layer ? n->layer : "(model)",
           n->role ? n->role : "-", fw, bw, w0, pb[0] ? pb : "-", fl / 1e9);
  }
  mc_free(seen);
  printf("\nparameters\n");
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    printf("  %-22s %-20s %-10s %s\n", t->name, type_str(&t->ty, buf, sizeof buf),
           part_name(t->part),
           t->part == PART_EXPERTS ? "gradient stays on its device"
           : t->part == PART_ROWS  ? "rows sharded over the devices, gradient to their owners"
           : t->grad && t->grad->producer && t->grad->producer->op == OP_ALL_REDUCE
               ? "gradient all-reduced"
               : "");
  }
  if (g->moe_expert_dev) {
    printf("\nexpert -> device\n");
    for (int m = 0; m < g->nmoe; m++) {
      printf("  %s:", g->moe_names[m]);
      for (int e = 0; e < g->moe_nexperts[m]; e++)
        printf(" %d", g->moe_expert_dev[m][e]);
      printf("\n");
    }
    /* hmoe's two-level exchange: the device each group's rows travel to first */
    for (int m = 0; m < g->nmoe; m++) {
      if (!g->moe_group_dev || !g->moe_group_dev[m] || g->moe_ngroups[m] <= 0) continue;
      printf("  %s groups:", g->moe_names[m]);
      for (int q = 0; q < g->moe_ngroups[m]; q++)
        printf(" %d", g->moe_group_dev[m][q]);
      printf("\n");
    }
  }
  printf("\ncollectives per step (expected = uniform routing, remote rows (P-1)/P; upper = "
         "every row remote)\n");
  int nc = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (!(ir_ops[n->op].flags & OPF_COLLECTIVE)) continue;
    CommBytes b = pass_comm_bytes(g, n);
    bool sum = n->op == OP_ALL_REDUCE || n->op == OP_SPARSE_ALL_REDUCE;
    char name[256]; /* an all-to-all's rows, and those that travel with them (hmoe) */
    int w = snprintf(name, sizeof name, "%s", sum ? n->out[0]->name : n->in[0]->name);
    for (int i = 2; !sum && i < n->nin && w > 0 && (size_t)w < sizeof name; i++)
      w += snprintf(name + w, sizeof name - (size_t)w, " + %s", n->in[i]->name);
    printf("  %s n%-4d %-16s %-34s %-16s expected %10.3f MiB  upper %10.3f MiB  per device "
           "%9.3f MiB\n",
           n->backward ? "bwd" : "fwd", n->id, ir_ops[n->op].name, name,
           type_str(&n->in[0]->ty, buf, sizeof buf), mib((double)b.expected), mib((double)b.upper),
           mib((double)b.per_device));
    nc++;
  }
  if (!nc) printf("  (none: one device)\n");
  printf("  total expected %.3f MiB, upper %.3f MiB per step\n", mib(c->comm_bytes_expected),
         mib(c->comm_bytes_upper));
  printf("\n");
  if (P > 1)
    printf("device 0, as allocated (%lld of the %lld rows, its experts, expert rows x %d): ",
           (long long)c->rows_per_device, (long long)g->B, P);
  Type *save = plan_device_shapes((Graph *)g, 0, P, g->B, g->T);
  pass_recompute_report(g, c->rows_per_device, g->T, sizeof(float), stdout);
  plan_restore_shapes((Graph *)g, save);
  print_fusion_text(g, fuse);
  printf("\nper device (MiB; GFLOP per step, forward + backward)\n"
         "  allocated: the memory plan at %lld rows x T = %lld, f32, as the runtime allocates "
         "it: persistent (params, inputs, state) + arena (activations, gradients) + optimizer "
         "state%s\n"
         "  estimate: params + grads + optimizer + activations kept for backward, at the "
         "device's share\n",
         (long long)c->rows_per_device, (long long)g->T,
         P > 1 ? "; its own experts' parameters, gradients and optimizer state, expert-row "
                 "buffers for every device's rows (or, sized per step, their slots: rows)"
               : "");
  printf("  %6s %7s %10s | %10s %10s %10s %10s | %10s %12s %10s | %10s\n", "device", "experts",
         "params", "persistent", "arena", "optimizer", "allocated", "grads", "activations",
         "estimate", "GFLOP");
  for (int d = 0; d < P; d++) {
    const DeviceCost *dc = &c->dev[d];
    double est = dc->param_bytes + dc->grad_bytes + dc->optim_bytes + dc->act_bytes;
    printf("  %6d %7d %10.3f | %10.3f %10.3f %10.3f %10.3f | %10.3f %12.3f %10.3f | %10.4f\n", d,
           dc->nexperts, mib(dc->param_bytes), mib(dc->persist_bytes), mib(dc->arena_bytes),
           mib(dc->optim_alloc_bytes), mib(dc->planned_bytes), mib(dc->grad_bytes),
           mib(dc->act_bytes), mib(est), dc->flops / 1e9);
  }
  printf("  arena lower bound (most bytes alive at once): %.3f MiB\n", mib(c->live_max));
  if (P > 1 && c->dev[0].rows_margin_bytes > 0) {
    printf("  expert rows sized per step (in their slots in the arena, x%.2f the fair share; "
           "apart from it, in allocated, where this routing outgrows them: their region at "
           "the expected rows x%.2f, at most every route's):\n  %6s %10s %10s %10s\n",
           PLAN_ROWS_MARGIN, PLAN_ROWS_MARGIN, "device", "expected", "margin", "apart");
    for (int d = 0; d < P; d++)
      printf("  %6d %10.3f %10.3f %10.3f\n", d, mib(c->dev[d].rows_bytes),
             mib(c->dev[d].rows_margin_bytes), mib(c->dev[d].rows_apart_bytes));
  }
  plan_print_step(g, c, routing);
  if (notes && *notes) printf("\n%s", notes);
}

static void json_str(const char *s) {
  McBuf b = {0};
  mc_buf_json_string(&b, s ? s : "");
  fputs(b.data, stdout);
  mc_buf_free(&b);
}

/* At one device's rows and shapes, as the runtime allocates them. */
static void print_json_recompute(const Graph *g, int64_t B, int P) {
  Type *save = plan_device_shapes((Graph *)g, 0, P, g->B, g->T); /* device 0 as allocated */
  RecomputeSummary rs = pass_recompute_summary(g, B, g->T, sizeof(float));
  printf(",\n \"recompute\": {\"rows\": %lld, \"segments\": %d, \"nodes_repeated\": %d, \"flops\": "
         "%.0f, "
         "\"forward_flops\": %.0f, \"dropped_bytes\": %lld, \"arena_bytes\": %lld, "
         "\"arena_without_bytes\": %lld, \"saved_bytes\": %lld, \"live_max_bytes\": %lld, "
         "\"live_max_without_bytes\": %lld, \"segs\": [",
         (long long)B, rs.nseg, rs.nclones, rs.flops, rs.fwd_flops, (long long)rs.dropped,
         (long long)rs.with.arena, (long long)rs.without.arena,
         (long long)(rs.without.arena - rs.with.arena), (long long)rs.with.live_max,
         (long long)rs.without.live_max);
  bool *d = pass_recompute_dropped(g);
  for (int seg = 0; seg < rs.nseg; seg++) {
    const char *layer = "?";
    double fl = 0, bytes = 0;
    int nodes = 0;
    for (int k = 0; k < g->nnodes; k++) {
      const Node *n = g->nodes[k];
      if (n->recompute_of && n->recompute_seg == seg) {
        layer = n->layer ? n->layer : "?";
        fl += pass_node_flops(n, B, g->T);
        nodes++;
      } else if (!n->backward && n->recompute_seg == seg) {
        for (int j = 0; j < n->nout; j++)
          if (d[n->out[j]->id]) {
            double ne = 1;
            for (int q = 0; q < n->out[j]->ty.rank; q++)
              ne *= (double)dim_eval(n->out[j]->ty.dim[q], B, g->T);
            bytes += 4.0 * ne;
          }
      }
    }
    printf("%s{\"layer\": ", seg ? ", " : "");
    json_str(layer);
    printf(", \"nodes\": %d, \"flops\": %.0f, \"dropped_bytes\": %.0f}", nodes, fl, bytes);
  }
  mc_free(d);
  plan_restore_shapes((Graph *)g, save);
  printf("]}");
}

static void print_json_fusion(const Graph *g) {
  FuseInfo fi = fuse_info(g);
  printf(",\n \"fusion\": {\"groups\": %d, \"ops_fused\": %d, \"kernel_calls_before\": %d, "
         "\"kernel_calls_after\": %d, \"fused\": [",
         fi.groups, fi.members, fi.calls_before, fi.calls_after);
  int i = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    const FusedProg *p = ir_fused_prog(n);
    if (!p) continue;
    printf("%s\n  {\"id\": %d, \"layer\": ", i++ ? "," : "", n->id);
    json_str(n->layer);
    printf(", \"backward\": %s, \"outputs\": %d, \"ops\": [", n->backward ? "true" : "false",
           p->nout);
    for (int q = 0; q < p->nops; q++)
      printf("%s\"%s\"", q ? ", " : "", ir_ops[p->ops[q].op].name);
    printf("]}");
  }
  printf("]}");
}

static void print_json(const Graph *g, const PlanCost *c, const char *strategy, const char *policy,
                       const char *notes) {
  char buf[256];
  printf("{\"model\": ");
  json_str(g->name);
  printf(", \"devices\": %d, \"strategy\": ", c->devices);
  json_str(strategy);
  printf(", \"experts\": ");
  json_str(policy);
  printf(", \"B\": %lld, \"T\": %lld,\n \"ops\": [", (long long)g->B, (long long)g->T);
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    printf("%s\n  {\"id\": %d, \"op\": \"%s\", \"layer\": ", k ? "," : "", n->id,
           ir_ops[n->op].name);
    json_str(n->layer);
    printf(", \"role\": ");
    json_str(n->role);
    printf(", \"backward\": %s, \"devices\": \"%s\", \"part\": \"%s\", \"flops\": %.0f",
           n->backward ? "true" : "false", where(n, buf, sizeof buf),
           part_name(n->nout ? n->out[0]->part : PART_NONE), plan_node_flops(n));
    if (ir_ops[n->op].flags & OPF_COLLECTIVE) {
      CommBytes b = pass_comm_bytes(g, n);
      printf(", \"collective\": {\"tensor\": ");
      json_str(n->in[0]->name);
      printf(", \"payload\": %lld, \"expected\": %lld, \"upper\": %lld, \"per_device\": %lld}",
             (long long)b.payload, (long long)b.expected, (long long)b.upper,
             (long long)b.per_device);
    }
    printf("}");
  }
  printf("],\n \"params\": [");
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    printf("%s\n  {\"name\": ", i ? "," : "");
    json_str(t->name);
    printf(", \"type\": \"%s\", \"part\": \"%s\", \"grad_all_reduced\": %s}",
           type_str(&t->ty, buf, sizeof buf), part_name(t->part),
           t->grad && t->grad->producer &&
                   (t->grad->producer->op == OP_ALL_REDUCE ||
                    t->grad->producer->op == OP_SPARSE_ALL_REDUCE)
               ? "true"
               : "false");
  }
  printf("],\n \"expert_devices\": {");
  for (int m = 0; g->moe_expert_dev && m < g->nmoe; m++) {
    printf("%s", m ? ", " : "");
    json_str(g->moe_names[m]);
    printf(": [");
    for (int e = 0; e < g->moe_nexperts[m]; e++)
      printf("%s%d", e ? ", " : "", g->moe_expert_dev[m][e]);
    printf("]");
  }
  printf("},\n \"per_device\": [");
  for (int d = 0; d < c->devices; d++) {
    const DeviceCost *dc = &c->dev[d];
    printf("%s\n  {\"device\": %d, \"experts\": %d, \"param_bytes\": %.0f, \"grad_bytes\": %.0f, "
           "\"optimizer_bytes\": %.0f, \"activation_bytes\": %.0f, \"estimate_bytes\": %.0f, "
           "\"persist_bytes\": %.0f, \"arena_bytes\": %.0f, \"optimizer_allocated_bytes\": %.0f, "
           "\"planned_bytes\": %.0f, \"param_allocated_bytes\": %.0f, \"flops\": %.0f, "
           "\"expert_rows\": %.0f, \"route_share\": %.6g, \"compute_s\": %.9g, \"comm_s\": "
           "%.9g, \"intra_bytes\": %.0f, \"inter_bytes\": %.0f, \"rows_bytes\": %.0f, "
           "\"rows_margin_bytes\": %.0f, \"rows_apart_bytes\": %.0f}",
           d ? "," : "", d, dc->nexperts, dc->param_bytes, dc->grad_bytes, dc->optim_bytes,
           dc->act_bytes, dc->param_bytes + dc->grad_bytes + dc->optim_bytes + dc->act_bytes,
           dc->persist_bytes, dc->arena_bytes, dc->optim_alloc_bytes, dc->planned_bytes,
           dc->param_alloc_bytes, dc->flops, dc->expert_rows, dc->route_share, dc->compute_s,
           dc->comm_s, dc->intra_bytes, dc->inter_bytes, dc->rows_bytes, dc->rows_margin_bytes,
           dc->rows_apart_bytes);
  }
  printf("],\n \"memory\": {\"rows_per_device\": %lld, \"T\": %lld, \"elem\": 4, "
         "\"arena_lower_bound\": %.0f, \"max_planned_bytes\": %.0f}",
         (long long)c->rows_per_device, (long long)g->T, c->live_max, c->max_planned);
  print_json_recompute(g, c->rows_per_device, c->devices);
  print_json_fusion(g);
  printf(",\n \"comm_bytes_expected\": %.0f, \"comm_bytes_upper\": %.0f,\n", c->comm_bytes_expected,
         c->comm_bytes_upper);
  printf(
      " \"cost_model\": {\"name\": \"%s\", \"gflops\": %g, \"link_gbs\": %g, \"latency_us\": %g, "
      "\"gemm_half\": %g, \"elem_gbs\": %g, \"dram_gbs\": %g, \"llc_bytes\": %g, "
      "\"launch_us\": %g, \"per_node\": %d, "
      "\"inter_gbs\": %g, \"compute_s\": %.9g, \"comm_s\": %.9g, \"step_s\": %.9g, "
      "\"busiest\": %d},\n \"notes\": ",
      c->k.name, c->k.gflops, c->k.link_gbs, c->k.latency_us, c->k.gemm_half, c->k.elem_gbs,
      c->k.dram_gbs, c->k.llc_bytes, c->k.launch_us, c->k.per_node, c->k.inter_gbs, c->compute_s, c->comm_s, c->step_s,
      c->busiest);
  json_str(notes);
  printf("}\n");
}

Graph *plan_compile(const Options *o, Config *cfg, AstFile **f, McBuf *notes, PlanCost *c,
                    const CostConsts *k, int *rc) {
  *f = drv_load(o, cfg, rc);
  if (!*f) return NULL;
  *rc = 1;
  const int P = cfg->devices;
  Target t = {.devices = P, .rank = -1, .training = true, .prec = PREC_F32, .fold_dw = true};
  Graph *g = drv_compile_graph(*f, cfg, o, &t, notes);
  if (!g) {
    fe_ast_free(*f);
    *f = NULL;
    return NULL;
  }
  CostConsts km = *k;
  if (km.per_node <= 0 && cfg->mesh_nodes > 1) { /* the mesh's nodes: their bytes apart */
    km.per_node = cfg->mesh_per_node;
    km.inter_gbs = km.link_gbs;
    km.inter_latency_us = km.latency_us;
  }
  PlanLoads *loads = NULL;
  if (o->loads_path) {
    const char *err = NULL;
    loads = plan_read_loads(o->loads_path, &err); /* read once already: it parses */
  }
  *c = plan_cost_routed(g, P, cfg->optimizer, &km, loads, o->zipf);
  plan_free_loads(loads);
  for (int d = 0; d < P; d++) { /* what each device's own compile allocates */
    DeviceMemory m = drv_device_memory(g, cfg, o, d, P, c->dev[d].rows_scale);
    plan_cost_set_memory(c, d, (double)m.persist, (double)m.arena, (double)m.optimizer,
                         (double)m.params, (double)m.live_max);
    plan_cost_set_rows(c, d, (double)m.rows_expected, (double)m.rows_worst, m.rows_outgrow);
  }
  return g;
}

typedef struct PlanFlags {
  const char *format, *out, *view;
  const char *expand[64];
  int nexpand;
  bool search, mpi;
  int top, memory;
  const char *write_plan, *profile, *cluster, *search_devices;
} PlanFlags;

static int plan_flags(int argc, char **argv, int *i, void *ctx) {
  PlanFlags *a = ctx;
  bool bad = false;
  const char *v;
  if ((v = cli_value(argc, argv, i, "--format", "plan", &bad))) {
    if (strcmp(v, "text") && strcmp(v, "json") && strcmp(v, "dot") && strcmp(v, "svg") &&
        strcmp(v, "png")) {
      fprintf(stderr, "moec plan: error: unknown format '%s' (text, json, dot, svg, png)\n", v);
      return -1;
    }
    a->format = v;
  } else if ((v = cli_value(argc, argv, i, "-o", "plan", &bad)) ||
             (v = cli_value(argc, argv, i, "--output", "plan", &bad))) {
    a->out = v;
  } else if (!strcmp(argv[*i], "--search")) {
    a->search = true;
  } else if (!strcmp(argv[*i], "--mpi")) {
    a->mpi = true;
  } else if (!strcmp(argv[*i], "--memory")) {
    a->memory = 12;
    char *end;
    long t = *i + 1 < argc ? strtol(argv[*i + 1], &end, 10) : 0;
    if (*i + 1 < argc && end != argv[*i + 1] && !*end) {
      if (t < 1 || t > 100000) {
        fprintf(stderr, "moec plan: error: --memory takes a count >= 1, not '%s'\n", argv[*i + 1]);
        return -1;
      }
      a->memory = (int)t;
      ++*i;
    }
  } else if ((v = cli_value(argc, argv, i, "--top", "plan", &bad))) {
    char *end;
    long t = strtol(v, &end, 10);
    if (end == v || *end || t < 1 || t > 100000) {
      fprintf(stderr, "moec plan: error: --top needs a count >= 1, not '%s'\n", v);
      return -1;
    }
    a->top = (int)t;
  } else if ((v = cli_value(argc, argv, i, "--search-devices", "plan", &bad))) {
    a->search_devices = v;
  } else if ((v = cli_value(argc, argv, i, "--write-plan", "plan", &bad))) {
    a->write_plan = v;
  } else if ((v = cli_value(argc, argv, i, "--profile", "plan", &bad))) {
    a->profile = v;
  } else if ((v = cli_value(argc, argv, i, "--cluster", "plan", &bad))) {
    a->cluster = v;
  } else if ((v = cli_value(argc, argv, i, "--view", "plan", &bad))) {
    if (strcmp(v, "forward") && strcmp(v, "backward") && strcmp(v, "all")) {
      fprintf(stderr, "moec plan: error: unknown view '%s' (forward, backward, all)\n", v);
      return -1;
    }
    a->view = v;
  } else if ((v = cli_value(argc, argv, i, "--expand", "plan", &bad))) {
    if (a->nexpand == 64) {
      fprintf(stderr, "moec plan: error: at most 64 --expand layers\n");
      return -1;
    }
    a->expand[a->nexpand++] = v;
  } else {
    return bad ? -1 : 0;
  }
  return 1;
}

/* --format dot, svg, png: the picture (plan_dot.c), to -o FILE or stdout. */
static int draw(const Graph *g, const PlanCost *c, const Config *cfg, const Options *o,
                const PlanFlags *a) {
  PlanLoads *loads = NULL;
  if (o->loads_path) {
    const char *err = NULL;
    loads = plan_read_loads(o->loads_path, &err);
  }
  PlotOpts po = {.view = a->view ? a->view : "forward",
                 .expand = (const char **)a->expand,
                 .nexpand = a->nexpand,
                 .loads = loads};
  McBuf dot = {0};
  plan_dot(g, c, cfg, &po, &dot);
  plan_free_loads(loads);
  int rc = plan_write_picture(dot.data, a->format, a->out);
  mc_buf_free(&dot);
  return rc;
}

/* The routing the cost model assumes, in words. */
const char *plan_routing_desc(const Options *o, char *buf, size_t n) {
  if (o->loads_path)
    snprintf(buf, n, "measured loads from %s (uniform for layers it does not name)", o->loads_path);
  else if (o->zipf > 0)
    snprintf(buf, n, "Zipf skew %g: expert e of a layer gets rows in proportion to 1/(e+1)^%g",
             o->zipf, o->zipf);
  else
    snprintf(buf, n, "uniform (every expert the same rows; --loads FILE or --skew zipf:S)");
  return buf;
}

/* The cost constants: a cluster's (--cluster), else this machine's: the profile of moec
 * calibrate (--profile, or MOEC_PROFILE_DEFAULT when present) over the built-in cpu
 * constants. 0, or the exit status after an error. */
int plan_constants(const char *cmd, const char *profile, const char *cluster, CostConsts *k,
                   ClusterSpec *cs) {
  char why[512];
  *k = plan_consts_cpu;
  if (cluster && !cli_parse_cluster(cluster, cs, k, why, sizeof why)) {
    fprintf(stderr, "moec %s: error: %s\n", cmd, why);
    return 2;
  }
  bool is_cpu = !cluster || !strcasecmp(cs->device, "CPU");
  const char *path = profile;
  if (!path && is_cpu && access(MOEC_PROFILE_DEFAULT, R_OK) == 0) path = MOEC_PROFILE_DEFAULT;
  if (path && !cli_read_profile(path, k, why, sizeof why)) {
    fprintf(stderr, "moec %s: error: --profile %s: %s\n", cmd, path, why);
    return 2;
  }
  return 0;
}

typedef struct Reparse {
  int argc;
  char **argv;
  const char *devices; /* the cluster's count, or NULL */
} Reparse;

static int reparse(Options *o, void *ctx) {
  Reparse *r = ctx;
  PlanFlags a = {.format = "text"};
  if (cli_parse(r->argc, r->argv, o, DRV_SETTINGS | DRV_LOADS, plan_flags, &a, usage)) return 1;
  if (r->devices) drv_add_setting(o, "plan", "devices", r->devices, "--cluster");
  return 0;
}

/* --search-devices V: "all" (1, 2, 4, ... below N that fill whole nodes, and N) or a list
 * of counts from 1 to N (the plan's devices); each count fills the physical mesh's nodes in
 * order (at most a node's N / nodes devices on the first, else whole nodes). Ascending,
 * without repeats, into counts (at most max); -1 after an error. */
static int search_counts(const char *v, int N, int nodes, int *counts, int max) {
  int n = 0, per = N / MC_MAX(nodes, 1);
  bool all = !strcmp(v, "all");
  int cand[64];
  int nc = 0;
  if (all) {
    for (int c = 1; c < N && nc < 63; c *= 2)
      cand[nc++] = c;
    cand[nc++] = N;
  } else {
    for (const char *q = v; *q;) {
      char *end;
      long c = strtol(q, &end, 10);
      if (end == q || (*end && *end != ',') || c < 1 || c > N || nc == 64) {
        fprintf(stderr,
                "moec plan: error: --search-devices: '%s' is not a list of device counts from 1 "
                "to %d (the plan's devices), nor all\n",
                v, N);
        return -1;
      }
      cand[nc++] = (int)c;
      q = *end ? end + 1 : end;
    }
  }
  for (int i = 0; i < nc; i++) {
    int c = cand[i];
    if (!plan_search_nodes(N, nodes, c)) {
      if (all) continue;
      fprintf(stderr,
              "moec plan: error: --search-devices: %d devices are not one node's %d or fewer, "
              "nor whole nodes of the %dx%d mesh\n",
              c, per, nodes, per);
      return -1;
    }
    int at = n;
    while (at > 0 && counts[at - 1] > c)
      at--;
    if (at > 0 && counts[at - 1] == c) continue;
    if (n == max) break;
    memmove(counts + at + 1, counts + at, (size_t)(n - at) * sizeof(int));
    counts[at] = c;
    n++;
  }
  return n;
}

int cmd_plan(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "plan");
  PlanFlags a = {.format = "text"};
  const char *format;
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_LOADS, plan_flags, &a, usage);
  format = a.format;
  if (!rc && a.cluster && o.devices_given) {
    fprintf(stderr, "moec plan: error: --devices, --mesh: the cluster gives the devices\n");
    rc = 2;
  }
  if (!rc && a.memory && (a.search || strcmp(format, "text"))) {
    fprintf(stderr, "moec plan: error: --memory goes with the text format\n");
    rc = 2;
  }
  if (!rc && (a.write_plan || a.top || a.search_devices) && !a.search) {
    fprintf(stderr,
            "moec plan: error: --top, --write-plan and --search-devices go with --search\n");
    rc = 2;
  }
  if (!rc && a.search && !strcmp(format, "json")) {
    fprintf(stderr, "moec plan: error: --search prints a table or draws the top candidates "
                    "(--format dot, svg or png), not json\n");
    rc = 2;
  }
  if (!rc && a.search && (a.view || a.nexpand)) {
    fprintf(stderr, "moec plan: error: --search draws each candidate's forward view (no --view, "
                    "--expand)\n");
    rc = 2;
  }
  CostConsts k;
  ClusterSpec cs = {0};
  if (!rc && a.mpi && a.cluster) {
    fprintf(stderr, "moec plan: error: --mpi: this machine's MPI ranks (not a --cluster)\n");
    rc = 2;
  }
  if (!rc) rc = plan_constants("plan", a.profile, a.cluster, &k, &cs);
  if (!rc && a.mpi) { /* the collectives of the calibrated MPI ranks */
    char why[512];
    const char *path = a.profile ? a.profile : MOEC_PROFILE_DEFAULT;
    if (!cli_profile_mpi(path, &k, why, sizeof why)) {
      fprintf(stderr, "moec plan: error: --mpi: profile %s: %s\n", path, why);
      rc = 2;
    }
  }
  char ndev[32];
  snprintf(ndev, sizeof ndev, "%d", cs.devices);
  if (!rc && a.cluster) {
    char flag[160];
    snprintf(flag, sizeof flag, "--cluster %s", a.cluster);
    drv_add_setting(&o, "plan", "devices", ndev, flag);
  }
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  char routing[512];
  plan_routing_desc(&o, routing, sizeof routing);
  Config cfg;
  if (a.search) { /* the devices and model name: the file with its settings */
    AstFile *f0 = drv_load(&o, &cfg, &rc);
    if (!f0) {
      drv_options_free(&o);
      return rc;
    }
    char model[128];
    snprintf(model, sizeof model, "%s", f0->model->name);
    fe_ast_free(f0);
    Reparse rp = {argc, argv, a.cluster ? ndev : NULL};
    int nodes = a.cluster ? cs.nodes : cfg.mesh_nodes > 1 ? cfg.mesh_nodes : 1, counts[64];
    int ncounts =
        a.search_devices ? search_counts(a.search_devices, cfg.devices, nodes, counts, 64) : 0;
    if (ncounts < 0) {
      drv_options_free(&o);
      return 2;
    }
    SearchArgs sa = {.model = model,
                     .routing = routing,
                     .format = strcmp(format, "text") ? format : NULL,
                     .out = a.out,
                     .write_plan = a.write_plan,
                     .devices = cfg.devices,
                     .nodes = nodes,
                     .counts = counts,
                     .ncounts = ncounts,
                     .top = a.top,
                     .have_loads = o.loads_path || o.zipf > 0,
                     .k = &k,
                     .reparse = reparse,
                     .ctx = &rp};
    rc = plan_search(&sa);
    drv_options_free(&o);
    return rc;
  }
  AstFile *f = NULL;
  McBuf notes = {0};
  mc_buf_printf(&notes, "%s", "");
  PlanCost c;
  Graph *g = plan_compile(&o, &cfg, &f, &notes, &c, &k, &rc);
  if (!g) {
    mc_buf_free(&notes);
    drv_options_free(&o);
    return rc;
  }
  rc = 0;
  if (!strcmp(format, "json"))
    print_json(g, &c, cfg.strategy, cfg.expert_policy, notes.data);
  else if (!strcmp(format, "text")) {
    print_text(g, &c, cfg.strategy, cfg.expert_policy, pass_fusion_enabled(&cfg), notes.data,
               routing);
    int most = 0; /* the device that allocates the most */
    for (int d = 1; d < c.devices; d++)
      if (c.dev[d].planned_bytes > c.dev[most].planned_bytes) most = d;
    if (a.memory) drv_memory_top(g, &cfg, most, cfg.devices, a.memory, stdout);
  } else
    rc = draw(g, &c, &cfg, &o, &a);
  plan_cost_free(&c);
  mc_buf_free(&notes);
  ir_graph_free(g);
  fe_ast_free(f);
  drv_options_free(&o);
  return rc;
}
