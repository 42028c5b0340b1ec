/* common.c: allocator, arenas, buffers, errors, clock, counter-based RNG. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void mc_fatal_at(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "moec: internal error at %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

void (*mc_die_hook)(const char *msg);

void mc_die(const char *fmt, ...) {
  va_list ap;
  if (mc_die_hook) {
    char msg[1024];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mc_die_hook(msg); /* does not return */
    abort();
  }
  /* Once per process: N in-process devices often meet the same bad input together; the
   * first one reports it and exits, the others wait for that exit. */
  static atomic_flag dying = ATOMIC_FLAG_INIT;
  static _Thread_local bool this_thread;
  if (atomic_flag_test_and_set(&dying)) {
    if (this_thread) _exit(1); /* again while exiting (an atexit handler) */
    for (;;)
      pause();
  }
  this_thread = true;
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

/* A huge page of x86-64 and most arm64 kernels; where THP is off or smaller, the
 * madvise is a hint that does nothing. */
#define MC_HUGE ((size_t)2 << 20)

void *mc_try_calloc_big(size_t n) {
  if (n < MC_HUGE) return calloc(1, n ? n : 1);
  size_t len = (n + MC_HUGE - 1) & ~(MC_HUGE - 1); /* whole huge pages: no 4 KB tail */
  if (len < n) return NULL;                         /* n near SIZE_MAX */
  void *p = NULL;
  if (posix_memalign(&p, MC_HUGE, len)) return NULL;
  /* Before the first touch: the faults then map 2 MiB pages (THP mode "madvise", the
   * common default, maps 4 KB pages to memory nobody advised). */
  (void)madvise(p, len, MADV_HUGEPAGE);
  memset(p, 0, len);
  return p;
}

void *mc_calloc_big_at(size_t n, size_t size, const char *file, int line) {
  size_t bytes;
  void *p = __builtin_mul_overflow(n, size, &bytes) ? NULL : mc_try_calloc_big(bytes);
  if (!p) {
    fprintf(stderr, "moec: error: out of memory allocating %zu x %zu bytes (%s:%d)\n", n, size,
            file, line);
    exit(1);
  }
  return p;
}

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

void mc_buf_putc(McBuf *b, char c) {
  if (b->len + 2 > b->cap) { /* room for c and the NUL */
    b->cap = (b->len + 2) * 2;
    b->data = mc_realloc(b->data, b->cap);
  }
  b->data[b->len++] = c;
  b->data[b->len] = 0;
}

int mc_utf8_len(const unsigned char *s, size_t n) {
  if (n == 0) return 0;
  unsigned c = s[0];
  int len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF)
    len = 3, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4)
    len = 4, min = 0x10000;
  else
    return 0;
  if ((size_t)len > n) return 0;
  unsigned cp = c & (0x7F >> len);
  for (int i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

void mc_buf_json_string(McBuf *b, const char *s) {
  mc_buf_putc(b, '"');
  size_t n = strlen(s);
  for (const unsigned char *p = (const unsigned char *)s, *end = p + n; p < end; p++) {
    switch (*p) {
    case '"': mc_buf_printf(b, "\\\""); break;
    case '\\': mc_buf_printf(b, "\\\\"); break;
    case '\n': mc_buf_printf(b, "\\n"); break;
    case '\t': mc_buf_printf(b, "\\t"); break;
    default:
      if (*p < 0x20) {
        mc_buf_printf(b, "\\u%04x", *p);
      } else if (*p < 0x80) {
        mc_buf_putc(b, (char)*p);
      } else {
        int len = mc_utf8_len(p, (size_t)(end - p));
        if (!len) {
          mc_buf_printf(b, "\\ufffd");
          continue;
        }
        for (int i = 0; i < len; i++)
          mc_buf_putc(b, (char)p[i]);
        p += len - 1;
      }
    }
  }
  mc_buf_putc(b, '"');
}

void mc_buf_free(McBuf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static _Thread_local char read_err[160];

const char *mc_read_error(void) {
  return read_err[0] ? read_err : "unknown error";
}

/* "5 GiB", "100 MiB", "512 bytes": a limit in words */
static void size_words(size_t n, char *buf, size_t len) {
  if (n >= ((size_t)1 << 30) && n % ((size_t)1 << 30) == 0)
    snprintf(buf, len, "%zu GiB", n >> 30);
  else if (n >= ((size_t)1 << 20) && n % ((size_t)1 << 20) == 0)
    snprintf(buf, len, "%zu MiB", n >> 20);
  else
    snprintf(buf, len, "%zu bytes", n);
}

static char *read_fail(int fd, char *buf, int err, const char *fmt, const char *arg) {
  if (fd >= 0) close(fd);
  free(buf);
  snprintf(read_err, sizeof read_err, fmt, arg);
  errno = err;
  return NULL;
}

char *mc_read_file_max(const char *path, size_t max, size_t *len) {
  read_err[0] = 0;
  /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return read_fail(-1, NULL, errno, "%s", strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) return read_fail(fd, NULL, errno, "%s", strerror(errno));
  if (S_ISDIR(st.st_mode)) return read_fail(fd, NULL, EISDIR, "%s", "it is a directory");
  if (!S_ISREG(st.st_mode))
    return read_fail(fd, NULL, EINVAL, "it is not a regular file (%s)",
                     S_ISFIFO(st.st_mode)   ? "a FIFO"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                                            : "of another kind");
  char lim[32];
  size_words(max, lim, sizeof lim);
  if ((uint64_t)st.st_size > (uint64_t)max)
    return read_fail(fd, NULL, EFBIG, "it is larger than %s (the limit)", lim);
  /* the size from fstat, but a file may grow, and /proc files say 0: read to EOF,
   * never past max */
  size_t cap = (size_t)st.st_size + 1 > 4096 ? (size_t)st.st_size + 1 : 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf) return read_fail(fd, NULL, ENOMEM, "%s", "not enough memory to read it whole");
  for (;;) {
    if (n + 1 == cap) {
      if (n > max) break;
      cap = cap > max / 2 ? max + 2 : 2 * cap;
      char *nb = realloc(buf, cap);
      if (!nb) return read_fail(fd, buf, ENOMEM, "%s", "not enough memory to read it whole");
      buf = nb;
    }
    ssize_t r = read(fd, buf + n, cap - n - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return read_fail(fd, buf, errno, "%s", strerror(errno));
    if (r == 0) break;
    n += (size_t)r;
  }
  if (n > max) return read_fail(fd, buf, EFBIG, "it is larger than %s (the limit)", lim);
  close(fd);
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

char *mc_read_file(const char *path, size_t *len) {
  return mc_read_file_max(path, MC_READ_MAX, len);
}

/* a clock's reading in seconds */
static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double mc_now(void) {
  return clock_s(CLOCK_MONOTONIC);
}

double mc_cpu_now(void) {
  return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

double mc_thread_cpu_now(void) {
  return clock_s(CLOCK_THREAD_CPUTIME_ID);
}

/* ---- counter-based RNG ---- */
uint64_t mc_hash64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t mc_hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
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
