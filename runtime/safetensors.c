/* safetensors.c: reading and writing safetensors files (the format PyTorch and
 * Hugging Face tools read): an 8-byte little-endian header length N, N bytes of
 * JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {"key": "string"}}, then the data buffer.
 *
 * Writing is atomic (PATH.tmp.<pid>, fflush + fsync, rename). Reading validates
 * the header strictly: every offset, size and shape is bounds-checked, the
 * buffer must be covered exactly, and a malformed file is a clear error. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train.h"

long rt_st_fail_after = -1;

typedef struct DTypeInfo {
  const char *name;
  size_t size;
  StDType kind;
} DTypeInfo;

static const DTypeInfo dtypes[] = {
    {"F64", 8, ST_F64},    {"F32", 4, ST_F32},   {"I32", 4, ST_I32},   {"F16", 2, ST_OTHER},
    {"BF16", 2, ST_OTHER}, {"I64", 8, ST_OTHER}, {"U64", 8, ST_OTHER}, {"U32", 4, ST_OTHER},
    {"I16", 2, ST_OTHER},  {"U16", 2, ST_OTHER}, {"I8", 1, ST_OTHER},  {"U8", 1, ST_U8},
    {"BOOL", 1, ST_OTHER},
};

static const char *dtype_name(StDType d) {
  return d == ST_F64 ? "F64" : d == ST_F32 ? "F32" : d == ST_I32 ? "I32" : d == ST_U8 ? "U8" : "?";
}
static size_t dtype_size(StDType d) {
  return d == ST_F64 ? 8 : d == ST_U8 ? 1 : 4;
}

/* ---------------------------------------------------------------- writing */

typedef struct Writer {
  FILE *f;
  long written;
  bool failed;
} Writer;

static void w_bytes(Writer *w, const void *p, size_t n) {
  if (w->failed) return;
  if (rt_st_fail_after >= 0 && w->written + (long)n > rt_st_fail_after) {
    size_t part = (size_t)(rt_st_fail_after - w->written);
    if (part) fwrite(p, 1, part, w->f);
    errno = ENOSPC;
    w->failed = true;
    return;
  }
  if (n && fwrite(p, 1, n, w->f) != n) w->failed = true;
  w->written += (long)n;
}

/* What strict JSON readers (Python's json, serde) accept in a string. */
static bool is_utf8(const char *s) {
  size_t n = strlen(s);
  for (const unsigned char *p = (const unsigned char *)s, *end = p + n; p < end;) {
    int k = mc_utf8_len(p, (size_t)(end - p));
    if (!k) return false;
    p += k;
  }
  return true;
}

/* Where a symlink chain ends (a dangling link: the path it names), as a malloc'd
 * string; path itself when it is no symlink. NULL and errno on a loop or error. */
static char *resolve_links(const char *path) {
  char *cur = mc_malloc(strlen(path) + 1);
  strcpy(cur, path);
  for (int hops = 0; hops < 40; hops++) {
    struct stat st;
    if (lstat(cur, &st) != 0 || !S_ISLNK(st.st_mode)) return cur; /* absent or not a link */
    char target[4096];
    ssize_t n = readlink(cur, target, sizeof target - 1);
    if (n < 0 || n == (ssize_t)sizeof target - 1) {
      if (n >= 0) errno = ENAMETOOLONG;
      mc_free(cur);
      return NULL;
    }
    target[n] = 0;
    const char *slash = strrchr(cur, '/');
    char *next;
    if (target[0] == '/' || !slash) { /* absolute, or relative to the cwd's link */
      next = mc_malloc((size_t)n + 1);
      memcpy(next, target, (size_t)n + 1);
    } else { /* relative to the link's directory */
      size_t dl = (size_t)(slash - cur) + 1;
      next = mc_malloc(dl + (size_t)n + 1);
      memcpy(next, cur, dl);
      memcpy(next + dl, target, (size_t)n + 1);
    }
    mc_free(cur);
    cur = next;
  }
  mc_free(cur);
  errno = ELOOP;
  return NULL;
}

/* The directory part of path ("." when none) into buf. */
static void dir_of(const char *path, char *buf, size_t n) {
  snprintf(buf, n, "%s", path);
  char *slash = strrchr(buf, '/');
  if (slash)
    *(slash == buf ? slash + 1 : slash) = 0;
  else
    snprintf(buf, n, ".");
}

/* PATH.tmp.<pid> into buf; false when it does not fit. */
static bool tmp_name(const char *path, long pid, char *buf, size_t n) {
  return snprintf(buf, n, "%s.tmp.%ld", path, pid) < (int)n;
}

/* Why saving to path cannot work, or NULL: resolves symlinks into *real (malloc'd;
 * NULL on error). Checks the path, not the disk: creating the temporary tells. */
static const char *save_target(const char *path, char **real, char *why, size_t wn) {
  *real = NULL;
  if (!*path) return "the path is empty";
  char *r = resolve_links(path);
  if (!r) {
    snprintf(why, wn, "cannot follow the symlink: %s", strerror(errno));
    return why;
  }
  char tmp[4096];
  if (!tmp_name(r, 4194304, tmp, sizeof tmp)) { /* room for any pid */
    mc_free(r);
    return "the path is too long";
  }
  struct stat st;
  if (stat(r, &st) == 0 && !S_ISREG(st.st_mode)) {
    mc_free(r);
    return S_ISDIR(st.st_mode) ? "it is a directory"
                               : "it is not a regular file (a device, FIFO or socket); moec "
                                 "writes checkpoints only over regular files";
  }
  *real = r;
  return NULL;
}

bool rt_st_check_save_path(const char *path, char *err, size_t errlen) {
  char why[4600], *real;
  const char *bad = save_target(path, &real, why, sizeof why);
  if (!bad) { /* can a temporary be created beside it? (as root too: no access()) */
    char tmp[4096];
    tmp_name(real, (long)getpid(), tmp, sizeof tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      char dir[4096];
      dir_of(real, dir, sizeof dir);
      snprintf(why, sizeof why, "cannot create a file in '%s': %s", dir, strerror(errno));
      bad = why;
    } else {
      close(fd);
      unlink(tmp);
    }
  }
  mc_free(real);
  if (bad) snprintf(err, errlen, "cannot save '%s': %s", path, bad);
  return !bad;
}

/* Removes PATH.tmp.<pid> files that a killed save left behind: those whose pid is no
 * live process here (another live process may be saving to the same path). */
static void remove_stale_tmps(const char *real) {
  char dir[4096];
  dir_of(real, dir, sizeof dir);
  const char *slash = strrchr(real, '/'), *base = slash ? slash + 1 : real;
  size_t bl = strlen(base);
  DIR *d = opendir(dir);
  if (!d) return;
  for (struct dirent *de; (de = readdir(d));) {
    const char *nm = de->d_name;
    if (strncmp(nm, base, bl) || strncmp(nm + bl, ".tmp.", 5)) continue;
    const char *digits = nm + bl + 5;
    char *end;
    errno = 0;
    long pid = strtol(digits, &end, 10);
    if (!*digits || *end || errno || pid <= 0 || pid == (long)getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
    char full[8192];
    if (snprintf(full, sizeof full, "%s/%s", dir, nm) < (int)sizeof full) unlink(full);
  }
  closedir(d);
}

/* A metadata value goes in the JSON header when it is short UTF-8; otherwise (a
 * vocabulary of non-UTF-8 words, or one of hundreds of MiB) as a U8 tensor
 * "__metadata__.KEY" that rt_st_parse turns back into the value. */
#define ST_META_INLINE_MAX (1 << 20)
#define ST_META_TENSOR "__metadata__."

static bool meta_inline(const char *v) {
  return strlen(v) <= ST_META_INLINE_MAX && is_utf8(v);
}

void rt_st_save(const char *path, const StTensor *t0, int n0, const char *const *meta, int nmeta) {
  char why[512], *real;
  const char *bad = save_target(path, &real, why, sizeof why);
  if (bad) mc_die("cannot save '%s': %s", path, bad);
  /* the tensors, then the metadata values stored as tensors */
  int nt = 0;
  for (int i = 0; i < nmeta; i++)
    nt += !meta_inline(meta[2 * i + 1]);
  StTensor *t = mc_calloc((size_t)(n0 + nt + 1), sizeof(StTensor));
  memcpy(t, t0, (size_t)n0 * sizeof(StTensor));
  McArena names = {0};
  int n = n0;
  for (int i = 0; i < nmeta; i++) {
    const char *v = meta[2 * i + 1];
    if (meta_inline(v)) continue;
    t[n++] = (StTensor){mc_arena_printf(&names, ST_META_TENSOR "%s", meta[2 * i]),
                        ST_U8,
                        1,
                        {(int64_t)strlen(v)},
                        v};
  }
  McBuf h = {0};
  mc_buf_putc(&h, '{');
  bool first = true;
  if (nmeta > nt) {
    mc_buf_printf(&h, "\"__metadata__\":{");
    bool mfirst = true;
    for (int i = 0; i < nmeta; i++) {
      if (!meta_inline(meta[2 * i + 1])) continue;
      MOEC_ASSERT(is_utf8(meta[2 * i]));
      if (!mfirst) mc_buf_putc(&h, ',');
      mfirst = false;
      mc_buf_json_string(&h, meta[2 * i]);
      mc_buf_putc(&h, ':');
      mc_buf_json_string(&h, meta[2 * i + 1]);
    }
    mc_buf_putc(&h, '}');
    first = false;
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    MOEC_ASSERT(t[i].rank >= 0 && t[i].rank <= 8 && is_utf8(t[i].name));
    uint64_t numel = 1;
    for (int d = 0; d < t[i].rank; d++)
      numel *= (uint64_t)t[i].shape[d];
    uint64_t nb = numel * dtype_size(t[i].dtype);
    if (!first) mc_buf_putc(&h, ',');
    first = false;
    mc_buf_json_string(&h, t[i].name);
    mc_buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t[i].dtype));
    for (int d = 0; d < t[i].rank; d++)
      mc_buf_printf(&h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
    mc_buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                  (unsigned long long)(off + nb));
    off += nb;
  }
  mc_buf_putc(&h, '}');
  while ((8 + h.len) % 8)
    mc_buf_putc(&h, ' '); /* the format pads the header with spaces */

  remove_stale_tmps(real);
  char tmp[4096];
  tmp_name(real, (long)getpid(), tmp, sizeof tmp); /* fits: save_target checked */
  Writer w = {fopen(tmp, "wb"), 0, false};
  if (!w.f) {
    int e = errno;
    mc_buf_free(&h);
    mc_die("cannot save '%s': cannot create '%s': %s", path, tmp, strerror(e));
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
  w_bytes(&w, len8, 8);
  w_bytes(&w, h.data, h.len);
  for (int i = 0; i < n; i++) {
    size_t numel = 1;
    for (int d = 0; d < t[i].rank; d++)
      numel *= (size_t)t[i].shape[d];
    w_bytes(&w, t[i].data, numel * dtype_size(t[i].dtype));
  }
  mc_buf_free(&h);
  mc_free(t);
  mc_arena_free(&names);
  int e = errno;
  bool ok = !w.failed && fflush(w.f) == 0 && fsync(fileno(w.f)) == 0;
  if (!ok) e = errno;
  if (fclose(w.f) != 0 && ok) {
    ok = false;
    e = errno;
  }
  if (ok && rename(tmp, real) != 0) {
    ok = false;
    e = errno;
  }
  if (!ok) {
    unlink(tmp);
    mc_free(real);
    mc_die("cannot save '%s': %s (the previous file, if any, is unchanged)", path, strerror(e));
  }
  /* make the rename durable: fsync the directory (best effort) */
  char dir[4096];
  dir_of(real, dir, sizeof dir);
  mc_free(real);
  int dfd = open(dir, O_RDONLY);
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
}

/* ---------------------------------------------------------------- strict JSON header */

typedef struct Parser {
  const char *start, *p, *end;
  char *err;
  size_t errlen;
  bool failed;
} Parser;

__attribute__((format(printf, 2, 3))) static bool fail(Parser *ps, const char *fmt, ...) {
  if (!ps->failed) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err, ps->errlen, fmt, ap);
    va_end(ap);
  }
  ps->failed = true;
  return false;
}

static void ws(Parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static bool expect(Parser *ps, char c) {
  ws(ps);
  if (ps->p >= ps->end) return fail(ps, "the header ends early: expected '%c'", c);
  if (*ps->p != c)
    return fail(ps, "bad header JSON: expected '%c' at byte %ld of the header", c,
                (long)(ps->p - ps->start));
  ps->p++;
  return true;
}

static bool peek(Parser *ps, char c) {
  ws(ps);
  return ps->p < ps->end && *ps->p == c;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void put_utf8(McBuf *b, unsigned cp) {
  if (cp < 0x80)
    mc_buf_putc(b, (char)cp);
  else if (cp < 0x800) {
    mc_buf_putc(b, (char)(0xC0 | (cp >> 6)));
    mc_buf_putc(b, (char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    mc_buf_putc(b, (char)(0xE0 | (cp >> 12)));
    mc_buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    mc_buf_putc(b, (char)(0x80 | (cp & 0x3F)));
  } else {
    mc_buf_putc(b, (char)(0xF0 | (cp >> 18)));
    mc_buf_putc(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
    mc_buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    mc_buf_putc(b, (char)(0x80 | (cp & 0x3F)));
  }
}

static bool read_hex4(Parser *ps, unsigned *v) {
  if (ps->end - ps->p < 4) return fail(ps, "bad header JSON: truncated \\u escape");
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(ps->p[i]);
    if (h < 0) return fail(ps, "bad header JSON: bad \\u escape");
    *v = *v * 16 + (unsigned)h;
  }
  ps->p += 4;
  return true;
}

/* A JSON string -> malloc'd NUL-terminated copy (NULL on error; embedded NUL refused). */
static char *parse_string(Parser *ps) {
  if (!expect(ps, '"')) return NULL;
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  while (ps->p < ps->end && *ps->p != '"') {
    unsigned char c = (unsigned char)*ps->p++;
    if (c < 0x20) {
      fail(ps, "bad header JSON: control character in a string");
      mc_buf_free(&b);
      return NULL;
    }
    if (c >= 0x80) { /* strict JSON is UTF-8 text */
      const unsigned char *at = (const unsigned char *)ps->p - 1;
      int len = mc_utf8_len(at, (size_t)(ps->end - (const char *)at));
      if (!len) {
        fail(ps, "bad header JSON: a string holds bytes that are not UTF-8 (at byte %ld)",
             (long)((const char *)at - ps->start));
        mc_buf_free(&b);
        return NULL;
      }
      for (int i = 0; i < len; i++)
        mc_buf_putc(&b, (char)at[i]);
      ps->p += len - 1;
      continue;
    }
    if (c != '\\') {
      mc_buf_putc(&b, (char)c);
      continue;
    }
    if (ps->p >= ps->end) break;
    char e = *ps->p++;
    unsigned cp;
    switch (e) {
    case '"':
      mc_buf_putc(&b, '"');
      break;
    case '\\':
      mc_buf_putc(&b, '\\');
      break;
    case '/':
      mc_buf_putc(&b, '/');
      break;
    case 'b':
      mc_buf_putc(&b, '\b');
      break;
    case 'f':
      mc_buf_putc(&b, '\f');
      break;
    case 'n':
      mc_buf_putc(&b, '\n');
      break;
    case 'r':
      mc_buf_putc(&b, '\r');
      break;
    case 't':
      mc_buf_putc(&b, '\t');
      break;
    case 'u':
      if (!read_hex4(ps, &cp)) {
        mc_buf_free(&b);
        return NULL;
      }
      if (cp >= 0xD800 && cp < 0xDC00) {
        unsigned lo;
        if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
          fail(ps, "bad header JSON: unpaired surrogate");
          mc_buf_free(&b);
          return NULL;
        }
        ps->p += 2;
        if (!read_hex4(ps, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
          fail(ps, "bad header JSON: unpaired surrogate");
          mc_buf_free(&b);
          return NULL;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp < 0xE000) {
        fail(ps, "bad header JSON: unpaired surrogate");
        mc_buf_free(&b);
        return NULL;
      }
      if (cp == 0) {
        fail(ps, "bad header JSON: NUL in a string");
        mc_buf_free(&b);
        return NULL;
      }
      put_utf8(&b, cp);
      break;
    default:
      fail(ps, "bad header JSON: bad escape '\\%c'", e);
      mc_buf_free(&b);
      return NULL;
    }
  }
  if (ps->p >= ps->end) {
    fail(ps, "the header ends inside a string");
    mc_buf_free(&b);
    return NULL;
  }
  ps->p++; /* closing quote */
  return b.data;
}

/* A non-negative integer up to 2^53, as JSON writes it (no leading zeros). */
static bool parse_uint(Parser *ps, uint64_t *v) {
  ws(ps);
  if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
    return fail(ps, "bad header JSON: expected a non-negative integer");
  if (*ps->p == '0' && ps->end - ps->p > 1 && ps->p[1] >= '0' && ps->p[1] <= '9')
    return fail(ps, "bad header JSON: a number with a leading zero at byte %ld",
                (long)(ps->p - ps->start));
  *v = 0;
  while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
    *v = *v * 10 + (uint64_t)(*ps->p++ - '0');
    if (*v > ((uint64_t)1 << 53)) return fail(ps, "a number in the header is too large");
  }
  if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
    return fail(ps, "bad header JSON: expected an integer");
  return true;
}

static bool parse_uint_list(Parser *ps, uint64_t *v, int max, int *n) {
  if (!expect(ps, '[')) return false;
  *n = 0;
  if (peek(ps, ']')) {
    ps->p++;
    return true;
  }
  for (;;) {
    if (*n == max) return fail(ps, "a list in the header has more than %d entries", max);
    if (!parse_uint(ps, &v[(*n)++])) return false;
    if (peek(ps, ',')) {
      ps->p++;
      continue;
    }
    return expect(ps, ']');
  }
}

static bool parse_meta(Parser *ps, StFile *f, int *cap) {
  if (!expect(ps, '{')) return false;
  if (peek(ps, '}')) {
    ps->p++;
    return true;
  }
  for (;;) {
    char *k = parse_string(ps);
    if (!k) return false;
    if (!expect(ps, ':')) {
      mc_free(k);
      return false;
    }
    if (!peek(ps, '"')) {
      mc_free(k);
      return fail(ps, "__metadata__ values must be strings");
    }
    char *v = parse_string(ps);
    if (!v) {
      mc_free(k);
      return false;
    }
    if (f->nmeta == *cap) {
      *cap = *cap ? 2 * *cap : 16;
      f->mkey = mc_realloc(f->mkey, (size_t)*cap * sizeof(char *));
      f->mval = mc_realloc(f->mval, (size_t)*cap * sizeof(char *));
    }
    f->mkey[f->nmeta] = k;
    f->mval[f->nmeta++] = v;
    if (peek(ps, ',')) {
      ps->p++;
      continue;
    }
    return expect(ps, '}');
  }
}

static bool parse_entry(Parser *ps, StEntry *e, uint64_t off[2]) {
  if (!expect(ps, '{')) return false;
  bool have_dtype = false, have_shape = false, have_off = false;
  for (;;) {
    char *k = parse_string(ps);
    if (!k) return false;
    if (!expect(ps, ':')) {
      mc_free(k);
      return false;
    }
    if (!strcmp(k, "dtype") && !have_dtype) {
      char *d = parse_string(ps);
      if (!d) {
        mc_free(k);
        return false;
      }
      size_t i = 0;
      while (i < MC_ARRAY_LEN(dtypes) && strcmp(dtypes[i].name, d))
        i++;
      if (i == MC_ARRAY_LEN(dtypes)) {
        fail(ps, "tensor '%s' has an unknown dtype '%.20s'", e->name, d);
        mc_free(d);
        mc_free(k);
        return false;
      }
      snprintf(e->dtype_name, sizeof e->dtype_name, "%s", d);
      e->dtype = dtypes[i].kind;
      mc_free(d);
      have_dtype = true;
    } else if (!strcmp(k, "shape") && !have_shape) {
      uint64_t s[8];
      if (!parse_uint_list(ps, s, 8, &e->rank)) {
        mc_free(k);
        return false;
      }
      for (int i = 0; i < e->rank; i++)
        e->shape[i] = (int64_t)s[i];
      have_shape = true;
    } else if (!strcmp(k, "data_offsets") && !have_off) {
      int n = 0;
      if (!parse_uint_list(ps, off, 2, &n) || n != 2) {
        mc_free(k);
        return ps->failed ? false
                          : fail(ps, "tensor '%s': data_offsets needs two numbers", e->name);
      }
      have_off = true;
    } else {
      fail(ps, "tensor '%s' has an unexpected or repeated key '%.40s'", e->name, k);
      mc_free(k);
      return false;
    }
    mc_free(k);
    if (peek(ps, ',')) {
      ps->p++;
      continue;
    }
    if (!expect(ps, '}')) return false;
    break;
  }
  if (!have_dtype || !have_shape || !have_off)
    return fail(ps, "tensor '%s' lacks %s", e->name,
                !have_dtype   ? "a dtype"
                : !have_shape ? "a shape"
                              : "data_offsets");
  return true;
}

static void free_entries(StFile *f) {
  for (int i = 0; i < f->n; i++)
    mc_free(f->e[i].name);
  mc_free(f->e);
  mc_free(f->slot);
  for (int i = 0; i < f->nmeta; i++) {
    mc_free(f->mkey[i]);
    mc_free(f->mval[i]);
  }
  mc_free(f->mkey);
  mc_free(f->mval);
}

/* The slot of name in f's table: its entry's index there, or -1 where it would go. */
static int *find_slot(const StFile *f, const char *name) {
  uint64_t mask = (uint64_t)f->nslot - 1, h = mc_hash_str(name) & mask;
  while (f->slot[h] >= 0 && strcmp(f->e[f->slot[h]].name, name))
    h = (h + 1) & mask;
  return &f->slot[h];
}

/* Adds entry i to the table (growing it to keep it at most half full); false if its
 * name is there already. */
static bool add_name(StFile *f, int i) {
  if (2 * (f->n + 1) > f->nslot) {
    int old = f->nslot, *os = f->slot;
    f->nslot = old ? 2 * old : 64;
    f->slot = mc_malloc((size_t)f->nslot * sizeof(int));
    memset(f->slot, 0xff, (size_t)f->nslot * sizeof(int));
    for (int k = 0; k < old; k++)
      if (os[k] >= 0) *find_slot(f, f->e[os[k]].name) = os[k];
    mc_free(os);
  }
  int *sl = find_slot(f, f->e[i].name);
  if (*sl >= 0) return false;
  *sl = i;
  return true;
}

typedef struct Span {
  uint64_t b, e;
  int i;
} Span;

static int cmp_span(const void *a, const void *b) {
  const Span *x = a, *y = b;
  return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Entries "__metadata__.KEY" (U8, rank 1) become metadata values; then no key may
 * appear twice. */
static bool meta_from_tensors(Parser *ps, StFile *f, int *cap) {
  size_t pl = strlen(ST_META_TENSOR);
  for (int i = 0; i < f->n; i++) {
    const StEntry *e = &f->e[i];
    if (strncmp(e->name, ST_META_TENSOR, pl)) continue;
    if (e->dtype != ST_U8 || e->rank != 1 || memchr(e->data, 0, e->nbytes))
      return fail(ps,
                  "tensor '%.60s' must be a U8 vector of text without NUL bytes (a metadata "
                  "value)",
                  e->name);
    if (f->nmeta == *cap) {
      *cap = *cap ? 2 * *cap : 16;
      f->mkey = mc_realloc(f->mkey, (size_t)*cap * sizeof(char *));
      f->mval = mc_realloc(f->mval, (size_t)*cap * sizeof(char *));
    }
    size_t kl = strlen(e->name + pl);
    char *k = mc_malloc(kl + 1), *v = mc_malloc(e->nbytes + 1);
    memcpy(k, e->name + pl, kl + 1);
    memcpy(v, e->data, e->nbytes);
    v[e->nbytes] = 0;
    f->mkey[f->nmeta] = k;
    f->mval[f->nmeta++] = v;
  }
  char **keys = mc_malloc((size_t)(f->nmeta + 1) * sizeof(char *));
  if (f->nmeta) {
    memcpy(keys, f->mkey, (size_t)f->nmeta * sizeof(char *));
    qsort(keys, (size_t)f->nmeta, sizeof(char *), cmp_str);
  }
  for (int i = 1; i < f->nmeta; i++)
    if (!strcmp(keys[i - 1], keys[i])) {
      fail(ps, "the metadata key '%.60s' appears twice", keys[i]);
      mc_free(keys);
      return false;
    }
  mc_free(keys);
  return true;
}

StFile *rt_st_parse(const char *path, uint8_t *buf, size_t size, char *err, size_t errlen) {
  StFile *f = mc_calloc(1, sizeof(StFile));
  f->path = mc_malloc(strlen(path) + 1);
  memcpy(f->path, path, strlen(path) + 1);
  f->buf = buf;
  f->size = size;
  Parser ps = {0};
  ps.err = err;
  ps.errlen = errlen;
  uint64_t hlen = 0;
  uint64_t(*offs)[2] = NULL;
  Span *spans = NULL;
  int mcap = 0;
  bool have_meta = false;
  if (size < 8) {
    fail(&ps, "the file has %zu bytes, fewer than the 8-byte header length", size);
    goto bad;
  }
  for (int i = 0; i < 8; i++)
    hlen |= (uint64_t)buf[i] << (8 * i);
  if (hlen > RT_ST_MAX_HEADER || hlen > size - 8) {
    fail(&ps, "the header length %llu does not fit in the file (%zu bytes)%s",
         (unsigned long long)hlen, size, hlen > RT_ST_MAX_HEADER ? " or the limit of 100 MiB" : "");
    goto bad;
  }
  ps.start = ps.p = (const char *)buf + 8;
  ps.end = ps.p + hlen;
  if (!expect(&ps, '{')) goto bad;
  int cap = 0;
  if (!peek(&ps, '}'))
    for (;;) {
      char *name = parse_string(&ps);
      if (!name) goto bad;
      if (!expect(&ps, ':')) {
        mc_free(name);
        goto bad;
      }
      if (!strcmp(name, "__metadata__")) {
        mc_free(name);
        if (have_meta) {
          fail(&ps, "__metadata__ appears twice");
          goto bad;
        }
        have_meta = true;
        if (!parse_meta(&ps, f, &mcap)) goto bad;
      } else {
        if (f->n == RT_ST_MAX_TENSORS) {
          fail(&ps, "the file has more than %d tensors", RT_ST_MAX_TENSORS);
          mc_free(name);
          goto bad;
        }
        if (f->n == cap) {
          cap = cap ? 2 * cap : 16;
          f->e = mc_realloc(f->e, (size_t)cap * sizeof(StEntry));
          offs = mc_realloc(offs, (size_t)cap * sizeof *offs);
        }
        StEntry *e = &f->e[f->n];
        memset(e, 0, sizeof *e);
        e->name = name;
        f->n++;
        if (!add_name(f, f->n - 1)) {
          fail(&ps, "tensor '%.60s' appears twice", name);
          goto bad;
        }
        if (!parse_entry(&ps, e, offs[f->n - 1])) goto bad;
      }
      if (peek(&ps, ',')) {
        ps.p++;
        continue;
      }
      break;
    }
  if (!expect(&ps, '}')) goto bad;
  ws(&ps);
  if (ps.p != ps.end) {
    fail(&ps, "bad header JSON: unexpected bytes after the closing '}'");
    goto bad;
  }
  /* sizes and offsets */
  uint64_t dsize = size - 8 - hlen;
  const uint8_t *data = buf + 8 + hlen;
  spans = mc_malloc((size_t)(f->n + 1) * sizeof(Span));
  for (int i = 0; i < f->n; i++) {
    StEntry *e = &f->e[i];
    uint64_t numel = 1;
    for (int d = 0; d < e->rank; d++) {
      if (e->shape[d] && numel > ((uint64_t)1 << 53) / (uint64_t)e->shape[d]) {
        fail(&ps, "tensor '%s' has a shape too large", e->name);
        goto bad;
      }
      numel *= (uint64_t)e->shape[d];
    }
    size_t es = 0;
    for (size_t k = 0; k < MC_ARRAY_LEN(dtypes); k++)
      if (!strcmp(dtypes[k].name, e->dtype_name)) es = dtypes[k].size;
    uint64_t b = offs[i][0], en = offs[i][1];
    if (b > en || en > dsize) {
      fail(&ps, "tensor '%s' has data_offsets [%llu, %llu] outside the data (%llu bytes)", e->name,
           (unsigned long long)b, (unsigned long long)en, (unsigned long long)dsize);
      goto bad;
    }
    if (en - b != numel * es) {
      fail(&ps, "tensor '%s' has %llu bytes of data, its dtype and shape need %llu", e->name,
           (unsigned long long)(en - b), (unsigned long long)(numel * es));
      goto bad;
    }
    e->numel = (int64_t)numel;
    e->data = data + b;
    e->nbytes = (size_t)(en - b);
    spans[i] = (Span){b, en, i};
  }
  qsort(spans, (size_t)f->n, sizeof(Span), cmp_span);
  uint64_t at = 0;
  for (int i = 0; i < f->n; i++) {
    if (spans[i].b != at) {
      fail(&ps, "tensor '%s' %s another tensor's data or leaves a gap", f->e[spans[i].i].name,
           spans[i].b < at ? "overlaps" : "does not follow");
      goto bad;
    }
    at = spans[i].e;
  }
  if (at != dsize) {
    fail(&ps, "the data has %llu bytes, the tensors cover %llu", (unsigned long long)dsize,
         (unsigned long long)at);
    goto bad;
  }
  if (!meta_from_tensors(&ps, f, &mcap)) goto bad;
  mc_free(spans);
  mc_free(offs);
  return f;
bad:
  mc_free(spans);
  mc_free(offs);
  free_entries(f);
  mc_free(f->path);
  mc_free(f->buf);
  mc_free(f);
  return NULL;
}

StFile *rt_st_open(const char *path) {
  size_t len = 0;
  char *buf = mc_read_file(path, &len);
  if (!buf) mc_die("cannot read checkpoint '%s': %s", path, mc_read_error());
  char err[512];
  StFile *f = rt_st_parse(path, (uint8_t *)buf, len, err, sizeof err);
  if (!f) mc_die("'%s' is not a valid safetensors file: %s", path, err);
  return f;
}

void rt_st_close(StFile *f) {
  if (!f) return;
  free_entries(f);
  mc_free(f->path);
  mc_free(f->buf);
  mc_free(f);
}

const StEntry *rt_st_find(const StFile *f, const char *name) {
  if (!f->nslot) return NULL;
  int i = *find_slot(f, name);
  return i >= 0 ? &f->e[i] : NULL;
}

static void shape_str(McBuf *b, int rank, const int64_t *shape);

const StEntry *rt_st_expect(const StFile *f, const char *name, StDType dtype, int rank,
                            const int64_t *shape) {
  const StEntry *e = rt_st_find(f, name);
  if (!e) return NULL;
  if (e->dtype != dtype)
    mc_die("checkpoint '%s': '%s' has dtype %s, the model needs %s", f->path, name,
           e->dtype_name, dtype_name(dtype));
  bool same = e->rank == rank;
  for (int d = 0; same && d < rank; d++)
    same = e->shape[d] == shape[d];
  if (!same) {
    McBuf b = {0};
    shape_str(&b, e->rank, e->shape);
    mc_buf_printf(&b, ", the model needs ");
    shape_str(&b, rank, shape);
    char msg[1024]; /* nothing held when mc_die's hook unwinds (fuzzers) */
    snprintf(msg, sizeof msg, "%s", b.data);
    mc_buf_free(&b);
    mc_die("checkpoint '%s': '%s' has shape %s (saved for another model, optimizer or batch?)",
           f->path, name, msg);
  }
  return e;
}

const char *rt_st_meta(const StFile *f, const char *key) {
  for (int i = 0; i < f->nmeta; i++)
    if (!strcmp(f->mkey[i], key)) return f->mval[i];
  return NULL;
}

/* ---------------------------------------------------------------- loading into a program */

static void shape_str(McBuf *b, int rank, const int64_t *shape) {
  mc_buf_putc(b, '[');
  for (int i = 0; i < rank; i++)
    mc_buf_printf(b, "%s%lld", i ? ", " : "", (long long)shape[i]);
  mc_buf_putc(b, ']');
}

static bool is_extra(const char *name) {
  return !strncmp(name, "optim.", 6) || !strncmp(name, "state.", 6) ||
         !strncmp(name, ST_META_TENSOR, strlen(ST_META_TENSOR));
}

void rt_st_load_params(const StFile *f, Program *p) {
  rt_st_load_params_rows(f, p, NULL);
}

static void load_params(const StFile *f, Program *p, const RowSel *rows, bool whole_model);

void rt_st_load_params_rows(const StFile *f, Program *p, const RowSel *rows) {
  load_params(f, p, rows, true);
}

void rt_st_load_params_part(const StFile *f, Program *p) {
  load_params(f, p, NULL, false);
}

/* whole_model: every tensor of the file must be one of p's parameters */
static void load_params(const StFile *f, Program *p, const RowSel *rows, bool whole_model) {
  Graph *g = p->g;
  McBuf why = {0};
  int problems = 0;
  bool *used = mc_calloc((size_t)f->n + 1, sizeof(bool)); /* the entries a parameter takes */
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    const StEntry *e = rt_st_find(f, t->name);
    if (e) used[e - f->e] = true;
    if (!e) {
      if (problems++ < 8)
        mc_buf_printf(&why, "%s'%s' is missing", problems > 1 ? "; " : "", t->name);
      continue;
    }
    int64_t want[8] = {0}; /* the whole tensor's shape (a device may hold some rows) */
    for (int d = 0; d < t->ty.rank && d < 8; d++)
      want[d] = t->shape[d];
    if (rows && rows[i].list) want[0] = rows[i].global;
    bool same = e->rank == t->ty.rank;
    for (int d = 0; same && d < e->rank; d++)
      same = e->shape[d] == want[d];
    if (!same) {
      if (problems++ < 8) {
        mc_buf_printf(&why, "%s'%s' has shape ", problems > 1 ? "; " : "", t->name);
        shape_str(&why, e->rank, e->shape);
        mc_buf_printf(&why, ", the model needs ");
        shape_str(&why, t->ty.rank, want);
      }
      continue;
    }
    if (e->dtype != ST_F32 && e->dtype != ST_F64) {
      if (problems++ < 8)
        mc_buf_printf(&why, "%s'%s' has dtype %s, a parameter needs F32 or F64",
                      problems > 1 ? "; " : "", t->name, e->dtype_name);
      continue;
    }
  }
  for (int i = 0; i < f->n && whole_model; i++) {
    if (is_extra(f->e[i].name) || used[i]) continue;
    if (problems++ < 8)
      mc_buf_printf(&why, "%sit has '%s', which the model does not", problems > 1 ? "; " : "",
                    f->e[i].name);
  }
  mc_free(used);
  if (problems) {
    if (problems > 8) mc_buf_printf(&why, "; and %d more problems", problems - 8);
    char msg[4096]; /* a copy, so nothing is held when mc_die's hook unwinds (fuzzers) */
    snprintf(msg, sizeof msg, "%s", why.data);
    mc_buf_free(&why);
    mc_die("checkpoint '%s' is for another model: %s", f->path, msg);
  }
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    const StEntry *e = rt_st_find(f, t->name);
    size_t nb = (size_t)t->numel * p->elem;
    if (!nb) continue; /* none of its rows on this device (E_r = 0) */
    void *host = mc_malloc(nb);
    const RowSel *sel = rows && rows[i].list ? &rows[i] : NULL;
    int64_t per = sel ? t->numel / sel->n : t->numel;
    for (int64_t k = 0; k < t->numel; k++) {
      int64_t at = sel ? sel->list[k / per] * per + k % per : k; /* in the whole tensor */
      double v;
      if (e->dtype == ST_F32) {
        float x;
        memcpy(&x, e->data + 4 * at, 4);
        v = x;
      } else {
        memcpy(&v, e->data + 8 * at, 8);
      }
      if (p->prec == PREC_F64)
        ((double *)host)[k] = v;
      else
        ((float *)host)[k] = (float)v;
    }
    p->be->upload(p->buf[t->id], host, nb);
    mc_free(host);
  }
  mc_buf_free(&why);
}
