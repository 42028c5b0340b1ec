/* fusion.h: the elementwise-fusion pass (fusion.c). It records for every OP_FUSED
 * node its expression program (FusedProg, ir/ir.h: straight-line code over slots of
 * elementwise ops), which codegen/jit.c (cpu, LLVM) and codegen/nvrtc.c (cuda, NVRTC)
 * compile. Prefix: pass_.
 */
#ifndef MOEC_FUSION_H
#define MOEC_FUSION_H

#include "passes.h"

/* Members of a group for the cuda backend: its fused kernels take at most 64 inputs
 * (NVRTC's broadcast mask, the interpreter kernel's parameter block), 64 ops and 32
 * outputs, and a member reads at most two values and writes one, so 32 members always
 * fit (the CPU's groups go up to 64). */
enum { PASS_FUSED_MAX_CUDA = 32 };

/* The fusion pass: groups chains and trees of elementwise ops into OP_FUSED
 * nodes (legality rules in fusion.c). Runs when cfg->fuse is set and fused
 * kernels can be compiled (cpu: LLVM, codegen/jit.c; cuda: the CUDA backend,
 * codegen/nvrtc.c). */
void pass_fusion(Graph *g, const PassCtx *ctx);
/* Whether fusion would run for this configuration (the build considered). */
bool pass_fusion_enabled(const Config *cfg);

#endif
