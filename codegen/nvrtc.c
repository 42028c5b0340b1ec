/* nvrtc.c: CUDA fused elementwise kernels: CUDA C generated from an OP_FUSED node's
 * program (passes/fusion.h), compiled at run time with NVRTC, cached by content hash
 * in memory and on disk, loaded and launched with the CUDA driver API.
 *
 * Arithmetic. Each op is written as the same C expression as its unfused CUDA kernel
 * (runtime/cuda/kernels_dense.cu: binary_kernel, unary_kernel, d_sigmoid,
 * d_softplus), on values the compiler cannot see through: inputs are loads, and
 * every op's result passes through MC_BAR (an empty asm that takes and returns the
 * register), as do scale's constants (kernel parameters in the unfused kernel).
 * NVRTC compiles with the nvcc defaults (--fmad=true, IEEE division and square root,
 * no fast math), so inside an op the compiler contracts exactly what it contracts in
 * the unfused kernel (scale's v*s + c, tanh_bwd's 1 - v*v) and, thanks to the
 * barriers, never a multiply of one op into an add of the next (an fma the unfused
 * kernels, which store each result, cannot have). expf/tanhf/log1pf (and the double
 * versions) are CUDA's own, as in the unfused kernels.
 *
 * The source is C11 too: under __CUDACC__ the prelude defines the kernel qualifiers,
 * the grid-stride loop and the barrier; otherwise the includer provides the math
 * (tests/test_nvrtc.c maps it to the CPU kernels' rt_expf/rt_tanhf and libm) and gets
 * a plain loop, which the host C compiler checks bit for bit against the CPU kernels.
 *
 * Caches: binaries by a 64-bit FNV-1a hash of (NVRTC version, options, source), the
 * full key kept and compared (memory), written into the file and compared (disk:
 * $MOEC_CACHE_DIR/nvrtc or ~/.cache/moec/nvrtc, one file per binary, written to a
 * temporary name and renamed: readers never see half a file); loaded kernels by the
 * program itself (a hash over its ops, a deep copy compared on lookup), per GPU. The
 * driver API is reached through cudart's cudaGetDriverEntryPointByVersion, so the
 * binaries do not link libcuda.so.1 (absent on machines without a driver, where moec
 * must still start).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvrtc.h"

/* ---------------------------------------------------------------- source generation */

static uint64_t fnv1a(const void *p, size_t n, uint64_t h) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ull;
  return h;
}
#define FNV_SEED 1469598103934665603ull

static const char *PRELUDE =
    "#ifndef MC_FUSED_PRELUDE\n"
    "#define MC_FUSED_PRELUDE\n"
    "#ifdef __CUDACC__\n"
    "#define MC_KERNEL extern \"C\" __global__ void\n"
    "#define MC_RESTRICT __restrict__\n"
    "#define MC_FOR(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; "
    "i < (n); i += (long long)gridDim.x * blockDim.x)\n"
    "#define MC_BARF(v) asm(\"\" : \"+f\"(v))\n"
    "#define MC_BARD(v) asm(\"\" : \"+d\"(v))\n"
    "#define MC_ADDF __fadd_rn\n"
    "#define MC_SUBF __fsub_rn\n"
    "#define MC_MULF __fmul_rn\n"
    "#define MC_ADDD __dadd_rn\n"
    "#define MC_SUBD __dsub_rn\n"
    "#define MC_MULD __dmul_rn\n"
    "#define MC_EXPF expf\n"
    "#define MC_TANHF tanhf\n"
    "#define MC_SOFTPLUSF(x) ((x) > 0.0f ? (x) + log1pf(expf(-(x))) : log1pf(expf(x)))\n"
    "#define MC_EXP exp\n"
    "#define MC_TANH tanh\n"
    "#define MC_SOFTPLUS(x) ((x) > 0.0 ? (x) + log1p(exp(-(x))) : log1p(exp(x)))\n"
    "#else /* host C: the includer defines MC_EXPF, MC_TANHF, MC_SOFTPLUSF, MC_EXP, MC_TANH, "
    "MC_SOFTPLUS */\n"
    "#define MC_KERNEL void\n"
    "#define MC_RESTRICT restrict\n"
    "#define MC_FOR(i, n) for (long long i = 0; i < (n); i++)\n"
    "#define MC_BARF(v) ((void)0)\n"
    "#define MC_BARD(v) ((void)0)\n"
    "#define MC_ADDF(a, b) ((a) + (b))\n"
    "#define MC_SUBF(a, b) ((a) - (b))\n"
    "#define MC_MULF(a, b) ((a) * (b))\n"
    "#define MC_ADDD(a, b) ((a) + (b))\n"
    "#define MC_SUBD(a, b) ((a) - (b))\n"
    "#define MC_MULD(a, b) ((a) * (b))\n"
    "#endif\n"
    "#endif\n";

/* A constant of the working precision: (real)v as the kernels cast attributes. */
static void literal(McBuf *b, double v, bool f64) {
  if (!f64) v = (double)(float)v;
  if (v != v)
    mc_buf_printf(b, f64 ? "(0.0 / 0.0)" : "(0.0f / 0.0f)");
  else if (isinf(v))
    mc_buf_printf(b, "(%s1.0%s / 0.0%s)", v < 0 ? "-" : "", f64 ? "" : "f", f64 ? "" : "f");
  else
    mc_buf_printf(b, "%a%s", v, f64 ? "" : "f");
}

/* Op k's expression on slots a, b: kernels_dense.cu's, with T's literals. Where an
 * operation meets another op's result it is written with a rounding intrinsic
 * (MC_ADD/MC_SUB/MC_MUL: __fadd_rn...): the PTX then has add.rn/mul.rn there, which
 * ptxas never fuses into an fma (plain mul.f32 feeding add.f32 it may fuse, and the
 * empty MC_BAR is invisible in PTX). These are exactly the places where the unfused
 * kernel has a load or a store, so the value is the same: an op's last multiply
 * (its result is stored there) and an add/sub reading an input (loaded there). */
static void expr(McBuf *b, const FusedInstr *fi, int k, bool f64) {
  const char *one = f64 ? "1.0" : "1.0f", *zero = f64 ? "0.0" : "0.0f";
  const char *EXP = f64 ? "MC_EXP" : "MC_EXPF";
  const char *ADD = f64 ? "MC_ADDD" : "MC_ADDF", *SUB = f64 ? "MC_SUBD" : "MC_SUBF",
             *MUL = f64 ? "MC_MULD" : "MC_MULF";
  int a = fi->a, c = fi->b;
  switch (fi->op) {
  case OP_ADD:
    mc_buf_printf(b, "%s(v%d, v%d)", ADD, a, c);
    break;
  case OP_SUB:
    mc_buf_printf(b, "%s(v%d, v%d)", SUB, a, c);
    break;
  case OP_MUL:
    mc_buf_printf(b, "%s(v%d, v%d)", MUL, a, c);
    break;
  case OP_SCALE:
    mc_buf_printf(b, "v%d * k%d_0 + k%d_1", a, k, k);
    break; /* v * s + c: an fma */
  case OP_RELU:
    mc_buf_printf(b, "v%d > %s ? v%d : %s", a, zero, a, zero);
    break;
  case OP_TANH:
    mc_buf_printf(b, "%s(v%d)", f64 ? "MC_TANH" : "MC_TANHF", a);
    break;
  case OP_SIGMOID:
    mc_buf_printf(b, "%s / (%s + %s(-v%d))", one, one, EXP, a);
    break;
  case OP_SOFTPLUS:
    mc_buf_printf(b, "%s(v%d)", f64 ? "MC_SOFTPLUS" : "MC_SOFTPLUSF", a);
    break;
  case OP_RELU_BWD:
    mc_buf_printf(b, "v%d > %s ? v%d : %s", c, zero, a, zero);
    break;          /* (g, y) */
  case OP_TANH_BWD: /* g * (1 - y*y) */
    mc_buf_printf(b, "%s(v%d, (%s - v%d * v%d))", MUL, a, one, c, c);
    break;
  case OP_SIGMOID_BWD: /* g * y * (1 - y) */
    mc_buf_printf(b, "%s(v%d * v%d, %s(%s, v%d))", MUL, a, c, SUB, one, c);
    break;
  case OP_SOFTPLUS_BWD: /* g * d_sigmoid(x) */
    mc_buf_printf(b, "%s(v%d, (%s / (%s + %s(-v%d))))", MUL, a, one, one, EXP, c);
    break;
  default:
    mc_fatal("fused program: op '%s' has no CUDA expression", ir_ops[fi->op].name);
  }
}

static bool binary_op(OpKind op) {
  return op == OP_ADD || op == OP_SUB || op == OP_MUL || op == OP_RELU_BWD || op == OP_TANH_BWD ||
         op == OP_SIGMOID_BWD || op == OP_SOFTPLUS_BWD;
}

char *cg_cuda_fused_source(const FusedProg *pr, bool f64, uint64_t bcast, char *name) {
  MOEC_ASSERT(pr->nin >= 1 && pr->nin <= 64 && pr->nops >= 1 && pr->nout >= 1);
  for (int k = 0; k < pr->nops; k++) { /* the pass makes well-formed programs; say so */
    const FusedInstr *fi = &pr->ops[k];
    if (fi->a < 0 || fi->a >= pr->nin + k ||
        (binary_op(fi->op) && (fi->b < 0 || fi->b >= pr->nin + k)))
      mc_fatal("fused program: op %d reads slot %d/%d before it exists", k, fi->a, fi->b);
  }
  const char *T = f64 ? "double" : "float", *BAR = f64 ? "MC_BARD" : "MC_BARF";
  McBuf body = {0};
  mc_buf_printf(&body, "(");
  for (int s = 0; s < pr->nin; s++)
    mc_buf_printf(&body, "const %s *MC_RESTRICT x%d, ", T, s);
  for (int j = 0; j < pr->nout; j++)
    mc_buf_printf(&body, "%s *MC_RESTRICT y%d, ", T, j);
  mc_buf_printf(&body, "long long n) {\n");
  for (int k = 0; k < pr->nops; k++) /* scale's factors: opaque, as kernel parameters are */
    if (pr->ops[k].op == OP_SCALE)
      for (int q = 0; q < 2; q++) {
        mc_buf_printf(&body, "  %s k%d_%d = ", T, k, q);
        literal(&body, q ? pr->ops[k].f1 : pr->ops[k].f0, f64);
        mc_buf_printf(&body, ";\n  %s(k%d_%d);\n", BAR, k, q);
      }
  mc_buf_printf(&body, "  MC_FOR(i, n) {\n");
  for (int s = 0; s < pr->nin; s++)
    mc_buf_printf(&body, "    %s v%d = x%d[%s];\n", T, s, s, (bcast >> s) & 1 ? "0" : "i");
  for (int k = 0; k < pr->nops; k++) {
    int slot = pr->nin + k;
    mc_buf_printf(&body, "    %s v%d = ", T, slot);
    expr(&body, &pr->ops[k], k, f64);
    mc_buf_printf(&body, ";\n    %s(v%d);\n", BAR, slot);
  }
  for (int j = 0; j < pr->nout; j++)
    mc_buf_printf(&body, "    y%d[i] = v%d;\n", j, pr->outs[j]);
  mc_buf_printf(&body, "  }\n}\n");
  snprintf(name, CG_CUDA_NAME_LEN, "moec_fused_%s_%016llx", f64 ? "f64" : "f32",
           (unsigned long long)fnv1a(body.data, body.len, FNV_SEED));

  McBuf src = {0};
  mc_buf_printf(&src,
                "/* moec fused group (codegen/nvrtc.c): %s, %d inputs, %d ops, %d outputs.\n"
                " * Each op is its unfused kernel's expression (runtime/cuda/kernels_dense.cu);\n"
                " * MC_BAR keeps the compiler from contracting across ops. */\n",
                T, pr->nin, pr->nops, pr->nout);
  mc_buf_printf(&src, "%s", PRELUDE);
  mc_buf_printf(&src, "MC_KERNEL %s%s", name, body.data);
  /* host C only: one entry point with pointer arrays, for tests that call any group */
  mc_buf_printf(
      &src,
      "#ifndef __CUDACC__\nvoid %s_host(void *const *x, void *const *y, long long n) {\n  %s(",
      name, name);
  for (int s = 0; s < pr->nin; s++)
    mc_buf_printf(&src, "(const %s *)x[%d], ", T, s);
  for (int j = 0; j < pr->nout; j++)
    mc_buf_printf(&src, "(%s *)y[%d], ", T, j);
  mc_buf_printf(&src, "n);\n}\n#endif\n");
  mc_buf_free(&body);
  return src.data;
}

/* ---------------------------------------------------------------- caches (no GPU needed) */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static CgNvrtcStats stats;

typedef struct BinEntry {
  uint64_t h;
  char *key; /* version, options, source */
  char *bin;
  size_t len;
} BinEntry;
static BinEntry *bins;
static int nbins, capbins;

CgNvrtcStats cg_nvrtc_stats(void) {
  pthread_mutex_lock(&mu);
  CgNvrtcStats s = stats;
  pthread_mutex_unlock(&mu);
  return s;
}

const char *cg_nvrtc_cache_dir(void) {
  static char dir[4096];
  const char *e = getenv("MOEC_CACHE_DIR");
  if (e && !strcmp(e, "off")) return "";
  if (e && *e)
    snprintf(dir, sizeof dir, "%s", e);
  else if (getenv("HOME") && *getenv("HOME"))
    snprintf(dir, sizeof dir, "%s/.cache/moec", getenv("HOME"));
  else
    dir[0] = 0;
  return dir;
}

/* mkdir -p; false when a component cannot be made. */
static bool make_dirs(const char *path) {
  char buf[4400];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || !*p) {
      char c = *p;
      *p = 0;
      if (mkdir(buf, 0755) && errno != EEXIST) return false;
      *p = c;
      if (!c) return true;
    }
  }
}

static const char DISK_MAGIC[] = "moec-nvrtc-cache 1\n";

static void disk_path(char *out, size_t n, const char *dir, uint64_t h, const char *arch) {
  snprintf(out, n, "%s/nvrtc/%016llx-%s.bin", dir, (unsigned long long)h, arch);
}

/* The binary stored for key, or NULL (missing, unreadable, another key: a collision). */
static char *disk_read(const char *key, uint64_t h, const char *arch, size_t *len) {
  const char *dir = cg_nvrtc_cache_dir();
  if (!*dir) return NULL;
  char path[4400];
  disk_path(path, sizeof path, dir, h, arch);
  size_t n = 0;
  char *data = mc_read_file(path, &n);
  if (!data) return NULL;
  size_t klen = strlen(key), ml = sizeof DISK_MAGIC - 1;
  char *bin = NULL;
  if (n > ml + klen + 1 && !memcmp(data, DISK_MAGIC, ml) && !memcmp(data + ml, key, klen) &&
      data[ml + klen] == 0) {
    *len = n - ml - klen - 1;
    bin = mc_malloc(*len + 1);
    memcpy(bin, data + ml + klen + 1, *len);
    bin[*len] = 0;
  }
  mc_free(data);
  return bin;
}

/* Writes the file under a temporary name, then renames it: atomic for readers and for
 * concurrent writers of the same binary. Failures only warn (once): the cache is an
 * optimisation. */
static bool disk_write(const char *key, uint64_t h, const char *arch, const char *bin, size_t len) {
  static bool warned;
  const char *dir = cg_nvrtc_cache_dir();
  if (!*dir) return false;
  char sub[4200], path[4400], tmp[4500];
  snprintf(sub, sizeof sub, "%s/nvrtc", dir);
  disk_path(path, sizeof path, dir, h, arch);
  static int counter;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%d", path, (long)getpid(), counter++);
  bool ok = make_dirs(sub);
  FILE *f = ok ? fopen(tmp, "wb") : NULL;
  if (f) {
    ok = fwrite(DISK_MAGIC, 1, sizeof DISK_MAGIC - 1, f) == sizeof DISK_MAGIC - 1 &&
         fwrite(key, 1, strlen(key) + 1, f) == strlen(key) + 1 && fwrite(bin, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    ok = ok && rename(tmp, path) == 0;
    if (!ok) unlink(tmp);
  } else {
    ok = false;
  }
  if (!ok && !warned) {
    warned = true;
    fprintf(stderr, "moec: warning: cannot write the kernel cache %s (%s): compiling every run\n",
            path, strerror(errno));
  }
  return ok;
}

#ifdef MOEC_HAVE_NVRTC
#include <nvrtc.h>
#ifdef MOEC_HAVE_CUDA
#include <cuda.h>
#include <cuda_runtime_api.h>
#endif

/* ---------------------------------------------------------------- one check macro */

#ifdef MOEC_HAVE_CUDA
typedef CUresult (*PfnGetErrorString)(CUresult, const char **);
static PfnGetErrorString p_cuGetErrorString;
#define RTC_KIND(r)                                                                                \
  _Generic((r), nvrtcResult : 'n', CUresult : 'c', cudaError_t : 'r', default : '?')
#else
#define RTC_KIND(r) _Generic((r), nvrtcResult : 'n', default : '?')
#endif

/* Every NVRTC, driver and runtime result goes through RTC_CHECK(call, prog): on failure
 * it dies naming the call, its error, file and line, and (prog not NULL) the NVRTC log. */
#define RTC_CHECK(call, prog)                                                                      \
  rtc_check((int)(call), RTC_KIND(call), #call, __FILE__, __LINE__, prog)

static void rtc_check(int r, char kind, const char *call, const char *file, int line,
                      nvrtcProgram prog) {
  if (r == 0) return;
  const char *err = "?";
  if (kind == 'n') err = nvrtcGetErrorString((nvrtcResult)r);
#ifdef MOEC_HAVE_CUDA
  if (kind == 'c' && (!p_cuGetErrorString || p_cuGetErrorString((CUresult)r, &err) || !err))
    err = "driver error";
  if (kind == 'r') err = cudaGetErrorString((cudaError_t)r);
#endif
  char *log = NULL;
  size_t n = 0;
  if (prog && nvrtcGetProgramLogSize(prog, &n) == NVRTC_SUCCESS && n > 1) {
    log = mc_malloc(n + 1);
    if (nvrtcGetProgramLog(prog, log) != NVRTC_SUCCESS) log[0] = 0;
    log[n] = 0;
  }
  mc_fatal_at(file, line, "%s failed: %s (%d)%s%s", call, err, r, log ? "\nNVRTC log:\n" : "",
              log ? log : "");
}

bool cg_nvrtc_available(void) {
  return true;
}

/* Compiles src to PTX (compute_XX) or CUBIN (sm_XX). */
static char *nvrtc_compile(const char *src, const char *arch, size_t *len) {
  nvrtcProgram prog;
  RTC_CHECK(nvrtcCreateProgram(&prog, src, "moec_fused.cu", 0, NULL, NULL), NULL);
  char archopt[64];
  snprintf(archopt, sizeof archopt, "--gpu-architecture=%s", arch);
  const char *opts[] = {archopt, "--std=c++17", "--fmad=true"};
  RTC_CHECK(nvrtcCompileProgram(prog, (int)MC_ARRAY_LEN(opts), opts), prog);
  bool cubin = !strncmp(arch, "sm_", 3);
  char *bin;
  if (cubin) {
    RTC_CHECK(nvrtcGetCUBINSize(prog, len), prog);
    bin = mc_malloc(*len + 1);
    RTC_CHECK(nvrtcGetCUBIN(prog, bin), prog);
  } else {
    RTC_CHECK(nvrtcGetPTXSize(prog, len), prog); /* includes the terminating 0 */
    bin = mc_malloc(*len + 1);
    RTC_CHECK(nvrtcGetPTX(prog, bin), prog);
  }
  bin[*len] = 0;
  RTC_CHECK(nvrtcDestroyProgram(&prog), NULL);
  return bin;
}

static char *make_key(const char *src, const char *arch) {
  int maj = 0, min = 0;
  RTC_CHECK(nvrtcVersion(&maj, &min), NULL);
  McBuf k = {0};
  mc_buf_printf(&k, "nvrtc %d.%d --gpu-architecture=%s --std=c++17 --fmad=true\n%s", maj, min, arch,
                src);
  return k.data;
}

const char *cg_nvrtc_binary(const char *src, const char *arch, size_t *len) {
  char *key = make_key(src, arch);
  uint64_t h = fnv1a(key, strlen(key), FNV_SEED);
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nbins; i++)
    if (bins[i].h == h && !strcmp(bins[i].key, key)) {
      stats.mem_hits++;
      *len = bins[i].len;
      const char *b = bins[i].bin;
      pthread_mutex_unlock(&mu);
      mc_free(key);
      return b;
    }
  size_t n = 0;
  char *bin = disk_read(key, h, arch, &n);
  if (bin) {
    stats.disk_hits++;
  } else {
    if (mc_debug.nvrtc) fprintf(stderr, "%s", src); /* debugging: what compiles */
    bin = nvrtc_compile(src, arch, &n);
    stats.compiled++;
    if (disk_write(key, h, arch, bin, n)) stats.disk_writes++;
  }
  if (nbins == capbins) {
    capbins = capbins ? 2 * capbins : 32;
    bins = mc_realloc(bins, (size_t)capbins * sizeof *bins);
  }
  bins[nbins++] = (BinEntry){h, key, bin, n};
  pthread_mutex_unlock(&mu);
  *len = n;
  return bin;
}

#else /* no NVRTC: sources can still be generated (tests), not compiled */

bool cg_nvrtc_available(void) {
  return false;
}
const char *cg_nvrtc_binary(const char *src, const char *arch, size_t *len) {
  (void)src;
  (void)arch;
  (void)len;
  (void)disk_read;
  (void)disk_write;
  (void)capbins;
  mc_fatal("moec was built without NVRTC: cannot compile CUDA kernels");
}
#endif

/* ---------------------------------------------------------------- loaded kernels (GPU) */

#if defined(MOEC_HAVE_NVRTC) && defined(MOEC_HAVE_CUDA)
#include "../runtime/cuda/cuda.h"

typedef CUresult (*PfnModuleLoadData)(CUmodule *, const void *);
typedef CUresult (*PfnModuleGetFunction)(CUfunction *, CUmodule, const char *);
typedef CUresult (*PfnLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, unsigned, CUstream, void **, void **);
typedef CUresult (*PfnCtxGetCurrent)(CUcontext *);
typedef CUresult (*PfnCtxSetCurrent)(CUcontext);
static PfnModuleLoadData p_cuModuleLoadData;
static PfnModuleGetFunction p_cuModuleGetFunction;
static PfnLaunchKernel p_cuLaunchKernel;
static PfnCtxGetCurrent p_cuCtxGetCurrent;
static PfnCtxSetCurrent p_cuCtxSetCurrent;

static void *driver_fn(const char *sym) {
  void *p = NULL;
  enum cudaDriverEntryPointQueryResult q;
  RTC_CHECK(cudaGetDriverEntryPointByVersion(sym, &p, 12000, cudaEnableDefault, &q), NULL);
  if (!p || q != cudaDriverEntryPointSuccess)
    mc_fatal("the CUDA driver has no %s (entry point query result %d)", sym, (int)q);
  return p;
}

static void driver_init_locked(void) {
  if (p_cuLaunchKernel) return;
  p_cuGetErrorString = (PfnGetErrorString)driver_fn("cuGetErrorString");
  p_cuModuleLoadData = (PfnModuleLoadData)driver_fn("cuModuleLoadData");
  p_cuModuleGetFunction = (PfnModuleGetFunction)driver_fn("cuModuleGetFunction");
  p_cuCtxGetCurrent = (PfnCtxGetCurrent)driver_fn("cuCtxGetCurrent");
  p_cuCtxSetCurrent = (PfnCtxSetCurrent)driver_fn("cuCtxSetCurrent");
  p_cuLaunchKernel = (PfnLaunchKernel)driver_fn("cuLaunchKernel");
}

enum { MAX_GPUS = 64 };
static CUcontext gpu_ctx[MAX_GPUS]; /* the primary context the runtime made current */
static char gpu_arch[MAX_GPUS][16];

/* The device's arch for NVRTC: sm_XY (a CUBIN, no driver JIT) when NVRTC knows it, else
 * PTX for the newest compute_XY NVRTC knows at or below it (the driver JITs it). */
static const char *arch_of(int gpu) {
  if (gpu_arch[gpu][0]) return gpu_arch[gpu];
  int maj = 0, min = 0, n = 0;
  RTC_CHECK(cudaDeviceGetAttribute(&maj, cudaDevAttrComputeCapabilityMajor, gpu), NULL);
  RTC_CHECK(cudaDeviceGetAttribute(&min, cudaDevAttrComputeCapabilityMinor, gpu), NULL);
  int want = 10 * maj + min, best = 0;
  RTC_CHECK(nvrtcGetNumSupportedArchs(&n), NULL);
  int *archs = mc_calloc((size_t)n + 1, sizeof(int));
  RTC_CHECK(nvrtcGetSupportedArchs(archs), NULL);
  bool exact = false;
  for (int i = 0; i < n; i++) {
    exact |= archs[i] == want;
    if (archs[i] <= want && archs[i] > best) best = archs[i];
  }
  mc_free(archs);
  if (!best) mc_fatal("GPU %d is sm_%d, older than every arch NVRTC supports", gpu, want);
  snprintf(gpu_arch[gpu], sizeof gpu_arch[gpu], "%s_%d", exact ? "sm" : "compute",
           exact ? want : best);
  return gpu_arch[gpu];
}

typedef struct FnEntry {
  uint64_t h;
  int gpu;
  bool f64;
  uint64_t bcast;
  FusedProg prog; /* deep copy */
  CUfunction fn;
} FnEntry;
static FnEntry *fns;
static int nfns, capfns;

static uint64_t prog_hash(const FusedProg *p, bool f64, uint64_t bcast, int gpu) {
  uint64_t h = FNV_SEED;
  int head[5] = {p->nin, p->nops, p->nout, f64, gpu};
  h = fnv1a(head, sizeof head, h);
  h = fnv1a(&bcast, sizeof bcast, h);
  for (int k = 0; k < p->nops; k++) {
    int v[3] = {(int)p->ops[k].op, p->ops[k].a, p->ops[k].b};
    h = fnv1a(v, sizeof v, h);
    h = fnv1a(&p->ops[k].f0, sizeof(double), h);
    h = fnv1a(&p->ops[k].f1, sizeof(double), h);
  }
  return fnv1a(p->outs, sizeof(int) * (size_t)p->nout, h);
}

static bool prog_equal(const FusedProg *x, const FusedProg *y) {
  if (x->nin != y->nin || x->nops != y->nops || x->nout != y->nout) return false;
  for (int k = 0; k < x->nops; k++) {
    const FusedInstr *a = &x->ops[k], *b = &y->ops[k];
    if (a->op != b->op || a->a != b->a || a->b != b->b || memcmp(&a->f0, &b->f0, sizeof(double)) ||
        memcmp(&a->f1, &b->f1, sizeof(double)))
      return false;
  }
  return !memcmp(x->outs, y->outs, sizeof(int) * (size_t)x->nout);
}

static CUfunction load_locked(const FusedProg *pr, bool f64, uint64_t bcast, int gpu, uint64_t h) {
  char name[CG_CUDA_NAME_LEN];
  char *src = cg_cuda_fused_source(pr, f64, bcast, name);
  const char *arch = arch_of(gpu);
  pthread_mutex_unlock(&mu); /* cg_nvrtc_binary takes the lock itself */
  size_t len = 0;
  const char *bin = cg_nvrtc_binary(src, arch, &len);
  pthread_mutex_lock(&mu);
  CUmodule mod;
  CUfunction fn;
  RTC_CHECK(p_cuModuleLoadData(&mod, bin), NULL);
  RTC_CHECK(p_cuModuleGetFunction(&fn, mod, name), NULL);
  stats.loaded++;
  mc_free(src);
  if (nfns == capfns) {
    capfns = capfns ? 2 * capfns : 32;
    fns = mc_realloc(fns, (size_t)capfns * sizeof *fns);
  }
  FnEntry *e = &fns[nfns++];
  *e = (FnEntry){h, gpu, f64, bcast, *pr, fn};
  e->prog.ops = mc_malloc(sizeof(FusedInstr) * (size_t)pr->nops);
  memcpy(e->prog.ops, pr->ops, sizeof(FusedInstr) * (size_t)pr->nops);
  e->prog.outs = mc_malloc(sizeof(int) * (size_t)pr->nout);
  memcpy(e->prog.outs, pr->outs, sizeof(int) * (size_t)pr->nout);
  return fn;
}

bool cg_cuda_fused_launch(const Node *n, bool f64, int gpu, void *stream, void *const *in,
                          void *const *out) {
  const FusedProg *pr = ir_fused_prog(n);
  if (!pr) mc_fatal("node %d: fused op without a program (made outside the fusion pass?)", n->id);
  if (gpu < 0 || gpu >= MAX_GPUS) mc_fatal("fused op on GPU %d: at most %d GPUs", gpu, MAX_GPUS);
  if (pr->nin > 64 || pr->nin != n->nin || pr->nout != n->nout)
    mc_fatal("node %d: fused program does not match its node (%d/%d inputs, %d/%d outputs)", n->id,
             pr->nin, n->nin, pr->nout, n->nout);
  int64_t ne = n->out[0]->numel;
  uint64_t bcast = 0;
  for (int s = 0; s < pr->nin; s++)
    if (n->in[s]->numel == 1 && ne != 1) bcast |= 1ull << s;
  uint64_t h = prog_hash(pr, f64, bcast, gpu);
  pthread_mutex_lock(&mu);
  driver_init_locked();
  if (!gpu_ctx[gpu]) { /* the runtime's primary context of this GPU, made current */
    RTC_CHECK(cudaSetDevice(gpu), NULL);
    RTC_CHECK(cudaFree(NULL), NULL);
    RTC_CHECK(p_cuCtxGetCurrent(&gpu_ctx[gpu]), NULL);
  }
  CUcontext cur = NULL;
  RTC_CHECK(p_cuCtxGetCurrent(&cur), NULL);
  if (cur != gpu_ctx[gpu]) RTC_CHECK(p_cuCtxSetCurrent(gpu_ctx[gpu]), NULL);
  CUfunction fn = NULL;
  for (int i = 0; i < nfns && !fn; i++)
    if (fns[i].h == h && fns[i].gpu == gpu && fns[i].f64 == f64 && fns[i].bcast == bcast &&
        prog_equal(&fns[i].prog, pr))
      fn = fns[i].fn;
  if (fn)
    stats.fn_hits++;
  else
    fn = load_locked(pr, f64, bcast, gpu, h);
  pthread_mutex_unlock(&mu);
  if (ne <= 0) return true;
  void *params[64 + 64 + 1];
  int np = 0;
  for (int s = 0; s < pr->nin; s++)
    params[np++] = (void *)&in[s];
  for (int j = 0; j < pr->nout; j++)
    params[np++] = (void *)&out[j];
  long long count = ne;
  params[np++] = &count;
  int64_t blocks = (ne + 255) / 256;
  if (blocks > 1048576) blocks = 1048576; /* the grid-stride loop covers the rest */
  RTC_CHECK(
      p_cuLaunchKernel(fn, (unsigned)blocks, 1, 1, 256, 1, 1, 0, (CUstream)stream, params, NULL),
      NULL);
  return true;
}

/* The interpreter kernels the NVRTC kernel falls back to, by precision (cuda's table). */
static KernelFn interp_kernel[2];

static void nvrtc_fused_kernel(const KernelCtx *ctx, const Node *n, void *const *in,
                               void *const *out, bool f64) {
  RtCudaDev *d = ctx->dev ? (RtCudaDev *)ctx->dev : rt_cuda_dev(0);
  if (!cg_cuda_fused_launch(n, f64, rt_cuda_gpu(d), rt_cuda_stream(d), in, out))
    interp_kernel[f64](ctx, n, in, out);
}
static void nvrtc_fused_f32(const KernelCtx *c, const Node *n, void *const *in, void *const *out) {
  nvrtc_fused_kernel(c, n, in, out, false);
}
static void nvrtc_fused_f64(const KernelCtx *c, const Node *n, void *const *in, void *const *out) {
  nvrtc_fused_kernel(c, n, in, out, true);
}

KernelFn cg_nvrtc_fused(const Node *n, Precision prec, void *dev, KernelFn interp) {
  const FusedProg *pr = ir_fused_prog(n);
  bool f64 = prec == PREC_F64;
  MOEC_ASSERT(pr && interp);
  interp_kernel[f64] = interp;
  if (pr->nin > 64) return interp;
  uint64_t bcast = 0;
  for (int s = 0; s < pr->nin; s++)
    if (n->in[s]->numel == 1 && n->out[0]->numel != 1) bcast |= 1ull << s;
  char name[CG_CUDA_NAME_LEN];
  char *src = cg_cuda_fused_source(pr, f64, bcast, name);
  RtCudaDev *d = dev ? (RtCudaDev *)dev : rt_cuda_dev(0);
  pthread_mutex_lock(&mu);
  const char *arch = arch_of(rt_cuda_gpu(d));
  pthread_mutex_unlock(&mu);
  size_t len = 0;
  cg_nvrtc_binary(src, arch, &len); /* compiled now (or found in a cache), loaded at launch */
  mc_free(src);
  return f64 ? nvrtc_fused_f64 : nvrtc_fused_f32;
}

void cg_nvrtc_forget(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nbins; i++) {
    mc_free(bins[i].key);
    mc_free(bins[i].bin);
  }
  nbins = 0;
  for (int i = 0; i < nfns; i++) {
    mc_free(fns[i].prog.ops);
    mc_free(fns[i].prog.outs);
  }
  nfns = 0;
  pthread_mutex_unlock(&mu);
}

#else /* NVRTC without CUDA (or neither): no launches */

KernelFn cg_nvrtc_fused(const Node *n, Precision prec, void *dev, KernelFn interp) {
  (void)n, (void)prec, (void)dev;
  return interp;
}

bool cg_cuda_fused_launch(const Node *n, bool f64, int gpu, void *stream, void *const *in,
                          void *const *out) {
  (void)n, (void)f64, (void)gpu, (void)stream, (void)in, (void)out;
  return false;
}

void cg_nvrtc_forget(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nbins; i++) {
    mc_free(bins[i].key);
    mc_free(bins[i].bin);
  }
  nbins = 0;
  pthread_mutex_unlock(&mu);
}
#endif
