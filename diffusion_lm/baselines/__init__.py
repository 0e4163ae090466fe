"""The paper's baselines on an autoregressive LM: FUDGE (future discriminators) and PPLM (perturbed past).

Both decode from a GPT-2-architecture LM trained on E2E train (`diffusion-lm
train-lm`, shipped as models/base-lm: a different seed and size from the
teacher that judges fluency), take the same targets as `diffusion-lm
generate`, and write the same JSONL rows, so `diffusion-lm evaluate` puts every
system in one table.
"""
