/* data.c: the corpora a model trains on, and truncated-BPTT batching.
 *
 *   synthetic(topics=K, vocab=V, seed=S): K topics, each its own sparse Markov
 *     chain over V tokens; a stream switches topic with probability 1/500 per
 *     token. Generated from counter-based draws, so any stream at any position
 *     is a pure function of (seed, stream, position). The entropy rate given the
 *     hidden topic is computed exactly from the stationary distribution.
 *   "file.txt": word-level, whitespace-separated, one <eos> per line; lines split
 *     90/5/5 into train/valid/test; vocabulary from the train split.
 *   "file.bin": little-endian uint16 ids; tokens split 90/5/5.
 *
 * docs/training.md has the exact definitions. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

/* ---------------------------------------------------------------- synthetic corpus */

#define SYNTH_MIN_SUCC 4
#define SYNTH_MAX_SUCC 8
#define SYNTH_EVAL_TOKENS 32768 /* tokens per evaluation split (valid, test) */

static double u01(uint64_t key, uint64_t ctr) {
  return mc_rng_uniform(key, ctr);
}

Synth *rt_synth_new(int topics, int vocab, uint64_t seed) {
  if (topics < 1) mc_die("synthetic data: topics must be at least 1 (got %d)", topics);
  if (vocab < 2 || vocab > 65536)
    mc_die("synthetic data: vocab must be between 2 and 65536 (got %d)", vocab);
  if ((int64_t)topics * vocab > RT_SYNTH_MAX_STATES)
    mc_die("synthetic data: topics x vocab = %lld is too large (at most %d states)",
           (long long)topics * vocab, RT_SYNTH_MAX_STATES);
  Synth *s = mc_calloc(1, sizeof(Synth));
  s->K = topics;
  s->V = vocab;
  s->seed = seed;
  s->s = topics > 1 ? RT_SYNTH_SWITCH : 0.0;
  int64_t states = (int64_t)topics * vocab;
  int maxd = MC_MIN(SYNTH_MAX_SUCC, vocab);
  s->off = mc_malloc((size_t)(states + 1) * sizeof(int32_t));
  s->succ = mc_malloc((size_t)states * (size_t)maxd * sizeof(int32_t));
  s->prob = mc_malloc((size_t)states * (size_t)maxd * sizeof(double));
  int32_t *perm = mc_malloc((size_t)vocab * sizeof(int32_t));
  int64_t k = 0;
  for (int z = 0; z < topics; z++) {
    /* a random cycle through all tokens makes every topic's chain irreducible */
    uint64_t pkey = mc_rng_key(seed, 0x7065726dull + (uint64_t)z, 0);
    for (int i = 0; i < vocab; i++)
      perm[i] = i;
    for (int i = vocab - 1; i > 0; i--) {
      int j = (int)(u01(pkey, (uint64_t)i) * (i + 1));
      int t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
    }
    int32_t *cyc = mc_malloc((size_t)vocab * sizeof(int32_t));
    for (int i = 0; i < vocab; i++)
      cyc[perm[i]] = perm[(i + 1) % vocab];
    for (int x = 0; x < vocab; x++) {
      int64_t st = (int64_t)z * vocab + x;
      uint64_t key = mc_rng_key(seed, 0x73756363ull + (uint64_t)z, (uint64_t)x);
      uint64_t ctr = 0;
      int lo = MC_MIN(SYNTH_MIN_SUCC, vocab);
      int d = lo + (int)(u01(key, ctr++) * (maxd - lo + 1));
      d = MC_MIN(d, maxd);
      s->off[st] = (int32_t)k;
      s->succ[k] = cyc[x];
      int nd = 1;
      while (nd < d) {
        int y = (int)(u01(key, ctr++) * vocab);
        bool dup = false;
        for (int i = 0; i < nd; i++)
          dup |= s->succ[k + i] == y;
        if (!dup) s->succ[k + nd++] = y;
      }
      double sum = 0;
      for (int i = 0; i < d; i++)
        sum += s->prob[k + i] = -log(u01(key, 1000 + (uint64_t)i));
      for (int i = 0; i < d; i++)
        s->prob[k + i] /= sum;
      k += d;
    }
    mc_free(cyc);
  }
  s->off[states] = (int32_t)k;
  mc_free(perm);
  return s;
}

void rt_synth_free(Synth *s) {
  if (!s) return;
  mc_free(s->off);
  mc_free(s->succ);
  mc_free(s->prob);
  mc_free(s->stat);
  mc_free(s);
}

double rt_synth_prob(const Synth *s, int z, int x, int y) {
  int64_t st = (int64_t)z * s->V + x;
  for (int32_t i = s->off[st]; i < s->off[st + 1]; i++)
    if (s->succ[i] == y) return s->prob[i];
  return 0.0;
}

/* The switch process: topic z stays with 1-s, moves to each other topic with
 * s/(K-1). As weights on (the current topic, every topic): a = 1-s-c, c = s/(K-1). */
static void switch_weights(const Synth *s, double *a, double *c) {
  *c = s->K > 1 ? s->s / (s->K - 1) : 0.0;
  *a = 1.0 - s->s - *c;
}

double rt_synth_nll_given_topic(const Synth *s, int z, int x, int next) {
  double a, c;
  switch_weights(s, &a, &c);
  double q = a * rt_synth_prob(s, z, x, next);
  if (c > 0)
    for (int w = 0; w < s->K; w++)
      q += c * rt_synth_prob(s, w, x, next);
  return -log(q);
}

/* Y (nr rows of V) := Y A^-1 for a dense V x V matrix A (row-major): Gaussian
 * elimination with partial pivoting on A^T. T: V*V scratch, R: V*nr scratch. */
static void solve_left(int V, const double *A, double *Y, int nr, double *T, double *R) {
  for (int i = 0; i < V; i++)
    for (int j = 0; j < V; j++)
      T[i * V + j] = A[j * V + i];
  for (int i = 0; i < V; i++)
    for (int r = 0; r < nr; r++)
      R[i * nr + r] = Y[r * V + i];
  for (int k = 0; k < V; k++) {
    int p = k;
    for (int i = k + 1; i < V; i++)
      if (fabs(T[i * V + k]) > fabs(T[p * V + k])) p = i;
    if (p != k) {
      for (int j = 0; j < V; j++) {
        double t = T[k * V + j];
        T[k * V + j] = T[p * V + j];
        T[p * V + j] = t;
      }
      for (int r = 0; r < nr; r++) {
        double t = R[k * nr + r];
        R[k * nr + r] = R[p * nr + r];
        R[p * nr + r] = t;
      }
    }
    MOEC_ASSERT(T[k * V + k] != 0); /* irreducible chains: the systems are regular */
    for (int i = k + 1; i < V; i++) {
      double f = T[i * V + k] / T[k * V + k];
      if (f == 0) continue;
      for (int j = k; j < V; j++)
        T[i * V + j] -= f * T[k * V + j];
      for (int r = 0; r < nr; r++)
        R[i * nr + r] -= f * R[k * nr + r];
    }
  }
  for (int k = V - 1; k >= 0; k--)
    for (int r = 0; r < nr; r++) {
      double v = R[k * nr + r];
      for (int j = k + 1; j < V; j++)
        v -= T[k * V + j] * R[j * nr + r];
      R[k * nr + r] = v / T[k * V + k];
    }
  for (int i = 0; i < V; i++)
    for (int r = 0; r < nr; r++)
      Y[r * V + i] = R[i * nr + r];
}

/* Topic z's transition matrix, dense, into P[V*V]. */
static void dense_topic(const Synth *s, int z, double *P) {
  const int V = s->V;
  memset(P, 0, (size_t)V * (size_t)V * sizeof(double));
  for (int x = 0; x < V; x++) {
    int64_t st = (int64_t)z * V + x;
    for (int32_t i = s->off[st]; i < s->off[st + 1]; i++)
      P[x * V + s->succ[i]] += s->prob[i];
  }
}

/* The stationary distribution m of the irreducible stochastic V x V matrix Q:
 * m (Q - I) = 0 with sum m = 1 (the last column of Q - I replaced by ones). */
static void stationary_dense(int V, const double *Q, double *m, double *A, double *T, double *R) {
  for (int i = 0; i < V; i++)
    for (int j = 0; j < V; j++)
      A[i * V + j] = j == V - 1 ? 1.0 : Q[i * V + j] - (i == j);
  for (int j = 0; j < V; j++)
    m[j] = j == V - 1;
  solve_left(V, A, m, 1, T, R);
}

/* Small vocabularies, exactly: topic z's stationary row satisfies
 * pi_z = (a pi_z + c m) P_z, so pi_z = c m P_z (I - a P_z)^-1, and the token marginal
 * m is the stationary distribution of M = c sum_z P_z (I - a P_z)^-1. Two linear
 * solves per topic: O(topics x vocab^3). */
static void stationary_small(const Synth *s, double a, double c, double *pi) {
  const int K = s->K, V = s->V;
  const size_t VV = (size_t)V * (size_t)V;
  double *P = mc_malloc(VV * sizeof(double)), *A = mc_malloc(VV * sizeof(double));
  double *X = mc_malloc(VV * sizeof(double)), *M = mc_calloc(VV, sizeof(double));
  double *T = mc_malloc(VV * sizeof(double)), *R = mc_malloc(VV * sizeof(double));
  double *m = mc_malloc((size_t)V * sizeof(double)), *y = mc_malloc((size_t)V * sizeof(double));
  if (K == 1) { /* no switching: the one chain's stationary distribution */
    dense_topic(s, 0, P);
    stationary_dense(V, P, pi, A, T, R);
  } else {
    for (int z = 0; z < K; z++) {
      dense_topic(s, z, P);
      for (size_t i = 0; i < VV; i++) {
        A[i] = -a * P[i] + (i % (size_t)(V + 1) == 0);
        X[i] = i % (size_t)(V + 1) == 0; /* I, then I A^-1 */
      }
      solve_left(V, A, X, V, T, R);
      for (int i = 0; i < V; i++) /* M += c P X */
        for (int k = 0; k < V; k++) {
          double p = c * P[i * V + k];
          if (p != 0)
            for (int j = 0; j < V; j++)
              M[i * V + j] += p * X[k * V + j];
        }
    }
    stationary_dense(V, M, m, A, T, R);
    for (int z = 0; z < K; z++) {
      dense_topic(s, z, P);
      for (int j = 0; j < V; j++) { /* y = c m P_z */
        y[j] = 0;
        for (int i = 0; i < V; i++)
          y[j] += c * m[i] * P[i * V + j];
      }
      for (size_t i = 0; i < VV; i++)
        A[i] = -a * P[i] + (i % (size_t)(V + 1) == 0);
      solve_left(V, A, y, 1, T, R);
      memcpy(pi + (int64_t)z * V, y, (size_t)V * sizeof(double));
    }
  }
  mc_free(P);
  mc_free(A);
  mc_free(X);
  mc_free(M);
  mc_free(T);
  mc_free(R);
  mc_free(m);
  mc_free(y);
}

#ifndef SYNTH_EXACT_MAX_V
#define SYNTH_EXACT_MAX_V 32
#endif
/* Power-iteration sweeps are capped so that sweeps x edges stays below this (and
 * at 300 sweeps at least): some seconds on the largest corpus. */
#define SYNTH_SWEEP_WORK ((int64_t)1 << 32)

void rt_synth_analyze(Synth *s) {
  const int K = s->K, V = s->V;
  const int64_t S = (int64_t)K * V;
  double a, c;
  switch_weights(s, &a, &c);
  double *pi = mc_malloc((size_t)S * sizeof(double));
  double *nx = mc_malloc((size_t)S * sizeof(double));
  double *m = mc_malloc((size_t)V * sizeof(double));
  s->residual = 0;
  if (V <= SYNTH_EXACT_MAX_V) {
    stationary_small(s, a, c, pi);
  } else {
    /* Stationary distribution of the joint chain (topic, token), by power iteration
     * on the damped chain 0.1 I + 0.9 P (same fixed point; an eigenvalue near -1, a
     * nearly periodic topic, still decays). The topic marginal is uniform from the
     * start and stays so (the switch process does not look at tokens), so only the
     * within-topic mixing remains. */
    int64_t edges = s->off[S], max_it = MC_MAX(300, SYNTH_SWEEP_WORK / MC_MAX(edges, 1));
    max_it = MC_MIN(max_it, 100000);
    for (int64_t i = 0; i < S; i++)
      pi[i] = 1.0 / (double)S;
    double diff = 0;
    int64_t it = 0;
    for (; it < max_it; it++) {
      for (int x = 0; x < V; x++) {
        m[x] = 0;
        for (int z = 0; z < K; z++)
          m[x] += pi[(int64_t)z * V + x];
      }
      memset(nx, 0, (size_t)S * sizeof(double));
      for (int z = 0; z < K; z++)
        for (int x = 0; x < V; x++) {
          int64_t st = (int64_t)z * V + x;
          double w = a * pi[st] + c * m[x]; /* mass in topic z at token x after switching */
          for (int32_t i = s->off[st]; i < s->off[st + 1]; i++)
            nx[(int64_t)z * V + s->succ[i]] += w * s->prob[i];
        }
      diff = 0;
      for (int64_t i = 0; i < S; i++) {
        double v = 0.1 * pi[i] + 0.9 * nx[i];
        diff += fabs(v - pi[i]);
        pi[i] = v;
      }
      if (diff < 1e-14) break;
    }
    s->residual = diff;
    if (it == max_it)
      fprintf(stderr,
              "moec: note: synthetic(topics=%d, vocab=%d): the entropy floor is approximate: "
              "its analysis stopped after %lld sweeps, each still changing the stationary "
              "distribution by %.1e\n",
              K, V, (long long)max_it, diff);
  }
  /* floor = sum_{z,x} pi(z,x) H(q_{z,x}), q_{z,x}(y) = a P_z(y|x) + c sum_w P_w(y|x).
   * For each x: S_x(y) = sum_w P_w(y|x) in a dense scratch row, A_x = the entropy
   * terms of c S_x alone, then each topic corrects the terms on its own successors. */
  double *sx = mc_calloc((size_t)V, sizeof(double));
  double H = 0;
  for (int x = 0; x < V; x++) {
    for (int w = 0; w < K; w++) {
      int64_t st = (int64_t)w * V + x;
      for (int32_t i = s->off[st]; i < s->off[st + 1]; i++)
        sx[s->succ[i]] += s->prob[i];
    }
    double A = 0;
    if (c > 0)
      for (int w = 0; w < K; w++) {
        int64_t st = (int64_t)w * V + x;
        for (int32_t i = s->off[st]; i < s->off[st + 1]; i++) {
          double *v = &sx[s->succ[i]];
          if (*v > 0) { /* first time this successor is seen: count it, mark it */
            A -= c * *v * log(c * *v);
            *v = -*v;
          }
        }
      }
    for (int w = 0; w < K; w++) { /* unmark */
      int64_t st = (int64_t)w * V + x;
      for (int32_t i = s->off[st]; i < s->off[st + 1]; i++)
        sx[s->succ[i]] = fabs(sx[s->succ[i]]);
    }
    for (int z = 0; z < K; z++) {
      int64_t st = (int64_t)z * V + x;
      double h = A;
      for (int32_t i = s->off[st]; i < s->off[st + 1]; i++) {
        double cs = c * sx[s->succ[i]], q = a * s->prob[i] + cs;
        if (cs > 0) h += cs * log(cs);
        if (q > 0) h -= q * log(q);
      }
      H += pi[st] * h;
    }
    for (int w = 0; w < K; w++) {
      int64_t st = (int64_t)w * V + x;
      for (int32_t i = s->off[st]; i < s->off[st + 1]; i++)
        sx[s->succ[i]] = 0;
    }
  }
  double U = 0;
  for (int x = 0; x < V; x++) {
    double mx = 0;
    for (int z = 0; z < K; z++)
      mx += pi[(int64_t)z * V + x];
    if (mx > 0) U -= mx * log(mx);
  }
  mc_free(sx);
  mc_free(m);
  mc_free(nx);
  mc_free(s->stat);
  s->stat = pi;
  s->floor_nats = H;
  s->unigram_nats = U;
}

void rt_synth_stream_init(SynthStream *st, const Synth *syn, uint64_t stream_id) {
  st->syn = syn;
  st->key = mc_rng_key(syn->seed, stream_id, 0x44415441ull);
  st->n = 0;
  st->z = (int)(u01(st->key, UINT64_MAX) * syn->K);
  st->x = (int)(u01(st->key, UINT64_MAX - 1) * syn->V);
  st->z = MC_MIN(st->z, syn->K - 1);
  st->x = MC_MIN(st->x, syn->V - 1);
}

int rt_synth_next(SynthStream *st) {
  const Synth *s = st->syn;
  uint64_t c = 3 * (uint64_t)st->n;
  if (s->K > 1 && u01(st->key, c) < s->s) {
    int r = MC_MIN((int)(u01(st->key, c + 1) * (s->K - 1)), s->K - 2);
    st->z = r < st->z ? r : r + 1;
  }
  int64_t so = (int64_t)st->z * s->V + st->x;
  double u = u01(st->key, c + 2), acc = 0;
  int32_t i = s->off[so], end = s->off[so + 1];
  for (; i < end - 1; i++) {
    acc += s->prob[i];
    if (u < acc) break;
  }
  st->x = s->succ[i];
  st->n++;
  return st->x;
}

/* ---------------------------------------------------------------- text corpus */

static char *read_data_file(const char *path, size_t *len) {
  char *text = mc_read_file(path, len);
  if (!text) mc_die("cannot read data file '%s': %s", path, mc_read_error());
  if (*len == 0) mc_die("data file '%s' is empty", path);
  return text;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

/* Byte offsets where the train / valid / test lines start (90/5/5 by lines). */
static void split_lines(const char *path, const char *text, size_t len, size_t cut[4]) {
  int64_t lines = 0;
  for (size_t i = 0; i < len; i++)
    lines += text[i] == '\n';
  if (len && text[len - 1] != '\n') lines++;
  if (lines < 20)
    mc_die("data file '%s' has %lld lines: at least 20 are needed to split it 90/5/5 into "
           "train, valid and test (or give valid= and test= files)",
           path, (long long)lines);
  int64_t l1 = lines * 90 / 100, l2 = l1 + lines * 5 / 100, line = 0;
  cut[0] = 0;
  cut[1] = cut[2] = cut[3] = len;
  for (size_t i = 0; i < len; i++)
    if (text[i] == '\n') {
      line++;
      if (line == l1) cut[1] = i + 1;
      if (line == l2) cut[2] = i + 1;
    }
}

/* Split s's ids, with the priming token `prime` (>= 0) in front of them. */
static void set_split(Corpus *c, int s, int32_t *ids, int64_t n, int32_t prime) {
  c->prime[s] = prime >= 0;
  if (prime >= 0) {
    int32_t *p = mc_malloc((size_t)(n + 1) * sizeof(int32_t));
    p[0] = prime;
    memcpy(p + 1, ids, (size_t)n * sizeof(int32_t));
    mc_free(ids);
    ids = p + 1;
  }
  c->tok[s] = ids;
  c->ntok[s] = n;
}

/* A text split: its ids (the line end before it primes an evaluation split), unknown
 * tokens and words. */
static void text_split(Corpus *c, int s, const char *text, size_t len) {
  int32_t *ids;
  int64_t n = rt_tok_encode(c->tk, text, len, &ids);
  for (int64_t i = 0; i < n; i++)
    c->unk[s] += rt_tok_unknown(c->tk, ids[i]);
  c->words[s] = rt_tok_count_words(text, len);
  set_split(c, s, ids, n, s == SPLIT_TRAIN ? -1 : rt_tok_eos(c->tk));
}

/* texts: the train, valid and test files (valid and test NULL: the train file cut 90/5/5;
 * whole: one file, the test split only) */
static void load_text(Corpus *c, const Config *cfg, RtTok *tk, bool whole) {
  const char *files[3] = {c->split_path[0], c->split_path[1], c->split_path[2]};
  size_t len[3] = {0}, cut[4] = {0};
  char *text[3] = {NULL, NULL, NULL};
  text[0] = read_data_file(files[0], &len[0]);
  bool cut_one = !whole && !files[1];
  if (cut_one) split_lines(files[0], text[0], len[0], cut);
  if (!whole && files[1]) {
    text[1] = read_data_file(files[1], &len[1]);
    text[2] = files[2] ? read_data_file(files[2], &len[2]) : NULL;
  }
  if (tk) {
    if (!whole && rt_tok_size(tk) > c->model_vocab)
      mc_die("the vocabulary (%d ids) is larger than the model's (%d ids)", rt_tok_size(tk),
             c->model_vocab);
    c->tk = tk;
  } else {
    c->tk = rt_tok_learn(cfg, c->model_vocab, text[0], cut_one ? cut[1] : len[0]);
  }
  if (whole) {
    text_split(c, SPLIT_TEST, text[0], len[0]);
  } else if (cut_one) {
    for (int s = 0; s < 3; s++)
      text_split(c, s, text[0] + cut[s], cut[s + 1] - cut[s]);
  } else {
    text_split(c, SPLIT_TRAIN, text[0], len[0]);
    text_split(c, SPLIT_VALID, text[1], len[1]);
    if (text[2])
      text_split(c, SPLIT_TEST, text[2], len[2]);
    else
      text_split(c, SPLIT_TEST, text[1], len[1]); /* no test file: test on valid */
  }
  for (int s = 0; s < 3; s++)
    mc_free(text[s]);
}

/* A .bin file's uint16 ids, checked against the model's vocabulary. */
static int32_t *read_bin(const Corpus *c, const char *path, int64_t *n) {
  size_t len = 0;
  unsigned char *b = (unsigned char *)read_data_file(path, &len);
  if (len % 2)
    mc_die("data file '%s' has an odd number of bytes (%zu): a .bin file holds little-endian "
           "uint16 token ids",
           path, len);
  *n = (int64_t)(len / 2);
  int32_t *ids = mc_malloc((size_t)*n * sizeof(int32_t));
  for (int64_t i = 0; i < *n; i++) {
    ids[i] = b[2 * i] | (b[2 * i + 1] << 8);
    if (ids[i] >= c->model_vocab)
      mc_die("data file '%s': token id %d at position %lld is outside the model's vocabulary "
             "(%d ids)",
             path, ids[i], (long long)i, c->model_vocab);
  }
  mc_free(b);
  return ids;
}

static void load_bin(Corpus *c, bool whole) {
  int64_t n;
  int32_t *ids = read_bin(c, c->split_path[0], &n);
  if (whole) {
    set_split(c, SPLIT_TEST, ids, n, -1);
    return;
  }
  if (c->split_path[1]) { /* valid= and test= files, nanoGPT's train.bin and val.bin */
    set_split(c, SPLIT_TRAIN, ids, n, -1);
    for (int s = SPLIT_VALID; s <= SPLIT_TEST; s++) {
      const char *f = c->split_path[s] ? c->split_path[s] : c->split_path[SPLIT_VALID];
      int32_t *v = read_bin(c, f, &n);
      set_split(c, s, v, n, -1);
    }
    return;
  }
  int64_t n1 = n * 90 / 100, n2 = n1 + n * 5 / 100;
  int64_t lo[3] = {0, n1, n2}, hi[3] = {n1, n2, n};
  for (int s = 0; s < 3; s++) {
    int64_t k = hi[s] - lo[s];
    int32_t *v = mc_malloc((size_t)MC_MAX(k, 1) * sizeof(int32_t));
    memcpy(v, ids + lo[s], (size_t)k * sizeof(int32_t));
    /* an evaluation split is primed with the file's token before it */
    set_split(c, s, v, k, s > 0 && lo[s] > 0 ? ids[lo[s] - 1] : -1);
  }
  mc_free(ids);
}

Corpus *rt_corpus_load(const Config *cfg, int model_vocab, RtTok *tk) {
  Corpus *c = mc_calloc(1, sizeof(Corpus));
  c->kind = cfg->data;
  c->path = cfg->data_path;
  c->model_vocab = model_vocab;
  switch (cfg->data) {
  case DATA_SYNTHETIC:
    rt_tok_free(tk);
    if (cfg->vocab > model_vocab)
      mc_die("synthetic(vocab=%d) has more tokens than the model's vocabulary (%d ids)", cfg->vocab,
             model_vocab);
    c->syn = rt_synth_new(cfg->topics, cfg->vocab, cfg->data_seed);
    rt_synth_analyze(c->syn);
    break;
  case DATA_TEXT:
  case DATA_BIN:
    if (!cfg->data_path) mc_die("the train block names no data file");
    /* what load_text / load_bin read: split_path[1] NULL: the training file cut 90/5/5 */
    c->split_path[0] = cfg->data_path;
    c->split_path[1] = cfg->data_valid_path;
    c->split_path[2] = cfg->data_test_path;
    if (cfg->data == DATA_BIN) {
      rt_tok_free(tk);
      load_bin(c, false);
    } else {
      load_text(c, cfg, tk, false);
    }
    /* each split's file, for messages */
    if (!cfg->data_valid_path) c->split_path[1] = c->split_path[2] = cfg->data_path;
    if (!c->split_path[2]) c->split_path[2] = cfg->data_valid_path;
    break;
  case DATA_PARALLEL: /* runtime/parallel.c reads it; the LM batcher cannot */
    rt_tok_free(tk);
    mc_die("parallel data (%s) feeds translation models, which the training loop does not run "
           "yet",
           cfg->data_path ? cfg->data_path : "?");
  }
  return c;
}

Corpus *rt_corpus_load_ckpt(const Config *cfg, int model_vocab, const struct StFile *ck) {
  RtTok *tk = cfg->data == DATA_TEXT ? rt_tok_from_ckpt(ck) : NULL;
  if (tk) { /* resuming: the checkpoint's vocabulary, if it is the tokenizer asked for */
    char want[128];
    char *have = rt_tok_describe(tk);
    fe_tokenizer_str(cfg, want, sizeof want);
    bool same = rt_tok_kind(tk) == cfg->tokenizer &&
                (cfg->tokenizer != TOK_WORDS || !strcmp(have, want)) &&
                (cfg->tokenizer != TOK_BPE || !cfg->tok_vocab || rt_tok_size(tk) <= cfg->tok_vocab);
    if (!same)
      mc_die("checkpoint '%s' was trained with tokenizer %s, the train block asks for %s", ck->path,
             have, want);
    mc_free(have);
  }
  return rt_corpus_load(cfg, model_vocab, tk);
}

Corpus *rt_corpus_load_file(const char *path, int model_vocab, RtTok *tk) {
  Corpus *c = mc_calloc(1, sizeof(Corpus));
  c->path = path;
  c->split_path[SPLIT_TEST] = c->split_path[0] = path;
  c->model_vocab = model_vocab;
  if (ends_with(path, ".bin")) {
    rt_tok_free(tk);
    c->kind = DATA_BIN;
    load_bin(c, true);
  } else {
    c->kind = DATA_TEXT;
    if (!tk)
      mc_die("cannot read text file '%s': the checkpoint holds no vocabulary (it was not "
             "trained on a text file)",
             path);
    load_text(c, NULL, tk, true);
  }
  return c;
}

void rt_corpus_free(Corpus *c) {
  if (!c) return;
  rt_synth_free(c->syn);
  for (int s = 0; s < 3; s++)
    if (c->tok[s]) mc_free(c->tok[s] - c->prime[s]);
  rt_tok_free(c->tk);
  mc_free(c);
}

/* ---------------------------------------------------------------- batching */

static const char *split_name(Split s) {
  return s == SPLIT_TRAIN ? "train" : s == SPLIT_VALID ? "valid" : "test";
}

void rt_batcher_init(Batcher *b, const Corpus *c, Split split, int B, int T) {
  rt_batcher_init_rows(b, c, split, B, T, 0, B);
}

void rt_batcher_init_rows(Batcher *b, const Corpus *c, Split split, int B, int T, int row0,
                          int rows) {
  MOEC_ASSERT(B > 0 && T > 0 && row0 >= 0 && rows > 0 && row0 + rows <= B);
  memset(b, 0, sizeof *b);
  b->c = c;
  b->split = split;
  b->B = B;
  b->T = T;
  b->row0 = row0;
  b->rows = rows;
  if (c->kind == DATA_SYNTHETIC) {
    b->ss = mc_malloc((size_t)rows * sizeof(SynthStream));
    rt_batcher_seek(b, 0);
    return;
  }
  int64_t n;
  rt_corpus_stream(c, split, &n);
  b->slice = n / B;
  if (split == SPLIT_TRAIN && b->slice < T + 1)
    mc_die("the %s split of '%s' has %lld tokens: too few for %d streams of unroll %d + 1 "
           "(%lld tokens); use a smaller batch or unroll, or more data",
           split_name(split), c->split_path[split], (long long)n, B, T, (long long)B * (T + 1));
  if (b->slice < 2) /* evaluation: each stream predicts at least one token */
    mc_die("the %s split of '%s' has %lld tokens: too few for %d streams of at least 2 tokens; "
           "use a smaller batch (--batch 1 reads it as one stream)",
           split_name(split), c->split_path[split], (long long)n, B);
  b->steps_per_pass = (b->slice - 1) / T;
  b->tail = (int)(b->slice - 1 - b->steps_per_pass * T);
}

void rt_batcher_free(Batcher *b) {
  mc_free(b->ss);
  b->ss = NULL;
}

int64_t rt_parse_step(const char *path, const char *key, const char *value) {
  int64_t v = 0;
  bool ok = *value != 0;
  for (const char *p = value; ok && *p; p++)
    ok = *p >= '0' && *p <= '9' && mc_mul_ok(v, 10, &v) && mc_add_ok(v, *p - '0', &v) &&
         v <= RT_MAX_STEP;
  if (!ok)
    mc_die("checkpoint '%s': %s '%.40s%s' is not an integer from 0 to %lld (the most steps a run "
           "may have)",
           path, key, value, strlen(value) > 40 ? "..." : "", (long long)RT_MAX_STEP);
  return v;
}

void rt_batcher_seek(Batcher *b, int64_t step) {
  if (step < 0 || step > RT_MAX_STEP)
    mc_die("cannot position the %s data at step %lld: steps go from 0 to %lld",
           split_name(b->split), (long long)step, (long long)RT_MAX_STEP);
  if (b->ss && step == 0)             /* the streams' start; any other step: on the next batch */
    for (int r = 0; r < b->rows; r++) /* stream id: the global row */
      rt_synth_stream_init(&b->ss[r], b->c->syn,
                           ((uint64_t)b->split << 32) | (uint64_t)(b->row0 + r));
  b->step = step;
}

/* Advances (or restarts) synthetic stream r to token step * T: lazily, so that a seek
 * nothing reads after costs nothing. step <= 2^31 - 1, T <= 2^31 - 1: no overflow. */
static void synth_catch_up(const Batcher *b, int r) {
  int64_t target = b->step * b->T;
  SynthStream *st = &b->ss[r];
  if (st->n > target)
    rt_synth_stream_init(st, b->c->syn, ((uint64_t)b->split << 32) | (uint64_t)(b->row0 + r));
  while (st->n < target)
    rt_synth_next(st);
}

typedef struct SynthRows {
  const Batcher *b;
  int32_t *ids, *targets;
} SynthRows;

/* Stream r's next T tokens into its row: the streams are independent, so the rows go to
 * the threads (a few cache misses a token into the successor tables: ~0.3 ms of a step
 * of bench/lm_bench.moe on one thread). */
static void synth_row(void *arg, int64_t r) {
  const SynthRows *j = arg;
  const int T = j->b->T;
  synth_catch_up(j->b, (int)r);
  SynthStream *st = &j->b->ss[r];
  for (int t = 0; t < T; t++) {
    j->ids[r * T + t] = st->x;
    j->targets[r * T + t] = rt_synth_next(st);
  }
}

void rt_batcher_next(Batcher *b, int32_t *ids, int32_t *targets) {
  const int R = b->rows, T = b->T;
  if (b->ss) {
    SynthRows j = {b, ids, targets};
    rt_parallel(R, synth_row, &j);
  } else {
    int64_t n;
    const int32_t *tok = rt_corpus_stream(b->c, b->split, &n);
    int64_t pos = (b->step % b->steps_per_pass) * T;
    for (int r = 0; r < R; r++) { /* global stream row0 + r reads its own slice */
      const int32_t *row = tok + (int64_t)(b->row0 + r) * b->slice + pos;
      memcpy(ids + (int64_t)r * T, row, (size_t)T * sizeof(int32_t));
      memcpy(targets + (int64_t)r * T, row + 1, (size_t)T * sizeof(int32_t));
    }
  }
  b->step++;
}

void rt_batcher_tail(const Batcher *b, int32_t *ids, int32_t *targets) {
  const int R = b->rows, T = b->T, k = b->tail;
  MOEC_ASSERT(!b->ss && k > 0);
  int64_t n;
  const int32_t *tok = rt_corpus_stream(b->c, b->split, &n);
  int64_t pos = b->steps_per_pass * T;
  for (int r = 0; r < R; r++) {
    const int32_t *row = tok + (int64_t)(b->row0 + r) * b->slice + pos;
    int32_t *x = ids + (int64_t)r * T, *y = targets + (int64_t)r * T;
    memcpy(x, row, (size_t)k * sizeof(int32_t));
    memcpy(y, row + 1, (size_t)k * sizeof(int32_t));
    for (int t = k; t < T; t++) { /* padding: valid ids, whose losses are not counted */
      x[t] = row[k];
      y[t] = 0;
    }
  }
}

int64_t rt_batcher_eval_steps(const Batcher *b) {
  if (b->ss) {
    int64_t per = (int64_t)b->B * b->T;
    return MC_MAX(1, (SYNTH_EVAL_TOKENS + per - 1) / per);
  }
  return b->steps_per_pass;
}
