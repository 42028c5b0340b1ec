/* kernels.c: the CPU kernel tables, one per precision. */
#include "runtime.h"

static KernelFn table_f32[OP_COUNT], table_f64[OP_COUNT];
static bool filled;

const KernelFn *rt_cpu_kernels(Precision p) {
  if (!filled) {
    rt_kern_dense_register(table_f32, table_f64);
    rt_kern_moe_register(table_f32, table_f64);
    filled = true;
  }
  return p == PREC_F64 ? table_f64 : table_f32;
}
