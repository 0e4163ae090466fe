"""How well a Diffusion-LM recovers words from noise: rounding accuracy of x̂_0 = f_θ(x_t, t).

    python scripts/probe_denoising.py RUN_DIR [RUN_DIR ...]

For 256 E2E valid sentences, noises EMB(w) to x_t at several t, predicts x̂_0
(twice, feeding the first estimate back, for self-conditioned models) and
reports the fraction of non-PAD positions whose nearest word is right. A
scale-free way to compare training recipes after a few minutes, before
samples read well.
"""
from __future__ import annotations

import json

import torch

from diffusion_lm.text import from_pretrained
from diffusion_lm.data.e2e import load_e2e

T_PROBE = (100, 400, 800, 1200, 1600, 1900)


@torch.no_grad()
def probe(directory: str, n: int = 256) -> dict:
    torch.manual_seed(0)
    model, tok, diffusion = from_pretrained(directory)
    ids, fits = tok.encode_batch(load_e2e("valid")["text"][: 2 * n], model.config.max_len)
    ids = ids[fits][:n]
    emb, real = model.embed(ids), ids != tok.pad_id
    acc = {}
    for t in T_PROBE:
        t = min(t, diffusion.num_timesteps - 1)
        tt = torch.full((len(ids),), t)
        x_t = diffusion.q_sample(emb, tt)
        x0 = model(x_t, tt)
        if model.config.self_condition:
            x0 = model(x_t, tt, x0)
        acc[t] = round(((model.round(x0) == ids) & real).sum().item() / real.sum().item(), 3)
    return {"run": directory, "embedding_norm": round(model.embedding.weight.norm(dim=-1).mean().item(), 2),
            "accuracy_by_t": acc}


def main(argv: list[str]) -> None:
    from diffusion_lm.scripting import fail

    if not argv:
        fail("usage: python scripts/probe_denoising.py RUN_DIR [RUN_DIR ...]")
    for d in argv:
        print(json.dumps(probe(d)))


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
