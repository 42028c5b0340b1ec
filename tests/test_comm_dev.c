/* test_comm_dev.c: the device Comm and the collective ops' kernels on device buffers
 * (runtime/comm_dev.h), without a GPU.
 *
 * 1. dispatch: a device Comm over 4 in-process ranks with a fake device memory (a
 *    registry of blocks) and a fake transport (which counts its calls and moves bytes
 *    through the host Comm): host buffers go to the host Comm and never to the
 *    transport; device buffers to the transport; mixed or NULL buffers are staged
 *    (downloaded, host Comm, uploaded: only the received ranges written); a Comm without
 *    a transport stages every device call; subsets are made once per mask (a transport
 *    subset each), cached, and freed with the Comm; every result equals the host Comm's
 *    bit for bit.
 * 2. orchestration: whole training runs on N in-process devices (each device's program
 *    from drv_compile, trained by rt_train: what moec run does) with the CPU kernel table's
 * collectives replaced by rt_kern_comm_dev over host memory posing as device memory (scratch filled
 * with NaN each time, segments checked), through a device Comm with the counting transport: every
 * step's loss, gradient norm and MoE statistics, the evaluations and the saved checkpoint equal the
 * CPU kernels' run byte for byte, and the transport carried the rows. Models: experts sharded
 * (paper), data_parallel, hmoe (i32 all_reduce), batchwise gating (all_gather_topm), device subsets
 * (reshard, sub-communicators, E_r = 0), the factored optimizer; a batch of one row a device,
 * whose expert rows outgrow their slots and move apart mid-run (runtime/rows.c) as the cuda
 * backend's would: the same region on both.
 * 3. offsets: an all_to_all on device buffers with offsets past the rows, or decreasing,
 *    dies naming the op (the host copy is checked as the MoE kernels check theirs).
 * Usage: test_comm_dev TESTS_DIR (tests/, for multidev/md_*.moe). */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "driver/driver.h"
#include "runtime/comm_dev.h"
#include "runtime/multidev.h"
#include "runtime/train.h"
#include "tests/test.h"
#include "tests/test_model.h"

static char tmpdir[] = "/tmp/moec_test_comm_dev_death.XXXXXX";
#include "tests/test_death.h"

#define R 4 /* ranks of part 1 */

/* ---------------------------------------------------------------- fake device memory */

typedef struct DevBlock {
  char *p;
  size_t n;
} DevBlock;
static DevBlock blocks[256];
static int nblocks;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int downloads[R], uploads[R], tcalls[R], tsubsets[R], tfrees[R];

static void *dev_alloc(size_t n) {
  pthread_mutex_lock(&mu);
  MOEC_ASSERT(nblocks < 256);
  DevBlock *b = &blocks[nblocks++];
  b->p = mc_calloc(1, n);
  b->n = n;
  void *p = b->p;
  pthread_mutex_unlock(&mu);
  return p;
}

static bool reg_is_device(const void *p) {
  pthread_mutex_lock(&mu);
  bool yes = false;
  for (int i = 0; i < nblocks && !yes; i++)
    yes = (const char *)p >= blocks[i].p && (const char *)p < blocks[i].p + blocks[i].n;
  pthread_mutex_unlock(&mu);
  return yes;
}

static int dev_rank(void *dev) {
  return (int)(intptr_t)dev - 1;
}
static void reg_download(void *dev, void *dst, const void *src, size_t n) {
  CHECK(reg_is_device(src) && !reg_is_device(dst));
  downloads[dev_rank(dev)]++;
  memcpy(dst, src, n);
}
static void reg_upload(void *dev, void *dst, const void *src, size_t n) {
  CHECK(reg_is_device(dst) && !reg_is_device(src));
  uploads[dev_rank(dev)]++;
  memcpy(dst, src, n);
}
static void reg_copy_segs(void *dev, void *dst, const void *src, const RtSeg *s, int n) {
  (void)dev;
  for (int i = 0; i < n; i++)
    memcpy((char *)dst + s[i].dst, (const char *)src + s[i].src, (size_t)s[i].bytes);
}
static void reg_zero(void *dev, void *dst, size_t n) {
  (void)dev;
  memset(dst, 0, n);
}
static void *reg_scratch(void *dev, int slot, size_t n) {
  (void)dev, (void)slot, (void)n;
  MOEC_ASSERT(!"the Comm does not use scratch");
  return NULL;
}
static const DevMem reg_mem = {"registry", reg_is_device, reg_download, reg_upload, reg_copy_segs,
                               reg_zero,   reg_scratch,   NULL,         NULL};

/* ---------------------------------------------------------------- fake transport */

typedef struct FakeT {
  Comm *host;
  int world; /* the rank whose counters it bumps */
} FakeT;

static void ft_ar(void *st, void *buf, int64_t n, size_t elem) {
  FakeT *f = st;
  tcalls[f->world]++;
  if (elem == 8)
    f->host->all_reduce_sum_f64(f->host, buf, n);
  else
    f->host->all_reduce_sum_f32(f->host, buf, n);
}
static void ft_a2a(void *st, const void *send, const int64_t *sc, const int64_t *sd, void *recv,
                   const int64_t *rc, const int64_t *rd) {
  FakeT *f = st;
  tcalls[f->world]++;
  f->host->all_to_allv(f->host, send, sc, sd, recv, rc, rd);
}
static void ft_ag(void *st, const void *send, void *recv, size_t bytes) {
  FakeT *f = st;
  tcalls[f->world]++;
  f->host->all_gather(f->host, send, recv, bytes);
}
static void ft_bc(void *st, void *buf, size_t bytes, int root) {
  FakeT *f = st;
  tcalls[f->world]++;
  f->host->broadcast(f->host, buf, bytes, root);
}
static void *ft_subset(void *st, Comm *sub) {
  FakeT *f = st, *s = mc_calloc(1, sizeof(FakeT));
  tsubsets[f->world]++;
  s->host = sub;
  s->world = f->world;
  return s;
}
static void ft_free(void *st) {
  FakeT *f = st;
  tfrees[f->world]++;
  mc_free(f);
}
static const CommTransport fake_t = {"fake", ft_ar, ft_a2a, ft_ag, ft_bc, ft_subset, ft_free};

static Comm *fake_comm(Comm *host, bool transport, int world) {
  FakeT *f = NULL;
  if (transport) {
    f = mc_calloc(1, sizeof(FakeT));
    f->host = host;
    f->world = world;
  }
  return rt_comm_dev_new(host, &reg_mem, (void *)(intptr_t)(world + 1), transport ? &fake_t : NULL,
                         f);
}

/* ---------------------------------------------------------------- 1. dispatch */

static float val(int r, int i) {
  return (float)(r + 1) * 0.1f + (float)i * 1e-3f;
}

static void dispatch_rank(Comm *host, void *arg) {
  (void)arg;
  int me = host->rank, P = host->size;
  for (int with_t = 1; with_t >= 0; with_t--) {
    Comm *c = fake_comm(host, with_t, me);
    CHECK(c->rank == me && c->size == P && rt_comm_dev_host(c) == host);
    int t0 = tcalls[me], d0 = downloads[me], u0 = uploads[me];
    /* host buffers: the host Comm only */
    double x = me + 0.25;
    c->all_reduce_sum_f64(c, &x, 1);
    CHECK(x == 0.25 + 1.25 + 2.25 + 3.25);
    int32_t mine = 7 * me, all[R];
    c->all_gather(c, &mine, all, sizeof mine);
    for (int p = 0; p < P; p++)
      CHECK(all[p] == 7 * p);
    CHECK(tcalls[me] == t0 && downloads[me] == d0 && uploads[me] == u0);
    /* device buffers: the transport (or staged without one), the host Comm's bits */
    enum { N = 37 };
    float *dv = dev_alloc(N * sizeof(float)), ref[N], hv[N];
    for (int i = 0; i < N; i++) {
      dv[i] = hv[i] = val(me, i);
      ref[i] = val(0, i);
      for (int r = 1; r < P; r++)
        ref[i] += val(r, i);
    }
    c->all_reduce_sum_f32(c, dv, N);
    host->all_reduce_sum_f32(host, hv, N);
    CHECK(!memcmp(dv, hv, sizeof hv) && !memcmp(dv, ref, sizeof ref));
    CHECK(with_t ? tcalls[me] == t0 + 1 && downloads[me] == d0
                 : tcalls[me] == t0 && downloads[me] == d0 + 1 && uploads[me] == u0 + 1);
    /* all_to_allv: rank p sends p+q+1 bytes to q; device/device, then device -> host
     * (staged), whose gaps between received ranges must stay as they were */
    for (int mixed = 0; mixed < 2; mixed++) {
      int64_t sc[R], sd[R], rc[R], rd[R], st = 0, rt = 0;
      for (int q = 0; q < P; q++) {
        sc[q] = me + q + 1;
        sd[q] = st;
        st += sc[q];
        rc[q] = q + me + 1;
        rd[q] = rt + 1; /* one byte of gap before each range */
        rt += rc[q] + 1;
      }
      char *send = dev_alloc((size_t)st), hbuf[64], *recv = mixed ? hbuf : dev_alloc((size_t)rt);
      memset(recv, '#', (size_t)rt);
      for (int q = 0; q < P; q++)
        for (int j = 0; j < sc[q]; j++)
          send[sd[q] + j] = (char)('a' + 4 * me + q);
      int tc = tcalls[me], dn = downloads[me];
      c->all_to_allv(c, send, sc, sd, recv, rc, rd);
      for (int q = 0; q < P; q++) {
        CHECK(recv[rd[q] - 1] == '#');
        for (int j = 0; j < rc[q]; j++)
          CHECK(recv[rd[q] + j] == (char)('a' + 4 * q + me));
      }
      bool via_t = with_t && !mixed;
      CHECK(via_t ? tcalls[me] == tc + 1 : tcalls[me] == tc && downloads[me] == dn + 1);
    }
    /* broadcast from rank 2 of a device buffer */
    int32_t *b = dev_alloc(3 * sizeof(int32_t));
    for (int i = 0; i < 3; i++)
      b[i] = me == 2 ? 100 + i : -1;
    c->broadcast(c, b, 3 * sizeof(int32_t), 2);
    CHECK(b[0] == 100 && b[1] == 101 && b[2] == 102);
    /* comm_gatherv to root 1 (device send, recv NULL elsewhere: staged on every rank) */
    int64_t counts[R] = {1, 2, 3, 4};
    char *gs = dev_alloc(4), gr[10] = {0};
    memset(gs, '0' + me, 4);
    int tc = tcalls[me];
    comm_gatherv(c, gs, me == 1 ? gr : NULL, counts, 1);
    CHECK(tcalls[me] == tc);
    if (me == 1) CHECK(!memcmp(gr, "0112223333", 10));
    /* subsets: ranks {0, 2} and {1, 2, 3}; made once, cached */
    uint64_t masks[2] = {0x5, 0xe};
    for (int k = 0; k < 2; k++) {
      if (!(masks[k] >> me & 1)) continue;
      int s0 = tsubsets[me];
      Comm *s = comm_subset(c, masks[k]);
      CHECK(comm_subset(c, masks[k]) == s);
      CHECK(tsubsets[me] == s0 + (with_t ? 1 : 0));
      CHECK(s->size == __builtin_popcountll(masks[k]));
      CHECK(s->rank == __builtin_popcountll(masks[k] & ((1ull << me) - 1)));
      float *sv = dev_alloc(sizeof(float));
      *sv = (float)(me + 1);
      s->all_reduce_sum_f32(s, sv, 1);
      CHECK(*sv == (k == 0 ? 1.0f + 3.0f : 2.0f + 3.0f + 4.0f));
    }
    int f0 = tfrees[me];
    rt_comm_dev_free(c);
    /* the rank's own transport and its subsets' */
    if (with_t) CHECK(tfrees[me] == f0 + 1 + (me == 2 ? 2 : 1));
    host->barrier(host);
  }
}

/* ---------------------------------------------------------------- 2. orchestration */

/* host memory as device memory: scratch is new NaN-filled memory each call (a kernel
 * reading a byte it did not write reads garbage), segments are checked */
static _Thread_local void *hs_scratch[2];
static bool hm_is_device(const void *p) {
  return p != NULL;
}
static void hm_copy(void *dev, void *dst, const void *src, size_t n) {
  (void)dev;
  memcpy(dst, src, n);
}
static int bad_segs;
static void hm_copy_segs(void *dev, void *dst, const void *src, const RtSeg *s, int n) {
  (void)dev;
  for (int i = 0; i < n; i++) {
    if (s[i].dst < 0 || s[i].src < 0 || s[i].bytes <= 0) __atomic_add_fetch(&bad_segs, 1, 0);
    memcpy((char *)dst + s[i].dst, (const char *)src + s[i].src, (size_t)s[i].bytes);
  }
}
static void hm_zero(void *dev, void *dst, size_t n) {
  (void)dev;
  memset(dst, 0, n);
}
static void *hm_scratch(void *dev, int slot, size_t n) {
  (void)dev;
  mc_free(hs_scratch[slot]);
  hs_scratch[slot] = mc_malloc(MC_MAX(n, 1));
  memset(hs_scratch[slot], 0xff, MC_MAX(n, 1));
  return hs_scratch[slot];
}
static int offsets_downloads;
static void hm_download_offsets(void *dev, const Tensor *t, int32_t *dst, const void *src,
                                int64_t count) {
  (void)dev;
  if (t->producer && t->producer->op == OP_DISPATCH) __atomic_add_fetch(&offsets_downloads, 1, 0);
  memcpy(dst, src, (size_t)count * sizeof(int32_t));
}
static const DevMem host_mem = {"host",     hm_is_device, hm_copy,
                                hm_copy,    hm_copy_segs, hm_zero,
                                hm_scratch, NULL,         hm_download_offsets};

static void k32(const KernelCtx *c, const Node *n, void *const *i, void *const *o) {
  rt_kern_comm_dev(&host_mem, c, n, i, o, PREC_F32);
}
static void k64(const KernelCtx *c, const Node *n, void *const *i, void *const *o) {
  rt_kern_comm_dev(&host_mem, c, n, i, o, PREC_F64);
}

typedef struct Run {
  AstFile *f;
  Config cfg;
  Options o;
  RunOpts ro;
  bool dev;
  int rc[RT_INPROC_MAX];
  size_t rows_high[RT_INPROC_MAX]; /* the expert rows' region apart at its largest */
} Run;

static void train_rank(Comm *host, void *arg) {
  Run *r = arg;
  Comm *c = host;
  FakeT *ft = NULL;
  if (r->dev) {
    ft = mc_calloc(1, sizeof(FakeT));
    ft->host = host;
    ft->world = host->rank % R;
    c = rt_comm_dev_new(host, &host_mem, NULL, &fake_t, ft);
  }
  Target t = {.devices = host->size,
              .rank = host->rank,
              .training = true,
              .prec = PREC_F32,
              .be = &rt_backend_cpu};
  Program *p = drv_compile(r->f, &r->cfg, &r->o, &t); /* as driver/launch.c's devices */
  r->rc[host->rank] = p ? rt_train(c, p, &r->cfg, &r->ro) : 1;
  if (p) r->rows_high[host->rank] = rt_rows_bytes(p, true);
  if (p) drv_program_free(p);
  if (r->dev) rt_comm_dev_free(c);
  for (int s = 0; s < 2; s++) {
    mc_free(hs_scratch[s]);
    hs_scratch[s] = NULL;
  }
}

/* metrics lines without the timing fields */
static char *metrics_text(const char *path) {
  size_t n = 0;
  char *t = mc_read_file(path, &n);
  if (!t) return NULL;
  const char *keys[] = {",\"tokens_per_s\":", ",\"seconds\":", ",\"elapsed\":"}; /* clocks */
  for (size_t k = 0; k < MC_ARRAY_LEN(keys); k++)
    for (char *p = strstr(t, keys[k]); p; p = strstr(p, keys[k])) {
      char *e = p + strlen(keys[k]);
      while (*e && *e != ',' && *e != '}')
        e++;
      memmove(p, e, strlen(e) + 1);
    }
  return t;
}

static bool same_file(const char *a, const char *b) {
  size_t na = 0, nb = 0;
  char *x = mc_read_file(a, &na), *y = mc_read_file(b, &nb);
  bool same = x && y && na == nb && !memcmp(x, y, na);
  mc_free(x);
  mc_free(y);
  return same;
}

/* One model file (md_*.moe plus `extra` lines in a plan block) on P devices, CPU
 * collectives vs device collectives; batch > 0 replaces the file's, and then some device's
 * expert rows must outgrow their slots (runtime/rows.c), the same on both. */
static void compare(const char *dir, const char *tag, const char *base, int P, const char *extra,
                    bool factored, int steps, int batch) {
  char src[4096], path[512], ma[512], mb[512], ca[512], cb[512];
  snprintf(src, sizeof src, "%s/multidev/%s.moe", dir, base);
  size_t n = 0;
  char *text = mc_read_file(src, &n);
  MOEC_ASSERT(text);
  char tmp[] = "/tmp/moec_test_comm_dev.XXXXXX";
  MOEC_ASSERT(mkdtemp(tmp));
  snprintf(path, sizeof path, "%s/%s.moe", tmp, tag);
  FILE *fp = fopen(path, "w");
  char *adam = factored ? strstr(text, "adam(") : NULL;
  if (adam) { /* the same settings with the factored optimizer */
    fprintf(fp, "%.*sfactored(%s", (int)(adam - text), text, adam + strlen("adam("));
  } else {
    fputs(text, fp);
  }
  fprintf(fp, "\nplan {\n  devices = %d\n%s}\n", P, extra);
  fclose(fp);
  mc_free(text);
  char *mt[2] = {NULL, NULL};
  size_t high[2][RT_INPROC_MAX];
  for (int dev = 0; dev < 2; dev++) {
    Run *r = mc_calloc(1, sizeof(Run));
    char *keep = NULL;
    r->f = test_load_model(path, &r->cfg, &keep);
    r->cfg.steps = steps;
    r->cfg.eval_every = steps / 2;
    if (batch > 0) r->cfg.batch = batch;
    r->dev = dev;
    snprintf(dev ? mb : ma, 512, "%s/metrics%d.jsonl", tmp, dev);
    snprintf(dev ? cb : ca, 512, "%s/ckpt%d.safetensors", tmp, dev);
    drv_options_init(&r->o, "run");
    r->o.path = path;
    r->ro = (RunOpts){.metrics = dev ? mb : ma,
                      .save = dev ? cb : ca,
                      .quiet = true,
                      .settings_hash = drv_settings_hash(&r->cfg, &r->o)};
    KernelFn *t32 = (KernelFn *)rt_cpu_kernels(PREC_F32),
             *t64 = (KernelFn *)rt_cpu_kernels(PREC_F64);
    KernelFn save32[OP_COUNT], save64[OP_COUNT];
    memcpy(save32, t32, sizeof save32);
    memcpy(save64, t64, sizeof save64);
    if (dev) rt_kern_comm_dev_register(t32, t64, k32, k64);
    memset(tcalls, 0, sizeof tcalls);
    fflush(stdout); /* the runs print their summaries: keep the test's output short */
    int so = dup(1), dn = open("/dev/null", O_WRONLY);
    dup2(dn, 1);
    int rc = rt_inproc_run(P, train_rank, r);
    fflush(stdout);
    dup2(so, 1);
    close(so);
    close(dn);
    memcpy(t32, save32, sizeof save32);
    memcpy(t64, save64, sizeof save64);
    CHECK(rc == 0);
    for (int p = 0; p < P; p++)
      CHECK(r->rc[p] == 0);
    if (dev) {
      int carried = 0;
      for (int p = 0; p < R; p++)
        carried += tcalls[p];
      CHECK(carried > 0);
    }
    memcpy(high[dev], r->rows_high, sizeof high[dev]);
    mt[dev] = metrics_text(dev ? mb : ma);
    fe_ast_free(r->f);
    mc_free(keep);
    drv_options_free(&r->o);
    mc_free(r);
  }
  bool same = mt[0] && mt[1] && !strcmp(mt[0], mt[1]);
  CHECK(same);
  CHECK(same_file(ca, cb));
  CHECK(bad_segs == 0);
  CHECK(offsets_downloads > 0); /* the batch offsets came through download_offsets */
  bool apart = false;
  for (int p = 0; p < P; p++) {
    CHECK(high[0][p] == high[1][p]); /* the device path grew the same rows */
    apart |= high[1][p] > 0;
  }
  if (batch > 0) CHECK(apart);
  if (!same) fprintf(stderr, "cpu collectives:\n%s\ndevice collectives:\n%s\n", mt[0], mt[1]);
  printf("%-4s %-14s %d devices: the same metrics and checkpoint with device collectives\n",
         same && same_file(ca, cb) ? "ok" : "FAIL", tag, P);
  mc_free(mt[0]);
  mc_free(mt[1]);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmp);
}

/* ---------------------------------------------------------------- 3. offsets checked */

/* One all_to_all on one device (rt_comm_self) of x[8, 4] with offsets `off` (2 experts):
 * the device path checks the offsets' host copy as the MoE kernels do. */
static void one_a2a(void *arg) {
  const int32_t *off = arg;
  Graph *g = ir_graph_new("a2a");
  Dim dx[2] = {dim_int(8), dim_int(4)}, doff[1] = {dim_int(3)};
  Tensor *in[2] = {ir_input(g, "x", ir_type(DT_F32, 2, dx), (Loc){0}),
                   ir_input(g, "off", ir_type(DT_I32, 1, doff), (Loc){0})};
  int64_t ia[IR_MAX_ATTR] = {0, 1};
  double fa[IR_MAX_ATTR] = {0};
  Node *n = ir_node(g, OP_ALL_TO_ALL, 2, in, ia, fa);
  ir_bind(g, 1, 1);
  static int map0[2] = {0, 0};
  static int *maps[1] = {map0};
  static int nexp[1] = {2};
  static const char *names[1] = {"m"};
  g->nmoe = 1;
  g->moe_expert_dev = maps;
  g->moe_nexperts = nexp;
  g->moe_names = names;
  float x[32], y[32];
  int32_t o[3], roff[3];
  for (int i = 0; i < 32; i++)
    x[i] = (float)i;
  memcpy(o, off, sizeof o);
  void *ins[2] = {x, o}, *outs[2] = {y, roff};
  KernelCtx ctx = {
      .comm = rt_comm_self(), .graph = g, .device = 0, .ndevices = 1, .batch_local = 8};
  rt_kern_comm_dev(&host_mem, &ctx, n, ins, outs, PREC_F32);
  bool same = !memcmp(x, y, sizeof x) && roff[0] == 0 && roff[1] == 4 && roff[2] == 8;
  g->moe_expert_dev = NULL, g->moe_nexperts = NULL, g->moe_names = NULL, g->nmoe = 0;
  ir_graph_free(g);
  exit(same ? 0 : 3);
}

static void offsets_checked(void) {
  MOEC_ASSERT(mkdtemp(tmpdir));
  static const int32_t good[3] = {0, 4, 8}, bad[3] = {0, 4, 9}, down[3] = {0, 5, 4};
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) one_a2a((void *)good);
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  expect_death(one_a2a, (void *)bad, "offsets end 9 is outside [0, 9)");
  expect_death(one_a2a, (void *)down, "offsets step -1");
  printf("%-4s all_to_all on device buffers: good offsets move the rows, bad ones die "
         "naming the op\n",
         test_failures ? "FAIL" : "ok");
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_comm_dev TESTS_DIR\n");
    return 2;
  }
  offsets_checked();
  rt_threads_set(1); /* as the launcher: each device thread runs its kernels inline */
  CHECK(rt_inproc_run(R, dispatch_rank, NULL) == 0);
  printf("%-4s device Comm: host, device, mixed and subset calls on %d ranks\n",
         test_failures ? "FAIL" : "ok", R);
  const char *dir = argv[1];
  compare(dir, "paper", "md_small", 4, "", false, 6, 0);
  compare(dir, "paper3", "md_small", 3, "", false, 4, 0);
  compare(dir, "data_parallel", "md_small", 2, "  strategy = data_parallel\n", false, 4, 0);
  compare(dir, "factored", "md_small", 4, "", true, 4, 0);
  compare(dir, "hmoe", "md_hmoe", 4, "", false, 4, 0);
  compare(dir, "hmoe_factored", "md_hmoe", 2, "", true, 4, 0);
  /* the two-level exchange: group rows with their ids and gates, piece by piece */
  compare(dir, "hmoe_groups", "md_hmoe", 4, "  strategy = hmoe\n", false, 4, 0);
  /* 1 row a device: the routing outgrows some device's slots, its rows move apart */
  compare(dir, "rows_apart", "md_small", 4, "", false, 4, 4);
  compare(dir, "rows_apart_hmoe", "md_hmoe", 4, "  strategy = hmoe\n", false, 4, 4);
  compare(dir, "batchwise", "md_batchwise", 4, "", false, 4, 0);
  compare(dir, "subset_ex", "md_small", 4, "  place m.experts : on(0, 1)\n", false, 4, 0);
  compare(dir, "subset_dense", "md_small", 4, "  place loss : on(1, 2)\n", false, 4, 0);
  compare(dir, "subset_mix3", "md_small", 3,
          "  place m.experts : on(1, 2)\n  place loss : on(0, 2)\n", false, 4, 0);
  TEST_DONE();
}
