/* common.h: what every stage shares: the one allocator, arenas for compiler
 * data, check macros for library calls, always-on invariants, small string
 * helpers. Prefix: none for macros (CHECK*, MOEC_ASSERT), mc_ for functions. */
#ifndef MOEC_COMMON_H
#define MOEC_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MC_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Internal invariants: on in every build, name file and line. */
#define MOEC_ASSERT(cond)                                                       \
  do {                                                                         \
    if (!(cond)) mc_fatal_at(__FILE__, __LINE__, "assertion failed: %s", #cond); \
  } while (0)

_Noreturn void mc_fatal_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define mc_fatal(...) mc_fatal_at(__FILE__, __LINE__, __VA_ARGS__)

/* User-facing runtime error (bad data file, OOM, ...): "moec: error: ..." and exit 1. */
_Noreturn void mc_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Fuzzers only: when set, mc_die calls it with the message instead of printing and
 * exiting; it must not return (it longjmps back to the fuzz target). */
extern void (*mc_die_hook)(const char *msg);

/* The one allocator. Aborts with a clear message naming the call site on failure. */
void *mc_malloc_at(size_t n, const char *file, int line);
void *mc_calloc_at(size_t n, size_t size, const char *file, int line);
void *mc_realloc_at(void *p, size_t n, const char *file, int line);
#define mc_malloc(n) mc_malloc_at((n), __FILE__, __LINE__)
#define mc_calloc(n, s) mc_calloc_at((n), (s), __FILE__, __LINE__)
#define mc_realloc(p, n) mc_realloc_at((p), (n), __FILE__, __LINE__)
/* Like mc_malloc but returns NULL instead of dying: for big runtime buffers
 * whose failure must be reported with plan figures. */
void *mc_try_malloc(size_t n);
void mc_free(void *p);
/* Zeroed memory for the big persistent runtime buffers (the program's parameters,
 * gradients and arena, the optimizer's moments): from 2 MiB on, 2 MiB-aligned and
 * marked for transparent huge pages (madvise), so streaming passes over GBs take no
 * TLB miss every 4 KB; smaller sizes are a plain calloc. NULL on failure (the _try
 * form) or dies naming the call site; freed by mc_free like the rest. */
void *mc_try_calloc_big(size_t n);
void *mc_calloc_big_at(size_t n, size_t size, const char *file, int line);
#define mc_calloc_big(n, s) mc_calloc_big_at((n), (s), __FILE__, __LINE__)

/* File calls: FOPEN_CHECK etc. report the path and errno. */
FILE *mc_fopen_at(const char *path, const char *mode, const char *file, int line);
#define mc_fopen(p, m) mc_fopen_at((p), (m), __FILE__, __LINE__)

/* Arena: bump allocation for compiler data, freed all at once. */
typedef struct McArenaBlock McArenaBlock;
typedef struct McArena {
  McArenaBlock *head;
  size_t used_total;
} McArena;
void *mc_arena_alloc(McArena *a, size_t n); /* zeroed, 16-byte aligned */
char *mc_arena_strdup(McArena *a, const char *s);
char *mc_arena_strndup(McArena *a, const char *s, size_t n);
char *mc_arena_printf(McArena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mc_arena_free(McArena *a);

/* Length (1..4) of the valid UTF-8 sequence at s[0, n), 0 if it is none (overlong
 * forms, surrogates and code points past U+10FFFF are not valid). */
int mc_utf8_len(const unsigned char *s, size_t n);

/* Growable string buffer. */
typedef struct McBuf {
  char *data;
  size_t len, cap;
} McBuf;
void mc_buf_printf(McBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mc_buf_vprintf(McBuf *b, const char *fmt, va_list ap);
void mc_buf_putc(McBuf *b, char c);
/* s as a JSON string: quoted, escaped; a byte that is not part of valid UTF-8
 * becomes U+FFFD, so the output is always valid JSON. */
void mc_buf_json_string(McBuf *b, const char *s);
void mc_buf_free(McBuf *b);

/* Checked int64 arithmetic for sizes, counts and steps that come from a user (a
 * file, a flag, a checkpoint): true and *out = the result when it fits, false
 * (and *out untouched) when it would overflow. */
static inline bool mc_mul_ok(int64_t a, int64_t b, int64_t *out) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return false;
  *out = r;
  return true;
}
static inline bool mc_add_ok(int64_t a, int64_t b, int64_t *out) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return false;
  *out = r;
  return true;
}

/* The largest file moec reads whole (data, checkpoints, token files): 64 GiB. */
#define MC_READ_MAX ((size_t)1 << 36)

/* Reads a whole regular file (or what a symlink names) of at most max bytes, without
 * blocking on a FIFO; *len excludes the NUL added. NULL on failure with errno set
 * (EISDIR: a directory; EINVAL: a FIFO, device or socket; EFBIG: over max) and
 * mc_read_error() saying why in words. mc_read_file: max = MC_READ_MAX. */
char *mc_read_file_max(const char *path, size_t max, size_t *len);
char *mc_read_file(const char *path, size_t *len);
/* Why the calling thread's last mc_read_file* failed: "it is a directory", "it is
 * not a regular file (a FIFO)", "it has more than 64 GiB (the limit)", strerror. */
const char *mc_read_error(void);

/* Developer diagnostics, off unless MOEC_DEBUG lists them (read once, by the
 * command line at startup: mc_debug_from_env): memplan (the peak of every memory
 * plan on stderr), memplan_all (every tensor's lifetime), jit (LLVM IR after
 * optimisation), nvrtc (generated CUDA source). They change no result. */
typedef struct McDebug {
  bool memplan, memplan_all, jit, nvrtc;
} McDebug;
extern McDebug mc_debug;
void mc_debug_from_env(void);

/* version.c: "0.9.0 (abc1234)"; the features built in: "cpu, llvm, mpi, cuda, ...". */
const char *mc_version(void);
const char *mc_features(void);

/* Monotonic wall clock in seconds; the process's CPU seconds (for limits that a loaded
 * shared machine must not trip); the calling thread's CPU seconds (its work, not its waits
 * for a core: moec calibrate's one-thread kernels). */
double mc_now(void);
double mc_cpu_now(void);
double mc_thread_cpu_now(void);

/* Counter-based random numbers (splitmix64 hashing): the same (key, counter)
 * gives the same draw on any device and any split of the batch. */
uint64_t mc_hash64(uint64_t x);
/* FNV-1a of a NUL-terminated string: the hash tables' (names, symbols). */
uint64_t mc_hash_str(const char *s);
uint64_t mc_rng_key(uint64_t seed, uint64_t stream, uint64_t step);
double mc_rng_uniform(uint64_t key, uint64_t counter); /* in (0,1) */
double mc_rng_normal(uint64_t key, uint64_t counter);  /* N(0,1), Box-Muller */

#endif
