/* common.c: allocator, arenas, buffers, errors, clock, counter-based RNG. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void mc_fatal_at(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "moec: internal error at %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

void mc_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "moec: error: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void *mc_malloc_at(size_t n, const char *file, int line) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "moec: error: out of memory allocating %zu bytes (%s:%d)\n", n, file, line);
    exit(1);
  }
  return p;
}

void *mc_calloc_at(size_t n, size_t size, const char *file, int line) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) {
    fprintf(stderr, "moec: error: out of memory allocating %zu x %zu bytes (%s:%d)\n", n, size,
            file, line);
    exit(1);
  }
  return p;
}

void *mc_realloc_at(void *p, size_t n, const char *file, int line) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "moec: error: out of memory reallocating %zu bytes (%s:%d)\n", n, file, line);
    exit(1);
  }
  return q;
}

void *mc_try_malloc(size_t n) { return malloc(n ? n : 1); }
void mc_free(void *p) { free(p); }

FILE *mc_fopen_at(const char *path, const char *mode, const char *file, int line) {
  FILE *f = fopen(path, mode);
  if (!f) {
    (void)file;
    (void)line;
    mc_die("cannot open '%s': %s", path, strerror(errno));
  }
  return f;
}

/* ---- arena ---- */
struct McArenaBlock {
  McArenaBlock *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};

void *mc_arena_alloc(McArena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  McArenaBlock *b = a->head;
  if (!b || b->used + n > b->cap) {
    size_t cap = n > 65536 ? n : 65536;
    b = mc_malloc(sizeof(McArenaBlock) + cap);
    b->next = a->head;
    b->used = 0;
    b->cap = cap;
    a->head = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  a->used_total += n;
  memset(p, 0, n);
  return p;
}

char *mc_arena_strndup(McArena *a, const char *s, size_t n) {
  char *p = mc_arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *mc_arena_strdup(McArena *a, const char *s) { return mc_arena_strndup(a, s, strlen(s)); }

char *mc_arena_printf(McArena *a, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = mc_arena_alloc(a, (size_t)n + 1);
  vsnprintf(p, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  return p;
}

void mc_arena_free(McArena *a) {
  McArenaBlock *b = a->head;
  while (b) {
    McArenaBlock *n = b->next;
    free(b);
    b = n;
  }
  a->head = NULL;
  a->used_total = 0;
}

/* ---- string buffer ---- */
void mc_buf_vprintf(McBuf *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  if (b->len + (size_t)n + 1 > b->cap) {
    b->cap = (b->len + (size_t)n + 1) * 2;
    b->data = mc_realloc(b->data, b->cap);
  }
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  b->len += (size_t)n;
}

void mc_buf_printf(McBuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  mc_buf_vprintf(b, fmt, ap);
  va_end(ap);
}

void mc_buf_putc(McBuf *b, char c) { mc_buf_printf(b, "%c", c); }

void mc_buf_json_string(McBuf *b, const char *s) {
  mc_buf_putc(b, '"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': mc_buf_printf(b, "\\\""); break;
    case '\\': mc_buf_printf(b, "\\\\"); break;
    case '\n': mc_buf_printf(b, "\\n"); break;
    case '\t': mc_buf_printf(b, "\\t"); break;
    default:
      if (*p < 0x20) mc_buf_printf(b, "\\u%04x", *p);
      else mc_buf_putc(b, (char)*p);
    }
  }
  mc_buf_putc(b, '"');
}

void mc_buf_free(McBuf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

char *mc_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = mc_malloc(cap);
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap *= 2;
      buf = mc_realloc(buf, cap);
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    errno = EIO;
    return NULL;
  }
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

double mc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- counter-based RNG ---- */
uint64_t mc_hash64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t mc_rng_key(uint64_t seed, uint64_t stream, uint64_t step) {
  return mc_hash64(mc_hash64(mc_hash64(seed) ^ stream) ^ step);
}

double mc_rng_uniform(uint64_t key, uint64_t counter) {
  uint64_t r = mc_hash64(key ^ mc_hash64(counter));
  return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

double mc_rng_normal(uint64_t key, uint64_t counter) {
  double u1 = mc_rng_uniform(key, 2 * counter), u2 = mc_rng_uniform(key, 2 * counter + 1);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

McDebug mc_debug;

void mc_debug_from_env(void) {
  const char *v = getenv("MOEC_DEBUG");
  if (!v) return;
  mc_debug.memplan = strstr(v, "memplan") != NULL;
  mc_debug.memplan_all = strstr(v, "memplan_all") != NULL;
  mc_debug.jit = strstr(v, "jit") != NULL;
  mc_debug.nvrtc = strstr(v, "nvrtc") != NULL;
}
