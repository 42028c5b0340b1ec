/* train.h: training: data, checkpoints, optimizers, the training loop.
 *
 *   data.c        : corpora (built-in synthetic topics, word-level text, uint16 .bin)
 *                   and truncated-BPTT batching
 *   safetensors.c : reading and (atomically) writing safetensors files; loading a
 *                   checkpoint into a program's parameters
 *   optim.c       : Adam, factored second moment (paper, appendix D), clipping,
 *                   decoupled weight decay, deterministic parameter initialisation
 *   schedule.c    : the learning rate of each step (warm-up, hold, decay)
 *   train.c       : the training loop, evaluation, progress, metrics, resume
 *
 * docs/training.md describes the formulas and file formats. Prefix: rt_.
 */
#ifndef MOEC_TRAIN_H
#define MOEC_TRAIN_H

#include "runtime.h"

/* ---------------------------------------------------------------- data.c */

/* Topic switching probability per token of the synthetic corpus. */
#define RT_SYNTH_SWITCH (1.0 / 500.0)
/* The most (topic, token) states: topics x vocab (memory ~100 bytes a state, and
 * the analysis before step 1 stays within about a minute). */
#define RT_SYNTH_MAX_STATES (1 << 20)

/* The built-in corpus: K topics, each a sparse Markov chain over V tokens. */
typedef struct Synth {
  int K, V;
  uint64_t seed;
  double s;            /* switch probability per token */
  int32_t *off;        /* [K*V+1]: successors of (topic z, token x) at off[z*V+x].. */
  int32_t *succ;       /* successor tokens */
  double *prob;        /* their probabilities (sum to 1 per state) */
  double *stat;        /* [K*V] stationary distribution of (topic, token), or NULL */
  double floor_nats;   /* entropy rate given the hidden topic (rt_synth_analyze) */
  double residual;     /* the analysis's last change per sweep (0: solved directly) */
  double unigram_nats; /* entropy of the stationary token marginal */
} Synth;

Synth *rt_synth_new(int topics, int vocab, uint64_t seed);
/* Stationary distribution and entropy rate (fills stat, floor_nats, unigram_nats).
 * Exact linear solves per topic for vocab <= 32 (sticky two-token chains make power
 * iteration crawl); power iteration to 1e-14 otherwise, at most a bounded number of
 * sweeps (a note on stderr says when it stopped before converging). */
void rt_synth_analyze(Synth *s);
void rt_synth_free(Synth *s);

/* One unbounded stream of the synthetic corpus: token n follows from (seed, id, n). */
typedef struct SynthStream {
  const Synth *syn;
  uint64_t key;
  int64_t n; /* index of the current token */
  int z, x;  /* current topic and token */
} SynthStream;

void rt_synth_stream_init(SynthStream *st, const Synth *syn, uint64_t stream_id);
int rt_synth_next(SynthStream *st); /* advances: returns token n+1 */
/* -log p(next | current topic, current token) under the true model (nats),
 * marginalised over the topic switch (the quantity rt_synth_analyze averages). */
double rt_synth_nll_given_topic(const Synth *s, int z, int x, int next);
/* P_z(y | x): topic z's own transition probability (0 if y is no successor). */
double rt_synth_prob(const Synth *s, int z, int x, int y);

typedef enum Split { SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST } Split;

/* ---------------------------------------------------------------- tokenize.c */

/* How a text corpus becomes ids and back: words, words(lower, split_punct), words with
 * unknown words spelled (spell=chars), chars, or a byte-pair encoding; every line ends with
 * a line-end id. */
typedef struct RtTok RtTok;
struct StFile;

/* Learns cfg's tokenizer from the training text: the most frequent words or characters
 * (at most cfg->tok_vocab or else max_vocab ids, <unk> = 0 and spelling pieces included),
 * or bpe(vocab=N) (N: cfg->tok_vocab, or max_vocab when 0). */
RtTok *rt_tok_learn(const Config *cfg, int max_vocab, const char *text, size_t len);
/* The tokenizer a checkpoint stores (data.tokenizer, data.vocab / data.bpe; a vocabulary
 * without data.tokenizer: words), or NULL when it has none. Dies on a malformed one. */
RtTok *rt_tok_from_ckpt(const struct StFile *f);
/* The words tokenizer of a given vocabulary (id order; "<eos>" the line end). */
RtTok *rt_tok_words(const char *const *words, int n);
void rt_tok_free(RtTok *t);
/* Every line of text[0, len) as ids, a line-end id after each; returns their count. */
int64_t rt_tok_encode(RtTok *t, const char *text, size_t len, int32_t **ids);
/* Whitespace-separated words plus one per line (the plain words tokenizer's count): the
 * unit of per-word perplexity, whatever the tokenizer. */
int64_t rt_tok_count_words(const char *text, size_t len);
int32_t rt_tok_size(const RtTok *t); /* ids in use */
int32_t rt_tok_eos(const RtTok *t);  /* the line end's id (-1: none in the vocabulary) */
TokKind rt_tok_kind(const RtTok *t);
bool rt_tok_unknown(const RtTok *t, int32_t id); /* <unk> */
bool rt_tok_special(const RtTok *t, int32_t id); /* never sampled: <unk>, <pad>, <s> */
/* The text of one id ("\n" for the line end, a spelled word's piece its character; not
 * NUL-terminated: *len bytes). */
const char *rt_tok_piece(const RtTok *t, int32_t id, int *len);
/* 'B', 'M' or 'E' when id is a piece of a spelled word (its first, a middle, its last
 * character), else 0. */
char rt_tok_part(const RtTok *t, int32_t id);
/* Appends id's text to b as decoding puts it after the ids before it: a space before a
 * word unless at a line start (*line_start; updated), none before a spelled word's <M>
 * and <E> pieces. */
void rt_tok_put(const RtTok *t, int32_t id, bool *line_start, McBuf *b);
/* Ids -> text (mc_free it): words separated by spaces (spelled words joined), lines by
 * newlines. */
char *rt_tok_decode(const RtTok *t, const int32_t *ids, int64_t n);
/* "words(lower=true, split_punct=true)", "words(vocab=2000, spell=chars)", "bpe(vocab=2000)":
 * data.tokenizer (mc_free it). */
char *rt_tok_describe(const RtTok *t);
/* The vocabulary as text for a checkpoint, under *key (data.vocab or data.bpe). */
char *rt_tok_serialize(const RtTok *t, const char **key);
/* Splits text into words (whitespace) with <eos> per line; vocabulary of the most
 * frequent words (ties: first occurrence), at most max_vocab ids, id 0 = <unk>. */
void rt_text_vocab(const char *text, size_t len, int max_vocab, char ***words, int *nwords);

/* ---------------------------------------------------------------- corpora */

/* A corpus, loaded once: synthetic, or the three splits of text / bin files. */
typedef struct Corpus {
  DataKind kind;
  const char *path;          /* the training file */
  const char *split_path[3]; /* each split's file (the training file when it is cut 90/5/5) */
  int model_vocab; /* ids must be below it */
  Synth *syn;
  int32_t *tok[3];
  int64_t ntok[3]; /* file corpora: per split */
  /* an evaluation split's token before its first (tok[s][-1]): the line end before it
   * (text), or the file's token before it (a .bin cut 90/5/5); evaluation predicts the
   * split's first token from it */
  bool prime[3];
  int64_t unk[3];   /* text: tokens of each split that are <unk> */
  int64_t words[3]; /* text: words and line ends of each split (per-word perplexity) */
  RtTok *tk;        /* text: the tokenizer */
} Corpus;

/* Loads the corpus the config names. Dies with a clear message on a missing,
 * empty or unreadable file, ids >= model_vocab, a synthetic vocab larger than the
 * model's. `tk` (may be NULL; taken over): a tokenizer to use instead of learning one
 * from the train split (checkpoints store it). */
Corpus *rt_corpus_load(const Config *cfg, int model_vocab, RtTok *tk);
/* The same with the tokenizer of checkpoint ck when it has one (NULL: none); dies when
 * it is not the one cfg asks for. */
Corpus *rt_corpus_load_ckpt(const Config *cfg, int model_vocab, const struct StFile *ck);
/* A whole text or bin file as one test split (moec eval --data, moec score), with `tk`
 * (taken over; required for text). */
Corpus *rt_corpus_load_file(const char *path, int model_vocab, RtTok *tk);
void rt_corpus_free(Corpus *c);
/* The split's tokens as its batcher reads them: with the priming token first. */
static inline const int32_t *rt_corpus_stream(const Corpus *c, int s, int64_t *n) {
  *n = c->ntok[s] + c->prime[s];
  return c->tok[s] - c->prime[s];
}

/* The most steps a run has, and the largest step it resumes at: `steps`' limit. */
#define RT_MAX_STEP ((int64_t)2147483647)
/* A checkpoint's step counter (metadata train.step, optim.step): decimal digits
 * only, 0..RT_MAX_STEP; dies naming the file, key and value otherwise. */
int64_t rt_parse_step(const char *path, const char *key, const char *value);

/* Truncated-BPTT batches over one split: B streams, T steps. A batcher may own a
 * range of the streams (one device's rows of the global batch): it produces exactly
 * those rows of the global batch, reading or generating nothing else. */
typedef struct Batcher {
  const Corpus *c;
  Split split;
  int B, T;
  int row0, rows;         /* its streams: [row0, row0 + rows) of the B */
  int64_t step;           /* next batch index */
  int64_t slice;          /* file corpora: tokens per stream */
  int64_t steps_per_pass; /* file corpora: batches before wrapping (epoch) */
  int tail;               /* file corpora: positions of each stream after the pass's full
                             batches, 0..T-1 (evaluation reads them: rt_batcher_tail) */
  SynthStream *ss;        /* synthetic: one stream per owned row */
} Batcher;

/* Dies if the training split has too few tokens for B*(T+1), an evaluation split too few
 * for 2 per stream. */
void rt_batcher_init(Batcher *b, const Corpus *c, Split split, int B, int T);
/* The batcher of streams [row0, row0 + rows) of a B-stream batch (the global B: it
 * fixes the file corpora's per-stream slices); 0 <= row0, rows >= 1, row0 + rows <= B.
 * rt_batcher_init is rt_batcher_init_rows(b, c, split, B, T, 0, B). */
void rt_batcher_init_rows(Batcher *b, const Corpus *c, Split split, int B, int T, int row0,
                          int rows);
void rt_batcher_free(Batcher *b);
/* Positions the batcher at batch `step` (deterministic function of step), 0 <= step
 * <= RT_MAX_STEP (dies past it). Synthetic streams are advanced lazily, by the next
 * rt_batcher_next: seeking where no batch is drawn costs nothing. */
void rt_batcher_seek(Batcher *b, int64_t step);
/* Fills ids[rows*T] and targets[rows*T] (row-major [rows, T]: its rows of the global
 * [B, T] batch) and advances. */
void rt_batcher_next(Batcher *b, int32_t *ids, int32_t *targets);
/* Batches in one pass over an evaluation split (synthetic: a fixed count). */
int64_t rt_batcher_eval_steps(const Batcher *b);
/* The pass's last, partial batch (file corpora, b->tail > 0): b->tail real positions per
 * stream, the rest padding (valid ids whose losses are not to be counted). */
void rt_batcher_tail(const Batcher *b, int32_t *ids, int32_t *targets);

/* ---------------------------------------------------------------- safetensors.c */

typedef enum StDType { ST_F32, ST_F64, ST_I32, ST_U8, ST_OTHER } StDType;

typedef struct StTensor {
  const char *name;
  StDType dtype;
  int rank;
  int64_t shape[8];
  const void *data; /* host memory */
} StTensor;

typedef struct StEntry {
  char *name;
  char dtype_name[16];
  StDType dtype;
  int rank;
  int64_t shape[8];
  int64_t numel;
  const uint8_t *data; /* into the file's buffer */
  size_t nbytes;
} StEntry;

typedef struct StFile {
  char *path;
  uint8_t *buf;
  size_t size;
  StEntry *e;
  int n;
  int *slot; /* open addressing over e by name: -1 empty; nslot a power of two */
  int nslot;
  char **mkey, **mval;
  int nmeta;
} StFile;

/* The largest JSON header rt_st_parse reads, and the most tensors a file may hold. */
#define RT_ST_MAX_HEADER (100 * 1024 * 1024)
#define RT_ST_MAX_TENSORS 16777216

/* Writes atomically: PATH.tmp.<pid>, fflush + fsync, rename over PATH. A symlink is
 * followed (the file it names is replaced, the link kept); a path that is a
 * directory, a device or anything but a regular file is refused; temporaries of
 * dead processes (a killed save) beside it are removed first. On any failure the
 * old file is left as it was and mc_die explains. meta: nmeta key/value string
 * pairs (meta[2i], meta[2i+1]) for __metadata__: short UTF-8 values go in the JSON
 * header; others (over 1 MiB, or not UTF-8, e.g. a vocabulary of raw bytes) are
 * stored as U8 tensors "__metadata__.KEY", which rt_st_meta returns the same way. */
void rt_st_save(const char *path, const StTensor *t, int n, const char *const *meta, int nmeta);
/* Can rt_st_save write path? Follows symlinks, refuses an empty or too long path, a
 * directory or other non-regular file, and a directory where no file can be
 * created (it creates and removes PATH.tmp.<pid>). false and "cannot save 'PATH':
 * why" in err otherwise. For a run to call before its first step. */
bool rt_st_check_save_path(const char *path, char *err, size_t errlen);
/* Parses a whole file held in buf (takes ownership). NULL and a message in err on
 * any malformed input (never crashes). The header must be strict JSON (UTF-8, no
 * leading zeros, no repeated keys, one __metadata__ at most); time and memory are
 * linear in the file's size. */
StFile *rt_st_parse(const char *path, uint8_t *buf, size_t size, char *err, size_t errlen);
/* Reads and parses; dies with a clear message. */
StFile *rt_st_open(const char *path);
void rt_st_close(StFile *f);
const StEntry *rt_st_find(const StFile *f, const char *name);
/* The entry `name` checked against what the caller needs: NULL when absent; dies
 * saying what differs ("'optim.m.w' has dtype I32, the model needs F32"; "... has
 * shape [2, 64], the model needs [128]") when its dtype or shape (compared dim by
 * dim, not by element count) is not dtype and shape[0..rank). */
const StEntry *rt_st_expect(const StFile *f, const char *name, StDType dtype, int rank,
                            const int64_t *shape);
const char *rt_st_meta(const StFile *f, const char *key);
/* Copies the file's tensors into every parameter of p (by name, converting F32/F64
 * to the program's precision). Names starting with "optim.", "state." or
 * "__metadata__." are skipped. Dies naming every missing, unexpected and shape-mismatched tensor.
 */
void rt_st_load_params(const StFile *f, Program *p);
/* The same, parameter i taking rows rows[i] of the file's tensor (rows NULL, or
 * rows[i].list NULL: the whole tensor; RowSel: runtime.h). */
void rt_st_load_params_rows(const StFile *f, Program *p, const RowSel *rows);
/* The same for a program of part of a model (a decoder's encoder or step): the file may
 * hold other parameters too. */
void rt_st_load_params_part(const StFile *f, Program *p);
/* Test hook: when >= 0, rt_st_save fails after writing this many bytes. */
extern long rt_st_fail_after;

/* ---------------------------------------------------------------- optim.c */

typedef struct Optim {
  OptKind kind;
  double lr, beta1, beta2, eps, clip;
  double wd; /* decoupled weight decay (AdamW): p -= lr * wd * p before the update */
  int64_t t; /* updates done */
  int n;     /* parameters */
  const char **names;
  int64_t *numel;
  int *prank;
  int64_t (*shape)[MAX_RANK];
  float **m, **v;   /* adam: first and second moment; factored vectors: v */
  float **vr, **vc; /* factored matrices: row and column second moments */
  double last_norm; /* global gradient norm before clipping */
  size_t elem;      /* 4; 8 (moec run --f64): params, grads and moments are double arrays
                       behind the float pointers, updated in double without rounding */
  FoldDW *fold;     /* [n] or NULL: folded expert dW (rt_optim_fold; off NULL: none) */
  struct OptScratch *scratch; /* [RT_MAX_THREADS]: each thread's buffer for folded spans */
  int isa; /* the factored row sums' kernels (RT_ISA_*): the CPU's best, as rt_optim_new
              finds it; RT_ISA_PORTABLE runs the reference loops (the same bits) */
} Optim;

/* State for the params of g (shapes bound), zeroed. */
Optim *rt_optim_new(const Config *cfg, const Graph *g);
/* The same for a program of precision prec (PREC_F64: elem 8; no checkpoints). */
Optim *rt_optim_new_prec(const Config *cfg, const Graph *g, Precision prec);
void rt_optim_free(Optim *o);
/* The folded expert weight gradients of program p (passes/fusion.c): the optimizer makes
 * their dW from p's buffers when given p's own gradient buffers (docs/training.md). */
void rt_optim_fold(Optim *o, Program *p);
/* One update: params[i] -= ... from grads[i]; clips the global norm first. */
void rt_optim_step(Optim *o, float *const *params, float *const *grads);
/* The update with the gradient norm given (clipping scales by clip / norm when it
 * exceeds clip): the global norm of a model spread over devices (multidev.c). */
void rt_optim_apply(Optim *o, float *const *params, float *const *grads, double norm);
/* The sum of g[0..n)^2 (elements of `elem` bytes) in double, vectorised in a fixed order
 * (8 lanes, then the tail, then the lanes): the update's own norm sum over a task's
 * elements, and multidev.c's over a device's gradients. */
double rt_sumsq(const void *g, int64_t n, size_t elem);
/* Checkpoint entries: appends its tensors to t (room for 3*n) and returns the count;
 * their names live in `names` (the caller frees it after writing). */
int rt_optim_tensors(const Optim *o, StTensor *t, McArena *names);
/* Restores from a checkpoint (sets t from meta "optim.step"); dies on mismatch.
 * Returns false when the file has no optimizer state (fresh state kept). */
bool rt_optim_load(Optim *o, const StFile *f);
/* The same, entry i taking rows sel[i] of the file's tensors (sel NULL: all whole). */
bool rt_optim_load_rows(Optim *o, const StFile *f, const RowSel *sel);

/* schedule.c: the learning rate of optimizer step t = 1, 2, ... (warm-up, hold, decay). */
double rt_lr_at(const Config *c, int64_t t);

/* Deterministic init of one parameter: depends only on (seed, name, index). */
void rt_init_param(const Tensor *t, uint64_t seed, float *out);
/* The rows sel of the whole tensor (t has sel->n rows): the values one device gives them. */
void rt_init_param_rows(const Tensor *t, uint64_t seed, const RowSel *sel, float *out);

/* ---------------------------------------------------------------- the run
 *
 *   train_loop.c : moec run: the training loop of one device (rank 0 prints and writes)
 *   interrupt.c  : SIGINT / SIGTERM: stop at a step boundary with a checkpoint
 *   trace.c      : a Chrome / Perfetto trace of a few steps (trace.h)
 *   evaluate.c   : one evaluation loop for 1 and N devices; moec eval
 *   checkpoint.c : parameters' initial values; checkpoints written and resumed
 *   report.c     : the progress line, metrics (JSON lines), the summary
 *   grad.c       : moec grad
 * A run gets its program from the compiler (driver/compile.c) and compiles nothing. */

/* interrupt.c: SIGINT / SIGTERM recorded, not acted on (the loop stops at a step
 * boundary); rt_interrupt_signal: the signal received, 0 if none. */
void rt_interrupt_install(void);
int rt_interrupt_signal(void);

typedef struct RunOpts {
  const char *save, *load, *metrics;
  int64_t save_every;     /* also save every N steps (0: at evaluations and the end) */
  const char *trace;      /* a Chrome / Perfetto trace of a few steps to this file, or NULL */
  const char *resume_cmd; /* the command line that resumes this run (interrupted runs say it) */
  bool json;              /* the summary as one JSON object on stdout; progress to stderr */
  bool quiet;             /* no progress display */
  bool f64;               /* the program computes in double: no checkpoints */
  bool no_eval;           /* no evaluation at all (valid and test reported as unknown) */
  uint64_t settings_hash; /* the model file and settings: every rank must agree */
  const char *settings;   /* the effective settings as a JSON object ("--json" echoes it) */
} RunOpts;

struct Comm;
/* moec run on device comm->rank of comm->size: trains program p (forward + backward,
 * compiled for this device) as cfg says, each device on its rows of every global batch,
 * rank 0 printing and writing files. Returns the exit status. */
int rt_train(struct Comm *comm, Program *p, const Config *cfg, const RunOpts *o);
/* moec run for a translation model (p->source set): the same on parallel data, each batch
 * bound at its length bucket's shape (train_nmt.c). */
int rt_train_pairs(struct Comm *comm, Program *p, const Config *cfg, const RunOpts *o);
/* How a translation model decodes (translate.c): beam width (1: greedy), GNMT's length
 * normalisation exponent, the most output ids per sentence (</s> included), rows per
 * decoder step (sentences x beam) and source ids per sentence (</s> included): the
 * encoder and decoder-step programs are compiled for rows / beam and rows rows of up to
 * max_src source positions. */
typedef struct DecodeOpts {
  int beam;
  double alpha;
  int max_len;
  int rows;
  int max_src;
} DecodeOpts;
/* moec translate: the source sentences of `input` (a file; NULL or "-": stdin), one per
 * line, translated with enc and dec (the checkpoint's weights and BPE vocabulary) onto
 * stdout in order, detokenized. Dies with file:line on invalid UTF-8 or a NUL byte; an
 * empty line, or one longer than o->max_src ids, is translated as an empty line with a
 * warning. */
int rt_translate(Program *enc, Program *dec, const char *ckpt, const char *input,
                 const DecodeOpts *o);
/* moec eval on a translation model: per-token perplexity (program p, forward only) and
 * BLEU-4 of the translations (enc, dec) against the references, on data_path's pairs or
 * cfg's valid pairs. */
int rt_eval_pairs(Program *p, Program *enc, Program *dec, const Config *cfg, const char *ckpt,
                  const char *data_path, const DecodeOpts *o, bool json);
/* The data moec eval and moec score read: a whole file (data_path), or the test split of
 * cfg's data; a text's tokenizer is the checkpoint's. */
Corpus *rt_eval_corpus(const Config *cfg, int model_vocab, const char *ckpt, const char *data_path);
/* moec eval: the test split's perplexity under checkpoint ckpt with program p (forward
 * only, one device); what: the data's name for the message. */
int rt_eval(Program *p, const Corpus *c, const char *ckpt, const char *what, bool json);
/* moec score: the log-likelihood of every line of c's test split and of the whole, with p
 * compiled for one stream (B = 1); every token predicted (the first from the line end
 * before it). quiet: the total only. */
int rt_score(Program *p, const Corpus *c, const char *ckpt, const char *what, bool json,
             bool quiet);
/* moec sample */
typedef struct SampleOpts {
  const char *prompt; /* text to continue (NULL: from a line end) */
  int64_t tokens;     /* how many to generate */
  double temperature; /* 0: greedy */
  int64_t top_k;      /* 0: every id */
  uint64_t seed;
  bool quiet;
} SampleOpts;
/* Generates o->tokens tokens from checkpoint ckpt with p compiled for B = T = 1 (forward
 * only), streaming them to stdout. */
int rt_sample(Program *p, const char *ckpt, const SampleOpts *o);
/* moec grad: loss and gradients of program p (forward + backward) for one batch read from
 * a token file; out: the gradients as safetensors (NULL: none). */
int rt_grad(Program *p, const Config *cfg, const char *weights, const char *tokens,
            const char *out, bool json);

#endif
