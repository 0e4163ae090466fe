"""The baselines' pipeline: FUDGE or PPLM on the base AR LM, with the targets `DiffusionLMPipeline` takes.

    pipe = BaselinePipeline.from_pretrained("fudge")            # shipped base LM and discriminator
    pipe(task="pos", target="DT NNP VBZ DT JJ NN .", n=5)
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..assets import resolve_asset
from ..baselines.fudge import FudgeConfig, fudge_generate, load_discriminator
from ..baselines.pplm import PPLM, PPLMConfig
from ..errors import UserError
from ..lm import ARLM
from ..sharding import owned_batches
from ..tasks import get_task
from ..runtime import pick_device
from .text import MAX_SEED, Generation, _check_total, _count

METHODS = ("fudge", "pplm")
SHIPPED = {"fudge": "fudge-discriminator", "pplm": "pplm-discriminator"}


def check_config(method: str, config) -> None:
    """The decoding settings' ranges, each a one-line UserError naming `<method>.<key>` (NaN included)."""
    def fail(key: str, want: str):
        raise UserError(f"{method}.{key} must be {want}, got {getattr(config, key)!r}")

    def integer(key: str, least: int) -> None:
        v = getattr(config, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            fail(key, f"an integer >= {least}")

    def number(key: str, least: float = 0.0, most: float | None = None) -> None:
        v = getattr(config, key)
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < least
                or (most is not None and v > most)):
            fail(key, f"a finite number in [{least:g}, {most:g}]" if most is not None else f"a finite number >= {least:g}")

    integer("top_k", 1)
    integer("max_words", 1)
    if method == "fudge":
        number("strength")
    else:
        if config.attribute not in ("discrim", "bow"):
            raise UserError(f"unknown pplm.attribute {config.attribute!r}; choose discrim or bow")
        integer("iterations", 0)
        number("step_size")
        number("kl_scale")
        number("gm_scale", 0.0, 1.0)
        number("gamma", -1e6)


class BaselinePipeline:
    def __init__(self, method: str, lm: ARLM, discriminator, config, device: str = "cpu"):
        self.method, self.lm, self.disc, self.config, self.device = method, lm, discriminator, config, device
        self._pplm = PPLM(lm.model, lm.tokenizer, config, discriminator) if method == "pplm" else None

    @classmethod
    def from_pretrained(cls, method: str = "fudge", lm: str = "shipped", attribute_model: str = "shipped",
                        config: FudgeConfig | PPLMConfig | None = None, device: str = "auto") -> "BaselinePipeline":
        """`lm`: the base LM (shipped, or a folder from train-lm); `attribute_model`: the method's
        discriminator (shipped, or a folder from train-baseline)."""
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        config = config if config is not None else (FudgeConfig() if method == "fudge" else PPLMConfig())
        check_config(method, config)
        device = str(pick_device(device))
        base = ARLM.load(resolve_asset(lm, "model", "base-lm"), device=device)
        most = base.model.config.n_positions - 2  # START and END around the words
        if config.max_words > most:
            raise UserError(f"{method}.max_words must be at most {most} for this base LM (its n_positions - 2), "
                            f"got {config.max_words}")
        base.model.requires_grad_(False)
        disc = None
        if method == "fudge" or config.attribute == "discrim":
            disc = load_discriminator(resolve_asset(attribute_model, "model", SHIPPED[method]), method, device)
            fits = (disc.gpt2["vocab_size"] == len(base.tokenizer) if method == "fudge"
                    else disc.hidden == base.model.config.n_embd)
            if not fits:
                raise UserError(f"the {method} attribute model ({attribute_model}) was trained for another base LM")
        return cls(method, base, disc, replace(config), device)

    def __call__(self, task: str, target=None, *, targets: list | None = None, n: int = 1, seed: int = 0,
                 batch_size: int = 50) -> list[str]:
        return [g.text for g in self.generate(task, target, targets=targets, n=n, seed=seed, batch_size=batch_size)]

    def generate(self, task: str, target=None, *, targets: list | None = None, n: int = 1, seed: int = 0,
                 batch_size: int = 50, on_batch=None, shard: tuple[int, int] | None = None) -> list[Generation]:
        """Each target's sentences (n each), decoded in batches; `shard=(i, N)` runs only shard i's batches.
        Every batch draws from its own generator, seeded by its place in the run (seed + its first job), so
        a batch decodes the same sentences in any shard; the first batch's stream is the one a single
        generator seeded by `seed` gives."""
        get_task(task)
        if task == "infill":
            raise UserError("the baselines have no infill task; use diffusion-lm generate task=infill")
        n, batch_size, seed = _count("n", n), _count("batch_size", batch_size), _count("seed", seed, 0, MAX_SEED)
        if (target is None) == (targets is None):
            raise UserError("give exactly one of target=<inline target> or targets=<list of targets>")
        targets = [target] if targets is None else list(targets)
        if not targets:
            raise UserError("no targets to generate for")
        _check_total("targets × n", len(targets) * n)
        # every target is checked before any decoding
        parse = (lambda t: self.disc.target(task, t)) if self.method == "fudge" else (lambda t: self._pplm.target(task, t))
        parsed = [parse(t) for t in targets]
        jobs = [(i, t) for i, t in enumerate(targets) for _ in range(n)]
        out: list[Generation] = []
        for b in owned_batches(len(jobs), batch_size, shard):
            g = torch.Generator().manual_seed(seed + b)
            chunk = jobs[b:b + batch_size]
            goals = [parsed[i] for i, _ in chunk]
            if self.method == "fudge":
                texts = fudge_generate(self.lm.model, self.lm.tokenizer, self.disc, goals, self.config, g)
            else:
                texts = self._pplm.generate(goals, g)
            batch = [Generation(t, text, b + k) for k, ((_, t), text) in enumerate(zip(chunk, texts))]
            out += batch
            if on_batch is not None:
                on_batch(batch)
        return out
