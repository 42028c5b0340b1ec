/* text.h: text for translation and language models.
 *
 *   bpe.c      : byte-pair encoding (subword vocabulary learned from text, encode, decode,
 *                serialised for checkpoints), shared by language and translation models
 *   parallel.c : parallel corpora (source<TAB>target lines), encoded with one shared BPE
 *                vocabulary, batched by length (buckets, a token budget per batch)
 *   bleu.c     : corpus BLEU-4 as Moses' multi-bleu.perl computes it, and the simple
 *                tokenizer it is run on
 *
 * Prefix: rt_. docs/training.md describes the formats and the algorithms. */
#ifndef MOEC_RUNTIME_TEXT_H
#define MOEC_RUNTIME_TEXT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---------------------------------------------------------------- bpe.c */

/* Ids: 0 <pad>, 1 <s>, 2 </s>, 3..258 the bytes 0..255, then one per merge. */
enum { RT_BPE_PAD = 0, RT_BPE_BOS = 1, RT_BPE_EOS = 2, RT_BPE_BYTE0 = 3, RT_BPE_NBASE = 259 };

typedef struct RtBpe RtBpe;

/* Learns merges from lines of text until the vocabulary has `vocab` ids (at least
 * RT_BPE_NBASE) or no adjacent pair occurs twice. Deterministic. */
RtBpe *rt_bpe_learn(const char *const *lines, int64_t nlines, int32_t vocab);
void rt_bpe_free(RtBpe *b);
/* Ids in use: RT_BPE_NBASE + the number of merges. */
int32_t rt_bpe_vocab(const RtBpe *b);
/* One line -> ids (no <s>, </s>) in *out (mc_free it); returns their number. Caches per
 * pre-token, so a RtBpe is not shared between threads that encode. */
int64_t rt_bpe_encode(RtBpe *b, const char *text, int32_t **out);
/* Ids -> text (mc_free it): the tokens' bytes; <pad>, <s>, </s> and ids outside the
 * vocabulary are skipped. */
char *rt_bpe_decode(const RtBpe *b, const int32_t *ids, int64_t n);
/* The bytes of one id (a special's name for 0..2), not NUL-safe: use *len. */
const char *rt_bpe_token(const RtBpe *b, int32_t id, int *len);
/* The merges as pairs [n, 2] (merge i makes id RT_BPE_NBASE + i): what a checkpoint
 * stores (an i32 tensor), and back; NULL with a message in err for a bad list. */
const int32_t *rt_bpe_merges(const RtBpe *b, int32_t *n);
RtBpe *rt_bpe_from_merges(const int32_t *pairs, int32_t n, char *err, size_t errn);
/* The same as text: "moec-bpe 1 N" and one "left right" line per merge. */
char *rt_bpe_to_string(const RtBpe *b);
RtBpe *rt_bpe_from_string(const char *text, char *err, size_t errn);

/* ---------------------------------------------------------------- parallel.c */

/* A parallel file's pairs, as text (pointers into the file's bytes). */
typedef struct RtParText {
  const char *path;
  char *text; /* the file, cut into strings */
  char **src, **tgt;
  int64_t *line; /* each pair's line number */
  int64_t n, nblank;
} RtParText;

/* Reads `source<TAB>target` lines; false with "file:line: ..." in err on a line without a
 * tab or with two, a NUL byte, or invalid UTF-8 (also an unreadable file). */
bool rt_par_read(const char *path, RtParText *t, char *err, size_t errn);
void rt_par_text_free(RtParText *t);
/* The shared vocabulary: BPE learned from both sides of the pairs. */
RtBpe *rt_par_learn_bpe(const RtParText *t, int32_t vocab);

/* Encoded pairs: source ids + </s>, target ids + </s> (CSR). Pairs with a side of more
 * than max_len ids (with </s>), or an empty side, are left out and counted. */
typedef struct RtParData {
  const char *path;
  int64_t n;                  /* pairs kept */
  int32_t *src, *tgt;         /* ids */
  int64_t *src_off, *tgt_off; /* [n+1] */
  int64_t *line;              /* each kept pair's line */
  int64_t src_tokens, tgt_tokens;
  int max_src, max_tgt, max_len;
  int64_t nlong, nempty, nblank; /* left out (long, empty), blank lines */
  int64_t *left_out, nleft;      /* the lines left out */
} RtParData;

RtParData *rt_par_encode(const RtParText *t, RtBpe *bpe, int max_len);
void rt_par_free(RtParData *d);
/* One line of counts, and one naming what was left out (if anything). */
void rt_par_report(const RtParData *d, FILE *out);

/* A batch: B pairs padded to S source and T target positions (the graph's B, S, T). */
typedef struct RtParBatch {
  int32_t B, S, T;
  int64_t first; /* its pairs: pairs[first .. first + B) */
} RtParBatch;

typedef struct RtParBatches {
  RtParBatch *b;
  int64_t n;
  int64_t *pairs; /* pair indices, batch after batch */
  int64_t tokens; /* sum of B * max(S, T): positions including padding */
  int32_t max_B;
} RtParBatches;

/* Buckets by lengths rounded up to `width`; B = floor(budget / max(S, T)) per batch (at
 * least 1). shuffle: the order inside buckets and of the batches drawn from (seed,
 * epoch); else the file's order, bucket after bucket. */
RtParBatches *rt_par_batches(const RtParData *d, int64_t budget, int width, uint64_t seed,
                             int64_t epoch, bool shuffle);
void rt_par_batches_free(RtParBatches *bs);
/* Batch i's inputs: src[B,S] (ids, </s>, pads), tgt_in[B,T] (<s> y_1 .. y_n, pads),
 * tgt_out[B,T] (y_1 .. y_n </s>, pads); pads are RT_BPE_PAD = 0. */
void rt_par_fill(const RtParData *d, const RtParBatches *bs, int64_t i, int32_t *src,
                 int32_t *tgt_in, int32_t *tgt_out);

/* ---------------------------------------------------------------- bleu.c */

/* Sufficient statistics of corpus BLEU-4: clipped n-gram matches and hypothesis n-gram
 * counts for n = 1..4, and the hypothesis and reference lengths (one reference per
 * sentence). Sentences add up; the score is computed once over the corpus. */
typedef struct RtBleuStats {
  int64_t matches[4], total[4];
  int64_t hyp_len, ref_len;
} RtBleuStats;

typedef struct RtBleu {
  double bleu;         /* 0..100 */
  double precision[4]; /* p_n = matches / total, 0 when total = 0 */
  double bp;           /* brevity penalty: exp(1 - ref/hyp) when hyp < ref, else 1 */
  double ratio;        /* hyp_len / ref_len */
  int64_t hyp_len, ref_len;
} RtBleu;

/* One sentence pair of tokens (any ids: words interned, or subword ids). */
void rt_bleu_add_ids(RtBleuStats *s, const int32_t *hyp, int64_t nhyp, const int32_t *ref,
                     int64_t nref);
/* One sentence pair of tokenized text: tokens are separated by whitespace. */
void rt_bleu_add(RtBleuStats *s, const char *hyp, const char *ref);
RtBleu rt_bleu_score(const RtBleuStats *s);
/* multi-bleu.perl's line: "BLEU = 53.73, 83.3/60.0/50.0/33.3 (BP=1.000, ratio=1.000,
 * hyp_len=6, ref_len=6)". */
void rt_bleu_format(const RtBleu *b, char *buf, size_t n);
/* Tokenizes text for BLEU into a new string (mc_free): whitespace runs become one
 * space, and each ASCII punctuation character is a token of its own, except '.' and ','
 * between two digits (3.5, 1,000) and an apostrophe between two letters (don't,
 * l'homme). Bytes >= 0x80 (UTF-8) are word characters. */
char *rt_bleu_tokenize(const char *text);

#endif
