/* test_parallel.c: parallel corpora (runtime/parallel.c) on small files written here:
 * reading (CRLF, blank lines, the errors with file:line), the shared vocabulary, pairs
 * too long or with an empty side left out and reported with their lines, batches by
 * bucket within the token budget holding every pair once, padding and the shifted
 * target, determinism per (seed, epoch), evaluation order. With --corpus DIR: the en-fr
 * corpus read, encoded and batched (exit 77 without it). */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../runtime/text.h"
#include "test.h"

static char dir[256];

static const char *write_file(const char *name, const char *text) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  fputs(text, f);
  fclose(f);
  return path;
}

static void t_errors(void) {
  RtParText t;
  char err[300];
  const char *p = write_file("notab.tsv", "a\tb\nno tab here\n");
  CHECK(!rt_par_read(p, &t, err, sizeof err) &&
        strstr(err, "notab.tsv:2: expected source<TAB>target, found no tab"));
  p = write_file("twotabs.tsv", "a\tb\tc\n");
  CHECK(!rt_par_read(p, &t, err, sizeof err) &&
        strstr(err, "twotabs.tsv:1: expected source<TAB>target, found more than one tab"));
  p = write_file("utf8.tsv", "ok\tok\n\nab\xff"
                             "c\td\n");
  CHECK(!rt_par_read(p, &t, err, sizeof err) &&
        strstr(err, "utf8.tsv:3:3: invalid UTF-8 (byte 0xff)"));
  p = write_file("overlong.tsv", "\xc0\xaf\tx\n"); /* an overlong '/' is not UTF-8 */
  CHECK(!rt_par_read(p, &t, err, sizeof err) && strstr(err, ":1:1: invalid UTF-8"));
  CHECK(!rt_par_read("/nonexistent/pairs.tsv", &t, err, sizeof err) && strstr(err, "cannot read"));
}

/* 8 pairs: a CRLF line, a blank line, one pair too long, one with an empty target */
static const char *small =
    "the cat\tle chat\r\n"
    "a dog\tun chien\n"
    "\n"
    "the big cat sat on the mat and then it slept for a long long time\tle gros chat\n"
    "hello\t\n"
    "the dog\tle chien\n"
    "cats and dogs\tchats et chiens\n"
    "\xc3\xa9t\xc3\xa9\t\xc3\xa9t\xc3\xa9\n"
    "good night\tbonne nuit";

static void t_small(void) {
  RtParText t;
  char err[300];
  const char *p = write_file("small.tsv", small);
  CHECK(rt_par_read(p, &t, err, sizeof err));
  CHECK(t.n == 8 && t.nblank == 1);
  CHECK(!strcmp(t.src[0], "the cat") && !strcmp(t.tgt[0], "le chat")); /* CR dropped */
  CHECK(t.line[2] == 4 && t.line[3] == 5);
  RtBpe *bpe = rt_par_learn_bpe(&t, 300);
  RtParData *d = rt_par_encode(&t, bpe, 12);
  CHECK(d->n == 6 && d->nlong == 1 && d->nempty == 1 && d->nleft == 2);
  CHECK(d->left_out[0] == 4 && d->left_out[1] == 5);
  /* every kept side ends in </s> and decodes back */
  for (int64_t i = 0; i < d->n; i++) {
    CHECK(d->src[d->src_off[i + 1] - 1] == RT_BPE_EOS &&
          d->tgt[d->tgt_off[i + 1] - 1] == RT_BPE_EOS);
    CHECK(d->src_off[i + 1] - d->src_off[i] <= 12);
  }
  char *s = rt_bpe_decode(bpe, d->tgt + d->tgt_off[4], d->tgt_off[5] - d->tgt_off[4]);
  CHECK(!strcmp(s, "\xc3\xa9t\xc3\xa9"));
  mc_free(s);
  /* the report names what was left out */
  char *rep = NULL;
  size_t rn = 0;
  FILE *m = open_memstream(&rep, &rn);
  rt_par_report(d, m);
  fclose(m);
  CHECK(strstr(rep, "6 pairs") && strstr(rep, "1 blank lines skipped"));
  CHECK(strstr(rep, "2 pairs left out: 1 with a side longer than max_len = 12 tokens, 1 with an "
                    "empty side; lines 4 5"));
  free(rep);

  /* batches: width 4, budget 8 positions */
  for (int shuffle = 0; shuffle < 2; shuffle++) {
    RtParBatches *bs = rt_par_batches(d, 8, 4, 7, 0, shuffle);
    int64_t *seen = mc_calloc((size_t)d->n, sizeof(int64_t));
    int64_t total = 0;
    for (int64_t i = 0; i < bs->n; i++) {
      const RtParBatch *b = &bs->b[i];
      CHECK(b->S % 4 == 0 && b->T % 4 == 0 && b->B >= 1);
      CHECK((int64_t)b->B * MC_MAX(b->S, b->T) <= 8 || b->B == 1);
      int32_t *src = mc_malloc((size_t)(b->B * b->S) * 4),
              *ti = mc_malloc((size_t)(b->B * b->T) * 4),
              *to = mc_malloc((size_t)(b->B * b->T) * 4);
      rt_par_fill(d, bs, i, src, ti, to);
      for (int32_t r = 0; r < b->B; r++) {
        int64_t pr = bs->pairs[b->first + r];
        seen[pr]++;
        int64_t ns = d->src_off[pr + 1] - d->src_off[pr], nt = d->tgt_off[pr + 1] - d->tgt_off[pr];
        CHECK(ns <= b->S && ns > b->S - 4 && nt <= b->T && nt > b->T - 4); /* its bucket */
        CHECK(!memcmp(src + r * b->S, d->src + d->src_off[pr], (size_t)ns * 4));
        for (int64_t j = ns; j < b->S; j++)
          CHECK(src[r * b->S + j] == RT_BPE_PAD);
        CHECK(ti[r * b->T] == RT_BPE_BOS && to[r * b->T + nt - 1] == RT_BPE_EOS);
        for (int64_t j = 1; j < nt; j++) /* the target shifted by one */
          CHECK(ti[r * b->T + j] == to[r * b->T + j - 1]);
        for (int64_t j = nt; j < b->T; j++)
          CHECK(ti[r * b->T + j] == RT_BPE_PAD && to[r * b->T + j] == RT_BPE_PAD);
      }
      total += b->B;
      mc_free(src);
      mc_free(ti);
      mc_free(to);
    }
    CHECK(total == d->n);
    for (int64_t i = 0; i < d->n; i++)
      CHECK(seen[i] == 1);
    if (!shuffle) /* evaluation: file order inside each bucket */
      for (int64_t i = 0; i + 1 < d->n; i++)
        if (bs->pairs[i] > bs->pairs[i + 1]) {
          bool same = false;
          for (int64_t k = 0; k < bs->n; k++) {
            int64_t f = bs->b[k].first;
            if (i >= f && i + 1 < f + bs->b[k].B) same = true;
          }
          CHECK(!same);
        }
    mc_free(seen);
    rt_par_batches_free(bs);
  }
  /* the same (seed, epoch) gives the same batches; another epoch another order */
  RtParBatches *a = rt_par_batches(d, 8, 4, 7, 3, true), *b = rt_par_batches(d, 8, 4, 7, 3, true);
  CHECK(a->n == b->n && !memcmp(a->b, b->b, (size_t)a->n * sizeof *a->b) &&
        !memcmp(a->pairs, b->pairs, (size_t)d->n * sizeof(int64_t)));
  bool differ = false;
  for (int e = 4; e < 12 && !differ; e++) {
    RtParBatches *c = rt_par_batches(d, 8, 4, 7, e, true);
    differ = memcmp(a->pairs, c->pairs, (size_t)d->n * sizeof(int64_t)) != 0 ||
             memcmp(a->b, c->b, (size_t)a->n * sizeof *a->b) != 0;
    rt_par_batches_free(c);
  }
  CHECK(differ);
  rt_par_batches_free(a);
  rt_par_batches_free(b);
  rt_par_free(d);
  rt_bpe_free(bpe);
  rt_par_text_free(&t);
}

/* ---------------------------------------------------------------- en-fr */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int t_en_fr(const char *data) {
  char tp[1024], vp[1024], err[300];
  snprintf(tp, sizeof tp, "%s/en-fr/train.tsv", data);
  snprintf(vp, sizeof vp, "%s/en-fr/valid.tsv", data);
  if (access(tp, R_OK) || access(vp, R_OK)) {
    printf("SKIP: %s/en-fr/{train,valid}.tsv not found (the shared data folder)\n", data);
    return 0;
  }
  double t0 = now();
  RtParText tr, va;
  CHECK(rt_par_read(tp, &tr, err, sizeof err));
  CHECK(rt_par_read(vp, &va, err, sizeof err));
  CHECK(tr.n == 19489 && va.n == 1000);
  RtBpe *bpe = rt_par_learn_bpe(&tr, 8000);
  RtParData *dt = rt_par_encode(&tr, bpe, 64), *dv = rt_par_encode(&va, bpe, 64);
  RtParBatches *bs = rt_par_batches(dt, 2048, 8, 1, 0, true);
  double t1 = now();
  rt_par_report(dt, stdout);
  rt_par_report(dv, stdout);
  int64_t real = dt->src_tokens + dt->tgt_tokens, shapes = 0, padded = 0;
  for (int64_t i = 0; i < bs->n; i++) {
    padded += (int64_t)bs->b[i].B * (bs->b[i].S + bs->b[i].T);
    bool seen = false;
    for (int64_t j = 0; j < i && !seen; j++)
      seen = bs->b[j].S == bs->b[i].S && bs->b[j].T == bs->b[i].T && bs->b[j].B == bs->b[i].B;
    shapes += !seen;
  }
  printf("en-fr: read, vocabulary %d, encoded and batched in %.2f s; %lld batches of at most "
         "2048 positions (largest B %d), %lld shapes, %.1f%% of positions real tokens\n",
         rt_bpe_vocab(bpe), t1 - t0, (long long)bs->n, bs->max_B, (long long)shapes,
         100.0 * (double)real / (double)padded);
  CHECK(dt->n + dt->nleft == tr.n && dv->n + dv->nleft == va.n);
  CHECK((double)real / (double)padded > 0.7); /* buckets of width 8 keep padding low */
  rt_par_batches_free(bs);
  rt_par_free(dt);
  rt_par_free(dv);
  rt_bpe_free(bpe);
  rt_par_text_free(&tr);
  rt_par_text_free(&va);
  return 1;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--corpus")) {
    if (!t_en_fr(argv[2])) return 77;
    TEST_DONE();
  }
  snprintf(dir, sizeof dir, "/tmp/moec_parallel_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  t_errors();
  t_small();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  TEST_DONE();
}
