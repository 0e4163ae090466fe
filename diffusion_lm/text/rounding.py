"""−log p_θ(w | x) for the rounding distribution p_θ(w | x) ∝ exp(−‖x − EMB(w)‖²), fused and blocked.

The training loss asks for this twice a step (rounding at x_0, anchor at x̂_0), over every position
of the batch: an (N, V) logit matrix that is cheap to compute (its matmul has only d = 16 inner
terms) but expensive to pass over. Built from autograd pieces it is written and read a dozen times
(the distance terms, their negations in the backward, log-softmax, its backward, the one-hot fill),
and those memory-bound passes were about 30% of a `cpu`-preset step (`bench_train.py steps=20
profile=30` on commit 19db28e).

Here each block of rows makes its logits in cache and turns them into probabilities P = softmax(z)
in one fused pass; only P is kept (N x V floats, 29 MB for the `cpu` preset's batch and both
terms), and the backward reads each block of it once, instead of recomputing it from x and EMB
(a second matmul and an exponential pass). Three facts make it exact:

* ‖x‖² is the same for every word, so it cancels in the softmax: only z = 2 x·EMB(w) − ‖EMB(w)‖²
  is needed (the logits of `DiffusionLM.logits` without that term);
* d(−log p(w))/dz = P − onehot(w), so with g each row's upstream gradient, W = 2 EMB and
  b = −‖EMB‖²: dL/dx = g (P − onehot) W, dL/dW = (P − onehot)ᵀ g x, dL/db = (P − onehot)ᵀ g;
* −log p(w) is read off P, except in rows where p(w) underflows (the word is far from x): those
  take logsumexp(z) − z_w from the block's logits, still at hand.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

_BLOCK_BYTES = 1 << 21  # one block of logits: 2 MiB, inside this CPU's L2+L3 share per core
_TINY = 1e-30  # below this p(w), −log p(w) comes from the logits (float32 keeps relative precision to ~1e-38)


def _rows_per_block(vocab: int) -> int:
    return max(1, _BLOCK_BYTES // (4 * vocab))


class _NearestWordNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        w, b = 2 * emb, -(emb * emb).sum(-1)
        n, rows = x.shape[0], _rows_per_block(emb.shape[0])
        probs, nll = x.new_empty(n, emb.shape[0]), x.new_empty(n)
        z = x.new_empty(min(rows, n), emb.shape[0])  # one block of logits, reused
        for s in range(0, n, rows):
            m = min(rows, n - s)
            zs = torch.addmm(b, x[s:s + m], w.t(), out=z[:m])
            p_word = torch.softmax(zs, 1, out=probs[s:s + m]).gather(1, ids[s:s + m, None]).squeeze(1)
            torch.log(p_word, out=nll[s:s + m]).neg_()
            far = (p_word < _TINY).nonzero().squeeze(1)
            if len(far):
                zf = zs[far]
                nll[s + far] = torch.logsumexp(zf, 1) - zf.gather(1, ids[s + far, None]).squeeze(1)
        ctx.save_for_backward(x, emb, ids, probs)
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, emb, ids, probs = ctx.saved_tensors
        w = 2 * emb
        gx = x * grad[:, None]
        n, rows = x.shape[0], _rows_per_block(emb.shape[0])
        grad_x, grad_w, grad_b = torch.empty_like(x), torch.zeros_like(emb), emb.new_zeros(emb.shape[0])
        for s in range(0, n, rows):  # P's products, a block at a time: read once, used three times
            ps = probs[s:s + rows]
            torch.mm(ps, w, out=grad_x[s:s + rows])
            grad_w = torch.addmm(grad_w, ps.t(), gx[s:s + rows])
            grad_b.addmv_(ps.t(), grad[s:s + rows])
        # then the one-hot parts: − onehot·W for dx, − onehotᵀ g x for dW, − onehotᵀ g for db
        grad_x.sub_(w[ids]).mul_(grad[:, None])
        grad_w.index_add_(0, ids, gx, alpha=-1)
        grad_b.index_add_(0, ids, grad, alpha=-1)
        return grad_x, 2 * grad_w - 2 * emb * grad_b[:, None], None


def nearest_word_nll(x: torch.Tensor, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """−log p(ids | x) for x of shape (..., d), EMB (V, d), ids (...): one value per position, shape (...)."""
    if x.shape[:-1] != ids.shape or x.shape[-1] != emb.shape[-1]:
        raise ValueError(f"nearest_word_nll: x {tuple(x.shape)}, EMB {tuple(emb.shape)} and ids {tuple(ids.shape)} "
                         "do not line up")
    d = x.shape[-1]
    return _NearestWordNLL.apply(x.reshape(-1, d).contiguous(), emb, ids.reshape(-1)).view(ids.shape)
