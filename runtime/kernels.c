/* kernels.c: the CPU kernel tables, one per precision. */
#include "runtime.h"

static KernelFn table_f32[OP_COUNT], table_f64[OP_COUNT];
static bool filled;

const KernelFn *rt_cpu_kernels(Precision p) {
  if (!filled) {
    rt_kern_dense_register(table_f32, table_f64);
    rt_kern_moe_register(table_f32, table_f64);
    rt_kern_comm_register(table_f32, table_f64);
    filled = true;
  }
  return p == PREC_F64 ? table_f64 : table_f32;
}

int rt_blas_int(int64_t v, const Node *n) {
  if (v > 2147483647)
    mc_die("%d:%d: %s'%s': a matrix dimension of %lld exceeds 2147483647 (2^31 - 1), the most "
           "OpenBLAS takes",
           n->loc.line, n->loc.col, n->layer ? "layer " : "op ", n->layer ? n->layer : ir_ops[n->op].name,
           (long long)v);
  return (int)v;
}

/* ---- the cpu backend: host memory ---- */
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(size_t n) { return calloc(1, n ? n : 1); }
static void cpu_release(void *p) { free(p); }
static void cpu_copy(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
static void cpu_sync(void) {}

const Backend rt_backend_cpu = {"cpu", rt_cpu_kernels, cpu_alloc, cpu_release,
                                cpu_copy, cpu_copy, cpu_copy, cpu_sync};

#ifndef MOEC_HAVE_CUDA
const Backend *rt_backend_cuda(void) { return NULL; }
#endif
