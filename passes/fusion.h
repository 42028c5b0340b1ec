/* fusion.h: the elementwise-fusion pass (fusion.c). It records for every OP_FUSED
 * node its expression program (FusedProg, ir/ir.h: straight-line code over slots of
 * elementwise ops), which codegen/jit.c (cpu, LLVM) and codegen/nvrtc.c (cuda, NVRTC)
 * compile. Prefix: pass_.
 */
#ifndef MOEC_FUSION_H
#define MOEC_FUSION_H

#include "passes.h"

/* The fusion pass: groups chains and trees of elementwise ops into OP_FUSED
 * nodes (legality rules in fusion.c). Runs when cfg->fuse is set and fused
 * kernels can be compiled (cpu: LLVM, codegen/jit.c; cuda: the CUDA backend,
 * codegen/nvrtc.c). */
void pass_fusion(Graph *g, const PassCtx *ctx);
/* Whether fusion would run for this configuration (the build considered). */
bool pass_fusion_enabled(const Config *cfg);

#endif
