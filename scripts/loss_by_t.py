"""Where along the diffusion a Diffusion-LM still has something to learn: −log p(w | x̂_0) against t.

    python scripts/loss_by_t.py [checkpoints=shipped,runs/cpu] [n=256] [out=runs/loss_by_t.png]

For n E2E valid sentences, noises EMB(w) to x_t in each of 40 equal slices of [0, T), predicts x̂_0
(feeding the first estimate back, for self-conditioned models, as sampling does) and reports the mean
cross-entropy of the right word at non-PAD positions. The slope of this curve is what
`optim.t_sampling=warped` draws training timesteps by; the plot shows both, one line per model.
"""
from __future__ import annotations

import json

import torch

from diffusion_lm.core.timesteps import TimestepSampler
from diffusion_lm.text import from_pretrained
from diffusion_lm.data.e2e import load_e2e


@torch.no_grad()
def profile(checkpoint: str, n: int) -> dict:
    from diffusion_lm.assets import resolve_checkpoint

    torch.manual_seed(0)
    model, tok, diffusion = from_pretrained(resolve_checkpoint(checkpoint))
    model.eval()
    ids, fits = tok.encode_batch(load_e2e("valid")["text"][: 2 * n], model.config.max_len)
    ids = ids[fits][:n]
    emb, real = model.embed(ids), ids != tok.pad_id
    sampler = TimestepSampler(diffusion.num_timesteps, "warped", decay=0.0)
    for lo, hi in zip(sampler.edges[:-1].tolist(), sampler.edges[1:].tolist()):
        t = torch.randint(lo, hi, (len(ids),))
        x_t = diffusion.q_sample(emb, t)
        x0 = model(x_t, t)
        if model.config.self_condition:
            x0 = model(x_t, t, x0)
        ce = torch.nn.functional.cross_entropy(model.logits(x0).transpose(1, 2), ids, reduction="none")
        sampler.update(t, (ce * real).sum(1) / real.sum(1))
    return {"checkpoint": checkpoint, "t_edges": sampler.edges.tolist(),
            "cross_entropy": [round(v, 4) for v in sampler.loss.tolist()],
            "warped_density": [round(v, 4) for v in sampler.probabilities().tolist()]}


def plot(results: list[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        mid = [(lo + hi) / 2 for lo, hi in zip(r["t_edges"][:-1], r["t_edges"][1:])]
        a.plot(mid, r["cross_entropy"], marker=".", label=r["checkpoint"])
        b.step(mid, r["warped_density"], where="mid", label=r["checkpoint"])
    a.set(xlabel="t", ylabel="−log p(w | x̂₀) per word", title="what is left to learn at each t")
    b.axhline(1 / len(results[0]["cross_entropy"]), color="grey", lw=0.8, ls="--", label="uniform")
    b.set(xlabel="t", ylabel="share of draws", title="t_sampling=warped would draw")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str]) -> None:
    from pathlib import Path

    from diffusion_lm.scripting import number, parse

    args = parse(argv, {"checkpoints": "shipped", "n": "256", "out": "runs/loss_by_t.png"})
    n = number(args, "n", int, minimum=1)
    results = [profile(c, n) for c in args["checkpoints"].split(",")]
    for r in results:
        print(json.dumps(r))
    Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
    plot(results, args["out"])
    Path(args["out"]).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args['out']} and {Path(args['out']).with_suffix('.json')}")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
