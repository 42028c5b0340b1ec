/* layers.c: the layer table fe_layers[] expanded from layers.def, and lookup by
 * name. The table is data: sema reads argument kinds, defaults and ranges from
 * it; summary.c and the IR builder read Expr.argv[] by LayerArgId. */
#include <string.h>

#include "frontend.h"

/* Pass 1: each argument's position inside its layer, as a constant. __COUNTER__
 * (gcc, clang) increases by one per use, so a position is the counter at the
 * ARG minus the counter at its LAYER, minus one. */
#define LAYER(id, name, nt) enum { LBASE_##id = __COUNTER__ };
#define ARG(layer, id, key, kind, req, def, lo, hi)                                                \
  enum { APOS_##layer##_##id = __COUNTER__ - LBASE_##layer - 1 };
#include "layers.def"

/* Pass 2: designated initialisers. nargs is re-set by every ARG of a layer and
 * the last one (position + 1) wins, which C11 6.7.9p19 defines; the warning
 * about overriding an initialiser is silenced for just this table. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
#ifdef __clang__
#pragma GCC diagnostic ignored "-Winitializer-overrides"
#endif
const LayerSpec fe_layers[L_COUNT] = {
#define LAYER(id, name_, nt) [id].name = name_, [id].ntensors = nt,
#define ARG(layer, id_, key_, kind_, req_, def_, lo_, hi_)                                         \
  [layer].args[APOS_##layer##_##id_] = {.id = id_,                                                 \
                                        .key = key_,                                               \
                                        .kind = kind_,                                             \
                                        .required = req_,                                          \
                                        .def = def_,                                               \
                                        .lo = lo_,                                                 \
                                        .hi = hi_},                                                \
  [layer].nargs = APOS_##layer##_##id_ + 1,
#include "layers.def"
};
#pragma GCC diagnostic pop

int fe_layer_lookup(const char *name) {
  if (!name) return -1;
  for (int i = 0; i < L_COUNT; i++)
    if (fe_layers[i].name && !strcmp(fe_layers[i].name, name)) return i;
  return -1;
}
