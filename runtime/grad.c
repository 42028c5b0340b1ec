/* grad.c: moec grad: the loss and every parameter's gradient for one batch read from a
 * token file, written as safetensors: the hook independent references (PyTorch) check
 * moec against. No dropout, no gate noise, LSTM state from zero. */
#include <errno.h>
#include <string.h>

#include "run.h"

/* B*(T+1) little-endian uint16 ids: row b's inputs are its first T, targets its last T. */
static void read_tokens(const char *path, int B, int T, int vocab, int32_t *ids, int32_t *tg) {
  size_t len = 0;
  unsigned char *raw = (unsigned char *)mc_read_file(path, &len);
  if (!raw) mc_die("cannot read token file '%s': %s", path, strerror(errno));
  size_t need = (size_t)B * (size_t)(T + 1);
  if (len != 2 * need)
    mc_die("token file '%s' has %zu bytes: batch %d x (unroll %d + 1) needs %zu uint16 ids "
           "(%zu bytes)",
           path, len, B, T, need, 2 * need);
  for (int b = 0; b < B; b++)
    for (int t = 0; t <= T; t++) {
      size_t k = (size_t)b * (size_t)(T + 1) + (size_t)t;
      int v = raw[2 * k] | (raw[2 * k + 1] << 8);
      if (v >= vocab)
        mc_die("token file '%s': id %d at position %zu is outside the model's vocabulary (%d ids)",
               path, v, k, vocab);
      if (t < T) ids[b * T + t] = v;
      if (t > 0) tg[b * T + t - 1] = v;
    }
  mc_free(raw);
}

static void write_grads(Program *p, const char *out, double loss, double xent, double aux) {
  Graph *g = p->g;
  bool f64 = p->prec == PREC_F64;
  int nx = 0; /* a sampled softmax's samples and draws (NAME.samples, NAME.tries) */
  for (int k = 0; k < g->nnodes; k++)
    nx += g->nodes[k]->op == OP_SAMPLED_XENT ? 2 : 0;
  StTensor *t = mc_calloc((size_t)MC_MAX(g->nparams + nx, 1), sizeof(StTensor));
  void **owned = mc_calloc((size_t)MC_MAX(g->nparams + nx, 1), sizeof(void *));
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *x = g->params[i];
    const void *data;
    if (x->grad) {
      data = rt_dev_host_view(p, x->grad, &owned[i]); /* device: a host copy, freed below */
    } else {
      owned[i] = mc_calloc((size_t)x->numel, p->elem);
      data = owned[i];
    }
    t[i] = (StTensor){x->name, f64 ? ST_F64 : ST_F32, x->ty.rank, {0}, data};
    for (int d = 0; d < x->ty.rank; d++)
      t[i].shape[d] = x->shape[d];
  }
  char l[3][32];
  snprintf(l[0], sizeof l[0], "%.17g", loss);
  snprintf(l[1], sizeof l[1], "%.17g", xent);
  snprintf(l[2], sizeof l[2], "%.17g", aux);
  const char *meta[] = {"format", "pt",   "moec.model", g->name, "loss",
                        l[0],     "xent", l[1],         "aux",   l[2]};
  int nt = g->nparams;
  for (int k = 0; k < g->nnodes; k++)
    for (int j = 2; j < 4 && g->nodes[k]->op == OP_SAMPLED_XENT; j++, nt++) {
      const Tensor *x = g->nodes[k]->out[j];
      t[nt] = (StTensor){x->name, ST_I32, 1, {x->numel}, rt_dev_host_view(p, x, &owned[nt])};
    }
  rt_st_save(out, t, nt, meta, 5);
  for (int i = 0; i < nt; i++)
    mc_free(owned[i]);
  mc_free(owned);
  mc_free(t);
}

int rt_grad(Program *p, const Config *cfg, const char *weights, const char *tokens, const char *out,
            bool json) {
  Graph *g = p->g;
  const int B = (int)g->B, T = (int)g->T;
  StFile *w = rt_st_open(weights);
  rt_st_load_params(w, p);
  rt_st_close(w);
  int32_t *ids = mc_malloc((size_t)B * T * sizeof(int32_t)),
          *tg = mc_malloc((size_t)B * T * sizeof(int32_t));
  read_tokens(tokens, B, T, p->vocab, ids, tg);
  rt_feed(p, p->ids, ids);
  rt_feed(p, p->targets, tg);
  KernelCtx ctx = {.training = false,
                   .sample_softmax = true, /* a sampled softmax's loss is its sampled one */
                   .seed = cfg->seed,
                   .batch_local = B,
                   .ndevices = 1,
                   .dev = p->dev};
  rt_exec(p, &ctx, 0, p->ninstrs);
  double loss = rt_read_scalar(p, g->loss), xent = rt_read_scalar(p, g->xent),
         aux = rt_read_scalar(p, g->aux);
  if (out) write_grads(p, out, loss, xent, aux);
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"loss\":%.17g,\"xent\":%.17g,\"aux\":%.17g}\n", loss, xent, aux);
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("loss %.8g (xent %.8g, aux %.8g)", loss, xent, aux);
    if (out) printf("; gradients of %d parameters written to %s", g->nparams, out);
    printf("\n");
  }
  mc_free(ids);
  mc_free(tg);
  return 0;
}
