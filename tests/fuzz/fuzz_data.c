/* fuzz_data.c: libFuzzer targets for the data readers (built twice: FUZZ_BIN for
 * "file.bin", uint16 ids, otherwise word-level text). The input becomes a file
 * (memfd): the corpus is loaded with its 90/5/5 split (text: the vocabulary built
 * from the train split), a few truncated-BPTT batches are drawn from each split and
 * checked against the model's vocabulary; text also as a whole file with a given
 * vocabulary (moec eval --data). Clean errors (mc_die) are caught. Seeds: real
 * files (the repository's docs as text, generated .bin; fuzz_seeds). */
#include <stdbool.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "runtime/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_BIN
#define FUZZ_VOCAB 65536 /* every uint16 id is valid: the reader's paths, not its refusals */
#else
#define FUZZ_VOCAB 300
#endif

static void draw(const Corpus *c) {
  for (int s = 0; s < 3; s++) {
    if (c->ntok[s] < 2 * 3) continue; /* rt_batcher_init would refuse: tested elsewhere */
    Batcher b;
    rt_batcher_init(&b, c, (Split)s, 2, 2);
    int32_t ids[4], tg[4];
    for (int k = 0; k < 5; k++) {
      rt_batcher_next(&b, ids, tg);
      for (int i = 0; i < 4; i++)
        if (ids[i] < 0 || ids[i] >= FUZZ_VOCAB || tg[i] < 0 || tg[i] >= FUZZ_VOCAB) abort();
    }
    rt_batcher_seek(&b, 3);
    rt_batcher_next(&b, ids, tg);
    rt_batcher_free(&b);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* inputs every reader refuses at once (empty, an odd .bin, a text of fewer than 20
   * lines to split) are left out: mc_die's longjmp leaks what the reader held, and
   * those errors have their own tests (tests/test_data.c) */
  if (size == 0) return 0;
#ifdef FUZZ_BIN
  size &= ~(size_t)1;
  if (size == 0) return 0;
#else
  size_t lines = 0;
  for (size_t i = 0; i < size; i++)
    lines += data[i] == '\n';
  bool split = lines >= 21; /* a last line without its newline: at least 20 either way */
#endif
  char path[64];
  int fd = fuzz_file(data, size, path, sizeof path);
  if (fd < 0) return 0;
  Config cfg;
  fe_config_defaults(&cfg);
#ifdef FUZZ_BIN
  cfg.data = DATA_BIN;
#else
  cfg.data = DATA_TEXT;
#endif
  cfg.data_path = path;
  mc_die_hook = fuzz_die;
  static Corpus *volatile c; /* across longjmp */
  c = NULL;
#ifndef FUZZ_BIN
  if (split)
#endif
    if (!setjmp(fuzz_jmp)) {
      c = rt_corpus_load(&cfg, FUZZ_VOCAB, NULL);
      draw(c);
    }
  rt_corpus_free(c);
#ifndef FUZZ_BIN
  c = NULL;
  if (!setjmp(fuzz_jmp)) { /* moec eval --data: the whole file, a checkpoint's vocabulary */
    static const char *const vocab[] = {"<unk>", "<eos>", "the", "a", "moec", "\xff"};
    c = rt_corpus_load_file(path, FUZZ_VOCAB, rt_tok_words(vocab, 6));
    draw(c);
  }
  rt_corpus_free(c);
#endif
  mc_die_hook = NULL;
  close(fd);
  return 0;
}
