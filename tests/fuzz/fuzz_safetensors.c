/* fuzz_safetensors.c: libFuzzer target for the checkpoint reader: rt_st_parse on any
 * bytes; when it parses, every lookup (tensors, metadata, metadata stored as tensors)
 * and loading into a two-parameter model (shape and dtype checks, F32/F64
 * conversion; mismatches end in mc_die, caught). Seeds: checkpoints rt_st_save
 * writes (fuzz_seeds). Run by scripts/fuzz.sh. */
#include <stdlib.h>

#include "fuzz_common.h"
#include "runtime/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void host_copy(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
}
static const Backend host = {"host", NULL, NULL, NULL, host_copy, host_copy, host_copy, NULL};

static void load_into_model(const StFile *f) {
  static Tensor t[2];
  static Tensor *params[2];
  static Graph g;
  static Program p;
  static double buf0[12], buf1[4];
  static void *bufs[2] = {buf0, buf1};
  const char *names[2] = {"lm.weight", "lm.bias"};
  for (int i = 0; i < 2; i++) {
    t[i] = (Tensor){.id = i, .name = names[i], .kind = TK_PARAM};
    t[i].ty.rank = i ? 1 : 2;
    t[i].shape[0] = 4;
    t[i].shape[1] = 3;
    t[i].numel = i ? 4 : 12;
    params[i] = &t[i];
  }
  g.params = params;
  g.nparams = 2;
  p.g = &g;
  p.be = &host;
  p.prec = PREC_F64;
  p.elem = 8;
  p.buf = bufs;
  rt_st_load_params(f, &p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *buf = malloc(size ? size : 1); /* rt_st_parse owns and frees it */
  memcpy(buf, data, size);
  char err[512];
  StFile *f = rt_st_parse("fuzz.safetensors", buf, size, err, sizeof err);
  if (!f) return 0;
  uint64_t sum = 0;
  for (int i = 0; i < f->n; i++) {
    const StEntry *e = rt_st_find(f, f->e[i].name);
    if (e != &f->e[i]) abort(); /* every name finds its own entry */
    if (e->nbytes) sum += e->data[0] + e->data[e->nbytes - 1];
  }
  for (int i = 0; i < f->nmeta; i++)
    if (rt_st_meta(f, f->mkey[i]) == NULL) abort();
  (void)sum;
  mc_die_hook = fuzz_die;
  if (!setjmp(fuzz_jmp)) load_into_model(f);
  mc_die_hook = NULL;
  rt_st_close(f);
  return 0;
}
