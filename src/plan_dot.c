/* plan_dot.c: the plan as a picture (moec plan --format dot|svg|png).
 *
 * One box per layer and device set (its ops folded in, --expand LAYER unfolds one), one
 * box per MoE layer with its expert -> device map inside (by mesh node, with each
 * device's share of the measured load when --loads is given), one octagon per
 * collective with its kind, bytes per step, the devices it spans and, on a mesh, the
 * bytes that cross nodes. A node's device set is its fill: a device's colour, stripes of
 * its devices' colours for a subset, grey for every device (each on its rows), white for
 * experts sharded over their set. The legend names every set used and the colour of
 * every device, by mesh node. --view forward (default) | backward | all: the other half
 * is one summary box. A search's top candidates (plan_dot_search_*) are each that picture
 * in a frame of one graph, names prefixed per candidate, under one legend. svg and png
 * are rendered through Graphviz's library (libgvc). */
#include <string.h>

#include "../passes/fusion.h"
#include "cli.h"

#ifdef MOEC_HAVE_GVC
#include <graphviz/gvc.h>
#endif

static const char *const colour[] = {"#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3",
                                     "#fdb462", "#b3de69", "#fccde5", "#d9d9d9", "#bc80bd",
                                     "#ccebc5", "#ffed6f"};
enum { NCOLOUR = (int)(sizeof colour / sizeof colour[0]) };

/* "12.3 KiB", "1.25 MiB": bytes as a reader wants them */
static const char *human_bytes(double b, char *buf, size_t n) {
  if (b >= 1048576.0)
    snprintf(buf, n, "%.3g MiB", b / 1048576.0);
  else if (b >= 1024.0)
    snprintf(buf, n, "%.3g KiB", b / 1024.0);
  else
    snprintf(buf, n, "%.0f B", b);
  return buf;
}

/* ---------------------------------------------------------------- device sets */

typedef enum SetKind { SET_ONE, SET_SUBSET, SET_ALL, SET_EXPERTS } SetKind;

typedef struct DevSet {
  SetKind kind;
  uint64_t mask;
} DevSet;

static DevSet node_set(const Node *n, int P) {
  uint64_t m = ir_node_mask(n, P);
  bool experts = n->nout && n->out[0]->part == PART_EXPERTS;
  if (P > 1 && __builtin_popcountll(m) == 1) return (DevSet){SET_ONE, m};
  if (experts) return (DevSet){SET_EXPERTS, m};
  if (P > 1 && m != ir_all_mask(P)) return (DevSet){SET_SUBSET, m};
  return (DevSet){SET_ALL, m};
}

/* "0-3", "1, 2", "0, 2-5" */
static void mask_str(uint64_t m, char *buf, size_t n) {
  size_t k = 0;
  buf[0] = 0;
  for (int d = 0; d < 64 && k + 16 < n; d++) {
    if (!(m >> d & 1)) continue;
    int e = d;
    while (e + 1 < 64 && (m >> (e + 1) & 1))
      e++;
    k += (size_t)snprintf(buf + k, n - k, "%s%d", k ? ", " : "", d);
    if (e > d) k += (size_t)snprintf(buf + k, n - k, "%s%d", e == d + 1 ? ", " : "-", e);
    d = e;
  }
}

/* The fill of a device set: style and colour list. */
static void set_style(DevSet s, int P, char *style, size_t sn, char *fill, size_t fn) {
  if (s.kind == SET_ONE) {
    snprintf(style, sn, "filled");
    snprintf(fill, fn, "%s", colour[__builtin_ctzll(s.mask) % NCOLOUR]);
  } else if (s.kind == SET_SUBSET) {
    snprintf(style, sn, "striped");
    size_t k = 0;
    fill[0] = 0;
    for (int d = 0; d < P && k + 12 < fn; d++)
      if (s.mask >> d & 1) k += (size_t)snprintf(fill + k, fn - k, "%s%s", k ? ":" : "", colour[d % NCOLOUR]);
  } else if (s.kind == SET_EXPERTS) {
    snprintf(style, sn, "filled");
    snprintf(fill, fn, "white");
  } else {
    snprintf(style, sn, "filled");
    snprintf(fill, fn, "grey88");
  }
}

static void set_name(DevSet s, int P, char *buf, size_t n) {
  char m[120];
  mask_str(s.mask, m, sizeof m);
  switch (s.kind) {
  case SET_ONE:
    snprintf(buf, n, "device %s", m);
    break;
  case SET_SUBSET:
    snprintf(buf, n, "devices %s (each its rows of the batch)", m);
    break;
  case SET_EXPERTS:
    snprintf(buf, n, "experts sharded over devices %s (each its own)", m);
    break;
  default:
    if (P > 1)
      snprintf(buf, n, "all %d devices (each its rows of the batch)", P);
    else
      snprintf(buf, n, "one device");
  }
}

/* ---------------------------------------------------------------- view nodes */

/* What the picture draws: a layer's ops on one device set folded into a box, a MoE
 * layer's box with its expert map, a collective, or a graph node of an expanded layer. */
typedef struct VNode {
  const char *layer; /* NULL: the model's own ops */
  DevSet set;
  bool moe, coll, backward;
  const Node *first; /* its first graph node */
  int nops;
  double flops;
  McBuf ops; /* op names, in order, once each */
} VNode;

typedef struct View {
  const Graph *g;
  const PlanCost *c;
  const Config *cfg;
  const PlotOpts *o;
  int P, nodes, per_node; /* mesh: nodes x per_node */
  VNode *v;
  int nv;
  int *of; /* graph node -> view node (-1: hidden) */
} View;

static bool expanded(const View *w, const char *layer) {
  for (int i = 0; i < w->o->nexpand; i++)
    if (!strcmp(w->o->expand[i], "all") || (layer && !strcmp(w->o->expand[i], layer)))
      return true;
  return false;
}

static int moe_of(const Graph *g, const char *layer) {
  for (int i = 0; layer && i < g->nmoe; i++)
    if (!strcmp(g->moe_names[i], layer)) return i;
  return -1;
}

static bool shown(const View *w, const Node *n) {
  if (!strcmp(w->o->view, "all")) return true;
  return n->backward == !strcmp(w->o->view, "backward");
}

static int find_or_add(View *w, const Node *n) {
  bool coll = ir_ops[n->op].flags & OPF_COLLECTIVE;
  bool moe = !coll && moe_of(w->g, n->layer) >= 0;
  DevSet s = node_set(n, w->P);
  if (moe) s.kind = SET_EXPERTS; /* the layer box: its map tells where */
  if (!coll && !expanded(w, n->layer))
    for (int i = 0; i < w->nv; i++) {
      VNode *x = &w->v[i];
      bool same_layer = x->layer == n->layer || (x->layer && n->layer && !strcmp(x->layer, n->layer));
      if (!x->coll && same_layer && x->backward == n->backward &&
          (moe || (x->set.kind == s.kind && x->set.mask == s.mask)))
        return i;
    }
  w->v[w->nv] = (VNode){.layer = n->layer, .set = s, .moe = moe, .coll = coll,
                        .backward = n->backward, .first = n};
  return w->nv++;
}

static void build_view(View *w) {
  const Graph *g = w->g;
  w->v = mc_calloc((size_t)g->nnodes + 1, sizeof(VNode));
  w->of = mc_calloc((size_t)g->nnodes + 1, sizeof(int));
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    w->of[k] = -1;
    if (!shown(w, n)) continue;
    int i = w->of[k] = find_or_add(w, n);
    VNode *x = &w->v[i];
    x->nops++;
    x->flops += plan_node_flops(n);
    const FusedProg *fp = ir_fused_prog(n);
    const char *name = fp ? "fused" : ir_ops[n->op].name;
    if (!x->ops.data || !strstr(x->ops.data, name)) mc_buf_printf(&x->ops, "%s%s", x->ops.len ? ", " : "", name);
  }
}

/* ---------------------------------------------------------------- labels */

static void html_text(McBuf *b, const char *s) {
  for (; s && *s; s++) {
    if (*s == '<')
      mc_buf_printf(b, "&lt;");
    else if (*s == '>')
      mc_buf_printf(b, "&gt;");
    else if (*s == '&')
      mc_buf_printf(b, "&amp;");
    else if (*s == '"')
      mc_buf_printf(b, "&quot;");
    else
      mc_buf_putc(b, *s);
  }
}

/* Experts of MoE layer m on device d as ranges ("0-7, 12"), and their count. */
static int experts_on(const Graph *g, int m, int d, char *buf, size_t n) {
  size_t k = 0;
  int cnt = 0, E = g->moe_nexperts[m];
  buf[0] = 0;
  for (int e = 0; e < E; e++) {
    if (g->moe_expert_dev[m][e] != d) continue;
    int f = e;
    while (f + 1 < E && g->moe_expert_dev[m][f + 1] == d)
      f++;
    cnt += f - e + 1;
    if (k + 24 < n) k += (size_t)snprintf(buf + k, n - k, "%s%d", k ? ", " : "", e);
    if (f > e && k + 24 < n) k += (size_t)snprintf(buf + k, n - k, "-%d", f);
    e = f;
  }
  return cnt;
}

static const double *loads_of(const View *w, const char *name, int E) {
  const PlanLoads *pl = w->o->loads;
  for (int i = 0; pl && i < pl->n; i++)
    if (!strcmp(pl->names[i], name) && pl->nexperts[i] == E) return pl->load[i];
  return NULL;
}

/* Groups of an hmoe layer (params NAME.g0.w1, NAME.g1.w1, ...); 0 for a moe. */
static int layer_groups(const Graph *g, const char *name) {
  char buf[300];
  for (int G = 0;; G++) {
    snprintf(buf, sizeof buf, "%s.g%d.w1", name, G);
    bool found = false;
    for (int i = 0; i < g->nparams && !found; i++)
      found = !strcmp(g->params[i]->name, buf);
    if (!found) return G;
  }
}

/* A MoE layer's box: its name and ops, then a table of devices (by mesh node) and the
 * experts each holds, with its share of the measured load. */
static void moe_label(const View *w, const VNode *x, McBuf *b) {
  const Graph *g = w->g;
  int m = moe_of(g, x->layer);
  bool placed = g->moe_expert_dev && w->P > 1;
  int E = placed ? g->moe_nexperts[m] : 0, G = layer_groups(g, x->layer), Eg = G ? E / G : 0;
  const double *load = placed ? loads_of(w, x->layer, E) : NULL;
  double total = 0;
  for (int e = 0; load && e < E; e++)
    total += load[e];
  const int cols = load ? 3 : 2;
  mc_buf_printf(b, "<<TABLE BORDER=\"0\" CELLBORDER=\"1\" CELLSPACING=\"0\" CELLPADDING=\"3\">");
  mc_buf_printf(b, "<TR><TD COLSPAN=\"%d\"><B>", cols);
  html_text(b, x->layer);
  mc_buf_printf(b, "</B>: %s, %d op%s, %.3g GFLOP/step</TD></TR>",
                x->backward ? "backward" : "mixture of experts", x->nops, x->nops == 1 ? "" : "s",
                x->flops / 1e9);
  if (!placed) {
    mc_buf_printf(b, "<TR><TD COLSPAN=\"2\">every expert on %s</TD></TR></TABLE>>",
                  w->P <= 1 ? "the device" : "every device");
    return;
  }
  bool replicated = E > 0 && g->moe_expert_dev[m][0] < 0;
  if (replicated) {
    mc_buf_printf(b, "<TR><TD COLSPAN=\"%d\">%d experts on every device (replicated)</TD></TR></TABLE>>",
                  cols, E);
    return;
  }
  for (int d = 0; d < w->P; d++) {
    char r[512];
    int cnt = experts_on(g, m, d, r, sizeof r);
    if (w->nodes > 1 && d % w->per_node == 0) {
      int nd = d / w->per_node;
      mc_buf_printf(b, "<TR><TD COLSPAN=\"%d\" BGCOLOR=\"grey95\">node %d", cols, nd);
      if (G > 0) { /* an hmoe: the groups whose experts are all in this node */
        uint64_t whole = 0; /* groups 0..63 drawn; more are rare in a picture */
        for (int j = 0; j < G && j < 64; j++) {
          bool inside = true;
          for (int e = j * Eg; e < (j + 1) * Eg && inside; e++)
            inside = g->moe_expert_dev[m][e] >= 0 && g->moe_expert_dev[m][e] / w->per_node == nd;
          if (inside) whole |= (uint64_t)1 << j;
        }
        char gr[160];
        mask_str(whole, gr, sizeof gr);
        if (whole) mc_buf_printf(b, ": groups %s whole", gr);
      }
      mc_buf_printf(b, "</TD></TR>");
    }
    mc_buf_printf(b, "<TR><TD BGCOLOR=\"%s\">device %d</TD><TD ALIGN=\"LEFT\">", colour[d % NCOLOUR], d);
    if (cnt)
      mc_buf_printf(b, "%d expert%s: %s", cnt, cnt == 1 ? "" : "s", r);
    else
      mc_buf_printf(b, "no experts");
    mc_buf_printf(b, "</TD>");
    if (load && total > 0) {
      double l = 0;
      for (int e = 0; e < E; e++)
        if (g->moe_expert_dev[m][e] == d) l += load[e];
      mc_buf_printf(b, "<TD>load %.1f%%</TD>", 100 * l / total);
    }
    mc_buf_printf(b, "</TR>");
  }
  mc_buf_printf(b, "</TABLE>>");
}

/* Bytes of an all_to_all (or back) that cross mesh nodes, uniform routing: each sending
 * device's rows spread evenly over the layer's experts. */
static double cross_node_bytes(const View *w, const Node *n, double expected) {
  const Graph *g = w->g;
  int m = (int)n->ia[0];
  if (w->nodes <= 1 || !g->moe_expert_dev || m < 0 || m >= g->nmoe) return 0;
  uint64_t senders = n->ia[2] ? (uint64_t)n->ia[2] : ir_all_mask(w->P);
  int E = g->moe_nexperts[m], ns = 0, G = g->moe_ngroups ? g->moe_ngroups[m] : 0;
  double cross = 0, remote = 0;
  if (G > 0 && !n->ia[3]) { /* hmoe's expert level: from each group's device to its experts */
    for (int e = 0; e < E; e++) {
      int s = g->moe_group_dev[m][e / (E / G)], d = g->moe_expert_dev[m][e];
      remote += d != s;
      cross += d != s && d / w->per_node != s / w->per_node;
    }
    return remote > 0 ? expected * cross / remote : 0;
  }
  const int *map = G > 0 ? g->moe_group_dev[m] : g->moe_expert_dev[m]; /* group rows: by group */
  if (G > 0) E = G;
  for (int s = 0; s < w->P; s++) {
    if (!(senders >> s & 1)) continue;
    ns++;
    for (int e = 0; e < E; e++) {
      int d = map[e];
      if (d < 0 || d == s) continue;
      remote += 1;
      cross += d / w->per_node != s / w->per_node;
    }
  }
  return remote > 0 ? expected * cross / remote : 0;
}

static void coll_label(const View *w, const VNode *x, McBuf *b) {
  const Node *n = x->first;
  CommBytes cb = pass_comm_bytes(w->g, n);
  bool grad = n->op == OP_ALL_REDUCE || n->op == OP_SPARSE_ALL_REDUCE; /* named by its sum */
  const Tensor *t = grad ? n->out[0] : n->in[0];
  char m[160];
  uint64_t mask = ir_node_mask(n, w->P);
  if (n->op == OP_RESHARD) mask = (uint64_t)n->ia[2] | (uint64_t)n->ia[3];
  mask_str(mask, m, sizeof m);
  char h1[32], h2[32];
  mc_buf_printf(b, "\"%s\\n%s", ir_ops[n->op].name, t->name);
  for (int i = 2; !grad && i < n->nin; i++) /* rows that travel with it (an hmoe's group rows) */
    mc_buf_printf(b, " + %s", n->in[i]->name);
  mc_buf_printf(b, "\\n%s/step", human_bytes((double)cb.expected, h1, sizeof h1));
  if (cb.upper != cb.expected)
    mc_buf_printf(b, " (at most %s)", human_bytes((double)cb.upper, h2, sizeof h2));
  mc_buf_printf(b, "\\ndevices %s", m);
  if (n->op == OP_ALL_TO_ALL || n->op == OP_ALL_TO_ALL_BACK) {
    double c = cross_node_bytes(w, n, (double)cb.expected);
    if (w->nodes > 1) mc_buf_printf(b, "\\n%s across nodes", human_bytes(c, h1, sizeof h1));
  } else if (w->nodes > 1) {
    int first = __builtin_ctzll(mask) / w->per_node, last = (63 - __builtin_clzll(mask)) / w->per_node;
    if (first != last) mc_buf_printf(b, "\\nacross nodes %d-%d", first, last);
  }
  mc_buf_printf(b, "\"");
}

static void box_label(const View *w, const VNode *x, McBuf *b) {
  char sn[256];
  set_name(x->set, w->P, sn, sizeof sn);
  mc_buf_printf(b, "\"");
  mc_buf_printf(b, "%s%s", x->layer ? x->layer : "(model)", x->backward ? " (backward)" : "");
  if (x->nops > 1 || !expanded(w, x->layer)) mc_buf_printf(b, ": %d op%s", x->nops, x->nops == 1 ? "" : "s");
  mc_buf_printf(b, "\\n%s", x->ops.data ? x->ops.data : "");
  if (x->flops > 0) mc_buf_printf(b, "\\n%.3g GFLOP/step", x->flops / 1e9);
  mc_buf_printf(b, "\"");
}

/* ---------------------------------------------------------------- the picture */

/* The device sets a view uses (once each, in order) and whether it has collectives. */
static int view_sets(const View *w, DevSet *seen, int ns, int cap, bool *coll) {
  for (int i = 0; i < w->nv; i++) {
    if (w->v[i].coll) {
      *coll = true;
      continue;
    }
    bool dup = false;
    for (int j = 0; j < ns; j++)
      dup |= seen[j].kind == w->v[i].set.kind && seen[j].mask == w->v[i].set.mask;
    if (!dup && ns < cap) seen[ns++] = w->v[i].set;
  }
  return ns;
}

/* The legend: each device's colour (by mesh node) and a key per device set used. */
static void legend(int P, int nodes, int per_node, const DevSet *seen, int ns, bool coll,
                   McBuf *b) {
  mc_buf_printf(b,
                "  subgraph cluster_legend {\n    label=\"%d device%s%s\"; fontsize=11; "
                "style=rounded; color=grey60;\n",
                P, P == 1 ? "" : "s", nodes > 1 ? " in nodes" : "");
  /* one swatch per device, by mesh node */
  for (int nd = 0; nd < nodes && P > 1; nd++) {
    if (nodes > 1)
      mc_buf_printf(b, "    subgraph cluster_mesh%d { label=\"node %d\"; fontsize=10;\n", nd, nd);
    for (int d = nd * per_node; d < (nd + 1) * per_node && d < P; d++)
      mc_buf_printf(b, "      dev%d [label=\"device %d\", shape=box, style=filled, fillcolor=\"%s\", "
                       "fontsize=10];\n",
                    d, d, colour[d % NCOLOUR]);
    if (nodes > 1) mc_buf_printf(b, "    }\n");
  }
  for (int d = 0; d + 1 < P; d++) /* the swatches in device order, left to right */
    mc_buf_printf(b, "    dev%d -> dev%d [style=invis];\n", d, d + 1);
  if (P > 1) {
    mc_buf_printf(b, "    { rank=same;");
    for (int d = 0; d < P; d++)
      mc_buf_printf(b, " dev%d;", d);
    mc_buf_printf(b, " }\n");
  }
  for (int j = 0; j < ns; j++) {
    char st[32], fill[256], name[256];
    set_style(seen[j], P, st, sizeof st, fill, sizeof fill);
    set_name(seen[j], P, name, sizeof name);
    mc_buf_printf(b, "    key%d [label=\"%s\", shape=box, style=\"%s\", fillcolor=\"%s\", fontsize=10];\n", j,
                  name, st, fill);
  }
  if (coll)
    mc_buf_printf(b, "    keyc [label=\"collective: bytes per step\", shape=octagon, style=filled, "
                     "fillcolor=orange, fontsize=10];\n");
  mc_buf_printf(b, "  }\n");
}

/* The half not drawn, as one box: its ops and the bytes its collectives move. */
static void summary(const View *w, const char *pre, McBuf *b) {
  if (!strcmp(w->o->view, "all")) return;
  bool want_bwd = !strcmp(w->o->view, "forward");
  int ops = 0, colls = 0;
  double bytes = 0, flops = 0;
  for (int k = 0; k < w->g->nnodes; k++) {
    const Node *n = w->g->nodes[k];
    if (n->backward != want_bwd) continue;
    ops++;
    flops += plan_node_flops(n);
    if (ir_ops[n->op].flags & OPF_COLLECTIVE) {
      colls++;
      bytes += (double)pass_comm_bytes(w->g, n).expected;
    }
  }
  if (!ops) return;
  char hb[32];
  mc_buf_printf(b,
                "  %sother [label=\"%s pass (not drawn: --view %s)\\n%d ops, %.3g GFLOP/step\\n%d "
                "collectives, %s/step\", shape=note, style=filled, fillcolor=white];\n",
                pre, want_bwd ? "backward" : "forward", want_bwd ? "backward" : "forward", ops,
                flops / 1e9, colls, human_bytes(bytes, hb, sizeof hb));
}

static void view_init(View *w, const Graph *g, const PlanCost *c, const Config *cfg,
                      const PlotOpts *o) {
  *w = (View){.g = g, .c = c, .cfg = cfg, .o = o, .P = c->devices};
  w->nodes = cfg->mesh_nodes > 1 ? cfg->mesh_nodes : 1;
  w->per_node = w->nodes > 1 ? cfg->mesh_per_node : w->P;
  build_view(w);
}

static void view_free(View *w) {
  for (int i = 0; i < w->nv; i++)
    mc_buf_free(&w->v[i].ops);
  mc_free(w->v);
  mc_free(w->of);
}

/* The plan's boxes, collectives and edges; every name starts with pre, so that one
 * picture can hold several plans (a search's candidates). */
static void body(const View *vw, const char *pre, McBuf *b) {
  const View w = *vw;
  const Graph *g = w.g;
  /* a MoE layer's box and its collectives in one cluster */
  bool *done = mc_calloc((size_t)w.nv + 1, sizeof(bool));
  for (int i = 0; i < w.nv; i++) {
    const VNode *x = &w.v[i];
    if (!x->moe || done[i]) continue;
    mc_buf_printf(b, "  subgraph cluster_%sv%d {\n    label=\"\"; style=rounded; color=grey50;\n",
                  pre, i);
    for (int j = i; j < w.nv; j++) {
      const VNode *y = &w.v[j];
      bool same = y->layer && x->layer && !strcmp(y->layer, x->layer) && y->backward == x->backward;
      if (!same || !(y->moe || y->coll)) continue;
      done[j] = true;
      mc_buf_printf(b, "    %sv%d [", pre, j);
      McBuf lb = {0};
      if (y->coll) {
        coll_label(&w, y, &lb);
        mc_buf_printf(b, "label=%s, shape=octagon, style=filled, fillcolor=orange", lb.data);
      } else {
        moe_label(&w, y, &lb);
        mc_buf_printf(b, "label=%s, shape=plain", lb.data);
      }
      mc_buf_free(&lb);
      mc_buf_printf(b, "];\n");
    }
    mc_buf_printf(b, "  }\n");
  }
  for (int i = 0; i < w.nv; i++) {
    const VNode *x = &w.v[i];
    if (done[i]) continue;
    McBuf lb = {0};
    if (x->coll) {
      coll_label(&w, x, &lb);
      mc_buf_printf(b, "  %sv%d [label=%s, shape=octagon, style=filled, fillcolor=orange];\n", pre,
                    i, lb.data);
    } else {
      char st[32], fill[256];
      set_style(x->set, w.P, st, sizeof st, fill, sizeof fill);
      box_label(&w, x, &lb);
      mc_buf_printf(b, "  %sv%d [label=%s, shape=box, style=\"%s\", fillcolor=\"%s\"%s];\n", pre, i,
                    lb.data, st, fill, x->backward ? ", color=grey40, penwidth=1.5" : "");
    }
    mc_buf_free(&lb);
  }
  summary(&w, pre, b);
  /* edges between view nodes, once each (node ids: the passes number them in order) */
  int maxid = 0;
  for (int k = 0; k < g->nnodes; k++)
    maxid = MC_MAX(maxid, g->nodes[k]->id);
  int *at = mc_calloc((size_t)maxid + 1, sizeof(int)); /* node id -> its view node */
  for (int k = 0; k < g->nnodes; k++)
    at[g->nodes[k]->id] = w.of[k];
  uint64_t *seen = mc_calloc((size_t)g->nnodes * 4 + 16, sizeof(uint64_t));
  int nseen = 0, cap = g->nnodes * 4 + 16;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    int to = w.of[k];
    if (to < 0) continue;
    for (int i = 0; i < n->nin; i++) {
      const Node *p = n->in[i]->producer;
      if (!p) continue;
      int from = at[p->id];
      if (from < 0 || from == to) continue;
      uint64_t key = (uint64_t)from << 32 | (uint64_t)to;
      bool dup = false;
      for (int s = 0; s < nseen && !dup; s++)
        dup = seen[s] == key;
      if (dup || nseen >= cap) continue;
      seen[nseen++] = key;
      mc_buf_printf(b, "  %sv%d -> %sv%d;\n", pre, from, pre, to);
    }
  }
  mc_free(at);
  mc_free(seen);
  mc_free(done);
}

void plan_dot(const Graph *g, const PlanCost *c, const Config *cfg, const PlotOpts *o, McBuf *b) {
  View w;
  view_init(&w, g, c, cfg, o);
  mc_buf_printf(b,
                "digraph \"%s\" {\n  rankdir=TB; newrank=true; fontname=\"Helvetica\";\n"
                "  node [fontname=\"Helvetica\", fontsize=11]; edge [color=grey40];\n",
                g->name);
  mc_buf_printf(b,
                "  label=\"plan %s: %d device%s, strategy %s, experts %s; %s view\"; labelloc=t;\n",
                g->name, w.P, w.P == 1 ? "" : "s", cfg->strategy, cfg->expert_policy, o->view);
  DevSet sets[64] = {0};
  bool coll = false;
  int ns = view_sets(&w, sets, 0, 64, &coll);
  legend(w.P, w.nodes, w.per_node, sets, ns, coll, b);
  body(&w, "", b);
  mc_buf_printf(b, "}\n");
  view_free(&w);
}

/* ---------------------------------------------------------------- a search's candidates */

struct PlanDotSearch {
  char title[512];
  int P, nodes, per_node, n;
  DevSet sets[64];
  int nsets;
  bool coll;
  McBuf body;
};

PlanDotSearch *plan_dot_search_new(const char *title, int P, int nodes) {
  PlanDotSearch *s = mc_calloc(1, sizeof *s);
  snprintf(s->title, sizeof s->title, "%s", title);
  s->P = P;
  s->nodes = nodes > 1 && P % nodes == 0 ? nodes : 1;
  s->per_node = P / s->nodes;
  return s;
}

/* One candidate: its own plan picture (the forward view, each MoE layer one box) in a
 * cluster titled label, its names prefixed c<n>_. */
void plan_dot_search_add(PlanDotSearch *s, const Graph *g, const PlanCost *c, const Config *cfg,
                         const PlotOpts *o, const char *label) {
  View w;
  view_init(&w, g, c, cfg, o);
  s->nsets = view_sets(&w, s->sets, s->nsets, 64, &s->coll);
  char pre[32];
  snprintf(pre, sizeof pre, "c%d_", ++s->n);
  mc_buf_printf(&s->body, "  subgraph cluster_c%d {\n  label=\"", s->n);
  for (const char *q = label; *q; q++) /* label: DOT's \n separates lines */
    if (*q == '"')
      mc_buf_printf(&s->body, "\\\"");
    else
      mc_buf_putc(&s->body, *q);
  mc_buf_printf(&s->body, "\"; fontsize=12; style=rounded; color=grey30; penwidth=1.5;\n");
  body(&w, pre, &s->body);
  mc_buf_printf(&s->body, "  }\n");
  view_free(&w);
}

void plan_dot_search_end(PlanDotSearch *s, McBuf *b) {
  mc_buf_printf(b,
                "digraph \"search\" {\n  rankdir=TB; newrank=true; fontname=\"Helvetica\";\n"
                "  node [fontname=\"Helvetica\", fontsize=11]; edge [color=grey40];\n"
                "  label=\"%s\"; labelloc=t;\n",
                s->title);
  legend(s->P, s->nodes, s->per_node, s->sets, s->nsets, s->coll, b);
  if (s->body.data) mc_buf_printf(b, "%s", s->body.data);
  mc_buf_printf(b, "}\n");
  mc_buf_free(&s->body);
  mc_free(s);
}

/* ---------------------------------------------------------------- rendering */

bool plan_render(const char *dot, const char *format, const char *path, char *err, size_t errlen) {
#ifdef MOEC_HAVE_GVC
  GVC_t *gvc = gvContext();
  Agraph_t *gr = agmemread(dot);
  if (!gr) {
    snprintf(err, errlen, "Graphviz could not read the plan's DOT");
    gvFreeContext(gvc);
    return false;
  }
  int rc = gvLayout(gvc, gr, "dot");
  if (rc == 0) rc = path ? gvRenderFilename(gvc, gr, format, path) : gvRender(gvc, gr, format, stdout);
  if (rc != 0) snprintf(err, errlen, "Graphviz could not render %s%s%s", format, path ? " to " : "", path ? path : "");
  gvFreeLayout(gvc, gr);
  agclose(gr);
  gvFreeContext(gvc);
  return rc == 0;
#else
  (void)dot, (void)format, (void)path;
  snprintf(err, errlen,
           "moec was built without Graphviz's library (install libgraphviz-dev and rebuild), so "
           "it cannot render %s: use --format dot and Graphviz's `dot -T%s`",
           format, format);
  return false;
#endif
}

int plan_write_picture(const char *dot, const char *format, const char *out) {
  if (!strcmp(format, "dot")) {
    FILE *f = out ? fopen(out, "w") : stdout;
    if (!f || fputs(dot, f) < 0 || (out && fclose(f) != 0)) {
      fprintf(stderr, "moec plan: error: cannot write '%s'\n", out ? out : "stdout");
      return 1;
    }
    return 0;
  }
  char err[512];
  if (!strcmp(format, "png") && !out) {
    fprintf(stderr, "moec plan: error: --format png needs -o FILE\n");
    return 2;
  }
  if (!plan_render(dot, format, out, err, sizeof err)) {
    fprintf(stderr, "moec plan: error: %s\n", err);
    return 1;
  }
  return 0;
}
