/* split.c: the cpu backend's task counts by kernel shape (split.h): GEMM pieces, row
 * chunks, an expert GEMM's column pieces, the LSTM's batch blocks. */
#include "split.h"

#include "runtime.h"

int64_t rt_gemm_shape(int64_t M, int64_t N, int64_t K, GemmSplit *split, int64_t *len) {
  double flops = 2.0 * (double)M * (double)N * (double)MC_MAX(K, 1);
  int64_t p = flops >= GEMM_FOUR_FLOPS ? 4 : flops >= GEMM_MIN_FLOPS ? 2 : 1;
  if (K >= GEMM_K_RATIO * MC_MAX(M, N))
    *split = SPLIT_K;
  else if (N >= GEMM_N_RATIO * M && N >= GEMM_PIECE_ROWS * p)
    *split = SPLIT_N;
  else if (M >= GEMM_PIECE_ROWS * p || M >= N)
    *split = SPLIT_M;
  else
    *split = SPLIT_N;
  *len = *split == SPLIT_M ? M : *split == SPLIT_N ? N : K;
  while (p > 1 && *len < GEMM_PIECE_ROWS * p)
    p /= 2;
  return K <= 0 ? 1 : p;
}

int64_t rt_gemm_pieces(int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return 1;
  GemmSplit split;
  int64_t len;
  return rt_gemm_shape(M, N, K, &split, &len);
}

int64_t rt_chunks(int64_t R, int64_t cost) {
  if (R <= 1) return 1;
  int64_t per = MC_MAX(1, (RT_GRAIN + MC_MAX(cost, 1) - 1) / MC_MAX(cost, 1)); /* rows per task */
  return MC_MAX(1, MC_MIN(MC_MIN(R, RT_MAX_TASKS), R / per));
}

int64_t rt_moe_pieces(double flops, int64_t cols) {
  int64_t units = MC_MAX(1, (cols + 15) / 16);
  return MC_MAX(1, MC_MIN(MC_MIN(units, MOE_MAX_PIECES), (int64_t)(flops / MOE_PIECE_FLOPS)));
}

int64_t rt_lstm_tasks(int64_t B) {
  return MC_MAX(1, (B + LSTM_ROWS - 1) / LSTM_ROWS);
}
