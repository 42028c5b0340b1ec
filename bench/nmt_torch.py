#!/usr/bin/python3
"""nmt_torch.py: the PyTorch side of the translation benchmark (bench/nmt_compare.sh).

The dense attention model of examples/nmt_en_fr_small_dense.moe, written as a PyTorch
user writes it: nn.Embedding, nn.LSTM, nn.Linear, the paper's additive attention
(appendix G: s_ij = v . tanh(m_i U + q_j W), softmax over the source positions that are
not padding), dropout, residual connections; Adam with gradient-norm clipping; trained
for a wall-clock budget (--max-time, checked at step boundaries as moec's train.max_time).

The data is moec's: the same pairs, encoded with the BPE vocabulary of a moec checkpoint
(--bpe CKPT: its data.bpe merges, applied as runtime/bpe.c does), batched as moec
batches them (buckets of lengths rounded up to 8, floor(batch_tokens / max(S, T)) rows
a batch, shuffled every epoch). The trained weights are written as a moec checkpoint
(--save: moec's parameter names, the BPE vocabulary in its metadata), so that
`moec eval examples/nmt_en_fr_small_dense.moe --load CKPT` measures perplexity and BLEU
with the very decoder and BLEU code that measure moec's models.

    /usr/bin/python3 bench/nmt_torch.py --bpe moec.safetensors --save torch.safetensors \\
        [--max-time 10m] [--threads 1] [--json] [--no-eval]
"""

import argparse
import json
import math
import os
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, BOS, EOS, BYTE0, NBASE = 0, 1, 2, 3, 259  # runtime/text.h
WARM_STEPS = 5  # steady_tokens_per_s leaves out the first steps


# ---------------------------------------------------------------- safetensors

def st_read_meta(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def st_write(path, tensors, meta):
    header, off, blobs = {"__metadata__": meta}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- BPE (runtime/bpe.c)

def byte_class(c):
    if c in b" \t\n\r\f\v":
        return 0
    if c >= 0x80 or (65 <= c <= 90) or (97 <= c <= 122):
        return 1
    if 48 <= c <= 57:
        return 2
    return 3


def pretokens(text):
    """Runs of one byte class, each with the space before it (but the first)."""
    out, i, n, space, anyt = [], 0, len(text), False, False
    while i < n:
        cl = byte_class(text[i])
        if cl == 0:
            space = anyt
            i += 1
            continue
        j = i + 1
        while j < n and byte_class(text[j]) == cl:
            j += 1
        out.append((b" " if space else b"") + text[i:j])
        space, anyt, i = False, True, j
    return out


class Bpe:
    def __init__(self, spec):
        lines = spec.split("\n")
        head = lines[0].split()
        if head[:2] != ["moec-bpe", "1"]:
            raise ValueError("not a moec BPE vocabulary")
        n = int(head[2])
        self.rank = {}
        for i in range(n):
            a, b = map(int, lines[1 + i].split())
            self.rank[(a, b)] = i
        self.vocab = NBASE + n
        self.cache = {}

    def encode_pretoken(self, tok):
        s = [BYTE0 + c for c in tok]
        while True:
            best, at = None, -1
            for i in range(len(s) - 1):
                r = self.rank.get((s[i], s[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                return s
            s[at:at + 2] = [NBASE + best]

    def encode(self, text):  # text: bytes
        ids = []
        for t in pretokens(text):
            c = self.cache.get(t)
            if c is None:
                c = self.cache[t] = self.encode_pretoken(t)
            ids += c
        return ids


# ---------------------------------------------------------------- data

def read_pairs(path, bpe, max_len):
    """moec's pairs (runtime/parallel.c): the lines with source<TAB>target, both sides
    encoded; a pair with an empty side or a side longer than max_len - 1 ids left out."""
    pairs, left = [], 0
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            line = line[:-1] if line.endswith(b"\r") else line
            if not line.strip(b" \t"):
                continue
            s, t = line.split(b"\t", 1)
            a, b = bpe.encode(s), bpe.encode(t)
            if not a or not b or len(a) + 1 > max_len or len(b) + 1 > max_len:
                left += 1
                continue
            pairs.append((a + [EOS], b + [EOS]))
    return pairs, left


def batches(pairs, budget, rng):
    """moec's batching (runtime/parallel.c): buckets of lengths rounded up to 8, at most
    floor(budget / max(S, T)) rows (a multiple of 8) a batch; order shuffled."""
    buckets = {}
    for i, (a, b) in enumerate(pairs):
        key = (-(-len(a) // 8) * 8, -(-len(b) // 8) * 8)
        buckets.setdefault(key, []).append(i)
    out = []
    for (S, T), idx in buckets.items():
        if rng:
            rng.shuffle(idx)
        rows = max(8, budget // max(S, T) // 8 * 8)
        for k in range(0, len(idx), rows):
            out.append((S, T, idx[k:k + rows]))
    if rng:
        rng.shuffle(out)
    return out


def tensors(pairs, S, T, idx):
    B = len(idx)
    src = torch.zeros(B, S, dtype=torch.long)
    ti = torch.zeros(B, T, dtype=torch.long)
    to = torch.zeros(B, T, dtype=torch.long)
    for r, i in enumerate(idx):
        a, b = pairs[i]
        src[r, :len(a)] = torch.tensor(a)
        ti[r, 0] = BOS
        ti[r, 1:len(b)] = torch.tensor(b[:-1])
        to[r, :len(b)] = torch.tensor(b)
    return src, ti, to


# ---------------------------------------------------------------- the model

class Attention(nn.Module):
    def __init__(self, dq, dm, units):
        super().__init__()
        self.u = nn.Parameter(torch.empty(dm, units).uniform_(-0.1, 0.1))
        self.w = nn.Parameter(torch.empty(dq, units).uniform_(-0.1, 0.1))
        self.v = nn.Parameter(torch.empty(units).uniform_(-0.1, 0.1))

    def forward(self, q, mem, keep):  # q [B,T,Dq], mem [B,S,Dm], keep [B,S]
        s = (torch.tanh((mem @ self.u)[:, None] + (q @ self.w)[:, :, None]) * self.v).sum(-1)
        a = torch.softmax(s.masked_fill(~keep[:, None, :], float("-inf")), dim=-1)
        return a @ mem


class FeedForward(nn.Module):
    """The dense block of equal ops to the MoE's k experts: D -> H (ReLU) -> D."""

    def __init__(self, d, hidden):
        super().__init__()
        self.h = nn.Linear(d, hidden)
        self.f = nn.Linear(hidden, d)

    def forward(self, x):
        return self.f(F.relu(self.h(x)))


class Seq2Seq(nn.Module):
    def __init__(self, V, D, hidden, dropout):
        super().__init__()
        self.p = dropout
        self.se, self.te = nn.Embedding(V, D), nn.Embedding(V, D)
        self.e1, self.e2 = nn.LSTM(D, D, batch_first=True), nn.LSTM(D, D, batch_first=True)
        self.d1, self.d2 = nn.LSTM(D, D, batch_first=True), nn.LSTM(2 * D, D, batch_first=True)
        self.eff, self.dff = FeedForward(D, hidden), FeedForward(D, hidden)
        self.ctx = Attention(D, D, D)
        self.out = nn.Linear(D, V)

    def forward(self, src, ti, to):
        drop = lambda x: F.dropout(x, self.p, self.training)
        keep = src != PAD
        e1, _ = self.e1(drop(self.se(src)))
        r1 = e1 + drop(self.eff(e1))
        e2, _ = self.e2(r1)
        enc = r1 + drop(e2)
        d1, _ = self.d1(drop(self.te(ti)))
        c = self.ctx(d1, enc, keep)
        r2 = d1 + drop(self.dff(d1))
        d2, _ = self.d2(torch.cat([r2, c], dim=-1))
        out = r2 + drop(d2)
        logits = self.out(out)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), to.reshape(-1),
                               ignore_index=PAD)

    def moec_weights(self):
        """moec's names (examples/nmt_en_fr_small_dense.moe); an LSTM's two biases as one."""
        w = {}
        for name in ("se", "te"):
            w[f"{name}.weight"] = getattr(self, name).weight
        for name in ("e1", "e2", "d1", "d2"):
            m = getattr(self, name)
            w[f"{name}.weight_ih"] = m.weight_ih_l0
            w[f"{name}.weight_hh"] = m.weight_hh_l0
            w[f"{name}.bias"] = m.bias_ih_l0 + m.bias_hh_l0
        for ff, (h, f) in (("eff", ("eh", "em")), ("dff", ("dh", "dm"))):
            m = getattr(self, ff)
            w[f"{h}.weight"], w[f"{h}.bias"] = m.h.weight, m.h.bias
            w[f"{f}.weight"], w[f"{f}.bias"] = m.f.weight, m.f.bias
        for p in ("u", "w", "v"):
            w[f"ctx.{p}"] = getattr(self.ctx, p)
        w["loss.weight"], w["loss.bias"] = self.out.weight, self.out.bias
        return {k: v.detach().numpy() for k, v in w.items()}


def duration(s):
    """600, 90s, 10m, 1h30m -> seconds (moec's --max-time)."""
    try:
        return float(s)
    except ValueError:
        pass
    total, num = 0.0, ""
    for ch in s:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in "hms" and num:
            total += float(num) * {"h": 3600, "m": 60, "s": 1}[ch]
            num = ""
        else:
            raise argparse.ArgumentTypeError(f"not a duration: {s}")
    if num:
        raise argparse.ArgumentTypeError(f"not a duration: {s}")
    return total


def evaluate(model, pairs, budget):
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for S, T, idx in batches(pairs, budget, None):
            src, ti, to = tensors(pairs, S, T, idx)
            k = int((to != PAD).sum())
            nll += model(src, ti, to).item() * k
            n += k
    model.train()
    return nll / max(n, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bpe", required=True, help="a moec checkpoint of the model: its data.bpe")
    ap.add_argument("--train", default="../shared/data/en-fr/train.tsv")
    ap.add_argument("--valid", default="../shared/data/en-fr/valid.tsv")
    ap.add_argument("--vocab", type=int, default=2000, help="V (the model's; >= the BPE's ids)")
    ap.add_argument("--dim", type=int, default=64, help="D: embeddings, LSTMs, attention")
    ap.add_argument("--hidden", type=int, default=264, help="the feed-forward blocks' hidden units")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10 ** 9)
    ap.add_argument("--max-time", type=duration, default=0.0, help="600, 90s, 10m; 0: none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save", help="write the weights as a moec checkpoint")
    ap.add_argument("--json", action="store_true", help="the last line: one JSON object")
    ap.add_argument("--no-eval", action="store_true",
                    help="no valid perplexity at the end (a speed probe)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    spec = st_read_meta(args.bpe).get("data.bpe")
    if spec is None:
        sys.exit(f"nmt_torch: {args.bpe}: no data.bpe (not a translation model's checkpoint)")
    bpe = Bpe(spec)
    if bpe.vocab > args.vocab:
        sys.exit(f"nmt_torch: the BPE vocabulary has {bpe.vocab} ids, more than --vocab {args.vocab}")
    t0 = time.time()
    train, left = read_pairs(args.train, bpe, args.max_len)
    valid, vleft = read_pairs(args.valid, bpe, args.max_len)
    print(f"nmt_torch: {len(train)} training pairs ({left} left out), {len(valid)} valid "
          f"({vleft} left out), encoded in {time.time() - t0:.1f}s", flush=True)

    model = Seq2Seq(args.vocab, args.dim, args.hidden, args.dropout)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"nmt_torch: {nparams} parameters, {args.threads} thread(s), max_time {args.max_time:g}s",
          flush=True)

    step, tokens, t_train, epoch, loss_tail = 0, 0, 0.0, 0, []
    warm_tokens, warm_t = 0, 0.0
    start = time.time()
    order = []
    while step < args.steps:
        if not order:
            order = batches(train, args.batch_tokens, rng)
            epoch += 1
        S, T, idx = order.pop()
        t1 = time.time()
        src, ti, to = tensors(train, S, T, idx)
        loss = model(src, ti, to)
        opt.zero_grad()
        loss.backward()
        if args.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        t_train += time.time() - t1
        tokens += int((to != PAD).sum())
        step += 1
        if step == WARM_STEPS:  # the rate past the first steps (allocator, caches): probes
            warm_tokens, warm_t = tokens, t_train
        loss_tail = (loss_tail + [loss.item()])[-100:]
        if step % 100 == 0:
            print(f"step {step}  loss {loss.item():.4f}  {tokens / t_train:.0f} tok/s  "
                  f"{time.time() - start:.0f}s", flush=True)
        if args.max_time > 0 and time.time() - start >= args.max_time:
            print(f"nmt_torch: max_time {args.max_time:g}s reached after step {step}", flush=True)
            break
    t_eval = time.time()
    vloss = math.nan if args.no_eval else evaluate(model, valid, args.batch_tokens)
    t_eval = time.time() - t_eval
    if args.save:
        st_write(args.save, model.moec_weights(),
                 {"format": "pt", "written_by": "bench/nmt_torch.py", "data.bpe": spec})
    res = {"steps": step, "epochs": epoch, "train_loss": sum(loss_tail) / max(len(loss_tail), 1),
           "valid_ppl": math.exp(vloss), "tokens_per_s": tokens / max(t_train, 1e-9),
           "train_seconds": t_train, "eval_seconds": t_eval, "params": nparams,
           "steady_tokens_per_s": (tokens - warm_tokens) / max(t_train - warm_t, 1e-9),
           "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    print(f"valid ppl {res['valid_ppl']:.3f} (per target token)\n{step} steps in {t_train:.1f}s "
          f"({res['tokens_per_s']:.0f} tokens/s)")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
