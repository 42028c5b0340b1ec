/* cmd_plan.c: `moec plan FILE [--devices N] [--strategy S] [--experts POLICY]
 * [--loads FILE] [--format text|json|dot]`: the placement plan (docs/placement.md).
 * Builds the training graph, runs every pass with N devices, binds B = batch and
 * T = unroll (the global batch), and prints: ops grouped by layer with their devices
 * and partitioning, every collective with its bytes per step, per device memory and
 * FLOPs, the cost model's constants and its step-time estimate. */
#include <stdlib.h>
#include <string.h>

#include "../passes/plan.h"
#include "cli.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: moec plan FILE [--devices N] [--strategy S] [--experts POLICY] [--loads F]\n"
          "                 [--format text|json|dot]\n\n"
          "The placement plan of FILE's training step over N devices: every op with its\n"
          "devices and partitioning, every collective with its bytes per step, per device\n"
          "parameter, optimizer and activation memory and FLOPs, and an estimated step time\n"
          "from a cost model whose constants are printed.\n\n"
          "options:\n"
          "  --devices N        devices (default: the file's plan, else 1)\n"
          "  --strategy S       paper (default), data_parallel, hmoe\n"
          "  --experts POLICY   contiguous (default), round_robin, balanced\n"
          "  --loads FILE       measured expert loads for balanced: JSON lines with\n"
          "                     {\"moe\":[{\"name\":\"m\",\"load\":[...]}]} (the last line wins)\n"
          "  --format F         text (default), json (one object), dot (graphviz: one colour\n"
          "                     per device, grey = all devices, collectives as octagons)\n");
}

static const char *part_name(PartKind p) {
  static const char *n[] = {"-", "replicated", "batch", "experts", "partial"};
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

static void print_text(const Graph *g, const PlanCost *c, const char *strategy,
                       const char *policy) {
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
    for (int p = 1; p <= PART_PARTIAL; p++)
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
  }
  printf("\ncollectives per step (expected = uniform routing, remote rows (P-1)/P; upper = "
         "every row remote)\n");
  int nc = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (!(ir_ops[n->op].flags & OPF_COLLECTIVE)) continue;
    CommBytes b = pass_comm_bytes(g, n);
    printf("  %s n%-4d %-16s %-34s %-16s expected %10.3f MiB  upper %10.3f MiB  per device "
           "%9.3f MiB\n",
           n->backward ? "bwd" : "fwd", n->id, ir_ops[n->op].name,
           n->op == OP_ALL_REDUCE ? n->out[0]->name : n->in[0]->name,
           type_str(&n->in[0]->ty, buf, sizeof buf), mib((double)b.expected), mib((double)b.upper),
           mib((double)b.per_device));
    nc++;
  }
  if (!nc) printf("  (none: one device)\n");
  printf("  total expected %.3f MiB, upper %.3f MiB per step\n", mib(c->comm_bytes_expected),
         mib(c->comm_bytes_upper));
  printf("\nper device (MiB; GFLOP per step, forward + backward)\n");
  printf("  %6s %7s %10s %10s %10s %12s %10s %12s\n", "device", "experts", "params", "grads",
         "optimizer", "activations", "total", "GFLOP");
  for (int d = 0; d < P; d++) {
    const DeviceCost *dc = &c->dev[d];
    printf("  %6d %7d %10.3f %10.3f %10.3f %12.3f %10.3f %12.4f\n", d, dc->nexperts,
           mib(dc->param_bytes), mib(dc->grad_bytes), mib(dc->optim_bytes), mib(dc->act_bytes),
           mib(dc->param_bytes + dc->grad_bytes + dc->optim_bytes + dc->act_bytes),
           dc->flops / 1e9);
  }
  printf("\ncost model (%s): %.0f GFLOP/s per device, link %.0f GB/s, latency %.0f us per "
         "collective step\n",
         c->k.name, c->k.gflops, c->k.link_gbs, c->k.latency_us);
  printf("  step time ~ %.3f ms = compute %.3f ms (busiest device) + communication %.3f ms\n",
         c->step_s * 1e3, c->compute_s * 1e3, c->comm_s * 1e3);
  if (plan_note[0]) printf("\n%s", plan_note);
}

static void json_str(const char *s) {
  McBuf b = {0};
  mc_buf_json_string(&b, s ? s : "");
  fputs(b.data, stdout);
  mc_buf_free(&b);
}

static void print_json(const Graph *g, const PlanCost *c, const char *strategy,
                       const char *policy) {
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
           t->grad && t->grad->producer && t->grad->producer->op == OP_ALL_REDUCE ? "true"
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
           "\"optimizer_bytes\": %.0f, \"activation_bytes\": %.0f, \"flops\": %.0f}",
           d ? "," : "", d, dc->nexperts, dc->param_bytes, dc->grad_bytes, dc->optim_bytes,
           dc->act_bytes, dc->flops);
  }
  printf("],\n \"comm_bytes_expected\": %.0f, \"comm_bytes_upper\": %.0f,\n",
         c->comm_bytes_expected, c->comm_bytes_upper);
  printf(
      " \"cost_model\": {\"name\": \"%s\", \"gflops\": %g, \"link_gbs\": %g, \"latency_us\": %g, "
      "\"compute_s\": %.9g, \"comm_s\": %.9g, \"step_s\": %.9g},\n \"notes\": ",
      c->k.name, c->k.gflops, c->k.link_gbs, c->k.latency_us, c->compute_s, c->comm_s, c->step_s);
  json_str(plan_note);
  printf("}\n");
}

static void print_dot(const Graph *g, int P) {
  static const char *colour[] = {"#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3",
                                 "#fdb462", "#b3de69", "#fccde5", "#bc80bd", "#ccebc5"};
  printf("digraph \"%s\" {\n  rankdir=TB; node [style=filled, fontname=\"Helvetica\"];\n", g->name);
  printf("  legend [shape=note, fillcolor=white, label=\"%d devices: grey = all (data-parallel), "
         "colours = one device, white box = expert-sharded, octagon = collective\"];\n",
         P);
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    bool coll = ir_ops[n->op].flags & OPF_COLLECTIVE;
    bool exp = n->nout && n->out[0]->part == PART_EXPERTS;
    const char *fill = n->device >= 0 ? colour[n->device % 10] : exp ? "white" : "grey85";
    printf("  n%d [label=\"%s\\n%s%s%s\", shape=%s, fillcolor=\"%s\"%s];\n", n->id,
           ir_ops[n->op].name, n->layer ? n->layer : "", n->role ? "/" : "", n->role ? n->role : "",
           coll  ? "octagon"
           : exp ? "box3d"
                 : "box",
           coll ? "orange" : fill, n->backward ? ", style=\"filled,dashed\"" : "");
  }
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    for (int i = 0; i < n->nin; i++)
      if (n->in[i]->producer) printf("  n%d -> n%d;\n", n->in[i]->producer->id, n->id);
  }
  printf("}\n");
}

static const char *arg_value(int argc, char **argv, int *i, const char *flag) {
  size_t L = strlen(flag);
  if (strncmp(argv[*i], flag, L)) return NULL;
  if (argv[*i][L] == '=') return argv[*i] + L + 1;
  if (argv[*i][L]) return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "moec plan: error: %s needs a value\n", flag);
    exit(2);
  }
  return argv[++*i];
}

int cmd_plan(int argc, char **argv) {
  if (drv_wants_help(argc, argv)) {
    usage(stdout);
    return 0;
  }
  const char *path = NULL, *strategy = NULL, *policy = NULL, *format = "text", *loads = NULL;
  int devices = 0;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = arg_value(argc, argv, &i, "--devices"))) {
      char *end;
      long n = strtol(v, &end, 10);
      if (*end || n < 1 || n > 65536) {
        fprintf(stderr, "moec plan: error: --devices needs an integer 1..65536, not '%s'\n", v);
        return 2;
      }
      devices = (int)n;
    } else if ((v = arg_value(argc, argv, &i, "--strategy")))
      strategy = v;
    else if ((v = arg_value(argc, argv, &i, "--experts")))
      policy = v;
    else if ((v = arg_value(argc, argv, &i, "--loads")))
      loads = v;
    else if ((v = arg_value(argc, argv, &i, "--format")))
      format = v;
    else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "moec plan: error: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    } else if (!path)
      path = argv[i];
    else {
      fprintf(stderr, "moec plan: error: more than one FILE ('%s', '%s')\n", path, argv[i]);
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, "moec plan: error: no FILE given\n");
    usage(stderr);
    return 2;
  }
  if (strcmp(format, "text") && strcmp(format, "json") && strcmp(format, "dot")) {
    fprintf(stderr, "moec plan: error: unknown format '%s' (text, json, dot)\n", format);
    return 2;
  }
  if (strategy && strcmp(strategy, "paper") && strcmp(strategy, "data_parallel") &&
      strcmp(strategy, "hmoe")) {
    fprintf(stderr, "moec plan: error: unknown strategy '%s' (paper, data_parallel, hmoe)\n",
            strategy);
    return 2;
  }
  if (policy && strcmp(policy, "contiguous") && strcmp(policy, "round_robin") &&
      strcmp(policy, "balanced")) {
    fprintf(stderr,
            "moec plan: error: unknown expert policy '%s' (contiguous, round_robin, balanced)\n",
            policy);
    return 2;
  }
  Config cfg;
  AstFile *f = drv_load(path, &cfg);
  if (!f) return 1;
  if (strategy) cfg.strategy = strategy;
  if (policy) cfg.expert_policy = policy;
  if (!cfg.strategy) cfg.strategy = "paper";
  if (!cfg.expert_policy) cfg.expert_policy = "contiguous";
  if (loads) {
    const char *err = NULL;
    plan_loads = plan_read_loads(loads, &err);
    if (!plan_loads) {
      fprintf(stderr, "moec plan: error: --loads %s: %s\n", loads, err);
      return 1;
    }
  }
  int P = devices ? devices : cfg.devices > 0 ? cfg.devices : 1;
  Graph *g = ir_build(f, &cfg);
  PassCtx ctx = {.cfg = &cfg, .devices = P, .training = true};
  pass_run_all(g, &ctx, NULL, NULL);
  ir_bind(g, cfg.batch, cfg.unroll);
  PlanCost c = plan_cost(g, P, cfg.optimizer, &plan_consts_cpu);
  if (!strcmp(format, "json"))
    print_json(g, &c, cfg.strategy, cfg.expert_policy);
  else if (!strcmp(format, "dot"))
    print_dot(g, P);
  else
    print_text(g, &c, cfg.strategy, cfg.expert_policy);
  plan_cost_free(&c);
  ir_graph_free(g);
  fe_ast_free(f);
  return 0;
}
