/* evaluate.c: one evaluation loop, for 1 and N devices: the forward part of a program
 * over one pass of a split, LSTM state from zero, no dropout, no gate noise; and moec
 * eval, the perplexity of a checkpoint. */
#include <math.h>
#include <string.h>

#include "run.h"

void rt_feed(Program *p, const Tensor *t, const int32_t *ids) {
  rt_dev_upload_input(p, p->buf[t->id], ids, (size_t)t->numel * sizeof(int32_t));
}

double rt_read_scalar(Program *p, const Tensor *t) {
  if (!t) return 0;
  if (p->prec == PREC_F64) {
    double v;
    p->be->download(&v, p->buf[t->id], sizeof v);
    return v;
  }
  float v;
  p->be->download(&v, p->buf[t->id], sizeof v);
  return v;
}

static void zero_state(Program *p) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state;
    size_t nb = (size_t)s->numel * p->elem;
    void *z = mc_calloc(1, nb);
    p->be->upload(p->buf[s->id], z, nb);
    mc_free(z);
  }
}

double rt_evaluate(Comm *c, Program *p, const Corpus *corpus, Split split, int64_t *tokens) {
  Graph *g = p->g;
  const int P = c->size, Bl = (int)(g->B_global / P), T = (int)g->T;
  Batcher b; /* this device's rows of the global batch only */
  rt_batcher_init_rows(&b, corpus, split, Bl * P, T, c->rank * Bl, Bl);
  int64_t steps = rt_batcher_eval_steps(&b);
  size_t nl = (size_t)Bl * (size_t)T;
  int32_t *ids = mc_malloc(nl * sizeof(int32_t)), *tg = mc_malloc(nl * sizeof(int32_t));
  void **saved = mc_calloc((size_t)g->nstates + 1, sizeof(void *));
  for (int i = 0; i < g->nstates; i++) { /* the training state, put back below */
    const Tensor *s = g->states[i].state;
    saved[i] = mc_malloc((size_t)s->numel * p->elem);
    p->be->download(saved[i], p->buf[s->id], (size_t)s->numel * p->elem);
  }
  zero_state(p);
  KernelCtx ctx = {.training = false,
                   .batch0 = (int64_t)c->rank * Bl,
                   .batch_local = Bl,
                   .device = c->rank,
                   .ndevices = P,
                   .comm = P > 1 ? c : NULL,
                   .graph = P > 1 ? g : NULL,
                   .dev = p->dev};
  /* the loss on(...) a set without this device: it has no rows of it */
  bool has_loss = !g->xent->producer || g->ndev <= 1 || ir_runs_on(g->xent->producer, c->rank, P);
  double sum = 0;
  for (int64_t s = 0; s < steps; s++) {
    rt_batcher_next(&b, ids, tg);
    rt_feed(p, p->ids, ids);
    rt_feed(p, p->targets, tg);
    rt_exec(p, &ctx, 0, p->first_backward);
    if (has_loss) sum += rt_read_scalar(p, g->xent);
    rt_carry_state(p);
  }
  if (P > 1) c->all_reduce_sum_f64(c, &sum, 1);
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state;
    p->be->upload(p->buf[s->id], saved[i], (size_t)s->numel * p->elem);
    mc_free(saved[i]);
  }
  mc_free(saved);
  mc_free(ids);
  mc_free(tg);
  rt_batcher_free(&b);
  if (tokens) *tokens = steps * (int64_t)Bl * P * T;
  return sum / (double)steps;
}

static void json_num(McBuf *b, const char *key, double v) {
  if (isfinite(v))
    mc_buf_printf(b, ",\"%s\":%.9g", key, v);
  else
    mc_buf_printf(b, ",\"%s\":null", key);
}

int rt_eval(Program *p, const Config *cfg, const char *ckpt, const char *data_path, bool json) {
  StFile *ck = rt_st_open(ckpt);
  rt_st_load_params(ck, p);
  int nv = 0;
  char **vocab = rt_ckpt_vocab(ck, &nv);
  Corpus *c = data_path ? rt_corpus_load_file(data_path, p->vocab, vocab, nv)
                        : rt_corpus_load(cfg, p->vocab, vocab, nv);
  rt_words_free(vocab, nv);
  rt_st_close(ck);
  double t0 = mc_now();
  int64_t tokens = 0;
  double loss = rt_evaluate(rt_comm_self(), p, c, SPLIT_TEST, &tokens);
  double secs = mc_now() - t0;
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"tokens\":%lld", (long long)tokens);
    json_num(&b, "test_loss", loss);
    json_num(&b, "test_ppl", exp(loss));
    json_num(&b, "floor_ppl", c->syn ? exp(c->syn->floor_nats) : NAN);
    json_num(&b, "seconds", secs);
    mc_buf_printf(&b, "}\n");
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("test ppl %.3f (loss %.4f nats/token over %lld tokens of %s, %.1fs)", exp(loss), loss,
           (long long)tokens, data_path ? data_path : "the test split", secs);
    if (c->syn) printf("; floor ppl %.3f", exp(c->syn->floor_nats));
    printf("\n");
  }
  rt_corpus_free(c);
  return 0;
}
