"""A Diffusion-LM folder: config.json + model.safetensors + tokenizer.json (through the shared `io`),
and beside them diffusion.json, the process the model was trained with (`core.save_diffusion_config`).

Folders written before diffusion.json existed kept the process in config.json (`schedule`,
`diffusion_steps`); they still load, read as if the two keys were a diffusion.json.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import DIFFUSION_FILE, DiffusionConfig, GaussianDiffusion, load_diffusion_config, save_diffusion_config
from ..errors import UserError
from .. import io
from ..io import atomic_write, load_json, load_weights
from .model import DiffusionLM, DiffusionLMConfig, diffusion_config
from .tokenizer import WordTokenizer


# config.json keys of folders from before diffusion.json, and the DiffusionConfig field each was
_LEGACY_DIFFUSION_KEYS = {"schedule": "schedule", "diffusion_steps": "steps"}


def config_from_dict(d: dict, where: str = "config.json") -> DiffusionLMConfig:
    """The denoiser's config from a folder's config.json (wrong keys or types are one-line UserErrors)."""
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k not in _LEGACY_DIFFUSION_KEYS}
    return io.config_from_dict(DiffusionLMConfig, d, where)


def load_diffusion(directory) -> GaussianDiffusion:
    """The process saved beside a model: diffusion.json, or an older folder's config.json keys."""
    directory = Path(directory)
    if (directory / DIFFUSION_FILE).is_file():
        try:
            return GaussianDiffusion.from_config(load_diffusion_config(directory))
        except ValueError as e:  # the message names the file
            raise UserError(str(e)) from None
    old = load_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    legacy = {new: old[k] for k, new in _LEGACY_DIFFUSION_KEYS.items() if k in old}
    if not legacy:
        raise UserError(f"missing file: {directory / DIFFUSION_FILE}")
    try:
        return GaussianDiffusion.from_config(diffusion_config(**legacy))
    except ValueError as e:
        raise UserError(f"{directory / 'config.json'}: {e}") from None


def save_pretrained(model: DiffusionLM, tokenizer: WordTokenizer | None, directory,
                    state_dict: dict[str, torch.Tensor] | None = None, *,
                    diffusion: GaussianDiffusion | DiffusionConfig) -> None:
    """Write a model folder and, beside it, `diffusion`. `state_dict` overrides the weights (e.g. the EMA copy)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    diffusion_cfg = diffusion.config if isinstance(diffusion, GaussianDiffusion) else diffusion
    if not isinstance(diffusion_cfg, DiffusionConfig):
        raise TypeError("save_pretrained needs the diffusion built by GaussianDiffusion.from_config, or its config")
    if tokenizer is not None:
        atomic_write(directory / "tokenizer.json", lambda p: tokenizer.tok.save(p))
    save_diffusion_config(directory, diffusion_cfg)
    # weights, then config.json: a folder with a config is complete
    io.save_pretrained(directory, model.config_dict(), state_dict or model.state_dict())


def from_pretrained(directory, device: str | torch.device = "cpu") -> tuple[DiffusionLM, WordTokenizer,
                                                                           GaussianDiffusion]:
    """Load a model folder: the model, its tokenizer and the diffusion saved beside them.

    Fails with a UserError on any mismatch."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint folder not found: {directory}")
    raw, state = io.load_pretrained(directory, "checkpoint")
    config = config_from_dict(raw, str(directory / "config.json"))
    tokenizer = WordTokenizer.load(directory)
    if len(tokenizer) != config.vocab_size:
        raise UserError(f"{directory}: tokenizer has {len(tokenizer)} words but the model expects {config.vocab_size}")
    diffusion = load_diffusion(directory)
    model = io.build_checked(lambda: DiffusionLM(config), state, str(directory))
    load_weights(model, state, str(directory))
    return model.to(device).eval(), tokenizer, diffusion
