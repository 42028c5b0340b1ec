/* fusion.h: the elementwise-fusion pass (fusion.c) and the expression program
 * it records for every OP_FUSED node; codegen/jit.c compiles such programs.
 *
 * A program is straight-line code over slots: slots [0, nin) are the fused
 * node's inputs, slot nin + k is the value of instruction k. Every instruction
 * is one of the elementwise ops of ops.def with the attributes its kernel reads.
 * outs[j] is the slot the node's output j takes. codegen/jit.c (cpu, LLVM) and
 * codegen/nvrtc.c (cuda, NVRTC) compile the same program.
 * Prefix: pass_.
 */
#ifndef MOEC_FUSION_H
#define MOEC_FUSION_H

#include "passes.h"

typedef struct FusedInstr {
  OpKind op;     /* OP_ADD ... OP_SOFTPLUS_BWD (elementwise, not random) */
  int a, b;      /* operand slots (b = -1 for unary ops) */
  double f0, f1; /* OP_SCALE's fa[0], fa[1] */
} FusedInstr;

/* Members of a group for the cuda backend: its fused kernels take at most 64 inputs
 * (NVRTC's broadcast mask, the interpreter kernel's parameter block), 64 ops and 32
 * outputs, and a member reads at most two values and writes one, so 32 members always
 * fit (the CPU's groups go up to 64). */
enum { PASS_FUSED_MAX_CUDA = 32 };

typedef struct FusedProg {
  int nin, nops, nout;
  FusedInstr *ops; /* nops */
  int *outs;       /* nout slots */
} FusedProg;

/* The fusion pass: groups chains and trees of elementwise ops into OP_FUSED
 * nodes (legality rules in fusion.c). Runs when cfg->fuse is set and fused
 * kernels can be compiled (cpu: LLVM, codegen/jit.c; cuda: the CUDA backend,
 * codegen/nvrtc.c); MOEC_FUSE=0/1 in the environment overrides cfg->fuse,
 * MOEC_CUDA_FUSE=0/1 (first) for backend = cuda. */
void pass_fusion(Graph *g, const PassCtx *ctx);
/* The program of an OP_FUSED node (NULL for any other node). */
const FusedProg *pass_fused_prog(const Node *n);
/* Whether fusion would run for this configuration (env and build considered). */
bool pass_fusion_enabled(const Config *cfg);

#endif
