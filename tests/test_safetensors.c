/* test_safetensors.c: safetensors round trip (F32, F64, metadata, odd names),
 * malformed files (truncated, bad JSON, offsets out of range, overlaps, hostile
 * sizes) rejected with a message and no crash, atomic saves (a failed save leaves
 * the old file and no temporary behind), and loading into a program's params;
 * hostile cases: strict JSON, metadata of any bytes and size, many tensors,
 * symlinks, non-regular paths, stale temporaries, rt_st_check_save_path. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/train.h"
#include "test.h"

static char tmpdir[] = "/tmp/moec_test_st_XXXXXX";
static int count_tmp_files(void);

#include "test_death.h"

static uint8_t *dup_bytes(const void *p, size_t n) {
  uint8_t *b = mc_malloc(n ? n : 1);
  memcpy(b, p, n);
  return b;
}

/* Parses a file made of an 8-byte length, header text and `data` bytes of zeros. */
static StFile *parse_header(const char *hdr, size_t data, int64_t len_override, char *err) {
  size_t hl = strlen(hdr), n = 8 + hl + data;
  uint8_t *b = mc_calloc(n, 1);
  uint64_t L = len_override >= 0 ? (uint64_t)len_override : hl;
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(L >> (8 * i));
  memcpy(b + 8, hdr, hl);
  return rt_st_parse("t.safetensors", b, n, err, 256);
}

static void test_roundtrip(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/a.safetensors", tmpdir);
  float w[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 7};
  double d[3] = {0.1, 1e300, -3};
  float s = 42;
  StTensor t[3] = {{"lm.weight", ST_F32, 2, {2, 3}, w},
                   {"we\"ird\\name\n", ST_F64, 1, {3}, d},
                   {"scalar", ST_F32, 0, {0}, &s}};
  const char *meta[] = {"step", "12", "vocab", "a\nb\"c"};
  rt_st_save(path, t, 3, meta, 2);
  StFile *f = rt_st_open(path);
  CHECK(f->n == 3 && f->nmeta == 2);
  const StEntry *e = rt_st_find(f, "lm.weight");
  CHECK(e && e->dtype == ST_F32 && e->rank == 2 && e->shape[0] == 2 && e->shape[1] == 3);
  CHECK(e && e->numel == 6 && !memcmp(e->data, w, sizeof w));
  e = rt_st_find(f, "we\"ird\\name\n");
  CHECK(e && e->dtype == ST_F64 && !memcmp(e->data, d, sizeof d));
  e = rt_st_find(f, "scalar");
  CHECK(e && e->rank == 0 && e->numel == 1 && !memcmp(e->data, &s, 4));
  CHECK(rt_st_meta(f, "step") && !strcmp(rt_st_meta(f, "step"), "12"));
  CHECK(rt_st_meta(f, "vocab") && !strcmp(rt_st_meta(f, "vocab"), "a\nb\"c"));
  CHECK(!rt_st_meta(f, "nope") && !rt_st_find(f, "nope"));
  /* header padded to 8 bytes with spaces, as the format asks */
  uint64_t hl = 0;
  for (int i = 0; i < 8; i++)
    hl |= (uint64_t)f->buf[i] << (8 * i);
  CHECK((8 + hl) % 8 == 0);
  CHECK(f->size == 8 + hl + sizeof w + sizeof d + 4);
  rt_st_close(f);
  /* a file written by another tool: metadata last, \u escapes, whitespace */
  char err[256] = "";
  const char *hdr = "{ \"x\\u00e9\" : {\"shape\": [2], \"dtype\":\"F32\", \"data_offsets\":[0,8]},"
                    " \"__metadata__\": {\"format\": \"pt\"} }  ";
  f = parse_header(hdr, 8, -1, err);
  CHECK(f != NULL);
  if (!f) fprintf(stderr, "  %s\n", err);
  CHECK(f && rt_st_find(f, "x\xc3\xa9") && !strcmp(rt_st_meta(f, "format"), "pt"));
  rt_st_close(f);
}

static void open_path(void *path) {
  rt_st_open(path);
}

static void test_malformed(void) {
  struct {
    const char *hdr;
    size_t data;
    int64_t len;
    const char *want;
  } cases[] = {
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, -1,
       "outside the data"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, -1, "ends early"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1000000,
       "does not fit"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, (int64_t)1 << 62,
       "does not fit"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1, "need 12"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, -1, "outside"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8, -1,
       "too large"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}", 8,
       -1, "too large"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, -1, "non-negative"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, -1, "integer"},
      {"{\"a\":{\"dtype\":\"Q8\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "unknown dtype"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, -1, "lacks data_offsets"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8, -1,
       "unexpected or repeated key"},
      {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1,
       "repeated"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
       16, -1, "appears twice"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, -1, "overlaps"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, -1, "cover"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1, "gap"},
      {"{\"__metadata__\":{\"k\":3}}", 0, -1, "must be strings"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, -1,
       "after the closing"},
      {"[1,2]", 0, -1, "expected '{'"},
      {"{\"a\\q\":1}", 0, -1, "bad escape"},
      {"{\"a\\ud800\":1}", 0, -1, "surrogate"},
      {"{\"a\\u0000\":1}", 0, -1, "NUL"},
      {"{\"abc", 0, -1, "inside a string"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, -1,
       "more than 8"},
      {"", 0, -1, "ends early"},
      /* strict JSON, as the docs promise */
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8, -1, "leading zero"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[00,8]}}", 8, -1, "leading zero"},
      {"{\"__metadata__\":{},\"__metadata__\":{\"k\":\"v\"}}", 0, -1, "__metadata__ appears twice"},
      {"{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, -1, "'k' appears twice"},
      {"{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "not UTF-8"},
      {"{\"__metadata__\":{\"k\":\"\xc3\"}}", 0, -1, "not UTF-8"},
      {"{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}", 0, -1, "not UTF-8"}, /* a surrogate */
      {"{\"__metadata__.k\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1,
       "must be a U8 vector"},
      {"{\"__metadata__\":{\"k\":\"v\"},\"__metadata__.k\":{\"dtype\":\"U8\",\"shape\":[0],"
       "\"data_offsets\":[0,0]}}",
       0, -1, "'k' appears twice"},
  };
  for (size_t i = 0; i < MC_ARRAY_LEN(cases); i++) {
    char err[256] = "";
    StFile *f = parse_header(cases[i].hdr, cases[i].data, cases[i].len, err);
    CHECK(f == NULL);
    CHECK(strstr(err, cases[i].want) != NULL);
    if (f || !strstr(err, cases[i].want))
      fprintf(stderr, "  case %zu: expected '%s', got '%s'\n", i, cases[i].want, err);
    rt_st_close(f);
  }
  char err[256] = "";
  CHECK(rt_st_parse("t", dup_bytes("\x10\0\0", 3), 3, err, sizeof err) == NULL);
  CHECK(strstr(err, "fewer than the 8-byte") != NULL);
  /* every truncation of a valid file is rejected, never a crash */
  char path[256];
  snprintf(path, sizeof path, "%s/trunc.safetensors", tmpdir);
  float w[4] = {1, 2, 3, 4};
  StTensor t[2] = {{"a", ST_F32, 1, {2}, w}, {"b", ST_F32, 2, {1, 2}, w + 2}};
  const char *meta[] = {"k", "v"};
  rt_st_save(path, t, 2, meta, 1);
  size_t len = 0;
  char *full = mc_read_file(path, &len);
  int rejected = 0;
  for (size_t n = 0; n < len; n++) {
    StFile *f = rt_st_parse("t", dup_bytes(full, n), n, err, sizeof err);
    rejected += f == NULL;
    rt_st_close(f);
  }
  CHECK(rejected == (int)len);
  /* random byte flips: either a clean parse or an error, never a crash */
  uint64_t key = 12345;
  for (int it = 0; it < 3000; it++) {
    uint8_t *b = dup_bytes(full, len);
    int flips = 1 + (int)(mc_rng_uniform(key, 3 * (uint64_t)it) * 3);
    for (int k = 0; k < flips; k++) {
      size_t pos = (size_t)(mc_rng_uniform(key, 3 * (uint64_t)it + 1 + (uint64_t)k) * (double)len);
      b[pos] = (uint8_t)(mc_rng_uniform(key, 1000000 + 7 * (uint64_t)it + (uint64_t)k) * 256);
    }
    StFile *f = rt_st_parse("t", b, len, err, sizeof err);
    rt_st_close(f);
  }
  free(full);
  /* rt_st_open: a clear error naming the file */
  snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
  FILE *fp = fopen(path, "wb");
  fwrite("\x05\0\0\0\0\0\0\0{\"a\":", 1, 13, fp);
  fclose(fp);
  expect_death(open_path, path, "is not a valid safetensors file");
  snprintf(path, sizeof path, "%s/missing.safetensors", tmpdir);
  expect_death(open_path, path, "cannot read checkpoint");
}

/* ---------------------------------------------------------------- hostile paths and sizes */

/* The header of a file as moec wrote it: valid JSON to a strict reader means, at
 * least, no byte that is not UTF-8 (Python's json is run by tests/test_hostile.sh). */
static bool header_is_utf8(const char *path) {
  size_t len = 0;
  unsigned char *b = (unsigned char *)mc_read_file(path, &len);
  uint64_t hl = 0;
  for (int i = 0; i < 8; i++)
    hl |= (uint64_t)b[i] << (8 * i);
  bool ok = hl <= len - 8;
  for (size_t i = 8; ok && i < 8 + hl;) {
    int k = mc_utf8_len(b + i, 8 + hl - i);
    ok = k > 0;
    i += (size_t)k;
  }
  free(b);
  return ok;
}

static const char *save_path;
static void save_to(void *arg) {
  float w[2] = {1, 2};
  StTensor t[1] = {{"a", ST_F32, 1, {2}, w}};
  (void)arg;
  rt_st_save(save_path, t, 1, NULL, 0);
}

static void test_hostile(void) {
  char path[512], err[6000];
  /* metadata that is not UTF-8 (a vocabulary of raw bytes) or over 1 MiB goes into
   * U8 tensors and comes back the same; a 101 MiB one too (the header limit is 100) */
  size_t bigl = (size_t)101 << 20;
  char *big = mc_malloc(bigl + 1);
  for (size_t i = 0; i < bigl; i++)
    big[i] = (char)('a' + i % 26);
  for (size_t i = 7; i < bigl; i += 8)
    big[i] = '\n';
  big[bigl] = 0;
  const char *raw = "<unk>\ncaf\xe9\n\xff\xfe\nok\xc3\xa9";
  const char *meta[] = {"format", "pt", "data.vocab", raw, "huge", big};
  float w[2] = {3, 4};
  StTensor t[1] = {{"lm.weight", ST_F32, 1, {2}, w}};
  snprintf(path, sizeof path, "%s/meta.safetensors", tmpdir);
  rt_st_save(path, t, 1, meta, 3);
  CHECK(header_is_utf8(path));
  StFile *f = rt_st_open(path);
  CHECK(rt_st_meta(f, "data.vocab") && !strcmp(rt_st_meta(f, "data.vocab"), raw));
  CHECK(rt_st_meta(f, "huge") && !strcmp(rt_st_meta(f, "huge"), big));
  CHECK(rt_st_meta(f, "format") && !strcmp(rt_st_meta(f, "format"), "pt"));
  const StEntry *e = rt_st_find(f, "__metadata__.data.vocab");
  CHECK(e && e->dtype == ST_U8 && e->numel == (int64_t)strlen(raw));
  CHECK(rt_st_find(f, "lm.weight") && !memcmp(rt_st_find(f, "lm.weight")->data, w, sizeof w));
  rt_st_close(f);
  mc_free(big);
  /* a JSON string of any bytes is valid: U+FFFD for what is not UTF-8 */
  McBuf jb = {0};
  mc_buf_json_string(&jb, "a\xff\xc3\xa9\x01\"");
  CHECK(!strcmp(jb.data, "\"a\\ufffd\xc3\xa9\\u0001\\\"\""));
  mc_buf_free(&jb);

  /* many tensors: parsing and finding are linear (1.3M tensors took minutes) */
  int nt = 300000;
  McBuf h = {0};
  mc_buf_putc(&h, '{');
  for (int i = 0; i < nt; i++)
    mc_buf_printf(&h, "%s\"t%d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}",
                  i ? "," : "", i, i, i + 1);
  mc_buf_putc(&h, '}');
  size_t n = 8 + h.len + (size_t)nt;
  uint8_t *b = mc_calloc(n, 1);
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
  memcpy(b + 8, h.data, h.len);
  mc_buf_free(&h);
  double t0 = mc_cpu_now(); /* CPU seconds: a loaded machine must not fail this */
  f = rt_st_parse("many", b, n, err, sizeof err);
  bool found = f && rt_st_find(f, "t0") && rt_st_find(f, "t299999") && !rt_st_find(f, "t300000");
  double secs = mc_cpu_now() - t0;
  printf("%d tensors: parsed and looked up in %.2f CPU s\n", nt, secs);
  CHECK(found);
  CHECK(secs < 20);
  rt_st_close(f);

  /* a symlink is followed: the file it names is replaced, the link stays */
  char target[512], link[512], tmp[600];
  snprintf(target, sizeof target, "%s/target.safetensors", tmpdir);
  snprintf(link, sizeof link, "%s/link.safetensors", tmpdir);
  CHECK(symlink("target.safetensors", link) == 0); /* relative, dangling at first */
  save_path = link;
  save_to(NULL);
  struct stat st;
  CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
  CHECK(stat(target, &st) == 0 && S_ISREG(st.st_mode));
  save_to(NULL); /* again, over the existing target */
  CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
  f = rt_st_open(link);
  CHECK(f && rt_st_find(f, "a"));
  rt_st_close(f);
  /* a FIFO, a device, a directory: refused, left as they were */
  snprintf(path, sizeof path, "%s/fifo.safetensors", tmpdir);
  CHECK(mkfifo(path, 0600) == 0);
  save_path = path;
  expect_death(save_to, NULL, "not a regular file");
  CHECK(stat(path, &st) == 0 && S_ISFIFO(st.st_mode));
  save_path = "/dev/null";
  expect_death(save_to, NULL, "cannot save '/dev/null': it is not a regular file");
  CHECK(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode));
  expect_death(open_path, path, "cannot read checkpoint");
  expect_death(open_path, "/dev/zero", "it is not a regular file (a character device)");
  expect_death(open_path, tmpdir, "it is a directory");
  /* rt_st_check_save_path: what a run checks before its first step */
  CHECK(rt_st_check_save_path(target, err, sizeof err));
  CHECK(rt_st_check_save_path(link, err, sizeof err));
  CHECK(!rt_st_check_save_path("", err, sizeof err) && strstr(err, "the path is empty"));
  CHECK(!rt_st_check_save_path(tmpdir, err, sizeof err) && strstr(err, "it is a directory"));
  CHECK(!rt_st_check_save_path(path, err, sizeof err) && strstr(err, "not a regular file"));
  snprintf(tmp, sizeof tmp, "%s/no/such/dir/x.safetensors", tmpdir);
  CHECK(!rt_st_check_save_path(tmp, err, sizeof err) && strstr(err, "cannot create a file in"));
  char longp[5000];
  memset(longp, 'x', sizeof longp - 1);
  longp[sizeof longp - 1] = 0;
  CHECK(!rt_st_check_save_path(longp, err, sizeof err) && strstr(err, "too long"));
  snprintf(tmp, sizeof tmp, "%s/loop.safetensors", tmpdir);
  CHECK(symlink("loop.safetensors", tmp) == 0);
  CHECK(!rt_st_check_save_path(tmp, err, sizeof err) && strstr(err, "symlink"));
  CHECK(count_tmp_files() == 0); /* the checks leave nothing behind */
  /* temporaries of killed saves: a dead pid's is removed, a live one's kept */
  char dead[600], live[600];
  snprintf(dead, sizeof dead, "%s.tmp.%d", target, 2147483646); /* no such pid */
  snprintf(live, sizeof live, "%s.tmp.%d", target, (int)getppid());
  FILE *fp = fopen(dead, "w");
  fclose(fp);
  fp = fopen(live, "w");
  fclose(fp);
  save_path = target;
  save_to(NULL);
  CHECK(access(dead, F_OK) != 0 && access(live, F_OK) == 0);
  unlink(live);
}

static int count_tmp_files(void) {
  DIR *d = opendir(tmpdir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) n++;
  if (d) closedir(d);
  return n;
}

static char atomic_path[512];
static void save_failing(void *arg) {
  float w[1000] = {0};
  StTensor t[1] = {{"a", ST_F32, 1, {1000}, w}};
  rt_st_fail_after = (long)(intptr_t)arg;
  rt_st_save(atomic_path, t, 1, NULL, 0);
}

static void test_atomic(void) {
  snprintf(atomic_path, sizeof atomic_path, "%s/ckpt.safetensors", tmpdir);
  float w[2] = {5, 6};
  StTensor t[1] = {{"old", ST_F32, 1, {2}, w}};
  rt_st_save(atomic_path, t, 1, NULL, 0);
  size_t len0 = 0;
  char *before = mc_read_file(atomic_path, &len0);
  /* a write that fails part way (disk full): old file intact, no temporary left */
  expect_death(save_failing, (void *)(intptr_t)2000, "the previous file, if any, is unchanged");
  expect_death(save_failing, (void *)(intptr_t)3, "No space left");
  size_t len1 = 0;
  char *after = mc_read_file(atomic_path, &len1);
  CHECK(after && len0 == len1 && !memcmp(before, after, len0));
  CHECK(count_tmp_files() == 0);
  /* a directory that does not exist, and a temporary path that cannot be created */
  char bad[300];
  snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", tmpdir);
  snprintf(atomic_path, sizeof atomic_path, "%s", bad);
  expect_death(save_failing, (void *)(intptr_t)-1, "cannot create");
  snprintf(atomic_path, sizeof atomic_path, "%s/ckpt.safetensors", tmpdir);
  char blocker[300];
  /* the target is a directory: rename fails, nothing is left behind */
  snprintf(blocker, sizeof blocker, "%s/dir.safetensors", tmpdir);
  mkdir(blocker, 0700);
  snprintf(atomic_path, sizeof atomic_path, "%s", blocker);
  expect_death(save_failing, (void *)(intptr_t)-1, "cannot save");
  CHECK(count_tmp_files() == 0);
  free(before);
  free(after);
}

/* ---------------------------------------------------------------- loading params */

static void host_copy(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
}
static const Backend host = {"host", NULL, NULL, NULL, host_copy, host_copy, host_copy, NULL};

typedef struct Fake {
  Graph g;
  Tensor t[2];
  Tensor *params[2];
  void *buf[2];
  Program p;
} Fake;

/* A two-parameter "model": lm.weight [4, 3], lm.bias [4]. */
static void fake_model(Fake *m, Precision prec) {
  memset(m, 0, sizeof *m);
  const char *names[2] = {"lm.weight", "lm.bias"};
  for (int i = 0; i < 2; i++) {
    Tensor *t = &m->t[i];
    t->id = i;
    t->name = names[i];
    t->kind = TK_PARAM;
    t->ty.rank = i ? 1 : 2;
    t->shape[0] = 4;
    t->shape[1] = 3;
    t->numel = i ? 4 : 12;
    m->params[i] = t;
    m->buf[i] = mc_calloc((size_t)t->numel, 8);
  }
  m->g.params = m->params;
  m->g.nparams = 2;
  m->p.g = &m->g;
  m->p.be = &host;
  m->p.prec = prec;
  m->p.elem = prec == PREC_F64 ? 8 : 4;
  m->p.buf = m->buf;
}

static const char *load_path;
static void load_into_fake(void *arg) {
  Fake m;
  fake_model(&m, PREC_F32);
  (void)arg;
  rt_st_load_params(rt_st_open(load_path), &m.p);
}

static void test_load_params(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
  float w[12], b[4];
  double wd[12];
  for (int i = 0; i < 12; i++)
    wd[i] = w[i] = (float)i * 0.5f;
  for (int i = 0; i < 4; i++)
    b[i] = (float)-i;
  float opt[4] = {9, 9, 9, 9};
  StTensor t[3] = {{"lm.bias", ST_F32, 1, {4}, b},
                   {"lm.weight", ST_F64, 2, {4, 3}, wd},
                   {"optim.m.lm.bias", ST_F32, 1, {4}, opt}};
  rt_st_save(path, t, 3, NULL, 0);
  Fake m;
  fake_model(&m, PREC_F32);
  StFile *f = rt_st_open(path);
  rt_st_load_params(f, &m.p); /* F64 weights into an F32 program; optim.* skipped */
  CHECK(!memcmp(m.buf[0], w, sizeof w) && !memcmp(m.buf[1], b, sizeof b));
  Fake m64;
  fake_model(&m64, PREC_F64);
  rt_st_load_params(f, &m64.p);
  CHECK(((double *)m64.buf[0])[5] == 2.5 && ((double *)m64.buf[1])[3] == -3.0);
  rt_st_close(f);
  /* another model's checkpoint: every problem named */
  float big[20] = {0};
  StTensor o[2] = {{"lm.weight", ST_F32, 2, {5, 4}, big}, {"emb.weight", ST_F32, 1, {4}, b}};
  rt_st_save(path, o, 2, NULL, 0);
  load_path = path;
  expect_death(load_into_fake, NULL,
               "is for another model: 'lm.weight' has shape [5, 4], the model needs [4, 3]; "
               "'lm.bias' is missing; it has 'emb.weight', which the model does not");
  int32_t ib[4] = {0};
  StTensor o2[2] = {{"lm.weight", ST_F32, 2, {4, 3}, w}, {"lm.bias", ST_I32, 1, {4}, ib}};
  rt_st_save(path, o2, 2, NULL, 0);
  expect_death(load_into_fake, NULL, "'lm.bias' has dtype I32, a parameter needs F32 or F64");
  for (int i = 0; i < 2; i++) {
    free(m.buf[i]);
    free(m64.buf[i]);
  }
}

int main(void) {
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_roundtrip();
  test_malformed();
  test_atomic();
  test_load_params();
  test_hostile();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  TEST_DONE();
}
