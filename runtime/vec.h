/* vec.h: VEC marks a CPU kernel's hot loop: compiled for AVX2 and AVX-512 besides the
 * baseline and picked at load time, with the same bits in every clone (no FMA
 * contraction, no reassociation). Included once, after the system headers, by the files
 * whose loops use it; the pragma applies to the rest of that file. */
#ifndef MOEC_RUNTIME_VEC_H
#define MOEC_RUNTIME_VEC_H

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "vect-cost-model=dynamic", "fp-contract=off")
#if defined(__x86_64__)
#define VEC __attribute__((target_clones("avx2", "avx512f", "default")))
#endif
#endif
#ifndef VEC
#define VEC
#endif

#endif
