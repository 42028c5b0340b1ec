#!/usr/bin/python3
"""torch_ref.py: an independent PyTorch reference for moec's LSTM-MoE models.

It reads the model block of a small .moe file (its own tiny parser: let, input,
NAME = layer(...), + - *, output), builds the same model from PyTorch modules
(nn.Embedding, nn.LSTM, nn.Linear, and the MoE and hierarchical MoE written out
as PyTorch users write them: gate, top-k, a loop over experts with index_select /
index_add_), writes random weights and random tokens, runs

    moec grad FILE --load W.safetensors --tokens F.bin --out G.safetensors --json

and compares moec's loss (and its xent and aux parts) and the gradient of every
parameter with PyTorch autograd, computed in float64.

Semantics (docs/language.md "The MoE layer exactly", as `moec grad` runs it: no
dropout, no gate noise, LSTM state starting at zero):
  clean = x.w_gate; with noise=true sigma = softplus(x.w_noise) + 0.01 and
  noisy = clean (the noise draw is zero); the k largest noisy values are kept,
  g = softmax over them; y = sum_kept g_i * (relu(x.w1[i] + b1[i]).w2[i] + b2[i]);
  importance = sum_n g; load = sum_n Phi((clean_i - thr)/sigma_i), thr the (k+1)-th
  largest noisy value if noisy_i is above it, else the k-th (noise=false: the count
  of routed positions, no gradient); aux = w_importance*cv2(importance) +
  w_load*cv2(load), cv2(v) = var(v)/(mean(v)^2 + 1e-10) (population variance);
  loss = mean cross-entropy + the aux of every MoE. gating=softmax: all experts,
  load = N for each (cv2 = 0). hmoe (appendix B): a primary top-k_group gate over
  groups, a secondary top-k gate inside each picked group on that group's rows;
  importance_H[i,j] = sum_x Gp(x)_i G_i(x)_j, load_H[i,j] = Load_p_i *
  Load_i(X^(i))_j / max(|X^(i)|, 1). bias=false: no expert biases; act=: the
  activation on the layer's output.
  sampled_softmax_xent (`moec grad` computes its sampled loss): with the samples c_j
  and the number of draws n that moec writes into G (NAME.samples, NAME.tries),
  P(c) = log((c+2)/(c+1))/log(V+1), e(c) = 1 - (1-P(c))^n (1 when n = 0: all V
  classes), logits l = x.W^T + b; row loss = logsumexp([l_t - log e(t), l_c - log e(c)
  for each c != t]) - (l_t - log e(t)), averaged over the rows. The reference checks
  the samples themselves (S distinct ids in [0, V)) and redoes the loss from them.

Tolerances (moec computes in float32, the reference in float64; float32 rounding
gives about 1e-7 on the loss and 1e-6 on the gradients, so these leave a margin of
about 100):
  loss, xent:  |moec - ref| <= 1e-5 * max(|ref|, 1e-3)
  aux:         |moec - ref| <= 1e-5 * max(|aux|, 1e-6) + 1e-7   (rtol * 1e-2 absolute)
  each gradient: max|moec - ref| <= 1e-4 * max|ref| (and every element finite)
  (a gradient under 1e-5 of the largest is held to 1e-4 of that floor: it is a
  difference of terms of the large ones' size, which float32 rounds; seen on the
  attention's ctx.w, 1e-7 of the largest, with OpenBLAS's AVX-512 kernels. --moec self,
  PyTorch's own float32 run: the floor is 1e-3 of the largest, PyTorch rounding more)
With --f64 (`moec grad --f64`, both in double precision): 1e-10 and 1e-9.

Exit status: 0 all match, 1 a mismatch or an error, 77 skipped (no torch in this
python, or `moec grad` not available yet), 2 usage.

    /usr/bin/python3 tests/torch_ref.py --moec build/moec --moe tests/torch_ref.moe
"""

import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

SKIP = 77

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # Debian's python3-torch / python3-numpy
    print(f"SKIP: this python ({sys.executable}) cannot import torch/numpy: {e}")
    sys.exit(SKIP)


# ----------------------------------------------------------------------------- safetensors

_DT = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
       "U16": np.uint16, "F16": np.float16}


def safetensors_write(path, tensors, metadata=None):
    """tensors: dict name -> numpy array (written in insertion order)."""
    header, blobs, off = {}, [], 0
    rev = {v: k for k, v in _DT.items()}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": rev[a.dtype.type], "shape": list(a.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def safetensors_read(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} past the end of the file")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = np.dtype(_DT[info["dtype"]]).newbyteorder("<")
        a = np.frombuffer(data[base + b:base + e], dtype=dt).reshape(info["shape"])
        out[name] = a.astype(a.dtype.newbyteorder("="))
    return out


# ----------------------------------------------------------------------------- .moe parser

_TOK = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[KMGT]i?B)?)
  | (?P<str>"[^"\n]*")
  | (?P<id>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>[{}()\[\],:=;+\-*])
""", re.X)


def tokenize(text):
    toks, i = [], 0
    while i < len(text):
        m = _TOK.match(text, i)
        if not m:
            raise SyntaxError(f"torch_ref: cannot read the .moe file at byte {i}: {text[i:i+20]!r}")
        i = m.end()
        if m.lastgroup != "ws":
            toks.append((m.lastgroup, m.group()))
    toks.append(("eof", ""))
    return toks


class Parser:
    """Just enough of the language for the reference: a file that `moec check`
    accepts is assumed (moec reports the errors; this only reads)."""

    def __init__(self, text):
        self.t = tokenize(text)
        self.i = 0

    def peek(self, k=0):
        return self.t[self.i + k]

    def take(self, want=None):
        tok = self.t[self.i]
        if want is not None and tok[1] != want:
            raise SyntaxError(f"torch_ref: expected {want!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    # expr := term (('+'|'-') term)* ; term := unary ('*' unary)* ; unary := '-' unary | atom
    def expr(self):
        e = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            e = ("bin", op, e, self.term())
        return e

    def term(self):
        e = self.unary()
        while self.peek()[1] == "*":
            self.take()
            e = ("bin", "*", e, self.unary())
        return e

    def unary(self):
        if self.peek()[1] == "-":
            self.take()
            return ("neg", self.unary())
        return self.atom()

    def atom(self):
        kind, text = self.take()
        if kind == "num":
            m = re.match(r"([0-9.eE+\-]+)([KMGT]i?B)?$", text)
            v = float(m.group(1))
            if m.group(2):
                v *= {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)[0]]
            return ("num", int(v) if v == int(v) and re.fullmatch(r"\d+", text) else v)
        if kind == "str":
            return ("str", text[1:-1])
        if text == "(":
            e = self.expr()
            self.take(")")
            return e
        if text == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.expr())
                if self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return ("list", items)
        if kind == "id":
            if self.peek()[1] == "(":
                self.take()
                pos, kw = [], {}
                while self.peek()[1] != ")":
                    if self.peek()[0] == "id" and self.peek(1)[1] == "=":
                        key = self.take()[1]
                        self.take("=")
                        kw[key] = self.expr()
                    else:
                        pos.append(self.expr())
                    if self.peek()[1] == ",":
                        self.take()
                self.take(")")
                return ("call", text, pos, kw)
            return ("name", text)
        raise SyntaxError(f"torch_ref: unexpected {text!r}")

    def block_stmts(self):
        """Statements of one { ... } block as tuples."""
        self.take("{")
        out = []
        while self.peek()[1] != "}":
            kind, text = self.peek()
            if text == ";":
                self.take()
            elif text == "let" and self.peek(1)[0] == "id" and self.peek(2)[1] == "=":
                self.take()
                name = self.take()[1]
                self.take("=")
                out.append(("let", name, self.expr()))
            elif text == "input" and self.peek(1)[0] == "id" and self.peek(2)[1] == ":":
                self.take()
                name = self.take()[1]
                self.take(":")
                dtype = self.take()[1]
                self.take("[")
                dims = []
                while self.peek()[1] != "]":
                    dims.append(self.expr())
                    if self.peek()[1] == ",":
                        self.take()
                self.take("]")
                pad = None
                if self.peek()[1] == "pad":
                    self.take()
                    pad = self.expr()
                out.append(("input", name, dtype, dims, pad))
            elif text == "output" and self.peek(1)[0] == "id" and self.peek(2)[1] != "=":
                self.take()
                names = [self.take()[1]]
                while self.peek()[1] == ",":
                    self.take()
                    names.append(self.take()[1])
                out.append(("output", names))
            elif text == "place":
                # place PATTERN : rule -- not needed here; skip to the rule's end
                self.take()
                while self.peek()[1] != ":":
                    self.take()
                self.take()
                self.expr()
            elif kind == "id" and self.peek(1)[1] == "=":
                name = self.take()[1]
                self.take("=")
                out.append(("assign", name, self.expr()))
            else:
                raise SyntaxError(f"torch_ref: unexpected {text!r} in a block")
        self.take("}")
        return out

    def file(self):
        model = train = None
        model_name = None
        while self.peek()[0] != "eof":
            kw = self.take()[1]
            if kw == "model":
                model_name = self.take()[1]
                model = self.block_stmts()
            elif kw == "train":
                train = self.block_stmts()
            elif kw == "plan":
                self.block_stmts()
            else:
                raise SyntaxError(f"torch_ref: unexpected {kw!r} at top level")
        if model is None:
            raise SyntaxError("torch_ref: no model block")
        return model_name, model, train or []


# ----------------------------------------------------------------------------- the model in PyTorch

def phi(z):
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


def cv2(v):
    mean = v.mean()
    var = ((v - mean) ** 2).mean()  # population variance
    return var / (mean * mean + 1e-10)


class MoE(nn.Module):
    """The sparsely-gated MoE layer as a PyTorch user writes it."""

    def __init__(self, d_in, experts, k, hidden, d_out, gating, noise, w_imp, w_load,
                 bias=True, act="none"):
        super().__init__()
        E = experts
        self.act = act
        self.E, self.k, self.gating, self.noise = E, k, gating, noise
        self.w_imp, self.w_load = w_imp, w_load
        self.w_gate = nn.Parameter(torch.zeros(d_in, E))
        self.noise = noise and gating == "noisy_topk"
        if self.noise:  # no w_noise without noise (moec creates none)
            self.w_noise = nn.Parameter(torch.zeros(d_in, E))
        if gating == "batchwise":  # appendix F: per-expert thresholds for inference
            self.thresholds = nn.Parameter(torch.zeros(E))
        self.w1 = nn.Parameter(torch.zeros(E, d_in, hidden))
        self.w2 = nn.Parameter(torch.zeros(E, hidden, d_out))
        if bias:
            self.b1 = nn.Parameter(torch.zeros(E, hidden))
            self.b2 = nn.Parameter(torch.zeros(E, d_out))
        else:
            self.b1 = self.b2 = None
        self.d_out = d_out
        self.min_gap = float("inf")  # smallest k-th vs (k+1)-th gap seen (tie safety)

    def forward(self, x):
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # [N, in]
        N, E, k = x.shape[0], self.E, self.k
        clean = x @ self.w_gate  # [N, E]
        if self.gating == "batchwise":
            return self.batchwise(x, clean, lead)
        if self.gating == "softmax":
            gates = torch.softmax(clean, dim=1)
            top_idx = torch.arange(E).expand(N, E)
            sigma = None
        else:
            noisy = clean  # no gate noise in `moec grad`
            sigma = F.softplus(x @ self.w_noise) + 0.01 if self.noise else None
            m = min(k + 1, E)
            top_val, top_idx_all = noisy.topk(m, dim=1)  # descending
            if m > k:
                gap = (top_val[:, k - 1] - top_val[:, k]).min().item()
                self.min_gap = min(self.min_gap, gap)
            top_idx = top_idx_all[:, :k]
            g = torch.softmax(top_val[:, :k], dim=1)
            gates = torch.zeros_like(clean).scatter(1, top_idx, g)
        # experts: a loop, each on the rows routed to it
        y = torch.zeros(N, self.d_out, dtype=x.dtype)
        for e in range(E):
            rows = (top_idx == e).any(dim=1).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            xe = x.index_select(0, rows)
            h = xe @ self.w1[e]
            h = torch.relu(h + self.b1[e] if self.b1 is not None else h)
            o = h @ self.w2[e]
            o = o + self.b2[e] if self.b2 is not None else o
            y = y.index_add(0, rows, gates.index_select(0, rows)[:, e:e + 1] * o)
        importance = gates.sum(0)
        if self.gating == "softmax":
            load = importance.detach() * 0 + N  # every position reaches every expert
        elif self.noise:
            if k < E:
                thr_in = top_val[:, k:k + 1]       # (k+1)-th largest
                thr_out = top_val[:, k - 1:k]      # k-th largest
                is_in = noisy > thr_in
                thr = torch.where(is_in, thr_in, thr_out)
                load = phi((clean - thr) / sigma).sum(0)
            else:
                load = torch.full((E,), float(N), dtype=x.dtype)
        else:
            load = torch.zeros(E, dtype=x.dtype).index_add(
                0, top_idx.reshape(-1), torch.ones(top_idx.numel(), dtype=x.dtype)).detach()
        aux = self.w_imp * cv2(importance) + self.w_load * cv2(load)
        return activation(y, self.act).reshape(*lead, self.d_out), aux


def activation(y, act):
    return {"none": y, "relu": torch.relu(y), "tanh": torch.tanh(y),
            "sigmoid": torch.sigmoid(y)}[act]


def log_uniform_log_expected(c, V, tries):
    """log of the expected count of classes c (int64 tensor) in `tries` log-uniform draws."""
    if tries == 0:
        return torch.zeros(c.shape, dtype=torch.float64)
    p = torch.log1p(1.0 / (c.double() + 1.0)) / math.log(V + 1.0)
    return torch.log(-torch.expm1(tries * torch.log1p(-p)))


def sampled_xent(logits, t, cand, tries):
    """Mean over rows of the sampled softmax loss (the target's column first)."""
    V = logits.shape[1]
    lt = logits.gather(1, t[:, None]) - log_uniform_log_expected(t[:, None], V, tries)
    ls = logits[:, cand] - log_uniform_log_expected(cand, V, tries)[None, :]
    ls = ls.masked_fill(cand[None, :] == t[:, None], float("-inf"))  # the target sampled again
    return (torch.logsumexp(torch.cat([lt, ls], dim=1), dim=1) - lt[:, 0]).mean()


def _batchwise(self, x, clean, lead):
    """Strictly balanced gating as `moec grad` runs it (evaluation, docs/moe.md): row n
    goes to the experts whose softmax score passes their threshold, at most its k largest
    (ties to the lower expert), whatever the other rows; G = gs*mask normalised per row;
    the threshold loss (1/N) sum (1[gs > T] - mask) * (gs - T) with the masks as
    constants."""
    N, E, k = x.shape[0], self.E, self.k
    gs = torch.softmax(clean, dim=1)
    thr = self.thresholds
    above = (gs > thr).detach()
    mask = torch.zeros(N, E, dtype=x.dtype)
    for n in range(N):
        cand = above[n].nonzero(as_tuple=True)[0].tolist()
        cand.sort(key=lambda e: (-gs[n, e].item(), e))
        for e in cand[:k]:
            mask[n, e] = 1.0
        if len(cand) > k:
            self.min_gap = min(self.min_gap, gs[n, cand[k - 1]].item() - gs[n, cand[k]].item())
    for e in range(E):  # scores near a threshold could pass in one precision only
        self.min_gap = min(self.min_gap, (gs[:, e] - thr[e]).abs().min().item())
    sel = gs * mask
    tot = sel.sum(1, keepdim=True)
    G = sel / torch.where(tot > 0, tot, torch.ones_like(tot))
    y = torch.zeros(N, self.d_out, dtype=x.dtype)
    for e in range(E):
        rows = mask[:, e].nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        h = torch.relu(x.index_select(0, rows) @ self.w1[e] + self.b1[e])
        o = h @ self.w2[e] + self.b2[e]
        y = y.index_add(0, rows, G.index_select(0, rows)[:, e:e + 1] * o)
    importance, load = G.sum(0), mask.sum(0)
    l_thr = ((above.to(x.dtype) - mask) * (gs - thr)).sum() / N
    aux = self.w_imp * cv2(importance) + self.w_load * cv2(load) + l_thr
    return y.reshape(*lead, self.d_out), aux


MoE.batchwise = _batchwise


def topk_gate(clean, sigma, k, noise):
    """Noisy top-k without the noise draw: -> gates [n,E] (zeros outside the kept k),
    kept indices [n,k], load [E] (smooth estimator with noise, counts without)."""
    n, E = clean.shape
    noisy = clean
    m = min(k + 1, E)
    top_val, top_all = noisy.topk(m, dim=1)
    idx = top_all[:, :k]
    gates = torch.zeros_like(clean).scatter(1, idx, torch.softmax(top_val[:, :k], dim=1))
    if noise and k < E:
        thr_in, thr_out = top_val[:, k:k + 1], top_val[:, k - 1:k]
        thr = torch.where(noisy > thr_in, thr_in, thr_out)
        load = phi((clean - thr) / sigma).sum(0)
    elif noise:
        load = torch.full((E,), float(n), dtype=clean.dtype)
    else:
        load = torch.zeros(E, dtype=clean.dtype).index_add(
            0, idx.reshape(-1), torch.ones(idx.numel(), dtype=clean.dtype)).detach()
    return gates, idx, load


class HMoE(nn.Module):
    """The hierarchical MoE (paper, appendix B): a primary gate over groups, a
    secondary gate inside each picked group; importance_H[i,j] = sum_x Gp(x)_i
    G_i(x)_j; load_H[i,j] = Load_p(X)_i * Load_i(X^(i))_j / max(|X^(i)|, 1)."""

    def __init__(self, d_in, groups, experts, k_group, k, hidden, d_out, gating, noise, w_imp,
                 w_load, bias=True, act="none"):
        super().__init__()
        G, E = groups, experts
        self.act = act
        dense = gating == "softmax"
        self.G, self.E, self.d_out = G, E, d_out
        self.kg, self.k = (G, E) if dense else (k_group, k)
        self.noise = noise and not dense
        self.w_imp, self.w_load = w_imp, w_load
        self.w_gate = nn.Parameter(torch.zeros(d_in, G))
        if self.noise:
            self.w_noise = nn.Parameter(torch.zeros(d_in, G))
        self.groups = nn.ModuleList()
        for _ in range(G):
            g = nn.Module()
            g.w_gate = nn.Parameter(torch.zeros(d_in, E))
            if self.noise:
                g.w_noise = nn.Parameter(torch.zeros(d_in, E))
            g.w1 = nn.Parameter(torch.zeros(E, d_in, hidden))
            g.w2 = nn.Parameter(torch.zeros(E, hidden, d_out))
            if bias:
                g.b1 = nn.Parameter(torch.zeros(E, hidden))
                g.b2 = nn.Parameter(torch.zeros(E, d_out))
            self.groups.append(g)
        self.min_gap = float("inf")

    def param_names(self):
        names = ["w_gate"] + (["w_noise"] if self.noise else [])
        for i in range(self.G):
            for p in ("w_gate", "w_noise", "w1", "b1", "w2", "b2"):
                if hasattr(self.groups[i], p):
                    names.append(f"g{i}.{p}")
        return names

    def forward(self, x):
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        N = x.shape[0]
        clean = x @ self.w_gate
        sigma = F.softplus(x @ self.w_noise) + 0.01 if self.noise else None
        gp, idx_p, load_p = topk_gate(clean, sigma, self.kg, self.noise)
        y = torch.zeros(N, self.d_out, dtype=x.dtype)
        imp, load = [], []
        for i, g in enumerate(self.groups):
            rows = (idx_p == i).any(dim=1).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                imp.append(torch.zeros(self.E, dtype=x.dtype))
                load.append(torch.zeros(self.E, dtype=x.dtype))
                continue
            xi = x.index_select(0, rows)
            cs = xi @ g.w_gate
            ss = F.softplus(xi @ g.w_noise) + 0.01 if self.noise else None
            gs, idx_s, load_s = topk_gate(cs, ss, self.k, self.noise)
            gpi = gp.index_select(0, rows)[:, i:i + 1]
            yi = torch.zeros(rows.numel(), self.d_out, dtype=x.dtype)
            for e in range(self.E):
                r = (idx_s == e).any(dim=1).nonzero(as_tuple=True)[0]
                if r.numel() == 0:
                    continue
                h = xi.index_select(0, r) @ g.w1[e]
                h = torch.relu(h + g.b1[e] if hasattr(g, "b1") else h)
                o = h @ g.w2[e]
                o = o + g.b2[e] if hasattr(g, "b2") else o
                yi = yi.index_add(0, r, gs.index_select(0, r)[:, e:e + 1] * o)
            y = y.index_add(0, rows, gpi * yi)
            imp.append((gpi * gs).sum(0))
            load.append(load_p[i] * load_s / max(rows.numel(), 1))
        aux = self.w_imp * cv2(torch.cat(imp)) + self.w_load * cv2(torch.cat(load))
        return activation(y, self.act).reshape(*lead, self.d_out), aux


class RefModel(nn.Module):
    """Builds modules from the parsed model block; forward(ids, targets) runs it."""

    def __init__(self, stmts, B, T):
        super().__init__()
        self.stmts = stmts
        self.B, self.T = B, T
        self.consts = {}
        self.names = {}   # moec parameter name -> (module, attribute)
        self.inputs = []  # (name, dtype)
        self.layers = nn.ModuleDict()
        self.widths = {}  # value name -> last-dim width
        self.outputs = []
        self.targets_name = None
        self.pads = {}      # input -> pad id
        self.source = None  # a translation model's source input (over S)
        self.sampled = {}  # sampled_softmax_xent layer -> (samples, tries), from moec's G
        for st in stmts:
            if st[0] == "let":
                self.consts[st[1]] = self.const(st[2])
            elif st[0] == "input":
                if st[2] != "i32":
                    raise ValueError(f"torch_ref: input {st[1]}: only i32 token inputs are supported")
                self.inputs.append(st[1])
                self.widths[st[1]] = None
                if st[4] is not None:
                    self.pads[st[1]] = int(self.const(st[4]))
                if any(d == ("name", "S") for d in st[3]):
                    self.source = st[1]
            elif st[0] == "assign":
                self.widths[st[1]] = self.declare(st[1], st[2])
            elif st[0] == "output":
                self.outputs += st[1]

    def const(self, e):
        if e[0] == "num":
            return e[1]
        if e[0] == "name":
            if e[1] not in self.consts:
                raise ValueError(f"torch_ref: {e[1]} is not a constant")
            return self.consts[e[1]]
        if e[0] == "neg":
            return -self.const(e[1])
        if e[0] == "bin":
            a, b = self.const(e[2]), self.const(e[3])
            return a + b if e[1] == "+" else a - b if e[1] == "-" else a * b
        if e[0] == "str":
            return e[1]
        raise ValueError(f"torch_ref: not a constant: {e}")

    def arg(self, kw, pos, i, key, default=None):
        if key in kw:
            return self.enum_or_const(kw[key])
        if i < len(pos):
            return self.enum_or_const(pos[i])
        if default is None:
            raise ValueError(f"torch_ref: missing argument {key}")
        return default

    def enum_or_const(self, e):
        if e[0] == "name" and e[1] not in self.consts:
            return {"true": True, "false": False}.get(e[1], e[1])
        return self.const(e)

    def width(self, e):
        """Last-dim width of a tensor expression (declaring any layer calls in it)."""
        if e[0] == "name":
            return self.widths[e[1]]
        if e[0] == "call":
            return self.declare(None, e)
        if e[0] == "bin":
            wa = self.width(e[2]) if e[2][0] != "num" else None
            wb = self.width(e[3]) if e[3][0] != "num" else None
            return wa if wa is not None else wb
        if e[0] == "neg":
            return self.width(e[1])
        return None

    def declare(self, name, e):
        if e[0] != "call":
            return self.width(e)
        _, layer, pos, kw = e
        ntensor = 2 if layer in ("softmax_xent", "sampled_softmax_xent", "attention", "concat") else 1
        tpos, apos = pos[:ntensor], pos[ntensor:]
        d_in = self.width(tpos[0])
        if layer in ("dropout", "relu", "tanh", "sigmoid"):
            return d_in
        if layer == "concat":
            return d_in + self.width(tpos[1])
        if name is None:
            raise ValueError(f"torch_ref: a {layer} call must be assigned to a name of its own")
        key = name
        if layer == "embedding":
            V, D = self.arg(kw, apos, 0, "vocab"), self.arg(kw, apos, 1, "dim")
            self.layers[key] = nn.Embedding(V, D)
            self.names[f"{name}.weight"] = (key, "weight")
            return D
        if layer == "lstm":
            U = self.arg(kw, apos, 0, "units")
            P = self.arg(kw, apos, 2, "proj", 0)  # LSTMP: h = W_hr (o * tanh(c))
            m = nn.LSTM(d_in, U, batch_first=True, proj_size=P)
            m.bias_hh_l0.requires_grad_(False)
            self.layers[key] = m
            self.names[f"{name}.weight_ih"] = (key, "weight_ih_l0")
            self.names[f"{name}.weight_hh"] = (key, "weight_hh_l0")
            self.names[f"{name}.bias"] = (key, "bias_ih_l0")
            if P:
                self.names[f"{name}.weight_hr"] = (key, "weight_hr_l0")
            return P or U
        if layer == "dense":
            U = self.arg(kw, apos, 0, "units")
            act = self.arg(kw, apos, 1, "act", "none")
            self.layers[key] = nn.Linear(d_in, U)
            self.layers[key].act = act
            self.names[f"{name}.weight"] = (key, "weight")
            self.names[f"{name}.bias"] = (key, "bias")
            return U
        if layer in ("dropout", "relu", "tanh", "sigmoid"):
            return d_in
        if layer == "moe":
            E = self.arg(kw, apos, 0, "experts")
            k = self.arg(kw, apos, 1, "k", 2)
            H = self.arg(kw, apos, 2, "hidden")
            gating = self.arg(kw, apos, 3, "gating", "noisy_topk")
            w_imp = self.arg(kw, apos, 4, "w_importance", 0.01)
            w_load = self.arg(kw, apos, 5, "w_load", 0.01)
            noise = bool(self.arg(kw, apos, 6, "noise", True))
            out = self.arg(kw, apos, 7, "out", 0) or d_in
            bias = bool(self.arg(kw, apos, 8, "bias", True))
            act = self.arg(kw, apos, 9, "act", "none")
            if kw.get("capacity") is not None or len(apos) > 10:
                raise ValueError("torch_ref: moe(capacity=) is not in the reference")
            if gating not in ("noisy_topk", "softmax", "batchwise"):
                raise ValueError(f"torch_ref: gating={gating} is not in the reference")
            self.layers[key] = MoE(d_in, E, k, H, out, gating, noise, float(w_imp), float(w_load),
                                   bias, act)
            for p in ("w_gate", "w_noise", "thresholds", "w1", "b1", "w2", "b2"):
                if getattr(self.layers[key], p, None) is not None:
                    self.names[f"{name}.{p}"] = (key, p)
            return out
        if layer == "hmoe":
            G = self.arg(kw, apos, 0, "groups")
            E = self.arg(kw, apos, 1, "experts")
            kg = self.arg(kw, apos, 2, "k_group", 2)
            k = self.arg(kw, apos, 3, "k", 2)
            H = self.arg(kw, apos, 4, "hidden")
            gating = self.arg(kw, apos, 5, "gating", "noisy_topk")
            w_imp = self.arg(kw, apos, 6, "w_importance", 0.01)
            w_load = self.arg(kw, apos, 7, "w_load", 0.01)
            noise = bool(self.arg(kw, apos, 8, "noise", True))
            out = self.arg(kw, apos, 9, "out", 0) or d_in
            bias = bool(self.arg(kw, apos, 10, "bias", True))
            act = self.arg(kw, apos, 11, "act", "none")
            if gating not in ("noisy_topk", "softmax"):
                raise ValueError(f"torch_ref: gating={gating} is not in the reference")
            m = HMoE(d_in, G, E, kg, k, H, out, gating, noise, float(w_imp), float(w_load), bias,
                     act)
            self.layers[key] = m
            for p in m.param_names():
                self.names[f"{name}.{p}"] = (key, p)
            return out
        if layer == "attention":
            A = self.arg(kw, apos, 0, "units")
            score = self.arg(kw, apos, 1, "score", "additive")
            dm = self.width(tpos[1])
            mod = nn.Module()
            mod.u = nn.Parameter(torch.zeros(dm, A))
            mod.w = nn.Parameter(torch.zeros(d_in, A))
            mod.v = nn.Parameter(torch.zeros(A))
            mod.score = score
            self.layers[key] = mod
            for p in ("u", "w", "v"):
                self.names[f"{name}.{p}"] = (key, p)
            return dm
        if layer in ("softmax_xent", "sampled_softmax_xent"):
            V = self.arg(kw, apos, 0, "vocab")
            if layer == "sampled_softmax_xent":
                self.sampled[name] = None  # (samples, tries): set from moec's output
                self.samples_wanted = self.arg(kw, apos, 1, "samples")
            self.layers[key] = nn.Linear(d_in, V)
            self.names[f"{name}.weight"] = (key, "weight")
            self.names[f"{name}.bias"] = (key, "bias")
            if tpos[1][0] == "name":
                self.targets_name = tpos[1][1]
            return None
        raise ValueError(f"torch_ref: layer {layer} is not in the reference")

    def param(self, moec_name):
        key, attr = self.names[moec_name]
        obj = self.layers[key]
        for part in attr.split("."):  # "g0.w1" -> groups[0].w1
            obj = obj.groups[int(part[1:])] if re.fullmatch(r"g\d+", part) else getattr(obj, part)
        return obj

    def shapes(self):
        return {n: tuple(self.param(n).shape) for n in self.names}

    def forward(self, feeds):
        env = dict(feeds)
        aux_total, xent_total = 0.0, None
        for st in self.stmts:
            if st[0] != "assign":
                continue
            val, a, x = self.eval(st[1], st[2], env)
            env[st[1]] = val
            aux_total = aux_total + a
            if x is not None:
                xent_total = x if xent_total is None else xent_total + x
        return xent_total, aux_total

    def eval(self, name, e, env):
        """-> (value, aux, xent) of an expression."""
        if e[0] == "num":
            return float(e[1]), 0.0, None
        if e[0] == "name":
            if e[1] in env:
                return env[e[1]], 0.0, None
            return float(self.consts[e[1]]), 0.0, None
        if e[0] == "neg":
            v, a, x = self.eval(name, e[1], env)
            return -v, a, x
        if e[0] == "bin":
            va, aa, xa = self.eval(name, e[2], env)
            vb, ab, xb = self.eval(name, e[3], env)
            v = va + vb if e[1] == "+" else va - vb if e[1] == "-" else va * vb
            return v, aa + ab, xa if xa is not None else xb
        _, layer, pos, kw = e
        m = self.layers[name] if name in self.layers else None
        x, aux, _ = self.eval(name, pos[0], env)
        if layer in ("attention", "concat"):
            x2, aux2, _ = self.eval(name, pos[1], env)
            aux = aux + aux2
            if layer == "concat":
                return torch.cat([x, x2], dim=-1), aux, None
            return self.attention(m, x, x2, env), aux, None
        if layer == "embedding":
            return m(x), aux, None
        if layer == "lstm":
            out, _ = m(x)  # state starts at zero
            return out, aux, None
        if layer == "dense":
            y = m(x)
            act = m.act
            y = {"none": y, "relu": torch.relu(y), "tanh": torch.tanh(y),
                 "sigmoid": torch.sigmoid(y)}[act]
            return y, aux, None
        if layer == "dropout":
            return x, aux, None  # identity outside training
        if layer in ("relu", "tanh", "sigmoid"):
            return getattr(torch, layer)(x), aux, None
        if layer in ("moe", "hmoe"):
            y, a = m(x)
            return y, aux + a, None
        if layer == "softmax_xent":
            t, _, _ = self.eval(name, pos[1], env)
            logits = m(x)
            pad = self.pads.get(pos[1][1], -100) if pos[1][0] == "name" else -100
            xent = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1),
                                   ignore_index=pad)  # the mean over the targets not padding
            return xent, aux, xent
        if layer == "sampled_softmax_xent":
            t, _, _ = self.eval(name, pos[1], env)
            logits = m(x)
            cand, tries = self.sampled[name]
            xent = sampled_xent(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), cand, tries)
            return xent, aux, xent
        raise ValueError(f"torch_ref: layer {layer}")

    def attention(self, m, q, mem, env):
        """docs/language.md: s[b,j,i] = v . tanh(m_i U + q_j W) (additive) or
        v . (tanh(m_i U) * tanh(q_j W)) (product); softmax over the source positions that
        are not padding; c_j = sum_i a_ji m_i."""
        mu, qw = mem @ m.u, q @ m.w  # [B,S,A], [B,T,A]
        if m.score == "product":
            s = torch.einsum("bja,bia->bji", torch.tanh(qw) * m.v, torch.tanh(mu))
        else:
            s = (torch.tanh(mu[:, None, :, :] + qw[:, :, None, :]) * m.v).sum(-1)  # [B,T,S]
        if self.source is not None and self.source in self.pads:
            keep = (env[self.source] != self.pads[self.source])[:, None, :]  # [B,1,S]
            s = s.masked_fill(~keep, float("-inf"))
            a = torch.softmax(s, dim=-1)
            a = torch.nan_to_num(a, nan=0.0)  # a row of padding only: weights 0
        else:
            a = torch.softmax(s, dim=-1)
        return a @ mem


# ----------------------------------------------------------------------------- the check

def random_weights(model, rng, scale):
    """Random float32 weights (gates too: at zero, every gate ties)."""
    w = {}
    for name, shape in model.shapes().items():
        s = scale
        if name.endswith((".w_gate",)):
            s = 1.0  # clear top-k gaps, so float32 and float64 route alike
        if name.endswith(".thresholds"):  # some scores pass them, some do not
            w[name] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32) / shape[0]
            continue
        elif name.endswith(".w_noise"):
            s = 0.5
        w[name] = rng.uniform(-s, s, size=shape).astype(np.float32)
    return w


def translation_batch(model, rng, vocab, B, S, T):
    """Random pairs padded at the end: row 0 fills S and T, the others are shorter (at
    least one token each); tgt_in and tgt_out share their padding, the source has its own."""
    tgt_in = [n for n in model.inputs if n not in (model.source, model.targets_name)]
    if len(tgt_in) != 1 or model.targets_name is None:
        raise ValueError("torch_ref: a translation model needs source ids, target inputs and "
                         "softmax_xent's labels")
    pad_s, pad_t = model.pads.get(model.source, 0), model.pads.get(model.targets_name, 0)
    src = rng.integers(3, vocab, size=(B, S))
    ti = rng.integers(3, vocab, size=(B, T))
    to = rng.integers(3, vocab, size=(B, T))
    for b in range(1, B):
        ls, lt = rng.integers(1, S + 1), rng.integers(1, T + 1)
        src[b, ls:] = pad_s
        ti[b, lt:] = pad_t
        to[b, lt:] = pad_t
    return {model.source: src, tgt_in[0]: ti, model.targets_name: to}


def grad_of(p):
    """A parameter's gradient; zeros where nothing reached it (an unused group)."""
    return p.grad.detach() if p.grad is not None else torch.zeros_like(p).detach()


def python_samples(V, S, rng):
    """--moec self: S distinct log-uniform classes of [0, V) and the draws it took."""
    if S == V:
        return np.arange(V, dtype=np.int32), 0
    seen, out, tries = set(), [], 0
    while len(out) < S:
        c = min(max(int(math.floor(math.exp(rng.uniform() * math.log(V + 1.0)))) - 1, 0), V - 1)
        tries += 1
        if c not in seen:
            seen.add(c)
            out.append(c)
    return np.array(out, dtype=np.int32), tries


def fake_moec(model_fn, feeds, weights, gpath, sampled):
    """--moec self: the same model in float32 stands in for moec (checks this
    script and shows that a float32 implementation meets the tolerances)."""
    m32 = model_fn().float()
    m32.sampled = {k: (torch.from_numpy(c.astype(np.int64)), n) for k, (c, n) in sampled.items()}
    with torch.no_grad():
        for name, a in weights.items():
            m32.param(name).copy_(torch.from_numpy(a))
        for mod in m32.layers.values():
            if isinstance(mod, nn.LSTM):
                mod.bias_hh_l0.zero_()
    xent, aux = m32(feeds)
    loss = xent + aux
    loss.backward()
    out = {n: grad_of(m32.param(n)).numpy() for n in m32.names}
    for k, (c, n) in sampled.items():
        out[f"{k}.samples"] = c
        out[f"{k}.tries"] = np.array([n], dtype=np.int32)
    safetensors_write(gpath, out)
    aux_v = aux.item() if torch.is_tensor(aux) else float(aux)
    return json.dumps({"loss": loss.item(), "xent": xent.item(), "aux": aux_v})


def run_moec(moec, moe_file, wpath, tpath, gpath, f64):
    cmd = [moec, "grad", moe_file, "--load", wpath, "--tokens", tpath, "--out", gpath, "--json"]
    if f64:
        cmd.append("--f64")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       stdin=subprocess.DEVNULL)
    return cmd, p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moec", required=True,
                    help="path to the moec binary ('self': the reference in float32 stands in)")
    ap.add_argument("--moe", required=True, help="a small .moe file (model + train batch/unroll)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=0.3, help="weights ~ U(-scale, scale)")
    ap.add_argument("--keep", help="write W/F/G files here and keep them")
    ap.add_argument("--f64", action="store_true",
                    help="run `moec grad --f64` (double precision) and compare to 1e-9")
    ap.add_argument("--loss-rtol", type=float, help="default 1e-5 (--f64: 1e-10)")
    ap.add_argument("--batch", type=int, nargs=3, default=[3, 6, 5], metavar=("B", "S", "T"),
                    help="a translation model's batch: pairs, source and target positions")
    ap.add_argument("--grad-rtol", type=float, help="default 1e-4 (--f64: 1e-9)")
    args = ap.parse_args()
    if args.loss_rtol is None:
        args.loss_rtol = 1e-10 if args.f64 else 1e-5
    if args.grad_rtol is None:
        args.grad_rtol = 1e-9 if args.f64 else 1e-4

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    text = open(args.moe).read()
    model_name, stmts, train = Parser(text).file()
    B, T = 32, 20
    probe = RefModel(stmts, 1, 1)
    for st in train:
        if st[0] == "assign" and st[1] in ("batch", "unroll"):
            v = probe.const(st[2])
            if st[1] == "batch":
                B = int(v)
            else:
                T = int(v)
    model = RefModel(stmts, B, T).double()
    translation = model.source is not None
    if translation:
        B, S, T = args.batch
    elif len(model.inputs) != 2 or model.targets_name not in model.inputs:
        print("torch_ref: error: the model needs two i32 inputs, ids and softmax_xent's targets")
        return 1
    vocab = min(m.num_embeddings for m in model.layers.values() if isinstance(m, nn.Embedding))

    rng = np.random.default_rng(args.seed)
    weights = random_weights(model, rng, args.scale)
    if translation:
        feeds_np = translation_batch(model, rng, vocab, B, S, T)
    else:
        tokens = rng.integers(0, vocab, size=B * (T + 1)).astype(np.uint16)

    # load the float32 weights into the float64 model
    with torch.no_grad():
        for name, a in weights.items():
            model.param(name).copy_(torch.from_numpy(a.astype(np.float64)))
        for m in model.layers.values():
            if isinstance(m, nn.LSTM):
                m.bias_hh_l0.zero_()
    if translation:
        feeds = {n: torch.from_numpy(a.astype(np.int64)) for n, a in feeds_np.items()}
    else:
        ids_name = [n for n in model.inputs if n != model.targets_name][0]
        rows = torch.from_numpy(tokens.astype(np.int64)).reshape(B, T + 1)
        feeds = {ids_name: rows[:, :T], model.targets_name: rows[:, 1:]}

    tmp = args.keep or tempfile.mkdtemp(prefix="moec_torch_ref_")
    os.makedirs(tmp, exist_ok=True)
    wpath, tpath, gpath = (os.path.join(tmp, f) for f in
                           ("W.safetensors", "F.safetensors" if translation else "F.bin",
                            "G.safetensors"))
    safetensors_write(wpath, weights, {"format": "pt", "written_by": "tests/torch_ref.py"})
    if translation:  # the batch: an I32 tensor per model input
        safetensors_write(tpath, {n: a.astype(np.int32) for n, a in feeds_np.items()})
    else:
        tokens.astype("<u2").tofile(tpath)
    if args.moec == "self":
        cmd = ["self"]
        V = model.layers[next(iter(model.sampled))].out_features if model.sampled else 0
        sampled = {k: python_samples(V, model.samples_wanted, rng) for k in model.sampled}
        p = subprocess.CompletedProcess(cmd, 0, fake_moec(lambda: RefModel(stmts, B, T), feeds,
                                                          weights, gpath, sampled), "")
    else:
        cmd, p = run_moec(args.moec, args.moe, wpath, tpath, gpath, args.f64)
    if p.returncode != 0:
        if "not available yet" in p.stderr:
            print(f"SKIP: {' '.join(cmd)}: {p.stderr.strip()}")
            return SKIP
        print(f"torch_ref: error: {' '.join(cmd)} exited with {p.returncode}\n"
              f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return 1
    lines = [l for l in p.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        print(f"torch_ref: error: no JSON line from {' '.join(cmd)}:\n{p.stdout}")
        return 1
    got = json.loads(lines[-1])
    moec_grads = safetensors_read(gpath)

    fails = 0
    # a sampled softmax: the samples moec drew, checked, then the reference loss on them
    for k in model.sampled:
        V, S = model.layers[k].out_features, model.samples_wanted
        c, n = moec_grads.pop(f"{k}.samples", None), moec_grads.pop(f"{k}.tries", None)
        if c is None or n is None:
            print(f"torch_ref: {k}: moec wrote no {k}.samples / {k}.tries  FAIL")
            return 1
        n = int(n.reshape(-1)[0])
        ok = (c.shape == (S,) and len(set(c.tolist())) == S and c.min() >= 0 and c.max() < V
              and (n == 0) == (S == V) and (n == 0 or n >= S))
        tg = feeds[model.targets_name].reshape(-1).numpy()
        hits = int(np.isin(tg, c).sum())
        print(f"samples of {k}: {S} of {V} classes in {n} draws, distinct and in range: "
              f"{'ok' if ok else 'FAIL'}; {hits} of {tg.size} targets among them (masked)")
        fails += not ok
        model.sampled[k] = (torch.from_numpy(c.astype(np.int64)), n)
    xent, aux = model(feeds)
    loss = xent + aux
    model.zero_grad()
    loss.backward()
    ref_grads = {n: grad_of(model.param(n)).numpy() for n in model.names}
    aux_v = float(aux) if not torch.is_tensor(aux) else aux.item()

    gaps = [m.min_gap for m in model.layers.values() if isinstance(m, MoE)]
    print(f"torch_ref: model {model_name}: B={B} T={T}{f' S={S}' if translation else ''}, "
          f"{len(weights)} parameters, {sum(a.size for a in weights.values())} weights; seed {args.seed}")
    if gaps and min(gaps) < 1e-4:
        print(f"torch_ref: warning: a top-k gap of {min(gaps):.2e}: routing may differ in float32")

    print(f"{'value':<16} {'moec':>16} {'pytorch (f64)':>16} {'|diff|':>10}  ok")
    checks = [("loss", got.get("loss"), loss.item(), args.loss_rtol * max(abs(loss.item()), 1e-3)),
              ("xent", got.get("xent"), xent.item(), args.loss_rtol * max(abs(xent.item()), 1e-3)),
              ("aux", got.get("aux"), aux_v,
               args.loss_rtol * max(abs(aux_v), 1e-6) + args.loss_rtol * 1e-2)]
    for name, m, r, tol in checks:
        if m is None:
            print(f"{name:<16} {'(missing)':>16} {r:16.8g}")
            fails += 1
            continue
        d = abs(float(m) - r)
        ok = d <= tol and math.isfinite(float(m))
        fails += not ok
        print(f"{name:<16} {float(m):16.8g} {r:16.8g} {d:10.2e}  {'ok' if ok else 'FAIL'}")

    print(f"\n{'gradient':<16} {'shape':<14} {'max|ref|':>10} {'max|diff|':>10} {'ratio':>9}  ok"
          f"   (tolerance: max|diff| <= {args.grad_rtol:g} * max|ref|)")
    gmax = max((float(np.abs(r).max()) for r in ref_grads.values() if r.size), default=0.0)
    # A gradient far below the largest is a difference of terms of the large ones' size:
    # float32 rounds those terms, so its error is a fraction of the largest, not of its own.
    floor = 1e-3 * gmax if args.moec == "self" else (0.0 if args.f64 else 1e-5 * gmax)
    for name in model.names:
        r = ref_grads[name]
        shape = "x".join(map(str, r.shape))
        if name not in moec_grads:
            print(f"{name:<16} {shape:<14} missing from {gpath}  FAIL")
            fails += 1
            continue
        g = moec_grads[name].astype(np.float64)
        if g.shape != r.shape:
            print(f"{name:<16} {shape:<14} moec's shape is {g.shape}  FAIL")
            fails += 1
            continue
        mx = float(np.abs(r).max()) if r.size else 0.0
        d = float(np.abs(g - r).max()) if r.size else 0.0
        ratio = d / mx if mx > 0 else d
        ok = bool(np.isfinite(g).all()) and (d <= args.grad_rtol * max(mx, floor) or d <= 1e-15)
        fails += not ok
        print(f"{name:<16} {shape:<14} {mx:10.3e} {d:10.3e} {ratio:9.2e}  {'ok' if ok else 'FAIL'}")
    extra = sorted(set(moec_grads) - set(model.names))
    if extra:
        print(f"torch_ref: moec wrote gradients the reference does not know: {', '.join(extra)}")
        fails += len(extra)
    if not args.keep:
        for f in (wpath, tpath, gpath):
            if os.path.exists(f):
                os.remove(f)
        os.rmdir(tmp)
    n = 3 + len(model.names)
    print(f"\ntorch_ref: {n - fails} of {n} values match moec" + ("" if not fails else f"; {fails} FAIL"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
