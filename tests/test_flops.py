import torch
import torch.nn.functional as F

from diffusion_lm.flops import flop_counter
from diffusion_lm.text.rounding import nearest_word_nll


def test_cpu_attention_counts_its_matmuls():
    B, h, L, d = 2, 3, 5, 4
    q = torch.randn(B, h, L, d, requires_grad=True)
    with flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, q, q)
    forward = counter.get_total_flops()
    assert forward == 2 * (2 * B * h * L * L * d)  # q·kᵀ and p·v
    with flop_counter() as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 4 * (2 * B * h * L * L * d)  # dp, dv, dq, dk


def test_fused_rounding_counts_the_same_flops_as_autograd():
    """The blocked cross-entropy splits and reorders its products; what the counter sees must still be
    the forward and backward matmuls of the plain version, no more and no less."""
    emb = torch.randn(50, 8, requires_grad=True)
    x = torch.randn(30, 8, requires_grad=True)
    ids = torch.randint(0, 50, (30,))
    counts = []
    for loss in (lambda: F.cross_entropy(2 * x @ emb.t() - (emb * emb).sum(-1), ids),
                 lambda: nearest_word_nll(x, emb, ids).mean()):
        with flop_counter() as counter:
            loss().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 30 * 8 * 50
