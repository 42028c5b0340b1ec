/* split.h: how the cpu backend splits a kernel into tasks, by its shape alone: the rules
 * the kernels follow and the cost model reads (passes/costmodel.c), in one place with no
 * state, so the compiler can ask them without the runtime. Prefix: rt_. */
#ifndef MOEC_SPLIT_H
#define MOEC_SPLIT_H

#include <stdint.h>

/* A GEMM splits into 2 or 4 pieces (by its flops) along C's rows (M), or along the
 * contraction (K) when K dwarfs M and N, or along C's columns (N) when there are too
 * few rows or N dwarfs M (runtime/kernels.c says why). */
#define GEMM_UNIT 16         /* piece edges at multiples of this (a vector of floats) */
#define GEMM_MIN_FLOPS 8e6   /* below this a GEMM is one task */
#define GEMM_FOUR_FLOPS 64e6 /* from this on, four pieces */
#define GEMM_PIECE_ROWS 64   /* a piece of rows or columns has at least this many */
#define GEMM_K_RATIO 8       /* split K when K >= this * max(M, N) */
#define GEMM_N_RATIO 8       /* split N when N >= this * M */
typedef enum GemmSplit { SPLIT_M, SPLIT_N, SPLIT_K } GemmSplit;

#define MOE_PIECE_FLOPS 32e6 /* an expert's GEMM splits into pieces of at least this */
#define MOE_MAX_PIECES 8
#define LSTM_ROWS 16 /* the LSTM's rows per task (a batch block) */

/* The split of an [M, K] x [K, N] GEMM and its pieces (*len: the split dimension's). */
int64_t rt_gemm_shape(int64_t M, int64_t N, int64_t K, GemmSplit *split, int64_t *len);

#endif
