/* ops.c: the op table, built from ops.def. */
#include <string.h>

#include "ir.h"

#define NOGRAD NULL
const OpInfo ir_ops[OP_COUNT] = {
#define OP(id, name, nin, nout, flags, shape, grad) [id] = {name, nin, nout, flags, shape, grad},
#include "ops.def"
#undef OP
};
#undef NOGRAD

static const char *const op_names[] = {
#define OP(id, name, nin, nout, flags, shape, grad) name,
#include "ops.def"
#undef OP
};
_Static_assert(MC_ARRAY_LEN(op_names) == OP_COUNT, "op name table out of step with OpKind");

int ir_op_lookup(const char *name) {
  for (int i = 0; i < OP_COUNT; i++)
    if (strcmp(op_names[i], name) == 0) return i;
  return -1;
}
