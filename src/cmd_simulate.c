/* cmd_simulate.c: `moec simulate FILE --cluster SPEC [--format text|json] [settings]`:
 * the cost model of the plan (passes/costmodel.c, the same compile as `moec plan` and
 * `moec run` on the cluster's device count) on a cluster that is not here
 * (docs/placement.md, "moec simulate").
 *
 * SPEC: [NODES x] N x DEVICE [: LINK], e.g. 32xK40, 64xH100, 8xH100:nvlink, 16x8xH100:ib.
 *   N x DEVICE          N devices in nodes of the device's usual size (K40: 4, H100: 8):
 *                       its node link inside a node, its cluster link between nodes
 *   N x DEVICE : LINK   one group of N devices, every link LINK
 *   M x N x DEVICE : L  M nodes of N devices: the node link inside, L between nodes
 * Every constant is in the tables below and printed with the result. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

/* Devices: the kernel-time constants of costmodel.c (a `moec calibrate` profile's), each
 * sourced in docs/placement.md ("moec simulate"):
 *   gflops     sustained fp32 GEMM rate of a large GEMM (published cuBLAS sgemm rates)
 *   gemm_half  the smallest GEMM side at which a GEMM runs at half of gflops: K40 FITTED to
 *              one row of the paper's Table 7 (MoE-256-h on 16 K40s, 0.89 TFLOPS/GPU); H100 and
 *              H200 scaled from it by gflops / memory bandwidth (a GEMM of few rows is bound
 *              by reading its weights, so the side where it stops being so scales with that)
 *   elem_gbs   datasheet memory bandwidth (elementwise ops: bytes read + written)
 *   launch_us  a kernel launch
 *   K40   cuBLAS 7.0 sgemm at boost clocks 3.0-3.3 TFLOP/s for squares of 2048-4096
 *         (clBLAS's doc/performance/cuBLAS_7.0/Tesla_K40/sgemm.csv); 4290 peak (2880 cores
 *         x 2 x 745 MHz); 288 GB/s; 12 GiB; nodes of 4 on PCIe 3 x16, FDR InfiniBand between.
 *   H100  SXM: 67 TFLOP/s peak fp32 without tensor cores; 50 TFLOP/s sustained for large
 *         sgemm; 3350 GB/s; 80 GiB; nodes of 8 on NVLink 4, NDR InfiniBand between.
 *   H100-TF32: the same with TF32 tensor cores for the matmuls: 495 TFLOP/s dense peak,
 *         400 sustained (optimistic for this model's small GEMMs: an upper bound).
 *   H200  the H100's SXM compute with 141 GB of HBM3e at 4800 GB/s (139 GiB usable).
 *   CPU   the plan's cpu constants (one thread of the build machine); memory unknown. */
typedef struct DevPreset {
  const char *name;
  double gflops, peak_gflops, mem_gib;
  int per_node;
  const char *node_link, *cluster_link;
  double gemm_half, elem_gbs, launch_us;
} DevPreset;

/* K40_HALF: the one fitted constant (docs/placement.md: the fit and its row). */
#define K40_HALF 950
#define K40_G 3200.0
#define K40_BW 288.0
#define SCALED_HALF(g, bw) (K40_HALF * ((double)(g) / (bw)) / (K40_G / K40_BW))

static const DevPreset devs[] = {
    {"K40", K40_G, 4290, 12, 4, "pcie", "fdr", K40_HALF, K40_BW, 5},
    {"H100", 50000, 67000, 80, 8, "nvlink", "ib", SCALED_HALF(50000, 3350), 3350, 5},
    {"H100-TF32", 400000, 495000, 80, 8, "nvlink", "ib", SCALED_HALF(400000, 3350), 3350, 5},
    {"H200", 50000, 67000, 139, 8, "nvlink", "ib", SCALED_HALF(50000, 4800), 4800, 5},
    {"CPU", 40, 40, 0, 0, "inproc", "inproc", 16, 5, 1},
};

/* Links. gbs: GB/s one device sends; shared: a node's one NIC, divided among its devices.
 *   pcie   PCIe 3 x16, ~12 GB/s achieved, 10 us
 *   nvlink NVLink 4 (H100 SXM), 450 GB/s per direction, 5 us
 *   ib     NDR InfiniBand, 400 Gb/s = 50 GB/s, one NIC per GPU (DGX H100), 10 us
 *   fdr    FDR InfiniBand, 56 Gb/s = 6.8 GB/s, one NIC per node, 10 us
 *   eth    10 Gb Ethernet, 1.25 GB/s, one NIC per node, 50 us
 *   inproc an in-process copy between threads (the plan's cpu link), 5 us */
typedef struct LinkPreset {
  const char *name;
  double gbs, latency_us;
  bool shared;
} LinkPreset;

static const LinkPreset links[] = {
    {"pcie", 12, 10, false}, {"nvlink", 450, 5, false}, {"ib", 50, 10, false},
    {"fdr", 6.8, 10, true},  {"eth", 1.25, 50, true},   {"inproc", 10, 5, false},
};

typedef struct Cluster {
  char spec[128];
  const DevPreset *dev;
  const LinkPreset *node, *cluster; /* cluster NULL: one group */
  int devices, nodes, per_node;
  CostConsts k;
  char desc[256];
} Cluster;

static const LinkPreset *find_link(const char *s) {
  for (size_t i = 0; i < MC_ARRAY_LEN(links); i++)
    if (!strcasecmp(s, links[i].name)) return &links[i];
  return NULL;
}

static bool parse_count(const char *s, size_t len, int *out) {
  if (len == 0 || len > 6) return false;
  int v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return v >= 1;
}

/* Parses SPEC; false with *why set. */
static bool parse_cluster(const char *spec, Cluster *c, char *why, size_t wlen) {
  memset(c, 0, sizeof *c);
  snprintf(c->spec, sizeof c->spec, "%s", spec);
  char body[128];
  snprintf(body, sizeof body, "%s", spec);
  char *colon = strchr(body, ':');
  const char *link = NULL;
  if (colon) {
    *colon = 0;
    link = colon + 1;
  }
  /* split on 'x' (either case; no device name holds one): 2 or 3 fields, the last the
   * device */
  const char *f[4];
  size_t fl[4];
  int nf = 0;
  for (const char *p = body; nf < 4;) {
    size_t L = strcspn(p, "xX");
    f[nf] = p;
    fl[nf++] = L;
    if (!p[L]) break;
    p += L + 1;
  }
  int n1 = 0, n2 = 0;
  if (nf < 2 || nf > 3 || !parse_count(f[0], fl[0], &n1) ||
      (nf == 3 && !parse_count(f[1], fl[1], &n2))) {
    snprintf(why, wlen,
             "'%s' is not a cluster: expected [NODES x] N x DEVICE [: LINK], e.g. 32xK40, "
             "8xH100:nvlink, 16x8xH100:ib",
             spec);
    return false;
  }
  char dname[64];
  snprintf(dname, sizeof dname, "%.*s", (int)fl[nf - 1], f[nf - 1]);
  for (size_t i = 0; i < MC_ARRAY_LEN(devs); i++)
    if (!strcasecmp(dname, devs[i].name)) c->dev = &devs[i];
  if (!c->dev) {
    snprintf(why, wlen, "unknown device '%s' in '%s' (K40, H100, H100-TF32, H200, CPU)", dname,
             spec);
    return false;
  }
  const LinkPreset *L = NULL;
  if (link && !(L = find_link(link))) {
    snprintf(why, wlen, "unknown link '%s' in '%s' (pcie, nvlink, ib, fdr, eth, inproc)", link,
             spec);
    return false;
  }
  c->node = find_link(c->dev->node_link);
  if (nf == 3) { /* M nodes x N per node */
    c->nodes = n1;
    c->per_node = n2;
    c->cluster = L ? L : find_link(c->dev->cluster_link);
  } else if (L) { /* one group on LINK */
    c->nodes = 1;
    c->per_node = n1;
    c->node = L;
  } else { /* the device's usual nodes */
    int per = c->dev->per_node > 0 && c->dev->per_node < n1 ? c->dev->per_node : n1;
    c->per_node = per;
    c->nodes = (n1 + per - 1) / per;
    c->cluster = c->nodes > 1 ? find_link(c->dev->cluster_link) : NULL;
  }
  c->devices = nf == 3 ? n1 * n2 : n1;
  if (c->devices > 65536) {
    snprintf(why, wlen, "'%s' has %d devices; at most 65536", spec, c->devices);
    return false;
  }
  if (c->nodes <= 1) c->cluster = NULL;
  c->k = (CostConsts){.name = c->dev->name,
                      .gflops = c->dev->gflops,
                      .link_gbs = c->node->gbs / (c->node->shared ? c->per_node : 1),
                      .latency_us = c->node->latency_us,
                      .peak_gflops = c->dev->peak_gflops,
                      .mem_bytes = c->dev->mem_gib * 1073741824.0,
                      .gemm_half = c->dev->gemm_half,
                      .elem_gbs = c->dev->elem_gbs,
                      .launch_us = c->dev->launch_us};
  if (c->cluster) {
    c->k.per_node = c->per_node;
    c->k.inter_gbs = c->cluster->gbs / (c->cluster->shared ? c->per_node : 1);
    c->k.inter_latency_us = c->cluster->latency_us;
  }
  if (c->cluster)
    snprintf(c->desc, sizeof c->desc,
             "%d x %s: %d nodes of %d, %s inside a node (%.3g GB/s, %g us), %s between nodes "
             "(%.3g GB/s per device, %g us)",
             c->devices, c->dev->name, c->nodes, c->per_node, c->node->name, c->k.link_gbs,
             c->k.latency_us, c->cluster->name, c->k.inter_gbs, c->k.inter_latency_us);
  else
    snprintf(c->desc, sizeof c->desc, "%d x %s: one group on %s (%.3g GB/s per device, %g us)",
             c->devices, c->dev->name, c->node->name, c->k.link_gbs, c->k.latency_us);
  return true;
}

bool cli_parse_cluster(const char *spec, ClusterSpec *cs, CostConsts *k, char *why, size_t wlen) {
  Cluster c;
  if (!parse_cluster(spec, &c, why, wlen)) return false;
  *k = c.k;
  *cs = (ClusterSpec){.devices = c.devices,
                      .nodes = c.nodes,
                      .per_node = c.per_node,
                      .mem_gib = c.dev->mem_gib,
                      .device = c.dev->name,
                      .node_link = c.node->name,
                      .cluster_link = c.cluster ? c.cluster->name : NULL};
  snprintf(cs->desc, sizeof cs->desc, "%s", c.desc);
  return true;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: moec simulate FILE --cluster SPEC [--format text|json] [settings]\n\n"
          "The cost model of FILE's plan (the placement, collectives, memory plan and FLOPs\n"
          "that `moec plan` prints) on a cluster that is not here: step time, TFLOPS per\n"
          "device, memory per device (and whether it fits), communication time and share.\n\n"
          "SPEC: [NODES x] N x DEVICE [: LINK]\n"
          "  32xK40          32 K40s in nodes of 4 (PCIe inside, FDR InfiniBand between)\n"
          "  64xH100         64 H100s in nodes of 8 (NVLink inside, NDR InfiniBand between)\n"
          "  8xH100:nvlink   one group of 8 on NVLink\n"
          "  16x8xH100:ib    16 nodes of 8, InfiniBand between the nodes\n"
          "devices: K40, H100, H100-TF32, H200, CPU; links: pcie, nvlink, ib, fdr, eth, inproc\n\n"
          "options:\n"
          "  --cluster SPEC     the cluster (required; it gives the device count)\n"
          "  --format F         text (default) or json\n"
          "  --profile FILE     compute constants from moec calibrate (this machine's)\n\n"
          "settings (each overrides the train/plan setting of the same name; not --devices):\n");
  drv_options_help(out, DRV_SETTINGS | DRV_LOADS);
}

typedef struct SimFlags {
  const char *format, *spec, *profile;
} SimFlags;

static int sim_flags(int argc, char **argv, int *i, void *ctx) {
  SimFlags *a = ctx;
  bool bad = false;
  const char *v;
  if ((v = cli_value(argc, argv, i, "--cluster", "simulate", &bad)))
    a->spec = v;
  else if ((v = cli_value(argc, argv, i, "--format", "simulate", &bad)))
    a->format = v;
  else if ((v = cli_value(argc, argv, i, "--profile", "simulate", &bad)))
    a->profile = v;
  else
    return bad ? -1 : 0;
  return 1;
}

static double gib(double b) {
  return b / 1073741824.0;
}

/* Bytes of one device's expert-row tensors (each on its own; the arena overlays some),
 * at the rows its buffers are sized for. */
static double expert_row_bytes(const Graph *g, int P) {
  if (P <= 1 || !g->moe_expert_dev) return 0;
  int *f = plan_layer_widen(g, P);
  double b = 0;
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    const char *layer = t->producer ? t->producer->layer : NULL;
    if (t->part != PART_EXPERTS || t->ty.rank < 1 || t->ty.dim[0].b <= 0 || !layer) continue;
    for (int m = 0; m < g->nmoe; m++)
      if (!strcmp(layer, g->moe_names[m])) b += 4.0 * (double)t->numel * f[m] / P;
  }
  mc_free(f);
  return b;
}

int cmd_simulate(int argc, char **argv) {
  Options o;
  drv_options_init(&o, "simulate");
  SimFlags a = {.format = "text"};
  int rc = cli_parse(argc, argv, &o, DRV_SETTINGS | DRV_LOADS, sim_flags, &a, usage);
  if (!rc && !a.spec) {
    fprintf(stderr, "moec simulate: error: no --cluster given\n");
    usage(stderr);
    rc = 2;
  }
  if (!rc && o.devices_given) {
    fprintf(stderr, "moec simulate: error: --devices, --mesh: the cluster gives the devices\n");
    rc = 2;
  }
  if (!rc && strcmp(a.format, "text") && strcmp(a.format, "json")) {
    fprintf(stderr, "moec simulate: error: unknown format '%s' (text, json)\n", a.format);
    rc = 2;
  }
  Cluster cl;
  char why[256];
  if (!rc && !parse_cluster(a.spec, &cl, why, sizeof why)) {
    fprintf(stderr, "moec simulate: error: %s\n", why);
    rc = 2;
  }
  if (!rc && a.profile && !cli_read_profile(a.profile, &cl.k, why, sizeof why)) {
    fprintf(stderr, "moec simulate: error: --profile %s: %s\n", a.profile, why);
    rc = 2;
  }
  if (rc) {
    drv_options_free(&o);
    return rc < 0 ? 0 : rc;
  }
  char n[32], flag[160];
  snprintf(n, sizeof n, "%d", cl.devices);
  snprintf(flag, sizeof flag, "--cluster %s", a.spec);
  drv_add_setting(&o, "plan", "devices", n, flag);
  const char *format = a.format;
  Config cfg;
  AstFile *f = NULL;
  McBuf notes = {0};
  mc_buf_printf(&notes, "%s", "");
  PlanCost c;
  Graph *g = plan_compile(&o, &cfg, &f, &notes, &c, &cl.k, &rc);
  if (!g) {
    mc_buf_free(&notes);
    drv_options_free(&o);
    return rc;
  }
  const int P = cl.devices;
  double maxf = 0, sumf = 0;
  int busiest = 0;
  for (int d = 0; d < P; d++) {
    sumf += c.dev[d].flops;
    if (c.dev[d].flops > maxf) {
      maxf = c.dev[d].flops;
      busiest = d;
    }
  }
  double tflops_busy = maxf / c.step_s / 1e12, tflops_mean = sumf / P / c.step_s / 1e12;
  double share = c.step_s > 0 ? c.comm_s / c.step_s : 0;
  double tokens = (double)g->B * (double)g->T;
  int worst = 0;
  for (int d = 0; d < P; d++)
    if (c.dev[d].planned_bytes > c.dev[worst].planned_bytes) worst = d;
  const DeviceCost *w = &c.dev[worst];
  if (!strcmp(format, "json")) {
    printf("{\"model\": \"%s\", \"cluster\": \"%s\", \"devices\": %d, \"nodes\": %d, "
           "\"per_node\": %d, \"device\": \"%s\", \"B\": %lld, \"T\": %lld, "
           "\"rows_per_device\": %lld, ",
           g->name, cl.spec, P, cl.nodes, cl.per_node, cl.dev->name, (long long)g->B,
           (long long)g->T, (long long)c.rows_per_device);
    printf(" \"constants\": {\"gflops\": %g, \"peak_gflops\": %g, \"mem_bytes\": %.0f, "
           "\"node_link\": \"%s\", \"link_gbs\": %g, \"latency_us\": %g, \"cluster_link\": %s%s%s, "
           "\"inter_gbs\": %g, \"inter_latency_us\": %g, \"gemm_half\": %g, \"elem_gbs\": %g, "
           "\"launch_us\": %g}, ",
           cl.k.gflops, cl.k.peak_gflops, cl.k.mem_bytes, cl.node->name, cl.k.link_gbs,
           cl.k.latency_us, cl.cluster ? "\"" : "", cl.cluster ? cl.cluster->name : "null",
           cl.cluster ? "\"" : "", cl.k.inter_gbs, cl.k.inter_latency_us, cl.k.gemm_half,
           cl.k.elem_gbs, cl.k.launch_us);
    printf(" \"step_s\": %.9g, \"compute_s\": %.9g, \"comm_s\": %.9g, \"comm_share\": %.6f, "
           "\"tokens_per_s\": %.6g, \"tflops_per_device\": %.6g, \"tflops_per_device_mean\": "
           "%.6g, \"flops_per_device\": %.6g, \"comm_bytes_per_step\": %.0f, "
           "\"expert_gemm_s\": %.9g, \"expert_gemm_flops\": %.6g, ",
           c.step_s, c.compute_s, c.comm_s, share, tokens / c.step_s, tflops_busy, tflops_mean,
           maxf, c.comm_bytes_expected, c.dev[busiest].expert_s, c.dev[busiest].expert_flops);
    printf(" \"memory\": {\"device\": %d, \"param_bytes\": %.0f, \"persist_bytes\": %.0f, "
           "\"arena_bytes\": %.0f, \"optimizer_bytes\": %.0f, \"planned_bytes\": %.0f, "
           "\"estimate_bytes\": %.0f, \"capacity_bytes\": %.0f, \"rows_bytes\": %.0f, "
           "\"rows_margin_bytes\": %.0f, \"rows_apart_bytes\": %.0f, \"fits\": %s}}\n",
           worst, w->param_bytes, w->persist_bytes, w->arena_bytes, w->optim_alloc_bytes,
           w->planned_bytes, w->param_bytes + w->grad_bytes + w->optim_bytes + w->act_bytes,
           cl.k.mem_bytes, w->rows_bytes, w->rows_margin_bytes, w->rows_apart_bytes,
           c.fits ? "true" : "false");
  } else {
    printf("simulate %s on %s\n", g->name, cl.desc);
    printf("  constants: %g GFLOP/s sustained per device (peak %g), a GEMM at half of it when "
           "its smallest side is %.4g, elementwise %g GB/s, %g us a kernel launch; %g GiB per "
           "device\n",
           cl.k.gflops, cl.k.peak_gflops, cl.k.gemm_half, cl.k.elem_gbs, cl.k.launch_us,
           cl.dev->mem_gib);
    printf("  global batch %lld x %lld = %.0f tokens a step; %lld rows per device; strategy "
           "%s, experts %s\n",
           (long long)g->B, (long long)g->T, tokens, (long long)c.rows_per_device, cfg.strategy,
           cfg.expert_policy);
    printf("\nstep time      %.3f ms = compute %.3f ms (busiest device) + communication %.3f ms "
           "(%.1f%% of the step)\n",
           c.step_s * 1e3, c.compute_s * 1e3, c.comm_s * 1e3, 100 * share);
    printf("throughput     %.4g tokens/s\n", tokens / c.step_s);
    printf("TFLOPS/device  %.3f (busiest, device %d; %.1f%% of peak), %.3f mean; %.4g GFLOP a "
           "step on the busiest\n",
           tflops_busy, busiest,
           cl.k.peak_gflops > 0 ? 100 * tflops_busy * 1e3 / cl.k.peak_gflops : 0, tflops_mean,
           maxf / 1e9);
    printf("communication  %.4g MiB a step (all devices, expected), %.4g MiB upper\n",
           c.comm_bytes_expected / 1048576.0, c.comm_bytes_upper / 1048576.0);
    printf("memory/device  %.3f GiB allocated on device %d = persistent %.3f + arena %.3f + "
           "optimizer %.3f (the memory plan at %lld rows, as the runtime allocates it); "
           "estimate %.3f GiB; params %.3f GiB\n",
           gib(w->planned_bytes), worst, gib(w->persist_bytes), gib(w->arena_bytes),
           gib(w->optim_alloc_bytes), (long long)c.rows_per_device,
           gib(w->param_bytes + w->grad_bytes + w->optim_bytes + w->act_bytes),
           gib(w->param_bytes));
    if (w->rows_margin_bytes > 0 && w->rows_apart_bytes > 0)
      printf("               + expert rows sized per step %.3f GiB apart from the arena (this "
             "routing outgrows their slots in it: expected %.3f, x%.2f; included above)\n",
             gib(w->rows_apart_bytes), gib(w->rows_bytes), PLAN_ROWS_MARGIN);
    else if (w->rows_margin_bytes > 0)
      printf("               expert rows sized per step: in their slots in the arena (x%.2f the "
             "fair share; this routing's %.3f GiB, x%.2f %.3f, fit them)\n",
             PLAN_ROWS_MARGIN, gib(w->rows_bytes), PLAN_ROWS_MARGIN, gib(w->rows_margin_bytes));
    if (cl.k.mem_bytes <= 0)
      printf("fits           unknown (no memory size for %s)\n", cl.dev->name);
    else if (c.fits)
      printf("fits           yes: %.3f of %g GiB (%.0f%%)\n", gib(c.max_planned), cl.dev->mem_gib,
             100 * c.max_planned / cl.k.mem_bytes);
    else {
      printf("fits           NO: does not fit: device %d needs %.3f GiB, a %s has %g GiB; "
             "use more devices, a smaller batch, recompute, or the factored optimizer\n",
             worst, gib(c.max_planned), cl.dev->name, cl.dev->mem_gib);
      double xb = w->rows_margin_bytes > 0 ? 0 : expert_row_bytes(g, P); /* in the arena */
      if (w->rows_margin_bytes > 0.25 * w->planned_bytes)
        printf("               the expert rows sized per step take about %.3f of the %.3f GiB "
               "(x%g the expected rows, %s); moe(..., capacity=) bounds them\n",
               gib(w->rows_margin_bytes), gib(w->planned_bytes), PLAN_ROWS_MARGIN,
               w->rows_apart_bytes > 0 ? "apart from the arena" : "in their slots in the arena");
      else if (xb > 0.5 * w->arena_bytes)
        printf("               the expert-row buffers dominate: %.3f GiB of tensors in the %.3f "
               "GiB arena, %s; plan.expert_headroom = H (--expert-headroom 2) sizes them at H x "
               "a device's fair share of the routes, moe(..., capacity=) bounds them\n",
               gib(xb), gib(w->arena_bytes),
               g->expert_headroom > 0 ? "at this expert_headroom"
                                      : "room for every route of the batch on each device "
                                        "(where they are not sized per step)");
    }
    char routing[512];
    plan_print_step(g, &c, plan_routing_desc(&o, routing, sizeof routing));
    if (notes.data[0]) printf("\n%s", notes.data);
  }
  plan_cost_free(&c);
  mc_buf_free(&notes);
  ir_graph_free(g);
  fe_ast_free(f);
  drv_options_free(&o);
  return 0;
}
