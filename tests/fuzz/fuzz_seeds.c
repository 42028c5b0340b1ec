/* fuzz_seeds.c: writes the runtime fuzzers' seed corpora at build time, with moec's
 * own writers: DIR/safetensors (checkpoints by rt_st_save: F32, F64, I32, metadata,
 * a vocabulary of raw bytes stored as a tensor), DIR/bin (uint16 ids), DIR/text (the
 * repository's own text: README.md and three docs pages, cut to 4 KiB, and a generated
 * corpus). Usage: fuzz_seeds ROOT DIR. */
#include <stdlib.h>
#include <sys/stat.h>

#include "runtime/train.h"

static void put(const char *dir, const char *name, const void *p, size_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f)) {
    perror(path);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: fuzz_seeds ROOT DIR\n");
    return 2;
  }
  char d[4096];
  const char *sub[] = {"safetensors", "bin", "text"};
  mkdir(argv[2], 0755);
  for (int i = 0; i < 3; i++) {
    snprintf(d, sizeof d, "%s/%s", argv[2], sub[i]);
    mkdir(d, 0755);
  }
  /* checkpoints */
  float w[12], b[4];
  double wd[12];
  int32_t ids[4] = {1, 2, 3, 4};
  for (int i = 0; i < 12; i++)
    wd[i] = w[i] = (float)i * 0.25f;
  for (int i = 0; i < 4; i++)
    b[i] = (float)-i;
  StTensor t[4] = {{"lm.weight", ST_F32, 2, {4, 3}, w},
                   {"lm.bias", ST_F32, 1, {4}, b},
                   {"optim.m.lm.bias", ST_F64, 2, {2, 6}, wd},
                   {"state.h.c", ST_I32, 1, {4}, ids}};
  const char *meta[] = {"format", "pt", "train.step", "12", "data.vocab", "<unk>\n<eos>\ncaf\xe9",
                        "optim.kind", "adam"};
  char path[4096];
  snprintf(path, sizeof path, "%s/safetensors/ckpt.safetensors", argv[2]);
  rt_st_save(path, t, 4, meta, 4);
  snprintf(path, sizeof path, "%s/safetensors/weights.safetensors", argv[2]);
  rt_st_save(path, t, 2, meta, 1);
  snprintf(path, sizeof path, "%s/safetensors/empty.safetensors", argv[2]);
  rt_st_save(path, t, 0, NULL, 0);
  /* .bin */
  uint16_t tok[600];
  for (int i = 0; i < 600; i++)
    tok[i] = (uint16_t)((i * 7919) % 300);
  snprintf(d, sizeof d, "%s/bin", argv[2]);
  put(d, "ids.bin", tok, sizeof tok);
  tok[17] = 299;
  put(d, "edge.bin", tok, 80);
  /* text */
  snprintf(d, sizeof d, "%s/text", argv[2]);
  const char *docs[] = {"README.md", "docs/training.md", "docs/grammar.md", "CONTRIBUTING.md"};
  for (size_t i = 0; i < MC_ARRAY_LEN(docs); i++) {
    snprintf(path, sizeof path, "%s/%s", argv[1], docs[i]);
    size_t n = 0;
    char *text = mc_read_file(path, &n);
    if (!text) continue;
    char name[64];
    snprintf(name, sizeof name, "doc%zu.txt", i);
    put(d, name, text, n < 4096 ? n : 4096);
    free(text);
  }
  McBuf g = {0};
  for (int l = 0; l < 40; l++)
    mc_buf_printf(&g, "the moec a %d the\tcaf\xe9 %s\n", l % 7, l % 3 ? "a" : "\xff\xfe");
  put(d, "gen.txt", g.data, g.len);
  mc_buf_free(&g);
  return 0;
}
