/* grads_seq.c: the gradient rules of the sequence ops in ops.def (conventions as in
 * grads_dense.c: each gin[i] has exactly the type of n->in[i]; masks, counts and ids
 * get none; xent_pad's rule is grad_xent's). docs/language.md ("The attention exactly")
 * derives them. */
#include "ir.h"

static Tensor *bmm(Graph *g, Tensor *a, Tensor *b, bool ta, bool tb) {
  Tensor *in[2] = {a, b};
  int64_t ia[IR_MAX_ATTR] = {ta, tb};
  return ir_node(g, OP_BMM, 2, in, ia, NULL)->out[0];
}

/* The four forms, per batch row as grad_matmul's:
 *   y = a . b       da = g . b^T     db = a^T . g
 *   y = a . b^T     da = g . b       db = g^T . a
 *   y = a^T . b     da = b . g^T     db = a . g
 *   y = a^T . b^T   da = b^T . g^T   db = g^T . a^T */
void grad_bmm(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  Tensor *a = n->in[0], *b = n->in[1], *gy = gout[0];
  bool ta = n->ia[0] != 0, tb = n->ia[1] != 0;
  if (!ta && !tb) {
    gin[0] = bmm(g, gy, b, false, true);
    gin[1] = bmm(g, a, gy, true, false);
  } else if (!ta && tb) {
    gin[0] = bmm(g, gy, b, false, false);
    gin[1] = bmm(g, gy, a, true, false);
  } else if (ta && !tb) {
    gin[0] = bmm(g, b, gy, false, true);
    gin[1] = bmm(g, a, gy, false, false);
  } else {
    gin[0] = bmm(g, b, gy, true, true);
    gin[1] = bmm(g, gy, a, true, true);
  }
}

/* s = sum_d v_d tanh(qw + mu): one backward op for all three inputs */
void grad_attn_score(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  Tensor *in[4] = {gout[0], n->in[0], n->in[1], n->in[2]};
  Node *b = ir_node(g, OP_ATTN_SCORE_BWD, 4, in, NULL, NULL);
  for (int i = 0; i < 3; i++)
    gin[i] = b->out[i];
}

/* a = softmax over the unmasked positions, 0 elsewhere: dx = a * (g - sum_j a_j g_j), which
 * is softmax_bwd(g, a) and 0 at masked positions (a = 0 there); the mask is data */
void grad_masked_softmax(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_SOFTMAX_BWD, gout[0], n->out[0]);
}

/* y = x * v (columns): dx = g * v, dv = sum over rows of g * x */
void grad_col_scale(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  gin[0] = ir_op2(g, OP_COL_SCALE, gout[0], n->in[1]);
  gin[1] = ir_op1(g, OP_SUM_ROWS, ir_op2(g, OP_MUL, gout[0], n->in[0]));
}

/* y = [a, b]: da, db = the two column ranges of g */
void grad_concat_last(Graph *g, Node *n, Tensor *const *gout, Tensor **gin) {
  int64_t na = n->in[0]->ty.dim[n->in[0]->ty.rank - 1].c;
  int64_t nb = n->in[1]->ty.dim[n->in[1]->ty.rank - 1].c;
  Tensor *in[1] = {gout[0]};
  int64_t ia0[IR_MAX_ATTR] = {0, na}, ia1[IR_MAX_ATTR] = {na, nb};
  gin[0] = ir_node(g, OP_SLICE_LAST, 1, in, ia0, NULL)->out[0];
  gin[1] = ir_node(g, OP_SLICE_LAST, 1, in, ia1, NULL)->out[0];
}
