/* test_nvrtc.c: the CUDA half of elementwise fusion, checked without a GPU
 * (codegen/nvrtc.c; docs/fusion.md "The CUDA half").
 *
 *   test_nvrtc CC SRCROOT MODEL.moe ...
 *
 * For every fused group of every model's training graph (backend = cuda), float32 and
 * float64:
 *   1. the generated CUDA C compiles with NVRTC to PTX (compute_90: no GPU needed) and to
 *      an sm_90 CUBIN, and
 *      the PTX has the group's kernel; the PTX has no plain mul feeding a plain add/sub
 *      (which ptxas may fuse into an fma) besides those of its ops compiled alone;
 *   2. the same source compiled as host C by CC (-ffp-contract=off) into a shared
 *      object, its exp/tanh mapped to the CPU kernels' (runtime/fastmath.h), gives on
 *      random inputs (broadcast scalars, +-0, past exp's clamps, both tanh branches) the
 *      same bits as the CPU kernels run op by op (unfused) and as the CPU fused kernel
 *      (LLVM JIT, when built with LLVM): the generated program wiring, operand order,
 *      broadcasts, constants and outputs are the unfused kernels' arithmetic;
 *   3. the cache: a repeated request is a memory hit; after dropping the memory cache,
 *      a disk hit (no compile); a damaged file is recompiled; no temporary file is left.
 * Without NVRTC, 1 and 3 are skipped (printed); without CUDA and LLVM the fusion pass
 * cannot run and the test skips (77). */
#include <dirent.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../codegen/jit.h"
#include "../codegen/nvrtc.h"
#include "../passes/passes.h"
#include "test.h"
#include "test_model.h"

typedef void (*HostFn)(void *const *x, void *const *y, long long n);

typedef struct Group {
  const Node *node; /* in its (live) graph */
  bool f64;
  uint64_t bcast;
  char name[CG_CUDA_NAME_LEN];
  char *src;
} Group;

static Group *groups;
static int ngroups, capgroups;

static uint64_t bcast_of(const Node *n) {
  uint64_t b = 0;
  for (int s = 0; s < n->nin; s++)
    if (n->in[s]->numel == 1 && n->out[0]->numel != 1) b |= 1ull << s;
  return b;
}

static void collect(const Graph *g) {
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    const FusedProg *p = ir_fused_prog(n);
    if (!p) continue;
    CHECK(p->nin == n->nin && p->nout == n->nout);
    for (int f64 = 0; f64 < 2; f64++) {
      if (ngroups == capgroups) {
        capgroups = capgroups ? 2 * capgroups : 64;
        groups = mc_realloc(groups, sizeof(Group) * (size_t)capgroups);
      }
      Group *gr = &groups[ngroups++];
      gr->node = n;
      gr->f64 = f64;
      gr->bcast = bcast_of(n);
      gr->src = cg_cuda_fused_source(p, f64, gr->bcast, gr->name);
    }
  }
}

/* The distinct sources (by kernel name: the name hashes the kernel's text), one
 * precision or both, concatenated. */
static char *all_sources(int prec /* 0, 1, or -1 for both */) {
  McBuf b = {0};
  mc_buf_printf(&b, "/* test_nvrtc */\n");
  for (int i = 0; i < ngroups; i++) {
    bool dup = false;
    for (int j = 0; j < i && !dup; j++)
      dup = !strcmp(groups[j].name, groups[i].name);
    if (!dup && (prec < 0 || prec == groups[i].f64)) mc_buf_printf(&b, "%s", groups[i].src);
  }
  return b.data;
}

/* ---------------------------------------------------------------- 1. NVRTC */

static void nvrtc_compile_all(void) {
  for (int prec = 0; prec < 2; prec++) {
    char *src = all_sources(prec);
    size_t len = 0;
    const char *ptx = cg_nvrtc_binary(src, "compute_90", &len); /* dies on a compile error */
    CHECK(len > 0 && strstr(ptx, ".version") != NULL);
    int found = 0, want = 0;
    for (int i = 0; i < ngroups; i++) {
      if (groups[i].f64 != prec) continue;
      char entry[CG_CUDA_NAME_LEN + 16];
      snprintf(entry, sizeof entry, ".entry %s(", groups[i].name);
      want++;
      found += strstr(ptx, entry) != NULL;
    }
    CHECK(found == want);
    /* what a GPU run loads on an H100: a CUBIN for sm_90 (ptxas inside NVRTC) */
    size_t clen = 0;
    const char *cubin = cg_nvrtc_binary(src, "sm_90", &clen);
    CHECK(clen > 4 && !memcmp(cubin, "\177ELF", 4));
    printf("nvrtc: %d %s kernels compiled to PTX (%zu bytes) and an sm_90 CUBIN (%zu bytes)\n",
           want, prec ? "f64" : "f32", len, clen);
    mc_free(src);
  }
}

/* ---------------------------------------------------------------- 1b. no fma across ops
 *
 * ptxas may fuse a plain mul.f32 (no rounding modifier) into an fma with a plain add.f32
 * or sub.f32 that reads it (also through a neg). In the unfused kernels such pairs exist
 * only inside one op. So the fused kernel must have exactly the pairs of its ops each
 * compiled alone (a one-op group: inputs loaded, result stored, as the unfused kernel):
 * one more would be an fma the unfused kernels cannot have. */

static bool plain(const char *opc, const char *base) {
  char a[16], b[16];
  snprintf(a, sizeof a, "%s.f32", base);
  snprintf(b, sizeof b, "%s.f64", base);
  return !strcmp(opc, a) || !strcmp(opc, b);
}

static int fusable_pairs(const char *ptx, const char *name) {
  char entry[CG_CUDA_NAME_LEN + 16];
  snprintf(entry, sizeof entry, ".entry %s(", name);
  const char *p = strstr(ptx, entry);
  MOEC_ASSERT(p);
  const char *end = strstr(p, "\n}");
  MOEC_ASSERT(end);
  char(*defs)[32] = mc_calloc(4096, 32);
  int ndefs = 0, pairs = 0;
  while (p < end) {
    const char *nl = strchr(p, '\n');
    char line[256], opc[32] = "", r[3][32] = {"", "", ""};
    size_t n = (size_t)(nl - p) < sizeof line - 1 ? (size_t)(nl - p) : sizeof line - 1;
    memcpy(line, p, n);
    line[n] = 0;
    for (char *c = line; *c; c++)
      if (*c == ',' || *c == ';') *c = ' ';
    int got = sscanf(line, " %31s %31s %31s %31s", opc, r[0], r[1], r[2]);
    if (got >= 3) {
      bool srcdef = false;
      for (int q = 1; q < got - 1; q++)
        for (int d = 0; d < ndefs; d++)
          if (!strcmp(defs[d], r[q])) {
            srcdef = true;
            if (plain(opc, "add") || plain(opc, "sub")) pairs++;
          }
      if ((plain(opc, "mul") || (plain(opc, "neg") && srcdef)) && ndefs < 4096)
        snprintf(defs[ndefs++], 32, "%s", r[0]);
    }
    p = nl + 1;
  }
  mc_free(defs);
  return pairs;
}

static bool is_binary(OpKind op) {
  return op == OP_ADD || op == OP_SUB || op == OP_MUL || op == OP_RELU_BWD || op == OP_TANH_BWD ||
         op == OP_SIGMOID_BWD || op == OP_SOFTPLUS_BWD;
}

/* The one-op group of op k of group gr (its second operand broadcast as in the group). */
static char *single_op(const Group *gr, int k, char *name) {
  const FusedProg *p = ir_fused_prog(gr->node);
  const FusedInstr *fi = &p->ops[k];
  bool bin = is_binary(fi->op);
  FusedInstr op = {fi->op, 0, bin ? 1 : -1, fi->f0, fi->f1};
  int out = bin ? 2 : 1;
  FusedProg one = {bin ? 2 : 1, 1, 1, &op, &out};
  uint64_t bc = bin && fi->b < p->nin && ((gr->bcast >> fi->b) & 1) ? 2 : 0;
  return cg_cuda_fused_source(&one, gr->f64, bc, name);
}

static void no_cross_op_fma(void) {
  for (int prec = 0; prec < 2; prec++) {
    McBuf src = {0};
    char(*names)[CG_CUDA_NAME_LEN] = NULL;
    int nnames = 0, cap = 0;
    for (int i = 0; i < ngroups; i++) {
      if (groups[i].f64 != prec) continue;
      const FusedProg *p = ir_fused_prog(groups[i].node);
      for (int k = 0; k < p->nops; k++) {
        char name[CG_CUDA_NAME_LEN];
        char *one = single_op(&groups[i], k, name);
        bool dup = false;
        for (int j = 0; j < nnames && !dup; j++)
          dup = !strcmp(names[j], name);
        if (!dup) {
          if (nnames == cap) {
            cap = cap ? 2 * cap : 32;
            names = mc_realloc(names, (size_t)cap * CG_CUDA_NAME_LEN);
          }
          memcpy(names[nnames++], name, CG_CUDA_NAME_LEN);
          mc_buf_printf(&src, "%s", one);
        }
        mc_free(one);
      }
    }
    size_t len = 0, flen = 0;
    const char *ptx1 = cg_nvrtc_binary(src.data, "compute_90", &len);
    char *fsrc = all_sources(prec);
    const char *ptxf = cg_nvrtc_binary(fsrc, "compute_90", &flen); /* a memory hit */
    int total = 0, checked = 0;
    for (int i = 0; i < ngroups; i++) {
      if (groups[i].f64 != prec) continue;
      const FusedProg *p = ir_fused_prog(groups[i].node);
      int sum = 0;
      for (int k = 0; k < p->nops; k++) {
        char name[CG_CUDA_NAME_LEN];
        mc_free(single_op(&groups[i], k, name));
        sum += fusable_pairs(ptx1, name);
      }
      int fused = fusable_pairs(ptxf, groups[i].name);
      CHECK(fused == sum);
      if (fused != sum)
        fprintf(stderr, "%s: %d mul->add pairs ptxas may fuse, its ops alone have %d\n",
                groups[i].name, fused, sum);
      total += fused;
      checked++;
    }
    printf("ptx %s: %d groups have no mul->add pair across ops (%d pairs inside ops, as unfused)\n",
           prec ? "f64" : "f32", checked, total);
    mc_free(fsrc);
    mc_free(names);
    mc_buf_free(&src);
  }
}

/* ---------------------------------------------------------------- 2. host C = CPU kernels */

static void fill(double *tmp, int64_t n, uint64_t seed) {
  uint64_t key = mc_rng_key(seed, 11, 0);
  for (int64_t i = 0; i < n; i++) {
    double v = 3 * (2 * mc_rng_uniform(key, (uint64_t)i) - 1);
    if (i % 17 == 3) v = 0;
    if (i % 17 == 5) v = -0.0;
    if (i % 17 == 7) v = 120; /* past exp's clamp */
    if (i % 17 == 9) v = -120;
    if (i % 17 == 11) v = 0.3; /* tanh's polynomial branch */
    tmp[i] = v;
  }
}

static void *alloc_filled(int64_t n, bool f64, uint64_t seed) {
  double *tmp = mc_malloc(sizeof(double) * (size_t)n);
  fill(tmp, n, seed);
  void *p;
  if (f64) {
    p = tmp;
  } else {
    float *f = mc_malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
      f[i] = (float)tmp[i];
    mc_free(tmp);
    p = f;
  }
  return p;
}

/* Runs the program op by op with the CPU kernels on n elements: slot buffers. */
static void **unfused(const FusedProg *p, bool f64, void **ins, const int64_t *in_numel,
                      int64_t n) {
  int ns = p->nin + p->nops;
  size_t el = f64 ? 8 : 4;
  void **slot = mc_calloc((size_t)ns, sizeof(void *));
  int64_t *numel = mc_calloc((size_t)ns, sizeof(int64_t));
  for (int s = 0; s < p->nin; s++) {
    slot[s] = ins[s];
    numel[s] = in_numel[s];
  }
  const KernelFn *tab = rt_cpu_kernels(f64 ? PREC_F64 : PREC_F32);
  KernelCtx ctx = {0};
  for (int k = 0; k < p->nops; k++) {
    const FusedInstr *fi = &p->ops[k];
    Tensor ta = {0}, tb = {0}, to = {0};
    ta.numel = numel[fi->a];
    if (fi->b >= 0) tb.numel = numel[fi->b];
    to.numel = n;
    Tensor *tin[2] = {&ta, &tb}, *tout[1] = {&to};
    Node nd = {0};
    nd.op = fi->op;
    nd.nin = fi->b >= 0 ? 2 : 1;
    nd.nout = 1;
    nd.in = tin;
    nd.out = tout;
    nd.fa[0] = fi->f0;
    nd.fa[1] = fi->f1;
    slot[p->nin + k] = mc_calloc((size_t)n, el);
    numel[p->nin + k] = n;
    void *in[2] = {slot[fi->a], fi->b >= 0 ? slot[fi->b] : NULL}, *out[1] = {slot[p->nin + k]};
    MOEC_ASSERT(tab[fi->op]);
    tab[fi->op](&ctx, &nd, in, out);
  }
  mc_free(numel);
  return slot;
}

static int first_diff(const void *a, const void *b, int64_t n, bool f64) {
  size_t el = f64 ? 8 : 4;
  for (int64_t i = 0; i < n; i++)
    if (memcmp((const char *)a + el * (size_t)i, (const char *)b + el * (size_t)i, el))
      return (int)i;
  return -1;
}

static void host_check(const char *cc, const char *root, const char *tmpdir) {
  char cpath[512], sopath[512], cmd[2048];
  snprintf(cpath, sizeof cpath, "%s/fused_host.c", tmpdir);
  snprintf(sopath, sizeof sopath, "%s/fused_host.so", tmpdir);
  FILE *f = fopen(cpath, "w");
  MOEC_ASSERT(f);
  fprintf(f, "#include <math.h>\n#include \"runtime/fastmath.h\"\n"
             "#define MC_EXPF rt_expf\n#define MC_TANHF rt_tanhf\n"
             "#define MC_SOFTPLUSF(x) (((x) > 0 ? (x) : 0.0f) + log1pf(rt_expf(-((x) > 0 ? (x) : "
             "-(x)))))\n"
             "#define MC_EXP exp\n#define MC_TANH tanh\n"
             "#define MC_SOFTPLUS(x) (((x) > 0 ? (x) : 0.0) + log1p(exp(-((x) > 0 ? (x) : "
             "-(x)))))\n");
  char *src = all_sources(-1);
  fputs(src, f);
  mc_free(src);
  fclose(f);
  /* the CPU kernels' flags that matter: C11, no contraction, no fast math */
  snprintf(cmd, sizeof cmd,
           "%s -std=c11 -O2 -ffp-contract=off -fno-fast-math -Wall -Werror -fPIC -shared -I%s "
           "-o %s %s -lm",
           cc, root, sopath, cpath);
  int rc = system(cmd);
  CHECK(rc == 0);
  if (rc) {
    fprintf(stderr, "host compile failed: %s\n", cmd);
    return;
  }
  void *so = dlopen(sopath, RTLD_NOW | RTLD_LOCAL);
  CHECK(so != NULL);
  if (!so) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return;
  }
  int checked = 0, jit_checked = 0;
  for (int gi = 0; gi < ngroups; gi++) {
    const Group *gr = &groups[gi];
    const Node *node = gr->node;
    const FusedProg *p = ir_fused_prog(node);
    char sym[CG_CUDA_NAME_LEN + 8];
    snprintf(sym, sizeof sym, "%s_host", gr->name);
    HostFn fn = (HostFn)dlsym(so, sym);
    CHECK(fn != NULL);
    if (!fn) continue;
    int64_t ne = node->out[0]->numel;
    bool full = ne <= (1 << 20); /* the JIT kernel runs over every element */
    int64_t n = full ? ne : 5003;
    void **ins = mc_calloc((size_t)p->nin, sizeof(void *));
    int64_t *in_numel = mc_calloc((size_t)p->nin, sizeof(int64_t));
    for (int s = 0; s < p->nin; s++) {
      in_numel[s] = (gr->bcast >> s) & 1 ? 1 : n;
      ins[s] = alloc_filled(in_numel[s], gr->f64, 1000 + (uint64_t)(gi * 64 + s));
    }
    size_t el = gr->f64 ? 8 : 4;
    void **outs = mc_calloc((size_t)p->nout, sizeof(void *));
    void **jouts = mc_calloc((size_t)p->nout, sizeof(void *));
    for (int j = 0; j < p->nout; j++) {
      outs[j] = mc_calloc((size_t)n, el);
      jouts[j] = mc_calloc((size_t)n, el);
    }
    fn(ins, outs, n);
    void **slot = unfused(p, gr->f64, ins, in_numel, n);
    for (int j = 0; j < p->nout; j++) {
      int d = first_diff(outs[j], slot[p->outs[j]], n, gr->f64);
      CHECK(d < 0);
      if (d >= 0)
        fprintf(stderr, "%s (node %d) output %d differs from the unfused kernels at %d\n", gr->name,
                node->id, j, d);
    }
    checked++;
    if (full && cg_jit_available()) { /* the CPU fused kernel over the node's own size */
      KernelFn jf = cg_jit_fused(node, gr->f64 ? PREC_F64 : PREC_F32);
      KernelCtx ctx = {0};
      jf(&ctx, node, ins, jouts);
      for (int j = 0; j < p->nout; j++)
        CHECK(first_diff(outs[j], jouts[j], n, gr->f64) < 0);
      jit_checked++;
    }
    for (int k = 0; k < p->nops; k++)
      mc_free(slot[p->nin + k]);
    mc_free(slot);
    for (int s = 0; s < p->nin; s++)
      mc_free(ins[s]);
    for (int j = 0; j < p->nout; j++) {
      mc_free(outs[j]);
      mc_free(jouts[j]);
    }
    mc_free(ins);
    mc_free(in_numel);
    mc_free(outs);
    mc_free(jouts);
  }
  printf("host C: %d groups equal to the CPU unfused kernels bit for bit, %d to the LLVM fused "
         "kernels\n",
         checked, jit_checked);
  dlclose(so);
}

/* ---------------------------------------------------------------- 3. cache */

static int count_files(const char *dir, const char *part) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    n += strstr(e->d_name, part) != NULL;
  closedir(d);
  return n;
}

static void cache_check(const char *tmpdir) {
  char sub[512];
  snprintf(sub, sizeof sub, "%s/cache/nvrtc", tmpdir);
  /* two small distinct sources: the first two groups of different names */
  const char *src[2] = {NULL, NULL};
  for (int i = 0; i < ngroups && !src[1]; i++)
    if (!src[0])
      src[0] = groups[i].src;
    else if (strcmp(src[0], groups[i].src))
      src[1] = groups[i].src;
  MOEC_ASSERT(src[1]);
  CgNvrtcStats s0 = cg_nvrtc_stats();
  size_t l0 = 0, l1 = 0;
  const char *b0 = cg_nvrtc_binary(src[0], "compute_90", &l0);
  char *keep0 = mc_malloc(l0 + 1);
  memcpy(keep0, b0, l0);
  cg_nvrtc_binary(src[1], "compute_90", &l1);
  CgNvrtcStats s1 = cg_nvrtc_stats();
  CHECK(s1.compiled == s0.compiled + 2 && s1.disk_writes == s0.disk_writes + 2);
  cg_nvrtc_binary(src[0], "compute_90", &l0); /* memory */
  CgNvrtcStats s2 = cg_nvrtc_stats();
  CHECK(s2.mem_hits == s1.mem_hits + 1 && s2.compiled == s1.compiled);
  cg_nvrtc_forget(); /* a new process, as far as the caches go */
  size_t l2 = 0;
  const char *b2 = cg_nvrtc_binary(src[0], "compute_90", &l2); /* disk */
  CgNvrtcStats s3 = cg_nvrtc_stats();
  CHECK(s3.disk_hits == s2.disk_hits + 1 && s3.compiled == s2.compiled);
  CHECK(l2 == l0 && !memcmp(b2, keep0, l0)); /* the same PTX back */
  /* damage every cache file: a different key inside means "not this binary" */
  DIR *d = opendir(sub);
  CHECK(d != NULL);
  struct dirent *e;
  int damaged = 0;
  while (d && (e = readdir(d))) {
    if (!strstr(e->d_name, ".bin")) continue;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", sub, e->d_name);
    FILE *f = fopen(path, "r+b");
    if (!f) continue;
    fseek(f, 40, SEEK_SET); /* inside the stored key */
    fputc('#', f);
    fclose(f);
    damaged++;
  }
  if (d) closedir(d);
  CHECK(damaged >= 2);
  cg_nvrtc_forget();
  cg_nvrtc_binary(src[1], "compute_90", &l1);
  CgNvrtcStats s4 = cg_nvrtc_stats();
  CHECK(s4.compiled == s3.compiled + 1 && s4.disk_hits == s3.disk_hits);
  CHECK(count_files(sub, ".tmp") == 0);
  printf("cache: compile, memory hit, disk hit (same PTX), damaged file recompiled: %d compiles, "
         "%d memory hits, %d disk hits\n",
         s4.compiled, s4.mem_hits, s4.disk_hits);
  mc_free(keep0);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: test_nvrtc CC SRCROOT MODEL.moe...\n");
    return 2;
  }
#ifndef MOEC_HAVE_CUDA
  if (!cg_jit_available()) {
    printf("SKIP: built without CUDA and without LLVM: the fusion pass never runs\n");
    return 77;
  }
#endif
  char tmpdir[] = "/tmp/moec_test_nvrtc_XXXXXX";
  MOEC_ASSERT(mkdtemp(tmpdir));
  char cache[600];
  snprintf(cache, sizeof cache, "%s/cache", tmpdir);
  setenv("MOEC_CACHE_DIR", cache, 1);
  Graph **gs = mc_calloc((size_t)argc, sizeof(Graph *));
  AstFile **fs = mc_calloc((size_t)argc, sizeof(AstFile *));
  char **texts = mc_calloc((size_t)argc, sizeof(char *));
  int total = 0;
  for (int a = 3; a < argc; a++) {
    Config cfg;
    AstFile *f = fs[a] = test_load_model(argv[a], &cfg, &texts[a]);
#ifdef MOEC_HAVE_CUDA
    cfg.backend = BK_CUDA; /* fusion as a cuda run has it */
#endif
    Graph *g = ir_build(f, &cfg);
    PassCtx pc = {.cfg = &cfg, .devices = 1, .training = true};
    pass_run_all(g, &pc, NULL, NULL);
    ir_bind(g, cfg.batch, cfg.unroll);
    int before = ngroups;
    collect(g);
    printf("%s: %d fused groups\n", argv[a], (ngroups - before) / 2);
    total += (ngroups - before) / 2;
    gs[a] = g;
  }
  CHECK(total > 0);
  if (cg_nvrtc_available()) {
    nvrtc_compile_all();
    no_cross_op_fma();
  } else {
    printf("not run: NVRTC compiles and the cache (moec built without NVRTC)\n");
  }
  host_check(argv[1], argv[2], tmpdir);
  if (cg_nvrtc_available()) cache_check(tmpdir);
  for (int i = 0; i < ngroups; i++)
    mc_free(groups[i].src);
  mc_free(groups);
  for (int a = 3; a < argc; a++) {
    ir_graph_free(gs[a]);
    fe_ast_free(fs[a]);
    mc_free(texts[a]);
  }
  mc_free(gs);
  mc_free(fs);
  mc_free(texts);
  char rm[700];
  snprintf(rm, sizeof rm, "rm -rf %s", tmpdir);
  if (system(rm)) fprintf(stderr, "could not remove %s\n", tmpdir);
  TEST_DONE();
}
