"""−log p_θ(w | x) for the rounding distribution p_θ(w | x) ∝ exp(−‖x − EMB(w)‖²), fused and chunked.

The training loss asks for this twice a step (rounding at x_0, anchor at x̂_0), over every position
of the batch: an (N, V) logit matrix that is cheap to compute (its matmul has only d = 16 inner
terms) but expensive to carry. Built from autograd pieces it is written and read a dozen times
(the distance terms, their negations in the backward, log-softmax, its backward, the one-hot fill),
and those memory-bound passes were about 30% of a `cpu`-preset step (`bench_train.py steps=20
profile=30` on commit 19db28e). The logits are `DiffusionLM.logits` without its ‖x‖² term (see below).

Here the logits are made a block of rows at a time, small enough to stay in cache, and never kept:
the backward recomputes each block from x and EMB. Two facts make this exact:

* ‖x‖² is the same for every word, so it cancels in the softmax: the loss and its gradient only
  need z = 2 x·EMB(w) − ‖EMB(w)‖²;
* d(−log p(w))/dz = softmax(z) − onehot(w), so the backward needs only z and the saved logsumexp.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

_BLOCK_BYTES = 1 << 21  # one block of logits: 2 MiB, inside this CPU's L2+L3 share per core


def _rows_per_block(vocab: int) -> int:
    return max(1, _BLOCK_BYTES // (4 * vocab))


class _NearestWordNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        w, b = 2 * emb, -(emb * emb).sum(-1)
        n, rows = x.shape[0], _rows_per_block(emb.shape[0])
        nll, lse = x.new_empty(n), x.new_empty(n)
        for s in range(0, n, rows):
            z = torch.addmm(b, x[s:s + rows], w.t())
            torch.logsumexp(z, -1, out=lse[s:s + rows])
            torch.sub(lse[s:s + rows], z.gather(1, ids[s:s + rows, None]).squeeze(1), out=nll[s:s + rows])
        ctx.save_for_backward(x, emb, ids, lse)
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, emb, ids, lse = ctx.saved_tensors
        w, b = 2 * emb, -(emb * emb).sum(-1)
        n, rows = x.shape[0], _rows_per_block(emb.shape[0])
        grad_x, grad_w, grad_b = torch.empty_like(x), torch.zeros_like(emb), torch.zeros_like(b)
        for s in range(0, n, rows):
            xs, sl = x[s:s + rows], slice(s, s + rows)
            p = torch.addmm(b, xs, w.t()).sub_(lse[sl, None]).exp_()  # softmax(z)
            p.scatter_add_(1, ids[sl, None], p.new_full((p.shape[0], 1), -1.0))  # − onehot(w)
            p.mul_(grad[sl, None])
            torch.mm(p, w, out=grad_x[sl])
            grad_w.addmm_(p.t(), xs)
            grad_b.add_(p.sum(0))
        # z = x·wᵀ + b with w = 2·EMB and b = −‖EMB‖²
        grad_emb = 2 * grad_w - 2 * emb * grad_b[:, None]
        return grad_x, grad_emb, None


def nearest_word_nll(x: torch.Tensor, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """−log p(ids | x) for x of shape (..., d), EMB (V, d), ids (...): one value per position, shape (...)."""
    if x.shape[:-1] != ids.shape or x.shape[-1] != emb.shape[-1]:
        raise ValueError(f"nearest_word_nll: x {tuple(x.shape)}, EMB {tuple(emb.shape)} and ids {tuple(ids.shape)} "
                         "do not line up")
    d = x.shape[-1]
    return _NearestWordNLL.apply(x.reshape(-1, d).contiguous(), emb, ids.reshape(-1)).view(ids.shape)
