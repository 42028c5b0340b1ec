/* grads_moe.c: the gradient rules of the MoE ops in ops.def. Each rule emits the
 * backward ops for its inputs' gradients from its outputs' gradients gout[j]
 * (NULL: no gradient reaches output j; a backward op that needs the tensor gets
 * OP_ZEROS of the output's shape). Index outputs (i32) never carry gradients.
 * docs/moe.md derives each rule. */
#include "ir.h"

static Tensor *or_zeros(Graph *g, Tensor *grad, Tensor *like) {
  return grad ? grad : ir_op1(g, OP_ZEROS, like);
}

static Node *emit(Graph *g, OpKind op, int nin, Tensor *const *in, int64_t ia0, int64_t ia1) {
  int64_t ia[IR_MAX_ATTR] = {ia0, ia1};
  return ir_node(g, op, nin, in, ia, NULL);
}

/* noisy = clean + sigma*eps, sigma = softplus(raw) + 0.01:
 * dclean = g_noisy; draw = (g_noisy*eps + g_sigma) * sigmoid(raw) */
void grad_noise(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0] && !gout[1]) return;
  gin[0] = gout[0];
  Tensor *gn = or_zeros(g, gout[0], n->out[0]); /* in order: a fixed node order */
  Tensor *gs = or_zeros(g, gout[1], n->out[1]);
  Tensor *in[4] = {gn, gs, n->out[2], n->in[1]};
  gin[1] = emit(g, OP_NOISE_BWD, 4, in, 0, 0)->out[0];
}

/* The kept values and the thresholds are copies of input elements: scatter back. */
void grad_topk(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[1] && !gout[2]) return;
  Tensor *gv = or_zeros(g, gout[1], n->out[1]);
  Tensor *gt = or_zeros(g, gout[2], n->out[2]);
  Tensor *in[4] = {gv, gt, n->out[0], n->out[3]};
  gin[0] = emit(g, OP_TOPK_BWD, 4, in, n->in[0]->ty.dim[1].c, 0)->out[0];
}

/* Gradients reach clean, sigma and the thresholds (hence noisy through topk's thr
 * output, as the authors' code); the in/out-of-top-k choice is piecewise constant. */
void grad_load_smooth(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[5] = {gout[0], n->in[0], n->in[1], n->in[2], n->in[3]};
  Node *b = emit(g, OP_LOAD_SMOOTH_BWD, 5, in, 0, 0);
  gin[0] = b->out[0];
  gin[2] = b->out[1];
  gin[3] = b->out[2];
}

void grad_load_smooth_grouped(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[6] = {gout[0], n->in[0], n->in[1], n->in[2], n->in[3], n->in[4]};
  Node *b = emit(g, OP_LOAD_SMOOTH_GROUPED_BWD, 6, in, 0, 0);
  gin[0] = b->out[0];
  gin[2] = b->out[1];
  gin[3] = b->out[2];
}

/* importance[e] = sum of gates routed to e: dgates[n,j] = g[idx[n,j]] */
void grad_importance(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[1] = ir_op2(g, OP_GATHER_IDX, gout[0], n->in[0]);
}

void grad_cv2(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_CV2_BWD, gout[0], n->in[0]);
}

/* xs rows are copies of x rows: dx[n] = sum_j g_xs[pos[n,j]] */
void grad_dispatch(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_UNDISPATCH, gout[0], n->out[2]);
}

/* y = xs.W[e] (transW: xs.W[e]^T):
 * dxs = g.W[e]^T (g.W[e]); dW[e] = xs^T.g (transW: g^T.xs) */
void grad_grouped_matmul(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  bool tw = n->ia[0] != 0;
  Tensor *xs = n->in[0], *w = n->in[1], *off = n->in[2], *gy = gout[0];
  Tensor *in[3] = {gy, w, off};
  gin[0] = emit(g, OP_GROUPED_MATMUL, 3, in, !tw, 0)->out[0];
  Tensor *in2[3] = {tw ? gy : xs, tw ? xs : gy, off};
  gin[1] = emit(g, OP_GROUPED_MATMUL_DW, 3, in2, 0, 0)->out[0];
}

void grad_grouped_bias(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = gout[0];
  gin[1] = ir_op2(g, OP_GROUPED_SUM_ROWS, gout[0], n->in[2]);
}

void grad_combine(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[4] = {gout[0], n->in[0], n->in[1], n->in[2]};
  Node *b = emit(g, OP_COMBINE_BWD, 4, in, 0, 0);
  gin[0] = b->out[0];
  gin[1] = b->out[1];
}

void grad_concat0(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  int64_t start = 0;
  for (int i = 0; i < n->nin; i++) {
    int64_t len = n->in[i]->ty.dim[0].c;
    Tensor *in[1] = {gout[0]};
    gin[i] = emit(g, OP_SLICE0, 1, in, start, len)->out[0];
    start += len;
  }
}

void grad_scatter_pos(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_GATHER_POS, gout[0], n->in[1]);
}

void grad_gather_pos(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_SCATTER_POS, gout[0], n->in[1]);
}

/* y[r,m] = x[r,m]*s[r]: dx = row_scale(g, s), ds = row_dot(g, x) */
void grad_row_scale(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_ROW_SCALE, gout[0], n->in[1]);
  gin[1] = ir_op2(g, OP_ROW_DOT, gout[0], n->in[0]);
}

void grad_div_group_rows(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_DIV_GROUP_ROWS, gout[0], n->in[1]);
}

/* ---- batchwise gating */

void grad_gather_rows(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[3] = {gout[0], n->in[1], n->in[0]};
  gin[0] = emit(g, OP_SCATTER_ROWS, 3, in, 0, 0)->out[0];
}

void grad_scatter_rows(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  gin[0] = ir_op2(g, OP_GATHER_ROWS, gout[0], n->in[1]);
}

void grad_masked_norm(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[3] = {gout[0], n->in[0], n->in[1]};
  gin[0] = emit(g, OP_MASKED_NORM_BWD, 3, in, 0, 0)->out[0];
}

void grad_combine_routes(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[5] = {gout[0], n->in[0], n->in[1], n->in[2], n->in[3]};
  Node *b = emit(g, OP_COMBINE_ROUTES_BWD, 5, in, 0, 0);
  gin[0] = b->out[0];
  gin[1] = b->out[1];
}

/* The masks are step functions: d/dgs = (Mthr - M)/N, d/dthr = -sum_n (Mthr - M)/N
 * (N of the global batch: ia[0] devices, as the forward) */
void grad_threshold_loss(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  if (!gout[0]) return;
  Tensor *in[4] = {gout[0], n->in[0], n->in[1], n->in[2]};
  Node *b = emit(g, OP_THRESHOLD_LOSS_BWD, 4, in, n->ia[0], 0);
  gin[0] = b->out[0];
  gin[2] = b->out[1];
}
