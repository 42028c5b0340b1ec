/* comm_dev.c: the device Comm (host buffers -> the host Comm, device buffers -> a
 * transport or staged through host memory) and the collective ops' kernels on device
 * buffers, written once over a DevMem (comm_dev.h). The kernels follow
 * runtime/kernels_comm.c's layouts exactly (docs/multidev.md); what they do on the
 * host is small: offsets, counts and segment lists. */
#include <pthread.h>
#include <string.h>

#include "comm_dev.h"
#include "kernels_comm.h"

/* ---------------------------------------------------------------- the device Comm */

typedef struct DevComm DevComm;
struct DevComm {
  Comm c; /* c.impl == this */
  Comm *host;
  const DevMem *mem;
  void *dev;
  const CommTransport *t; /* NULL: device buffers staged through host memory */
  void *st;
  uint64_t mask;        /* a subset: its ranks in the parent */
  DevComm *subs, *next; /* subsets made so far; the next sibling */
};

static DevComm *dc_of(Comm *c) {
  return c->impl;
}

/* Every buffer is device memory (none NULL), and a transport moves them. */
static bool on_transport(const DevComm *d, const void *const *p, int n) {
  if (!d->t) return false;
  for (int i = 0; i < n; i++)
    if (!p[i] || !d->mem->is_device(p[i])) return false;
  return true;
}

static bool is_dev(const DevComm *d, const void *p) {
  return p && d->mem->is_device(p);
}

/* A host copy of `bytes` of device buffer p (download), or p itself on the host. */
static void *host_in(const DevComm *d, const void *p, size_t bytes, void **owned) {
  *owned = NULL;
  if (!is_dev(d, p)) return (void *)p;
  *owned = mc_malloc(MC_MAX(bytes, 1));
  if (bytes) d->mem->download(d->dev, *owned, p, bytes);
  return *owned;
}

/* Room on the host for what a collective writes into p (`bytes`), or p itself. */
static void *host_out(const DevComm *d, void *p, size_t bytes, void **owned) {
  *owned = NULL;
  if (!is_dev(d, p)) return p;
  *owned = mc_malloc(MC_MAX(bytes, 1));
  return *owned;
}

static void ar_any(Comm *c, void *buf, int64_t n, size_t elem) {
  DevComm *d = dc_of(c);
  const void *b[1] = {buf};
  if (n > 0 && on_transport(d, b, 1)) {
    d->t->all_reduce_sum(d->st, buf, n, elem);
    return;
  }
  void *own;
  size_t nb = (size_t)MC_MAX(n, 0) * elem;
  void *h = host_in(d, buf, nb, &own);
  if (elem == sizeof(double))
    d->host->all_reduce_sum_f64(d->host, h, n);
  else
    d->host->all_reduce_sum_f32(d->host, h, n);
  if (own) {
    if (nb) d->mem->upload(d->dev, buf, own, nb);
    mc_free(own);
  }
}

static void dc_ar_f32(Comm *c, float *buf, int64_t n) {
  ar_any(c, buf, n, sizeof(float));
}
static void dc_ar_f64(Comm *c, double *buf, int64_t n) {
  ar_any(c, buf, n, sizeof(double));
}

static int64_t extent(const int64_t *count, const int64_t *displ, int n) {
  int64_t e = 0;
  for (int p = 0; p < n; p++)
    if (count[p] > 0) e = MC_MAX(e, displ[p] + count[p]);
  return e;
}

static void dc_all_to_allv(Comm *c, const void *send, const int64_t *sc, const int64_t *sd,
                           void *recv, const int64_t *rc, const int64_t *rd) {
  DevComm *d = dc_of(c);
  const void *b[2] = {send, recv};
  if (on_transport(d, b, 2)) {
    d->t->all_to_allv(d->st, send, sc, sd, recv, rc, rd);
    return;
  }
  void *so, *ro;
  const void *hs = host_in(d, send, (size_t)extent(sc, sd, c->size), &so);
  void *hr = host_out(d, recv, (size_t)extent(rc, rd, c->size), &ro);
  d->host->all_to_allv(d->host, hs, sc, sd, hr, rc, rd);
  if (ro) /* only the received ranges: the bytes between them stay as they were */
    for (int p = 0; p < c->size; p++)
      if (rc[p] > 0)
        d->mem->upload(d->dev, (char *)recv + rd[p], (char *)ro + rd[p], (size_t)rc[p]);
  mc_free(so);
  mc_free(ro);
}

static void dc_all_gather(Comm *c, const void *send, void *recv, size_t bytes) {
  DevComm *d = dc_of(c);
  const void *b[2] = {send, recv};
  if (bytes && on_transport(d, b, 2)) {
    d->t->all_gather(d->st, send, recv, bytes);
    return;
  }
  void *so, *ro;
  size_t all = bytes * (size_t)c->size;
  const void *hs = host_in(d, send, bytes, &so);
  void *hr = host_out(d, recv, all, &ro);
  d->host->all_gather(d->host, hs, hr, bytes);
  if (ro && all) d->mem->upload(d->dev, recv, ro, all);
  mc_free(so);
  mc_free(ro);
}

static void dc_broadcast(Comm *c, void *buf, size_t bytes, int root) {
  DevComm *d = dc_of(c);
  const void *b[1] = {buf};
  if (bytes && on_transport(d, b, 1)) {
    d->t->broadcast(d->st, buf, bytes, root);
    return;
  }
  void *own = NULL, *h = buf;
  if (is_dev(d, buf)) { /* the root's bytes go out, the others' come in */
    h = own = mc_malloc(MC_MAX(bytes, 1));
    if (c->rank == root && bytes) d->mem->download(d->dev, own, buf, bytes);
  }
  d->host->broadcast(d->host, h, bytes, root);
  if (own && c->rank != root && bytes) d->mem->upload(d->dev, buf, own, bytes);
  mc_free(own);
}

static void dc_barrier(Comm *c) {
  DevComm *d = dc_of(c);
  d->host->barrier(d->host);
}

static _Noreturn void dc_abort(Comm *c, const char *reason) {
  DevComm *d = dc_of(c);
  d->host->abort(d->host, reason);
  mc_fatal("abort of a %s communicator returned", d->host->name); /* never: abort stops */
}

static DevComm *dc_new(Comm *host, const DevMem *mem, void *dev, const CommTransport *t, void *st);

static Comm *dc_subset(Comm *c, uint64_t mask) {
  DevComm *d = dc_of(c);
  for (DevComm *s = d->subs; s; s = s->next)
    if (s->mask == mask) return &s->c;
  Comm *hs = comm_subset(d->host, mask);
  DevComm *s = dc_new(hs, d->mem, d->dev, d->t, d->t ? d->t->subset(d->st, hs) : NULL);
  s->mask = mask;
  s->next = d->subs;
  d->subs = s;
  return &s->c;
}

static DevComm *dc_new(Comm *host, const DevMem *mem, void *dev, const CommTransport *t, void *st) {
  DevComm *d = mc_calloc(1, sizeof(DevComm));
  d->host = host;
  d->mem = mem;
  d->dev = dev;
  d->t = t;
  d->st = st;
  d->c = (Comm){.name = t ? t->name : "staged",
                .rank = host->rank,
                .size = host->size,
                .impl = d,
                .all_reduce_sum_f32 = dc_ar_f32,
                .all_reduce_sum_f64 = dc_ar_f64,
                .all_to_allv = dc_all_to_allv,
                .all_gather = dc_all_gather,
                .broadcast = dc_broadcast,
                .barrier = dc_barrier,
                .abort = dc_abort,
                .subset = dc_subset};
  return d;
}

Comm *rt_comm_dev_new(Comm *host, const DevMem *mem, void *dev, const CommTransport *t, void *st) {
  MOEC_ASSERT(host && mem && (!t || st));
  return &dc_new(host, mem, dev, t, st)->c;
}

static void dc_free(DevComm *d) {
  while (d->subs) {
    DevComm *s = d->subs;
    d->subs = s->next;
    dc_free(s);
  }
  if (d->t && d->st) d->t->free(d->st);
  mc_free(d);
}

void rt_comm_dev_free(Comm *c) {
  if (c) dc_free(dc_of(c));
}

Comm *rt_comm_dev_host(Comm *c) {
  return c && c->all_to_allv == dc_all_to_allv ? dc_of(c)->host : c;
}

/* ---------------------------------------------------------------- collective kernels */

/* This device's offsets i32[E+1] of node n's batch side, on the host: in[1]'s (checked
 * as the MoE kernels check them: 0 = off[0] <= ... <= off[E] <= R), or zeros on a
 * device outside the batch side (ia[2]: the moe layer's dense nodes on(...) a subset). */
static int32_t *batch_offsets(const DevMem *m, const KernelCtx *ctx, const Node *n,
                              const void *dev_off, int64_t E, int64_t R) {
  int32_t *off = mc_calloc((size_t)E + 1, sizeof(int32_t));
  uint64_t side = (uint64_t)n->ia[2];
  if (side && !(side >> ctx->comm->rank & 1)) return off;
  if (m->download_offsets)
    m->download_offsets(ctx->dev, n->in[1], off, dev_off, E + 1);
  else
    m->download(ctx->dev, off, dev_off, (size_t)(E + 1) * sizeof(int32_t));
  rt_moe_check_offsets(n, off, E, R);
  return off;
}

static bool identity(const RtSeg *s, int n) {
  for (int i = 0; i < n; i++)
    if (s[i].dst != s[i].src) return false;
  return true;
}

static bool overlap(const void *a, int64_t na, const void *b, int64_t nb) {
  const char *x = a, *y = b;
  return na > 0 && nb > 0 && x < y + nb && y < x + na;
}

/* (x[R,M] rows grouped by expert, offsets i32[E+1]) -> (y[Rcap,M] this device's experts'
 * rows from every device, grouped by expert then source; recv offsets of the local
 * experts (E_r + 1) or of all E (+1)): kernels_comm.c's all_to_all */
static void all_to_all(const DevMem *m, const KernelCtx *ctx, const Node *n, void *const *in,
                       void *const *out, size_t elem, double *payload, double *sent) {
  Comm *c = rt_comm_need(ctx, n);
  void *dev = ctx->dev;
  int P = c->size, me = c->rank;
  int64_t E = n->in[1]->numel - 1, M = rt_comm_row_width(n->in[0]), cap = n->out[0]->shape[0];
  const int *map = rt_comm_expert_map(ctx, n, E);
  bool ids = n->in[0]->ty.dtype == DT_I32; /* an hmoe's expert ids to the group side */
  if (ids) elem = sizeof(int32_t);
  int64_t rb = M * (int64_t)elem;
  int32_t *off = batch_offsets(m, ctx, n, in[1], E, n->in[0]->shape[0]);
  int64_t *cnt = rt_comm_gather_counts(c, off, E);
  rt_comm_rows_need(ctx, n, map, cnt, P, me, E); /* may move out[0] (runtime/rows.c) */
  cap = n->out[0]->shape[0];
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  RtSeg *seg = mc_malloc(sizeof(RtSeg) * (size_t)MC_MAX(E * MC_MAX(P, 1), 1));
  /* send: for each device d, its experts in order, my rows of each */
  int ns = 0;
  int64_t pos = 0;
  for (int d = 0; d < P; d++) {
    sd[d] = pos;
    for (int64_t e = 0; e < E; e++)
      if (map[e] == d && off[e + 1] > off[e]) {
        int64_t nb = (off[e + 1] - off[e]) * rb;
        seg[ns++] = (RtSeg){pos, off[e] * rb, nb};
        pos += nb;
      }
    sc[d] = pos - sd[d];
  }
  const void *send = in[0]; /* experts grouped by device already: no packing */
  if (!identity(seg, ns)) {
    void *buf = m->scratch(dev, 0, (size_t)pos);
    m->copy_segs(dev, buf, in[0], seg, ns);
    send = buf;
  }
  int64_t total = rt_comm_a2a_recv(n, map, cnt, P, me, E, rb, rc);
  *sent = (double)(pos - sc[me]); /* rows to experts on other devices */
  *payload = (double)off[E] * (double)rb;
  comm_displs(rc, P, rd);
  int64_t El = n->out[1]->numel - 1;
  /* unpack: expert-major, sources in rank order; the offsets as the CPU writes them */
  int32_t *roff = mc_calloc((size_t)El + 1, sizeof(int32_t));
  int64_t *cur = mc_calloc((size_t)P, sizeof(int64_t));
  RtSeg *useg = mc_malloc(sizeof(RtSeg) * (size_t)MC_MAX(E * MC_MAX(P, 1), 1));
  int nu = 0;
  int64_t r = 0, l = 0;
  for (int64_t e = 0; e < E; e++) {
    if (El == E) roff[e] = (int32_t)r;
    if (map[e] != me) continue;
    if (El != E) roff[l++] = (int32_t)r;
    for (int s = 0; s < P; s++) {
      int64_t nb = cnt[s * E + e] * rb;
      if (nb) useg[nu++] = (RtSeg){r * rb, rd[s] + cur[s], nb};
      cur[s] += nb;
      r += cnt[s * E + e];
    }
  }
  roff[El] = (int32_t)r;
  void *recv = out[0]; /* one local expert (or one source): the layout is the received one */
  if (!identity(useg, nu) || overlap(send, pos, out[0], total * rb))
    recv = m->scratch(dev, 1, (size_t)(total * rb));
  c->all_to_allv(c, send, sc, sd, recv, rc, rd);
  if (recv != out[0]) m->copy_segs(dev, out[0], recv, useg, nu);
  m->upload(dev, out[1], roff, (size_t)(El + 1) * sizeof(int32_t));
  if (m->offsets) m->offsets(dev, n, out[1], roff, El + 1);
  if (r < cap && ids) { /* unused rows hold id -1: no route (kernels_comm.c's) */
    size_t nb = (size_t)((cap - r) * rb);
    void *fill = mc_malloc(nb);
    memset(fill, 0xff, nb);
    m->upload(dev, (char *)out[0] + r * rb, fill, nb);
    mc_free(fill);
  } else if (r < cap) {
    m->zero(dev, (char *)out[0] + r * rb, (size_t)((cap - r) * rb));
  }
  mc_free(useg);
  mc_free(cur);
  mc_free(roff);
  mc_free(seg);
  mc_free(sc);
  mc_free(cnt);
  mc_free(off);
}

/* (y[Rcap,M] in all_to_all's received layout, the senders' offsets i32[E+1]) ->
 * y[R,M] rows back on their batch device at the sender's offsets: kernels_comm.c's
 * all_to_all_back */
static void all_to_all_back(const DevMem *m, const KernelCtx *ctx, const Node *n, void *const *in,
                            void *const *out, size_t elem, double *payload, double *sent) {
  Comm *c = rt_comm_need(ctx, n);
  void *dev = ctx->dev;
  int P = c->size, me = c->rank;
  if (n->in[0]->ty.dtype == DT_I32) elem = sizeof(int32_t);
  int64_t E = n->in[1]->numel - 1, M = rt_comm_row_width(n->in[0]), R = n->out[0]->shape[0];
  const int *map = rt_comm_expert_map(ctx, n, E);
  int64_t rb = M * (int64_t)elem;
  int32_t *off = batch_offsets(m, ctx, n, in[1], E, R);
  int64_t *cnt = rt_comm_gather_counts(c, off, E);
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  int64_t *start = rt_comm_back_starts(n, map, cnt, P, me, E);
  int64_t r = start[P * E]; /* the rows of this device's experts */
  RtSeg *seg = mc_malloc(sizeof(RtSeg) * (size_t)MC_MAX(E * MC_MAX(P, 1), 1));
  int ns = 0;
  int64_t pos = 0;
  for (int s = 0; s < P; s++) {
    sd[s] = pos;
    for (int64_t e = 0; e < E; e++)
      if (map[e] == me && cnt[s * E + e]) {
        int64_t nb = cnt[s * E + e] * rb;
        seg[ns++] = (RtSeg){pos, start[s * E + e] * rb, nb};
        pos += nb;
      }
    sc[s] = pos - sd[s];
  }
  const void *send = in[0];
  if (!identity(seg, ns)) {
    void *buf = m->scratch(dev, 0, (size_t)pos);
    m->copy_segs(dev, buf, in[0], seg, ns);
    send = buf;
  }
  *sent = (double)(pos - sc[me]);
  *payload = (double)r * (double)rb; /* the rows of this device's experts, sent back */
  for (int64_t e = 0; e < E; e++)
    rc[map[e]] += cnt[me * E + e] * rb;
  int64_t tot = comm_displs(rc, P, rd);
  RtSeg *useg = mc_malloc(sizeof(RtSeg) * (size_t)MC_MAX(E, 1));
  int64_t *cur = mc_calloc((size_t)P, sizeof(int64_t));
  int nu = 0;
  for (int64_t e = 0; e < E; e++) {
    int d = map[e];
    int64_t nb = (off[e + 1] - off[e]) * rb;
    if (nb) useg[nu++] = (RtSeg){off[e] * rb, rd[d] + cur[d], nb};
    cur[d] += nb;
  }
  void *recv = out[0];
  if (!identity(useg, nu) || overlap(send, pos, out[0], tot))
    recv = m->scratch(dev, 1, (size_t)tot);
  c->all_to_allv(c, send, sc, sd, recv, rc, rd);
  if (recv != out[0]) m->copy_segs(dev, out[0], recv, useg, nu);
  if (off[E] < R) m->zero(dev, (char *)out[0] + off[E] * rb, (size_t)((R - off[E]) * rb));
  mc_free(cur);
  mc_free(useg);
  mc_free(seg);
  mc_free(start);
  mc_free(sc);
  mc_free(cnt);
  mc_free(off);
}

/* kernels_comm.c's CPU kernels, from a table of their own (the backend's table may hold
 * this file's kernels in those entries) */
static KernelFn cpu_t32[OP_COUNT], cpu_t64[OP_COUNT];
static void fill_cpu_comm(void) {
  rt_kern_comm_register(cpu_t32, cpu_t64);
}
static KernelFn cpu_kernel(OpKind op, Precision prec) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, fill_cpu_comm);
  return prec == PREC_F64 ? cpu_t64[op] : cpu_t32[op];
}

static size_t tensor_bytes(const Tensor *t, Precision prec) {
  size_t e = t->ty.dtype == DT_I32 ? sizeof(int32_t) : prec == PREC_F64 ? 8 : 4;
  return (size_t)t->numel * e;
}

/* The CPU kernel of n on host copies of its inputs, its outputs uploaded: the small
 * collectives whose work is host work anyway (an hmoe's i32 group offsets, the
 * batchwise cut: a sort of each expert's candidates). ctx->comm takes their host
 * buffers through its host Comm. */
static void on_host(const DevMem *m, const KernelCtx *ctx, const Node *n, void *const *in,
                    void *const *out, Precision prec) {
  void *hin[8] = {0}, *hout[8] = {0};
  MOEC_ASSERT(n->nin <= 8 && n->nout <= 8);
  for (int i = 0; i < n->nin; i++) {
    size_t nb = tensor_bytes(n->in[i], prec);
    hin[i] = mc_malloc(MC_MAX(nb, 1));
    if (nb) m->download(ctx->dev, hin[i], in[i], nb);
  }
  for (int j = 0; j < n->nout; j++)
    hout[j] = mc_malloc(MC_MAX(tensor_bytes(n->out[j], prec), 1));
  cpu_kernel(n->op, prec)(ctx, n, hin, hout);
  for (int j = 0; j < n->nout; j++) {
    size_t nb = tensor_bytes(n->out[j], prec);
    if (nb) m->upload(ctx->dev, out[j], hout[j], nb);
    mc_free(hout[j]);
  }
  for (int i = 0; i < n->nin; i++)
    mc_free(hin[i]);
}

/* An all-to-all with more row tensors after the offsets (an hmoe's group rows with their
 * ids and gates): on a device each piece is exchanged on its own (the same rows and bytes;
 * one exchange per piece). */
static void by_piece(const DevMem *m, const KernelCtx *ctx, const Node *n, void *const *in,
                     void *const *out, size_t elem, double *payload, double *sent) {
  bool fwd = n->op == OP_ALL_TO_ALL;
  if (fwd && ctx->graph && ctx->graph->step_rows && n->out[0]->rows_per_step) {
    /* the expert rows sized per step grow for the whole node first (runtime/rows.c): a
     * growth inside the first piece's exchange would move the pieces' outputs under it */
    Comm *c = rt_comm_need(ctx, n);
    int64_t E = n->in[1]->numel - 1;
    int32_t *off = batch_offsets(m, ctx, n, in[1], E, n->in[0]->shape[0]);
    int64_t *cnt = rt_comm_gather_counts(c, off, E);
    rt_comm_rows_need(ctx, n, rt_comm_expert_map(ctx, n, E), cnt, c->size, c->rank, E);
    mc_free(cnt);
    mc_free(off);
  }
  for (int i = 0; i < n->nin; i++) {
    if (i == 1) continue;
    int o = i == 0 ? 0 : fwd ? i : i - 1;
    Node t = *n;
    Tensor *tin[2] = {n->in[i], n->in[1]}, *tout[2] = {n->out[o], fwd ? n->out[1] : NULL};
    void *pin[2] = {in[i], in[1]}, *pout[2] = {out[o], fwd ? out[1] : NULL};
    t.in = tin;
    t.out = tout;
    t.nin = 2;
    t.nout = fwd ? 2 : 1;
    double p = 0, s = 0;
    if (fwd)
      all_to_all(m, ctx, &t, pin, pout, elem, &p, &s);
    else
      all_to_all_back(m, ctx, &t, pin, pout, elem, &p, &s);
    *payload += p;
    *sent += s;
  }
}

void rt_kern_comm_dev(const DevMem *m, const KernelCtx *ctx, const Node *n, void *const *in,
                      void *const *out, Precision prec) {
  size_t elem = prec == PREC_F64 ? sizeof(double) : sizeof(float);
  double t0 = mc_now(), payload = 0, sent = 0;
  Comm *world = rt_comm_need(ctx, n);
  switch (n->op) {
  case OP_ALL_TO_ALL:
    if (n->nin > 2)
      by_piece(m, ctx, n, in, out, elem, &payload, &sent);
    else
      all_to_all(m, ctx, n, in, out, elem, &payload, &sent);
    rt_comm_count(ctx, CK_ALL_TO_ALL, t0, payload, sent);
    return;
  case OP_ALL_TO_ALL_BACK:
    if (n->nin > 2)
      by_piece(m, ctx, n, in, out, elem, &payload, &sent);
    else
      all_to_all_back(m, ctx, n, in, out, elem, &payload, &sent);
    rt_comm_count(ctx, CK_ALL_TO_ALL_BACK, t0, payload, sent);
    return;
  case OP_RESHARD:
    /* kernels_comm.c's reshard only computes ranges and calls all_to_allv on in[0] and
     * out[0]: with a device Comm it runs on device buffers as it is (and counts its
     * time and bytes itself) */
    cpu_kernel(OP_RESHARD, prec)(ctx, n, in, out);
    return;
  case OP_ALL_GATHER_TOPM:
    on_host(m, ctx, n, in, out, prec);
    return;
  case OP_ALL_REDUCE: {
    if (n->in[0]->ty.dtype == DT_I32) {
      on_host(m, ctx, n, in, out, prec);
      return;
    }
    Comm *c = comm_subset(world, ir_node_mask(n, world->size));
    int64_t len = n->in[0]->numel;
    double b = (double)len * (double)elem, nd = c->size;
    if (out[0] != in[0] && len > 0) {
      RtSeg s = {0, 0, len * (int64_t)elem};
      m->copy_segs(ctx->dev, out[0], in[0], &s, 1);
    }
    if (prec == PREC_F64)
      c->all_reduce_sum_f64(c, out[0], len);
    else
      c->all_reduce_sum_f32(c, out[0], len);
    rt_comm_count(ctx, CK_ALL_REDUCE, t0, b, 2 * (nd - 1) / nd * b); /* kernels_comm.c's */
    return;
  }
  default:
    mc_fatal("rt_kern_comm_dev: op '%s' is not a collective", ir_ops[n->op].name);
  }
}

void rt_kern_comm_dev_register(KernelFn *t32, KernelFn *t64, KernelFn f32, KernelFn f64) {
  static const OpKind ops[] = {OP_ALL_REDUCE, OP_ALL_TO_ALL, OP_ALL_TO_ALL_BACK, OP_RESHARD,
                               OP_ALL_GATHER_TOPM};
  for (size_t i = 0; i < MC_ARRAY_LEN(ops); i++) {
    t32[ops[i]] = f32;
    t64[ops[i]] = f64;
  }
}

/* ---------------------------------------------------------------- without CUDA */

#ifndef MOEC_HAVE_CUDA
static _Noreturn void no_cuda(void) {
  mc_die("backend cuda on several devices: moec was built without CUDA");
}
RtNcclGroup *rt_comm_nccl_init_all(int ndevices, bool nccl) {
  (void)ndevices, (void)nccl;
  no_cuda();
}
Comm *rt_comm_nccl_attach(RtNcclGroup *g, Comm *host) {
  (void)g, (void)host;
  no_cuda();
}
void rt_comm_nccl_group_free(RtNcclGroup *g) {
  (void)g;
}
Comm *rt_comm_nccl_init_rank(Comm *host, int local_rank, bool nccl) {
  (void)host, (void)local_rank, (void)nccl;
  no_cuda();
}
void rt_comm_nccl_free(Comm *c) {
  rt_comm_dev_free(c);
}
#endif
