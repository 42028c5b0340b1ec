/* grads_dense.c: the gradient rules of the dense ops in ops.def.
 *
 * A rule reads the forward node n (its inputs, outputs and attributes) and the
 * gradients of its outputs gout[j] (NULL where none reaches output j), emits
 * ordinary IR nodes that compute the gradient of each float input, and stores
 * them in gin[i] (NULL: no gradient). passes/autodiff.c calls the rules with
 * the graph in backward mode, so every tensor made here is TK_GRAD and carries
 * the forward node's layer, role and location. Each gin[i] has exactly the type
 * of n->in[i] (a reshape is added where an op's natural result differs). */
#include "ir.h"

/* ---------------------------------------------------------------- helpers */

static bool same_type(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!dim_eq(a->dim[i], b->dim[i])) return false;
  return true;
}

/* t viewed with x's type (a reshape when the dims differ; element counts match). */
static Tensor *like(Graph *g, Tensor *t, const Tensor *x) {
  return same_type(&t->ty, &x->ty) ? t : ir_reshape(g, t, x->ty);
}

static Tensor *node1(Graph *g, OpKind op, Tensor *a, Tensor *b, const int64_t *ia,
                     const double *fa) {
  Tensor *in[2] = {a, b};
  return ir_node(g, op, b ? 2 : 1, in, ia, fa)->out[0];
}

static Tensor *scale(Graph *g, Tensor *x, double s) {
  double fa[IR_MAX_ATTR] = {s, 0};
  return node1(g, OP_SCALE, x, NULL, NULL, fa);
}

static Tensor *matmul(Graph *g, Tensor *a, Tensor *b, bool ta, bool tb) {
  int64_t ia[IR_MAX_ATTR] = {ta, tb};
  return node1(g, OP_MATMUL, a, b, ia, NULL);
}

/* a scalar operand b beside a non-scalar a receives the sum of its per-element grads */
static bool scalar_b(const Node *n) {
  return n->in[1]->ty.rank == 0 && n->in[0]->ty.rank != 0;
}

/* ---------------------------------------------------------------- elementwise */

/* y = a + b: da = g, db = g (sum(g) for a scalar b) */
void grad_add(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = gout[0];
  gin[1] = scalar_b(n) ? ir_op1(g, OP_SUM, gout[0]) : gout[0];
}

/* y = a - b: da = g, db = -g (-sum(g) for a scalar b) */
void grad_sub(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = gout[0];
  gin[1] = scale(g, scalar_b(n) ? ir_op1(g, OP_SUM, gout[0]) : gout[0], -1.0);
}

/* y = a * b: da = g * b, db = g * a (sum(g * a) for a scalar b) */
void grad_mul(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_MUL, gout[0], n->in[1]);
  Tensor *gb = ir_op2(g, OP_MUL, gout[0], n->in[0]);
  gin[1] = scalar_b(n) ? ir_op1(g, OP_SUM, gb) : gb;
}

/* y = x * s + c: dx = g * s */
void grad_scale(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = scale(g, gout[0], n->fa[0]);
}

/* activations: dx = act_bwd(g, y) (softplus: from x) */
void grad_relu(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_RELU_BWD, gout[0], n->out[0]);
}

void grad_tanh(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_TANH_BWD, gout[0], n->out[0]);
}

void grad_sigmoid(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_SIGMOID_BWD, gout[0], n->out[0]);
}

void grad_softplus(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_SOFTPLUS_BWD, gout[0], n->in[0]);
}

/* y = x * mask: dx = g * mask (the mask is a constant of the step) */
void grad_dropout(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (gout[0]) gin[0] = ir_op2(g, OP_MUL, gout[0], n->out[1]);
}

/* ---------------------------------------------------------------- matmul family */

/* Four forms (R rows of a; "a^T" reads a as rows [R, M] and transposes):
 *   y[R,N] = a[R,K] . b[K,N]     da = g . b^T     db = a^T . g
 *   y[R,N] = a[R,K] . b[N,K]^T   da = g . b       db = g^T . a
 *   y[M,N] = a[R,M]^T . b[R,N]   da = b . g^T     db = a . g
 *   y[M,N] = a[R,M]^T . b[N,R]^T da = b^T . g^T   db = g^T . a^T   (a as 2-D [R, M])
 * Results that come out flattened are reshaped back to the input's type. */
void grad_matmul(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  Tensor *a = n->in[0], *b = n->in[1], *gy = gout[0];
  bool ta = n->ia[0] != 0, tb = n->ia[1] != 0;
  if (!ta && !tb) {
    gin[0] = matmul(g, gy, b, false, true);
    gin[1] = like(g, matmul(g, a, gy, true, false), b);
  } else if (!ta && tb) {
    gin[0] = matmul(g, gy, b, false, false);
    gin[1] = like(g, matmul(g, gy, a, true, false), b);
  } else if (ta && !tb) {
    gin[0] = like(g, matmul(g, b, gy, false, true), a);
    gin[1] = like(g, matmul(g, a, gy, false, false), b);
  } else {
    gin[0] = like(g, matmul(g, b, gy, true, true), a);
    Tensor *a2 = a;
    if (a->ty.rank != 2) {
      Dim r = dim_int(1);
      for (int i = 0; i < a->ty.rank - 1; i++)
        r = dim_mul(r, a->ty.dim[i]);
      Dim d[2] = {r, a->ty.dim[a->ty.rank - 1]};
      a2 = ir_reshape(g, a, ir_type(DT_F32, 2, d));
    }
    gin[1] = like(g, matmul(g, gy, a2, true, true), b);
  }
}

/* y = x + b[N]: dx = g, db = sum_rows(g) */
void grad_bias_add(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  (void)n;
  gin[0] = gout[0];
  gin[1] = ir_op1(g, OP_SUM_ROWS, gout[0]);
}

/* y[N] = sum over rows of x[..., N]: dx = g broadcast to every row */
void grad_sum_rows(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_BIAS_ADD, ir_op1(g, OP_ZEROS, n->in[0]), gout[0]);
}

/* y = sum(x): dx = broadcast(g) */
void grad_sum(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_BROADCAST, gout[0], n->in[0]);
}

/* y = reshape(x): dx = reshape(g) back to x's type */
void grad_reshape(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_reshape(g, gout[0], n->in[0]->ty);
}

/* y = W[ids]: dW = embedding_bwd(ids, g) (scatter-add); no gradient for ids */
void grad_embedding(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  Dim v = n->in[1]->ty.dim[0];
  MOEC_ASSERT(dim_is_const(v));
  int64_t ia[IR_MAX_ATTR] = {v.c};
  gin[1] = node1(g, OP_EMBEDDING_BWD, n->in[0], gout[0], ia, NULL);
}

/* ---------------------------------------------------------------- lstm */

/* Gradient flows in through H only: hT and cT carry the state to the next step
 * (truncated BPTT), and the C and G outputs are saved for the backward pass. */
void grad_lstm(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (gout[1] || gout[2])
    mc_fatal("lstm '%s': gradients through its C or G outputs are not supported",
             n->layer ? n->layer : "?");
  if (!gout[0]) return;
  bool proj = n->nin == 5; /* W_p: lstmp_bwd also gives dW_p */
  Tensor *in[8] = {gout[0],   n->in[1],  n->in[2],  n->in[3],
                   n->out[0], n->out[1], n->out[2], proj ? n->in[4] : NULL};
  Node *b = ir_node(g, proj ? OP_LSTMP_BWD : OP_LSTM_BWD, proj ? 8 : 7, in, NULL, NULL);
  for (int i = 0; i < n->nin; i++)
    gin[i] = b->out[i];
}

/* ---------------------------------------------------------------- softmax, cross-entropy */

/* y = softmax(x): dx = softmax_bwd(g, y) */
void grad_softmax(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_SOFTMAX_BWD, gout[0], n->out[0]);
}

/* (loss, probs, cand, tries) = sampled_xent(x, W, b, targets): (dx, dWt, dbt, dWs, dbs) =
 * sampled_xent_bwd(...); the gradients of W and b touch only the target and sampled rows:
 * dW = embedding_bwd(targets, dWt, cand, dWs), db likewise (one scatter of both pairs; the
 * comm pass exchanges those rows instead of dW when that is cheaper) */
void grad_sampled_xent(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (gout[1])
    mc_fatal("sampled_xent '%s': gradients through its probabilities are not supported",
             n->layer ? n->layer : "?");
  if (!gout[0]) return;
  Tensor *in[7] = {gout[0], n->out[1], n->in[0], n->in[1], n->in[3], n->out[2], n->out[3]};
  double fa[IR_MAX_ATTR] = {n->fa[0]};
  Node *b = ir_node(g, OP_SAMPLED_XENT_BWD, 7, in, NULL, fa);
  int64_t V = n->in[1]->ty.dim[0].c;
  int64_t ia[IR_MAX_ATTR] = {V};
  gin[0] = b->out[0];
  Tensor *wp[4] = {n->in[3], b->out[1], n->out[2], b->out[3]};
  gin[1] = ir_node(g, OP_EMBEDDING_BWD, 4, wp, ia, NULL)->out[0]; // [V, D]
  Tensor *bp[4] = {n->in[3], b->out[2], n->out[2], b->out[4]};
  Dim vd = dim_int(V);
  gin[2] = ir_reshape(g, ir_node(g, OP_EMBEDDING_BWD, 4, bp, ia, NULL)->out[0],
                      ir_type(DT_F32, 1, &vd)); // [V]
}

/* (loss, probs) = xent(logits, targets):
 * dlogits = xent_bwd(g_loss, probs, targets) (+ softmax_bwd(g_probs, probs) when the
 * probs are used too); no gradient for targets. xent_pad (logits, targets, count): the
 * same with xent_pad_bwd(g_loss, probs, targets, count) {pad}; none for the count */
void grad_xent(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  Tensor *d = NULL;
  if (gout[0] && n->op == OP_XENT_PAD) {
    Tensor *in[4] = {gout[0], n->out[1], n->in[1], n->in[2]};
    int64_t ia[IR_MAX_ATTR] = {n->ia[0]};
    d = ir_node(g, OP_XENT_PAD_BWD, 4, in, ia, NULL)->out[0];
  } else if (gout[0]) {
    Tensor *in[3] = {gout[0], n->out[1], n->in[1]};
    double fa[IR_MAX_ATTR] = {n->fa[0]};
    d = ir_node(g, OP_XENT_BWD, 3, in, NULL, fa)->out[0];
  }
  if (gout[1]) {
    Tensor *dp = ir_op2(g, OP_SOFTMAX_BWD, gout[1], n->out[1]);
    d = d ? ir_op2(g, OP_ADD, d, dp) : dp;
  }
  gin[0] = d;
}
