/* test_data.c: the corpora and batching (runtime/data.c): the synthetic corpus
 * is deterministic per seed and its analytic entropy rate matches a long sample;
 * text vocabulary and splits; tokenizers (runtime/tokenize.c) and spelled words, on
 * tiny-shakespeare too; .bin reading; truncated-BPTT batches; per-device batchers
 * (stream ranges) that together give the global batch; errors. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/train.h"
#include "test.h"

static char tmpdir[] = "/tmp/moec_test_data_XXXXXX";

#include "test_death.h"

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  CHECK(f != NULL);
  if (!f) return;
  fwrite(data, 1, n, f);
  fclose(f);
}

static Config config(DataKind kind, const char *path) {
  Config c;
  memset(&c, 0, sizeof c);
  c.data = kind;
  c.data_path = path;
  c.topics = 4;
  c.vocab = 64;
  c.data_seed = 7;
  c.batch = 4;
  c.unroll = 5;
  return c;
}

/* ---------------------------------------------------------------- synthetic */

static void test_synth_deterministic(void) {
  Synth *a = rt_synth_new(4, 100, 11), *b = rt_synth_new(4, 100, 11), *c = rt_synth_new(4, 100, 12);
  CHECK(a->off[400] == b->off[400]);
  CHECK(!memcmp(a->succ, b->succ, (size_t)a->off[400] * sizeof(int32_t)));
  CHECK(!memcmp(a->prob, b->prob, (size_t)a->off[400] * sizeof(double)));
  /* every state has 4..8 successors whose probabilities sum to 1 */
  bool ok = true;
  for (int st = 0; st < 400; st++) {
    int d = a->off[st + 1] - a->off[st];
    double sum = 0;
    for (int i = a->off[st]; i < a->off[st + 1]; i++)
      sum += a->prob[i];
    ok &= d >= 4 && d <= 8 && fabs(sum - 1) < 1e-12;
  }
  CHECK(ok);
  /* topics differ from each other and seeds differ */
  CHECK(memcmp(a->succ, a->succ + a->off[100], 50 * sizeof(int32_t)) != 0);
  CHECK(memcmp(a->succ, c->succ, 50 * sizeof(int32_t)) != 0);
  SynthStream s1, s2, s3;
  rt_synth_stream_init(&s1, a, 3);
  rt_synth_stream_init(&s2, b, 3);
  rt_synth_stream_init(&s3, a, 4);
  int same = 1, diff = 0;
  for (int i = 0; i < 5000; i++) {
    int x1 = rt_synth_next(&s1), x2 = rt_synth_next(&s2), x3 = rt_synth_next(&s3);
    same &= x1 == x2;
    diff += x1 != x3;
  }
  CHECK(same);
  CHECK(diff > 1000);
  rt_synth_free(a);
  rt_synth_free(b);
  rt_synth_free(c);
}

/* The analytic rate (given the hidden topic) equals the average -log q over a long
 * sample; the Bayes filter that does not know the topic is a little above it; the
 * unigram entropy matches the sample's token frequencies. */
static void check_rate(int K, int V, uint64_t seed, int64_t ntok) {
  Synth *s = rt_synth_new(K, V, seed);
  double t0 = mc_now();
  rt_synth_analyze(s);
  double ta = mc_now() - t0;
  double tot = 0;
  for (int64_t i = 0; i < (int64_t)K * V; i++)
    tot += s->stat[i];
  CHECK_CLOSE(tot, 1.0, 1e-9, 0);
  SynthStream st;
  rt_synth_stream_init(&st, s, 1);
  double *belief = mc_malloc((size_t)K * sizeof(double)),
         *nb = mc_malloc((size_t)K * sizeof(double));
  for (int z = 0; z < K; z++)
    belief[z] = 1.0 / K;
  double c = K > 1 ? s->s / (K - 1) : 0, a = 1 - s->s - c;
  int64_t *count = mc_calloc((size_t)V, sizeof(int64_t));
  double nll_true = 0, nll_filter = 0;
  int64_t burn = 2000, n = 0;
  for (int64_t i = 0; i < ntok + burn; i++) {
    int z = st.z, x = st.x;
    int y = rt_synth_next(&st);
    /* filter: predict with the belief over the current topic, then update */
    double p = 0, norm = 0;
    for (int w = 0; w < K; w++)
      nb[w] = 0;
    for (int zn = 0; zn < K; zn++) {
      double prior = belief[zn] * (1 - s->s) + c * (1 - belief[zn]); /* P(next topic = zn) */
      double py = rt_synth_prob(s, zn, x, y);
      nb[zn] = prior * py;
      p += prior * py;
    }
    for (int w = 0; w < K; w++)
      norm += nb[w];
    for (int w = 0; w < K; w++)
      belief[w] = nb[w] / norm;
    if (i >= burn) {
      nll_true += rt_synth_nll_given_topic(s, z, x, y);
      nll_filter += -log(p);
      count[y]++;
      n++;
    }
  }
  (void)a;
  nll_true /= (double)n;
  nll_filter /= (double)n;
  double uni = 0;
  for (int v = 0; v < V; v++)
    if (count[v]) uni -= (double)count[v] / (double)n * log((double)count[v] / (double)n);
  printf("synthetic K=%d V=%d: floor %.4f nats (ppl %.3f), sample %.4f, Bayes filter %.4f, "
         "unigram %.4f (sample %.4f), analysis %.2fs\n",
         K, V, s->floor_nats, exp(s->floor_nats), nll_true, nll_filter, s->unigram_nats, uni, ta);
  CHECK(s->floor_nats > 0.5 && s->floor_nats < s->unigram_nats);
  CHECK_CLOSE(nll_true, s->floor_nats, 0.015, 0);
  CHECK(nll_filter >= s->floor_nats - 0.02);
  CHECK(nll_filter <= s->floor_nats + 0.08);
  CHECK_CLOSE(uni, s->unigram_nats, 0.02, 0);
  mc_free(count);
  mc_free(belief);
  mc_free(nb);
  rt_synth_free(s);
}

static void test_synth_batches(void) {
  Config cfg = config(DATA_SYNTHETIC, NULL);
  Corpus *c = rt_corpus_load(&cfg, 64, NULL);
  CHECK(c->syn && c->syn->floor_nats > 0);
  Batcher b1, b2, bv;
  rt_batcher_init(&b1, c, SPLIT_TRAIN, 3, 5);
  rt_batcher_init(&b2, c, SPLIT_TRAIN, 3, 5);
  rt_batcher_init(&bv, c, SPLIT_VALID, 3, 5);
  int32_t ids[15], tg[15], ids2[15], tg2[15], prev_tg[15];
  bool overlap = true;
  for (int s = 0; s < 7; s++) {
    rt_batcher_next(&b1, ids, tg);
    if (s > 0)
      for (int r = 0; r < 3; r++)
        overlap &= ids[r * 5] == prev_tg[r * 5 + 4];
    for (int r = 0; r < 3; r++)
      for (int t = 1; t < 5; t++)
        overlap &= ids[r * 5 + t] == tg[r * 5 + t - 1];
    memcpy(prev_tg, tg, sizeof tg);
  }
  CHECK(overlap);
  rt_batcher_seek(&b2, 6); /* seeking = stepping */
  rt_batcher_next(&b2, ids2, tg2);
  rt_batcher_seek(&b1, 6);
  rt_batcher_next(&b1, ids, tg);
  CHECK(!memcmp(ids, ids2, sizeof ids) && !memcmp(tg, tg2, sizeof tg));
  rt_batcher_seek(&b1, 2);
  rt_batcher_next(&b1, ids, tg);
  rt_batcher_seek(&b2, 2);
  rt_batcher_next(&b2, ids2, tg2);
  CHECK(!memcmp(ids, ids2, sizeof ids));
  rt_batcher_next(&bv, ids2, tg2); /* the valid split is another stream */
  rt_batcher_seek(&b1, 0);
  rt_batcher_next(&b1, ids, tg);
  CHECK(memcmp(tg, tg2, sizeof tg) != 0);
  CHECK(rt_batcher_eval_steps(&bv) == (32768 + 14) / 15);
  bool inrange = true;
  for (int i = 0; i < 15; i++)
    inrange &= ids[i] >= 0 && ids[i] < 64 && tg[i] >= 0 && tg[i] < 64;
  CHECK(inrange);
  rt_batcher_free(&b1);
  rt_batcher_free(&b2);
  rt_batcher_free(&bv);
  rt_corpus_free(c);
}

/* ---------------------------------------------------------------- text and bin */

static void test_text(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/corpus.txt", tmpdir);
  /* 40 lines: 36 train, 2 valid, 2 test */
  McBuf b = {0};
  for (int i = 0; i < 36; i++)
    mc_buf_printf(&b, "the cat  sat\ton the mat %s\n", i % 2 ? "a" : "b");
  mc_buf_printf(&b, "the dog sat\nzebra the\n");
  mc_buf_printf(&b, "the <unk> cat\nthe cat");
  write_file(path, b.data, b.len);
  Config cfg = config(DATA_TEXT, path);
  Corpus *c = rt_corpus_load(&cfg, 7, NULL);
  /* counts in train: the 72; cat, sat, on, mat, <eos> 36; a, b 18 -> a vocab of 7 */
  CHECK(rt_tok_size(c->tk) == 7);
  const char *want_vocab[] = {"<unk>", "the", "cat", "sat", "on", "mat", "<eos>"};
  for (int i = 0; i < 7; i++) { /* ties: first occurrence first; a and b left out: <unk> */
    int len;
    const char *w = rt_tok_piece(c->tk, i, &len);
    CHECK(i == 6 ? len == 1 && w[0] == '\n'
                 : len == (int)strlen(want_vocab[i]) && !memcmp(w, want_vocab[i], (size_t)len));
  }
  CHECK(rt_tok_eos(c->tk) == 6);
  CHECK(c->unk[SPLIT_TRAIN] == 36 && c->unk[SPLIT_VALID] == 2 && c->unk[SPLIT_TEST] == 1);
  CHECK(c->words[SPLIT_TRAIN] == 36 * 8 && c->words[SPLIT_VALID] == 7);
  /* evaluation splits are primed with the line end before them; train is not */
  CHECK(!c->prime[SPLIT_TRAIN] && c->prime[SPLIT_VALID] && c->prime[SPLIT_TEST]);
  CHECK(c->tok[SPLIT_VALID][-1] == 6 && c->tok[SPLIT_TEST][-1] == 6);
  CHECK(c->ntok[SPLIT_TRAIN] == 36 * 8);
  CHECK(c->ntok[SPLIT_VALID] == 4 + 3);
  CHECK(c->ntok[SPLIT_TEST] == 4 + 3);
  int32_t want_valid[] = {1, 0, 3, 6, 0, 1, 6}; /* the dog sat <eos> zebra the <eos> */
  CHECK(c->ntok[SPLIT_VALID] == 7 && !memcmp(c->tok[SPLIT_VALID], want_valid, sizeof want_valid));
  int32_t want_test[] = {1, 0, 2, 6, 1, 2, 6}; /* literal <unk> maps to 0; last line w/o \n */
  CHECK(!memcmp(c->tok[SPLIT_TEST], want_test, sizeof want_test));
  /* batches: B=2, T=3 over train; slice 144 tokens per stream */
  Batcher bt;
  rt_batcher_init(&bt, c, SPLIT_TRAIN, 2, 3);
  CHECK(bt.slice == 144 && bt.steps_per_pass == 47);
  int32_t ids[6], tg[6];
  rt_batcher_next(&bt, ids, tg);
  CHECK(ids[0] == c->tok[0][0] && tg[0] == c->tok[0][1] && tg[2] == c->tok[0][3]);
  CHECK(ids[3] == c->tok[0][144] && tg[5] == c->tok[0][147]);
  rt_batcher_next(&bt, ids, tg);
  CHECK(ids[0] == c->tok[0][3]);
  rt_batcher_seek(&bt, 47); /* wraps to the start */
  rt_batcher_next(&bt, ids, tg);
  CHECK(ids[0] == c->tok[0][0]);
  rt_batcher_free(&bt);
  /* a given vocabulary (from a checkpoint) is used as is */
  const char *voc[] = {"<unk>", "zebra", "the", "<eos>"};
  Corpus *c2 = rt_corpus_load_file(path, 10, rt_tok_words(voc, 4));
  CHECK(c2->ntok[SPLIT_TEST] == 36 * 8 + 7 + 7);
  CHECK(c2->tok[SPLIT_TEST][0] == 2 && c2->tok[SPLIT_TEST][1] == 0);
  rt_corpus_free(c2);
  rt_corpus_free(c);
  mc_buf_free(&b);
}

static void test_bin(void) {
  char path[256];
  snprintf(path, sizeof path, "%s/tokens.bin", tmpdir);
  unsigned char raw[400];
  for (int i = 0; i < 200; i++) {
    int v = (i * 37) % 300;
    raw[2 * i] = (unsigned char)(v & 255);
    raw[2 * i + 1] = (unsigned char)(v >> 8);
  }
  write_file(path, raw, sizeof raw);
  Config cfg = config(DATA_BIN, path);
  Corpus *c = rt_corpus_load(&cfg, 300, NULL);
  CHECK(c->ntok[0] == 180 && c->ntok[1] == 10 && c->ntok[2] == 10);
  CHECK(c->tok[0][1] == 37 && c->tok[0][10] == 70 && c->tok[1][0] == (180 * 37) % 300);
  rt_corpus_free(c);
}

/* ---------------------------------------------------------------- per-device batchers */

/* P batchers over streams [r*B/P, (r+1)*B/P) give, concatenated in rank order, the
 * global batcher's batch token for token: from step 0, after a seek (resume), and
 * (file corpora) across the wrap at the end of a pass. */
static void check_sharded(const Corpus *c, Split split, int B, int T, int64_t steps) {
  size_t n = (size_t)B * (size_t)T;
  int32_t *gi = mc_malloc(n * sizeof(int32_t)), *gt = mc_malloc(n * sizeof(int32_t));
  int32_t *ui = mc_malloc(n * sizeof(int32_t)), *ut = mc_malloc(n * sizeof(int32_t));
  for (int P = 1; P <= 4; P++) {
    const int Bl = B / P;
    for (int pass = 0; pass < 2; pass++) {
      int64_t start = pass ? 3 : 0;
      Batcher g, d[4];
      rt_batcher_init(&g, c, split, B, T);
      rt_batcher_seek(&g, start);
      for (int r = 0; r < P; r++) {
        rt_batcher_init_rows(&d[r], c, split, B, T, r * Bl, Bl);
        CHECK(d[r].rows == Bl && d[r].row0 == r * Bl);
        rt_batcher_seek(&d[r], start);
        CHECK(rt_batcher_eval_steps(&d[r]) == rt_batcher_eval_steps(&g));
      }
      bool same = true;
      for (int64_t s = start; s < steps; s++) {
        rt_batcher_next(&g, gi, gt);
        memset(ui, 0xff, n * sizeof(int32_t));
        memset(ut, 0xff, n * sizeof(int32_t));
        for (int r = 0; r < P; r++) /* each device writes only its Bl rows */
          rt_batcher_next(&d[r], ui + (size_t)r * Bl * T, ut + (size_t)r * Bl * T);
        same &= !memcmp(gi, ui, n * sizeof(int32_t)) && !memcmp(gt, ut, n * sizeof(int32_t));
      }
      if (!same) fprintf(stderr, "sharded batches differ: P=%d, start %lld\n", P, (long long)start);
      CHECK(same);
      rt_batcher_free(&g);
      for (int r = 0; r < P; r++)
        rt_batcher_free(&d[r]);
    }
  }
  mc_free(gi);
  mc_free(gt);
  mc_free(ui);
  mc_free(ut);
}

static void test_sharded_batches(void) {
  Config cs = config(DATA_SYNTHETIC, NULL);
  Corpus *c = rt_corpus_load(&cs, 64, NULL);
  check_sharded(c, SPLIT_TRAIN, 12, 5, 8);
  check_sharded(c, SPLIT_VALID, 12, 5, 4);
  rt_corpus_free(c);
  /* a .bin file: 1000 tokens, train 900: 12 streams of 75, 14 batches of T=5 a pass */
  char path[256];
  snprintf(path, sizeof path, "%s/shard.bin", tmpdir);
  unsigned char raw[2000];
  for (int i = 0; i < 1000; i++) {
    int v = (i * 7919) % 251;
    raw[2 * i] = (unsigned char)(v & 255);
    raw[2 * i + 1] = (unsigned char)(v >> 8);
  }
  write_file(path, raw, sizeof raw);
  Config cb = config(DATA_BIN, path);
  c = rt_corpus_load(&cb, 256, NULL);
  Batcher b;
  rt_batcher_init(&b, c, SPLIT_TRAIN, 12, 5);
  CHECK(b.steps_per_pass == 14);
  rt_batcher_free(&b);
  check_sharded(c, SPLIT_TRAIN, 12, 5, 20); /* wraps after 14 */
  rt_corpus_free(c);
  /* a text file, 60 lines of distinct words */
  snprintf(path, sizeof path, "%s/shard.txt", tmpdir);
  McBuf t = {0};
  for (int i = 0; i < 60; i++)
    mc_buf_printf(&t, "w%d x%d y%d z%d w%d\n", i, i % 7, i % 5, i % 3, i + 1);
  write_file(path, t.data, t.len);
  Config ct = config(DATA_TEXT, path);
  c = rt_corpus_load(&ct, 256, NULL);
  rt_batcher_init(&b, c, SPLIT_TRAIN, 12, 2); /* 54 train lines of 6 tokens: 27 a stream */
  CHECK(b.steps_per_pass == 13);
  rt_batcher_free(&b);
  check_sharded(c, SPLIT_TRAIN, 12, 2, 16); /* wraps after 13 */
  rt_corpus_free(c);
  mc_buf_free(&t);
}

/* ---------------------------------------------------------------- errors */

static void die_load(void *arg) {
  Config *cfg = arg;
  rt_corpus_load(cfg, 256, NULL);
}

static void die_batch(void *arg) {
  Corpus *c = arg;
  Batcher b;
  rt_batcher_init(&b, c, SPLIT_TRAIN, 8, 20);
}

static void die_batch_eval(void *arg) {
  Corpus *c = arg;
  Batcher b;
  rt_batcher_init(&b, c, SPLIT_VALID, 8, 20);
}

static void test_errors(void) {
  char path[256], odd[256], big[256], empty[256], small[256];
  snprintf(path, sizeof path, "%s/does_not_exist.txt", tmpdir);
  Config cfg = config(DATA_TEXT, path);
  expect_death(die_load, &cfg, "cannot read data file");
  snprintf(empty, sizeof empty, "%s/empty.txt", tmpdir);
  write_file(empty, "", 0);
  cfg.data_path = empty;
  expect_death(die_load, &cfg, "is empty");
  snprintf(small, sizeof small, "%s/small.txt", tmpdir);
  write_file(small, "a b\nc d\n", 8);
  cfg.data_path = small;
  expect_death(die_load, &cfg, "at least 20 are needed");
  snprintf(odd, sizeof odd, "%s/odd.bin", tmpdir);
  write_file(odd, "abc", 3);
  Config cb = config(DATA_BIN, odd);
  expect_death(die_load, &cb, "odd number of bytes");
  snprintf(big, sizeof big, "%s/big.bin", tmpdir);
  unsigned char raw[40] = {0};
  raw[22] = 0x2c;
  raw[23] = 0x01; /* id 300 at position 11 */
  write_file(big, raw, sizeof raw);
  cb.data_path = big;
  expect_death(die_load, &cb, "token id 300 at position 11 is outside the model's vocabulary");
  Config cs = config(DATA_SYNTHETIC, NULL);
  cs.vocab = 1000;
  expect_death(die_load, &cs, "synthetic(vocab=1000) has more tokens than the model's vocabulary");
  memset(raw, 0, sizeof raw);
  write_file(big, raw, sizeof raw);
  Corpus *c = rt_corpus_load(&cb, 256, NULL);
  expect_death(die_batch, c, "too few for 8 streams of unroll 20");
  expect_death(die_batch_eval, c, "too few for 8 streams of at least 2 tokens");
  rt_corpus_free(c);
}

/* ---------------------------------------------------------------- tokenizers */

/* The ids of text under a tokenizer, as its pieces joined by '|'. */
static char *pieces(const RtTok *t, const int32_t *ids, int64_t n) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  for (int64_t i = 0; i < n; i++) {
    int len;
    const char *p = rt_tok_piece(t, ids[i], &len);
    char part = rt_tok_part(t, ids[i]); /* a spelled word's piece: <B>x */
    if (i) mc_buf_putc(&b, '|');
    if (part) mc_buf_printf(&b, "<%c>", part);
    mc_buf_printf(&b, "%.*s", len, p[0] == '\n' ? "$" : p);
  }
  return b.data;
}

static void test_tokenizers(void) {
  const char *text = "Speak, speak. SPEAK!\nI don't know: 3.5 or 1,000?\n";
  Config cfg = config(DATA_TEXT, "x");
  /* words(lower, split_punct): lower-cased, punctuation its own token (BLEU's rules) */
  cfg.tok_lower = cfg.tok_split_punct = true;
  RtTok *t = rt_tok_learn(&cfg, 100, text, strlen(text));
  int32_t *ids;
  int64_t n = rt_tok_encode(t, text, strlen(text), &ids);
  char *s = pieces(t, ids, n);
  CHECK(!strcmp(s, "speak|,|speak|.|speak|!|$|i|don't|know|:|3.5|or|1,000|?|$"));
  CHECK(rt_tok_size(t) == 14); /* <unk> + 13 distinct: speak , . ! <eos> i don't know : 3.5 or
                                  1,000 ? */
  CHECK(rt_tok_count_words(text, strlen(text)) == 3 + 1 + 6 + 1); /* whitespace words + lines */
  mc_free(s);
  mc_free(ids);
  char *d = rt_tok_describe(t);
  CHECK(!strcmp(d, "words(lower=true, split_punct=true)"));
  mc_free(d);
  rt_tok_free(t);
  /* plain words: "Speak," and "speak." are different words */
  cfg.tok_lower = cfg.tok_split_punct = false;
  t = rt_tok_learn(&cfg, 100, text, strlen(text));
  CHECK(rt_tok_size(t) == 1 + 3 + 1 + 6);
  rt_tok_free(t);
  /* chars: UTF-8 characters; a line end per line (CRLF: one) */
  const char *u = "a\xc3\xa9"
                  "b\r\nba\n";
  cfg.tokenizer = TOK_CHARS;
  t = rt_tok_learn(&cfg, 100, u, strlen(u));
  n = rt_tok_encode(t, u, strlen(u), &ids);
  s = pieces(t, ids, n);
  CHECK(!strcmp(s, "a|\xc3\xa9"
                   "|b|$|b|a|$"));
  CHECK(rt_tok_size(t) == 5); /* <unk> a b <eos> é */
  mc_free(s);
  mc_free(ids);
  rt_tok_free(t);
  /* bpe: no unknown id; decode(encode(text)) is the text; stored and read back */
  cfg.tokenizer = TOK_BPE;
  cfg.tok_vocab = 300;
  McBuf big = {0};
  for (int i = 0; i < 50; i++)
    mc_buf_printf(&big, "the quick brown fox %d jumps over the lazy dog\n", i);
  t = rt_tok_learn(&cfg, 1000, big.data, big.len);
  CHECK(rt_tok_size(t) > 259 && rt_tok_size(t) <= 300);
  const char *q = "the lazy fox\nzebra\n";
  n = rt_tok_encode(t, q, strlen(q), &ids);
  CHECK(ids[n - 1] == rt_tok_eos(t));
  for (int64_t i = 0; i < n; i++)
    CHECK(!rt_tok_unknown(t, ids[i]));
  char *back = rt_tok_decode(t, ids, n);
  CHECK(!strcmp(back, q));
  mc_free(back);
  mc_free(ids);
  const char *key;
  char *ser = rt_tok_serialize(t, &key);
  CHECK(!strcmp(key, "data.bpe"));
  mc_free(ser);
  rt_tok_free(t);
  mc_buf_free(&big);
}

static void die_spell_vocab(void *arg) {
  Config cfg = config(DATA_TEXT, "x");
  cfg.tok_spell = true;
  cfg.tok_vocab = 8;
  rt_tok_free(rt_tok_learn(&cfg, 100, arg, strlen(arg)));
}

/* words(spell=chars): words outside the vocabulary spelled as <B> <M> <E> pieces (GNMT's
 * mixed word/character model), decoded back into the word. */
static void test_spelling(void) {
  const char *text = "The cat sat on the mat.\nthe dog sat.\nA cat!\n";
  Config cfg = config(DATA_TEXT, "x");
  cfg.tok_lower = cfg.tok_split_punct = cfg.tok_spell = true;
  /* the pieces of the training words, worked out by hand: the (<B>t <M>h <E>e), cat (<B>c
   * <M>a <E>t), sat (<B>s), on (<B>o <E>n), mat (<B>m), . (<B>.), dog (<B>d <M>o <E>g),
   * ! (<B>!), a (<B>a): 16; with <unk>, vocab=22 keeps 5 words, the most frequent: the 3,
   * <eos> 3, cat 2, sat 2, . 2 (ties: the first seen) */
  cfg.tok_vocab = 22;
  RtTok *t = rt_tok_learn(&cfg, 100, text, strlen(text));
  CHECK(rt_tok_size(t) == 22);
  const char *q = "The mat sat on a dog!\ncog\nzoo\n";
  int32_t *ids;
  int64_t n = rt_tok_encode(t, q, strlen(q), &ids);
  char *s = pieces(t, ids, n);
  CHECK(!strcmp(s, "the|<B>m|<M>a|<E>t|sat|<B>o|<E>n|<B>a|<B>d|<M>o|<E>g|<B>!|$|<B>c|<M>o|<E>g|$|"
                   "<unk>|$")); /* no 'z' in training: zoo is the one unknown word */
  if (strcmp(s, "the|<B>m|<M>a|<E>t|sat|<B>o|<E>n|<B>a|<B>d|<M>o|<E>g|<B>!|$|<B>c|<M>o|<E>g|$|"
                "<unk>|$"))
    fprintf(stderr, "spelled: %s\n", s);
  int64_t unk = 0;
  for (int64_t i = 0; i < n; i++)
    unk += rt_tok_unknown(t, ids[i]);
  CHECK(unk == 1);
  /* decoding joins the pieces back into words */
  char *back = rt_tok_decode(t, ids, n);
  CHECK(!strcmp(back, "the mat sat on a dog !\ncog\n<unk>\n"));
  mc_free(back);
  mc_free(s);
  mc_free(ids);
  /* decode(encode(text)) is the text (lower-cased, punctuation split) */
  const char *r = "a dog sat on the cat .\nmoon soon\n";
  n = rt_tok_encode(t, r, strlen(r), &ids);
  back = rt_tok_decode(t, ids, n);
  CHECK(!strcmp(back, r));
  mc_free(back);
  mc_free(ids);
  char *d = rt_tok_describe(t);
  CHECK(!strcmp(d, "words(lower=true, split_punct=true, vocab=22, spell=chars)"));
  mc_free(d);
  rt_tok_free(t);
  /* the line end stays a word when the vocabulary has room for one word only */
  cfg.tok_vocab = 18;
  t = rt_tok_learn(&cfg, 100, text, strlen(text));
  CHECK(rt_tok_size(t) == 18 && rt_tok_eos(t) == 1);
  n = rt_tok_encode(t, "the\n", 4, &ids);
  s = pieces(t, ids, n);
  CHECK(!strcmp(s, "<B>t|<M>h|<E>e|$"));
  mc_free(s);
  mc_free(ids);
  rt_tok_free(t);
  /* no room for the pieces: a clear error */
  expect_death(die_spell_vocab, (void *)text, "leaving none for words and the line end");
}

/* Separate valid and test files; the pass's last partial batch of an evaluation split. */
static void test_split_files(void) {
  char tr[256], va[256], te[256];
  snprintf(tr, sizeof tr, "%s/train.txt", tmpdir);
  snprintf(va, sizeof va, "%s/valid.txt", tmpdir);
  snprintf(te, sizeof te, "%s/test.txt", tmpdir);
  write_file(tr, "a b c\nb c d\n", 12);
  write_file(va, "a b\nz\n", 6);
  write_file(te, "c d a b c\n", 10);
  Config cfg = config(DATA_TEXT, tr);
  cfg.data_valid_path = va;
  cfg.data_test_path = te;
  Corpus *c = rt_corpus_load(&cfg, 100, NULL);
  CHECK(c->ntok[SPLIT_TRAIN] == 8 && c->ntok[SPLIT_VALID] == 5 && c->ntok[SPLIT_TEST] == 6);
  CHECK(c->unk[SPLIT_VALID] == 1 && c->unk[SPLIT_TEST] == 0);
  CHECK(!strcmp(c->split_path[SPLIT_TEST], te));
  /* the test stream: <eos> (prime) c d a b c <eos>: 2 streams of 3, T = 1: a pass of 2
   * full batches, no tail; T = 2: 1 full batch and a tail of 0; with B = 1, T = 4: one
   * batch and a tail of 2 */
  Batcher b;
  rt_batcher_init(&b, c, SPLIT_TEST, 1, 4);
  CHECK(b.slice == 7 && b.steps_per_pass == 1 && b.tail == 2);
  int32_t ids[4], tg[4];
  int64_t n;
  const int32_t *st = rt_corpus_stream(c, SPLIT_TEST, &n);
  CHECK(n == 7 && st[0] == rt_tok_eos(c->tk));
  rt_batcher_next(&b, ids, tg);
  CHECK(ids[0] == st[0] && tg[0] == st[1] && tg[3] == st[4]);
  rt_batcher_tail(&b, ids, tg);
  CHECK(ids[0] == st[4] && ids[1] == st[5] && tg[0] == st[5] && tg[1] == st[6]);
  CHECK(ids[2] == st[6] && ids[3] == st[6] && tg[2] == 0 && tg[3] == 0); /* padding */
  rt_batcher_free(&b);
  rt_corpus_free(c);
  /* valid only: test is the valid file */
  cfg.data_test_path = NULL;
  c = rt_corpus_load(&cfg, 100, NULL);
  CHECK(c->ntok[SPLIT_TEST] == 5 && !strcmp(c->split_path[SPLIT_TEST], va));
  rt_corpus_free(c);
}

/* Hostile inputs: non-regular data paths refused at once (a FIFO would block an
 * open, /dev/zero never ends), checkpoint step counters checked, seeking bounded and
 * lazy (positioning past everything a run draws costs nothing), a huge synthetic
 * corpus of two tokens analysed in a moment (exactly). */
static void die_seek(void *arg) {
  Batcher *b = arg;
  rt_batcher_seek(b, (int64_t)1 << 40);
}
static void die_blas(void *arg) {
  Node n = {.layer = "h1", .loc = {3, 5, 3, 9}};
  (void)arg;
  rt_blas_int((int64_t)1 << 31, &n);
}
static void die_step(void *arg) {
  rt_parse_step("c.safetensors", "optim.step", arg);
}

static void test_hostile(void) {
  char fifo[256];
  snprintf(fifo, sizeof fifo, "%s/fifo.txt", tmpdir);
  CHECK(mkfifo(fifo, 0600) == 0);
  Config cf = config(DATA_TEXT, fifo);
  expect_death(die_load, &cf, "it is not a regular file (a FIFO)");
  cf.data_path = "/dev/zero";
  expect_death(die_load, &cf, "it is not a regular file (a character device)");
  cf.data_path = tmpdir;
  expect_death(die_load, &cf, "it is a directory");
  size_t n = 0;
  CHECK(mc_read_file_max("/proc/self/status", 10, &n) == NULL && errno == EFBIG);
  CHECK(strstr(mc_read_error(), "larger than 10 bytes") != NULL);

  Node nd = {0};
  CHECK(rt_blas_int(2147483647, &nd) == 2147483647);
  expect_death(die_blas, NULL,
               "3:5: layer 'h1': a matrix dimension of 2147483648 exceeds 2147483647");
  CHECK(rt_parse_step("c", "train.step", "0") == 0);
  CHECK(rt_parse_step("c", "train.step", "2147483647") == RT_MAX_STEP);
  expect_death(die_step, "9223372036854775807",
               "optim.step '9223372036854775807' is not an integer from 0 to 2147483647");
  expect_death(die_step, "99999999999999999999", "is not an integer from 0");
  expect_death(die_step, "-1", "is not an integer from 0");
  expect_death(die_step, "12x", "is not an integer from 0");
  expect_death(die_step, "", "is not an integer from 0");

  Config cs = config(DATA_SYNTHETIC, NULL);
  Corpus *c = rt_corpus_load(&cs, 64, NULL);
  Batcher b, ref;
  rt_batcher_init(&b, c, SPLIT_TRAIN, 2, 3);
  rt_batcher_init(&ref, c, SPLIT_TRAIN, 2, 3);
  double t0 = mc_now();
  rt_batcher_seek(&b, RT_MAX_STEP); /* a resume past the end: nothing is generated */
  CHECK(mc_now() - t0 < 5.0); /* generating 2^31 batches would take hours */
  expect_death(die_seek, &b, "steps go from 0 to 2147483647");
  int32_t i1[6], t1[6], i2[6], t2[6];
  rt_batcher_seek(&b, 5); /* backwards, then forwards: the same batch as drawn in order */
  for (int k = 0; k < 6; k++)
    rt_batcher_next(&ref, i2, t2);
  rt_batcher_next(&b, i1, t1);
  CHECK(!memcmp(i1, i2, sizeof i1) && !memcmp(t1, t2, sizeof t1));
  rt_batcher_free(&b);
  rt_batcher_free(&ref);
  rt_corpus_free(c);

  t0 = mc_now();
  Synth *sy = rt_synth_new(524288, 2, 3); /* 2^20 states of sticky two-token chains */
  rt_synth_analyze(sy);
  double ta = mc_now() - t0, tot = 0;
  for (int64_t i = 0; i < (int64_t)524288 * 2; i++)
    tot += sy->stat[i];
  printf("synthetic K=524288 V=2: floor %.6f, analysis %.2fs\n", sy->floor_nats, ta);
  CHECK_CLOSE(tot, 1.0, 1e-9, 0);
  CHECK(sy->residual == 0 && sy->floor_nats > 0 && sy->floor_nats < log(2.0));
  CHECK(ta < 30); /* was over ten minutes (power iteration) */
  rt_synth_free(sy);
}

/* tiny-shakespeare with words(lower, split_punct, vocab=4000, spell=chars) learned from the
 * train split: under 2% of the test split's tokens unknown, and every word of the file
 * decoded back as the same tokenizer without a vocabulary limit (learned from the whole
 * file: nothing unknown) gives it, or <unk>. Returns 0 without the file. */
/* The end of the word at p (a space, a newline or the end): by hand, as strcspn over the
 * rest of a 1 MB text per word is quadratic under ASan's strict_string_checks. */
static char *word_end(char *p) {
  while (*p && *p != ' ' && *p != '\n')
    p++;
  return p;
}

static int test_shakespeare(const char *dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tinyshakespeare.txt", dir);
  size_t len;
  char *text = mc_read_file(path, &len);
  if (!text) {
    printf("SKIP: %s not found (the shared data folder)\n", path);
    return 0;
  }
  Config cfg = config(DATA_TEXT, path);
  cfg.tok_lower = cfg.tok_split_punct = true;
  RtTok *all = rt_tok_learn(&cfg, 1 << 30, text, len);
  cfg.tok_spell = true;
  cfg.tok_vocab = 4000;
  Corpus *c = rt_corpus_load(&cfg, 12000, NULL);
  double unk = (double)c->unk[SPLIT_TEST] / (double)c->ntok[SPLIT_TEST];
  CHECK(rt_tok_size(c->tk) <= 4000 && unk < 0.02);
  int32_t *ids, *ref;
  int64_t n = rt_tok_encode(c->tk, text, len, &ids), nref = rt_tok_encode(all, text, len, &ref);
  int64_t nunk = 0, spelled = 0;
  for (int64_t i = 0; i < n; i++) {
    nunk += rt_tok_unknown(c->tk, ids[i]);
    spelled += rt_tok_part(c->tk, ids[i]) == 'B';
  }
  for (int64_t i = 0; i < nref; i++)
    CHECK(!rt_tok_unknown(all, ref[i]));
  char *got = rt_tok_decode(c->tk, ids, n), *want = rt_tok_decode(all, ref, nref);
  /* word by word: the same words (or <unk>) and the same separators */
  int64_t words = 0, differ = 0, ref_words = 0;
  for (int64_t i = 0; i < nref; i++)
    ref_words += ref[i] != rt_tok_eos(all);
  for (char *g = got, *w = want, *ge, *we; *g && *w; g = ge + (*ge != 0), w = we + (*we != 0)) {
    ge = word_end(g);
    we = word_end(w);
    bool same = ge - g == we - w && !memcmp(g, w, (size_t)(ge - g));
    differ += *ge != *we || (!same && !(ge - g == 5 && !memcmp(g, "<unk>", 5)));
    words += we > w;
  }
  CHECK(differ == 0 && words == ref_words && strlen(got) == strlen(want) + 4 * nunk);
  printf("tiny-shakespeare, words(lower, split_punct, vocab=4000, spell=chars): %d ids, test "
         "split %.3f%% unknown; the file: %lld tokens, %lld words spelled, %lld unknown, %lld "
         "words decoded (%lld differ)\n",
         rt_tok_size(c->tk), 100 * unk, (long long)n, (long long)spelled, (long long)nunk,
         (long long)words, (long long)differ);
  mc_free(got);
  mc_free(want);
  mc_free(ids);
  mc_free(ref);
  rt_tok_free(all);
  rt_corpus_free(c);
  mc_free(text);
  return 1;
}

/* test_data: the unit checks; test_data --corpus DIR: tiny-shakespeare (exit 77 without
 * it). */
int main(int argc, char **argv) {
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  if (argc == 3 && !strcmp(argv[1], "--corpus")) {
    int ok = test_shakespeare(argv[2]);
    rmdir(tmpdir);
    if (!ok) return 77;
    TEST_DONE();
  }
  test_synth_deterministic();
  check_rate(4, 64, 5, 400000);
  check_rate(16, 1000, 9, 400000);
  check_rate(3, 16, 7, 400000); /* vocab <= 32: solved exactly per topic */
  check_rate(1, 12, 2, 200000);
  test_synth_batches();
  test_text();
  test_bin();
  test_sharded_batches();
  test_errors();
  test_tokenizers();
  test_spelling();
  test_split_files();
  test_hostile();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  TEST_DONE();
}
