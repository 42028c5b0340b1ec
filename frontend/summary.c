/* summary.c: what `moec check` reports about a checked model: its layers, each
 * with output type, parameter count and forward multiply-adds per position,
 * and the totals the paper's tables use (Shazeer et al. 2017, Table 7):
 *
 *   params_core      parameters excluding the embedding and softmax layers;
 *   ops_per_timestep multiply-adds of the weight matrices in one forward step of
 *                    one position, excluding embedding and softmax. In a translation
 *                    model a timestep is one source and one target position (the
 *                    encoder's layers count per source position, the decoder's per
 *                    target position); an attention's projections count there, and
 *                    its scores and context, which grow with the source length, are
 *                    given apart per (target step, source position) pair.
 *
 * Counts match the parameters ir_build creates (biases included; w_noise only
 * when the gate is noisy). docs/language.md gives every formula. */
#include <string.h>

#include "frontend.h"

/* Parameters and per-position multiply-adds of one layer call; in = input width, in2 =
 * the second tensor's (attention's memory); *pair: per (target, source) pair. */
static void count_layer(const Expr *e, int64_t in, int64_t in2, int64_t *params, int64_t *ops,
                        int64_t *pair) {
  const double *av = e->argv;
  int64_t p = 0, o = 0, pp = 0;
  switch ((LayerId)e->layer) {
  case L_EMBEDDING: {
    int64_t V = (int64_t)av[LA_VOCAB], D = (int64_t)av[LA_DIM];
    p = V * D; /* a lookup: no multiply-adds */
    break;
  }
  case L_LSTM: {
    int64_t U = (int64_t)av[LA_UNITS], R = av[LA_PROJ] >= 1 ? (int64_t)av[LA_PROJ] : 0;
    int64_t h = R ? R : U;              /* the recurrent state's width */
    p = 4 * U * in + 4 * U * h + 4 * U; /* weight_ih, weight_hh, bias */
    o = 4 * U * (in + h);
    if (R) { /* weight_hr [proj, units]: h_t = weight_hr . (o * tanh(c_t)) */
      p += R * U;
      o += R * U;
    }
    break;
  }
  case L_DENSE: {
    int64_t U = (int64_t)av[LA_UNITS];
    p = U * in + U;
    o = in * U;
    break;
  }
  case L_MOE: {
    int gating = (int)av[LA_GATING];
    int64_t E = (int64_t)av[LA_EXPERTS], H = (int64_t)av[LA_HIDDEN];
    int64_t O = av[LA_OUT] >= 1 ? (int64_t)av[LA_OUT] : in;
    int64_t k = gating == LAE_SOFTMAX ? E : (int64_t)av[LA_K];
    bool noisy = gating == LAE_NOISY_TOPK && av[LA_NOISE] != 0;
    int64_t bias = av[LA_BIAS] != 0 ? H + O : 0; /* b1, b2 */
    int64_t gate = in * E * (noisy ? 2 : 1);     /* w_gate (+ w_noise) */
    p = gate + E * (in * H + H * O + bias);      /* w1, (b1), w2, (b2) */
    o = gate + k * (in * H + H * O);
    break;
  }
  case L_HMOE: {
    int gating = (int)av[LA_GATING];
    bool dense = gating == LAE_SOFTMAX;
    int64_t G = (int64_t)av[LA_GROUPS], E = (int64_t)av[LA_EXPERTS], H = (int64_t)av[LA_HIDDEN];
    int64_t O = av[LA_OUT] >= 1 ? (int64_t)av[LA_OUT] : in;
    int64_t kg = dense ? G : (int64_t)av[LA_K_GROUP], k = dense ? E : (int64_t)av[LA_K];
    int64_t nm = !dense && av[LA_NOISE] != 0 ? 2 : 1;
    int64_t primary = in * G * nm, secondary = in * E * nm;
    int64_t bias = av[LA_BIAS] != 0 ? H + O : 0;
    p = primary + G * (secondary + E * (in * H + H * O + bias));
    o = primary + kg * secondary + kg * k * (in * H + H * O);
    break;
  }
  case L_ATTENTION: {
    int64_t A = (int64_t)av[LA_UNITS];
    p = in2 * A + in * A + A; /* u, w, v */
    o = in2 * A + in * A;     /* m.U per source position, q.W per target position */
    pp = A + in2;             /* the score (v . tanh(...): A) and the context (in2) */
    if (av[LA_SCORE] == LAE_PRODUCT) o += A; /* tanh(q.W) * v, once per target step */
    break;
  }
  case L_SOFTMAX_XENT:
  case L_SAMPLED_SOFTMAX_XENT: { /* sampled: in * (samples + 1) in training, exact here */
    int64_t V = (int64_t)av[LA_VOCAB];
    p = V * in + V;
    o = in * V; /* shown per layer; not in ops_per_timestep */
    break;
  }
  default: /* dropout, relu, tanh, sigmoid, concat: no weights */
    break;
  }
  *params = p;
  *ops = o;
  *pair = pp;
}

ModelSummary fe_summarize(AstFile *f, McArena *a) {
  ModelSummary s = {0};
  if (!f || !f->model) return s;
  s.model = f->model->name;
  for (Stmt *st = f->model->stmts; st; st = st->next)
    if (st->kind == ST_INPUT)
      for (Arg *a = st->dims; a; a = a->next)
        if (a->value && a->value->kind == EX_NAME && !strcmp(a->value->str, "S"))
          s.translation = true;
  int n = 0;
  for (Stmt *st = f->model->stmts; st; st = st->next)
    if (st->kind == ST_ASSIGN && st->value && st->value->kind == EX_CALL && st->value->layer >= 0)
      n++;
  s.layers = mc_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *s.layers);
  for (Stmt *st = f->model->stmts; st; st = st->next) {
    Expr *e = st->value;
    if (st->kind != ST_ASSIGN || !e || e->kind != EX_CALL || e->layer < 0) continue;
    LayerSummary *l = &s.layers[s.nlayers++];
    l->name = st->name;
    l->layer = (LayerId)e->layer;
    l->loc = e->loc;
    l->out = e->ty;
    const Expr *x = e->targ[0], *x2 = e->targ[1];
    int64_t in = 0, in2 = 0;
    if (x && x->ty.rank > 0) in = x->ty.dim[x->ty.rank - 1].c;
    if (x2 && x2->ty.rank > 0 && fe_layers[e->layer].ntensors > 1)
      in2 = x2->ty.dim[x2->ty.rank - 1].c;
    count_layer(e, in, in2, &l->params, &l->ops_per_token, &l->ops_per_pair);
    l->core =
        e->layer != L_EMBEDDING && e->layer != L_SOFTMAX_XENT && e->layer != L_SAMPLED_SOFTMAX_XENT;
    s.params += l->params;
    if (l->core) {
      s.params_core += l->params;
      s.ops_per_timestep += l->ops_per_token;
      s.ops_per_pair += l->ops_per_pair;
    }
  }
  return s;
}
