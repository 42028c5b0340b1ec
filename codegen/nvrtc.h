/* nvrtc.h: CUDA fused elementwise kernels (the GPU half of fusion).
 *
 * An OP_FUSED node's program (passes/fusion.h) becomes CUDA C: one kernel per group
 * and precision, a grid-stride loop that loads each input, evaluates the program op
 * by op with the same expressions as the unfused CUDA kernels
 * (runtime/cuda/kernels_dense.cu), and stores each materialised output. The source
 * is compiled at run time with NVRTC, cached by a content hash in memory and on disk
 * ($MOEC_CACHE_DIR, else ~/.cache/moec), loaded with the driver API and launched on
 * the device's stream. docs/fusion.md, "The CUDA half".
 *
 * The generated source is also valid C11 (macros for the CUDA-only parts), so the
 * tests compile it with the host C compiler and check its arithmetic against the CPU
 * kernels bit for bit without a GPU (tests/test_nvrtc.c). Prefix: cg_.
 */
#ifndef MOEC_NVRTC_H
#define MOEC_NVRTC_H

#include "codegen.h"

#include "../passes/fusion.h"

/* CUDA C for one fused group. bcast: bit s set when input s is a broadcast scalar
 * (< 64 inputs). The kernel's name (extern "C", "moec_fused_<hash>") is written to
 * name (>= CG_CUDA_NAME_LEN bytes). The kernel's parameters: the nin input pointers,
 * the nout output pointers, then the element count (long long). Compiled as host C
 * (no __CUDACC__), the source also defines void NAME_host(void *const *in,
 * void *const *out, long long n), and needs MC_EXPF, MC_TANHF, MC_SOFTPLUSF, MC_EXP,
 * MC_TANH, MC_SOFTPLUS defined first. Free with mc_free. */
enum { CG_CUDA_NAME_LEN = 40 };
char *cg_cuda_fused_source(const FusedProg *pr, bool f64, uint64_t bcast, char *name);

/* True when moec was built with NVRTC (MOEC_HAVE_NVRTC). */
bool cg_nvrtc_available(void);

/* The compiled form of src for arch ("compute_90": PTX, "sm_90": CUBIN), from the
 * in-memory cache, the disk cache, or NVRTC (options: --gpu-architecture=ARCH,
 * --std=c++17, --fmad=true, nothing fast-math). The returned buffer belongs to the
 * cache (valid until cg_nvrtc_forget); *len its size. Dies with the NVRTC log, file
 * and line on a compile error. */
const char *cg_nvrtc_binary(const char *src, const char *arch, size_t *len);

typedef struct CgNvrtcStats {
  int compiled;  /* NVRTC compilations */
  int mem_hits;  /* binaries found in memory */
  int disk_hits; /* binaries read from the disk cache */
  int disk_writes;
  int loaded;  /* modules loaded on a device */
  int fn_hits; /* launches whose kernel was already loaded */
} CgNvrtcStats;
CgNvrtcStats cg_nvrtc_stats(void);
/* Drops the in-memory caches (binaries and loaded kernels; modules stay loaded),
 * so the next request reads the disk cache: tests of the disk path. */
void cg_nvrtc_forget(void);
/* The disk cache's folder: $MOEC_CACHE_DIR, else $HOME/.cache/moec; "" when neither
 * is set. MOEC_CACHE_DIR=off turns the disk cache off. */
const char *cg_nvrtc_cache_dir(void);

/* The kernel of fused node n (bound) on the cuda device dev (a RtCudaDev*, NULL: GPU 0)
 * at lowering: its group compiled by NVRTC now (or found in a cache), a kernel that
 * loads and launches it on the KernelCtx's device; interp (the backend's interpreter
 * kernel) where NVRTC is absent or cannot run the group. */
KernelFn cg_nvrtc_fused(const Node *n, Precision prec, void *dev, KernelFn interp);

/* Runs fused node n (bound: out[0]->numel elements) on GPU gpu's stream (a
 * cudaStream_t): compiles (or finds) its kernel and launches it. False when moec has
 * no NVRTC (the caller then runs the interpreter kernel). */
bool cg_cuda_fused_launch(const Node *n, bool f64, int gpu, void *stream, void *const *in,
                          void *const *out);

#endif
