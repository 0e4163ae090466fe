"""Trainers of the image side, each on the shared loop (`diffusion_lm.training.fit`).

train_unet: the caption-conditioned UNet. Folder layout of a run (`out_dir`):
    config.json, model.safetensors, diffusion.json   the EMA UNet and its process (UNet.from_pretrained)
    checkpoint/                                      raw weights, optimizer, EMA, RNG, step
    train_config.json, train_log.jsonl, loss_curve.png, summary.json
A killed run restarts from `checkpoint/` with the same command.

train_autoencoder (the KL autoencoder, calibrated to unit-variance latents) and train_clip (the CLIP
pair) draw a fresh batch of the train split per step (`step_batch`: make_batch seeded by the step), so
a resumed run sees what an unbroken one saw; each writes its model folder (config.json,
model.safetensors, manifest.json with the command and the metrics), checkpoint/, train_log.jsonl,
loss_curve.png and metrics.json (see AutoencoderTrainConfig and ClipTrainConfig).
"""
from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..runtime import pick_device
from ..assets import resolve_asset
from ..core import DiffusionConfig, GaussianDiffusion
from ..errors import UserError
from ..io import load_json, save_json
from ..training import batch_indices, fit, has_checkpoint, loop_config
from . import oracle
from .autoencoder import (REC_LOSSES, AutoencoderConfig, AutoencoderKL, AutoencoderVQ, PatchDiscriminator, VQConfig,
                          code_perplexity, load_autoencoder, psnr)
from .clip import LATER_OPTIONS, ClipConfig, ClipModel, info_nce, retrieval_scores
from .data import NEGATIVE_KINDS, hard_negative, hard_negatives, load_shapes, make_batch
from .evaluate import save_grid
from .unet import MAX_EPS_GAIN, SPACES, UNet, UNetConfig, eps_gain, images_to_tensor, match_parts, tensor_to_images


# ---- the keys every image trainer shares (each adds its own and its own defaults) ------------------
@dataclass
class LoopKeys:
    data_seed: int = 0
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | linear | constant, after warm-up
    grad_clip: float | None = 1.0
    seed: int = 0
    threads: int = 0  # torch threads; 0 keeps torch's default
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    anneal_by_time: bool = False  # with max_minutes: the lr schedule follows steps or minutes, whichever is further
    log_every: int = 25
    checkpoint_every: int = 250


# ---- the UNet ----------------------------------------------------------------------------------
@dataclass
class UNetTrainConfig(LoopKeys):
    out_dir: str = "runs/image-unet"
    autoencoder: str = "shipped"  # the frozen first stage (latent space only): a folder or shipped
    clip: str = "shipped"  # the frozen CLIP whose text tower's token states condition the UNet
    # caption: the caption's token states; image_embedding: the CLIP image embedding of the image itself
    # (unCLIP's decoder, image/unclip.py), dropped to a zero token as the caption is to ""
    condition: str = "caption"
    train_size: int = 20000  # scenes of the train split
    caption_dropout: float = 0.1  # share of captions replaced by "" (∅), so one model is also unconditional
    # share of captions that lose one object's colour (the object chosen per image): "a circle at the top
    # left" then shows circles of every colour, so the shape word is learned apart from the colour word
    colour_dropout: float = 0.0
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-4
    warmup: int = 200
    min_lr_ratio: float = 0.1
    ema_decay: float | None = 0.999
    # start a new run from a trained UNet's weights (a folder, or `shipped`: the shipped UNet of this space)
    # instead of from scratch, with a fresh optimizer and lr schedule; its shape and frozen parts must be
    # this run's. Read only when the run starts: a resume continues from its own checkpoint
    init_from: str | None = None


@torch.no_grad()
def encode_images(images, autoencoder=None, batch_size: int = 256) -> torch.Tensor:
    """x_0 of every training image: pixels in [−1, 1], or the frozen autoencoder's latents."""
    out = []
    for lo in range(0, len(images), batch_size):
        x = images_to_tensor(images[lo: lo + batch_size])
        if autoencoder is not None:
            p = next(iter(autoencoder.parameters()), None)
            x = autoencoder.encode(x.to(p.device if p is not None else "cpu")).float().cpu()
        out.append(x)
    return torch.cat(out)


@torch.no_grad()
def encode_captions(clip, captions: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen text tower's (states (N, L, H), mask (N, L)) of `captions`, padded to one length L."""
    parts = [clip.text_states(captions[lo: lo + batch_size]) for lo in range(0, len(captions), batch_size)]
    L = max(s.shape[1] for s, _ in parts)
    states = torch.cat([F.pad(s.float().cpu(), (0, 0, 0, L - s.shape[1])) for s, _ in parts])
    mask = torch.cat([F.pad(m.bool().cpu(), (0, L - m.shape[1])) for _, m in parts])
    return states, mask


class UNetBatches:
    """Training batches as a function of the step alone, so a resumed run sees what an unbroken one saw.

    Every distinct caption is encoded once by the frozen CLIP (and "" with them, the null ∅); a batch
    is rows (seeded epochs), timesteps, noise and the caption-dropout draw from a generator seeded by
    (seed, step)."""

    def __init__(self, x0: torch.Tensor, captions: list[str], clip, num_timesteps: int, batch_size: int,
                 seed: int, caption_dropout: float, per_row: dict[str, torch.Tensor] | None = None,
                 embeddings: torch.Tensor | None = None, colour_dropout: float = 0.0):
        self.x0, self.T, self.batch_size, self.seed, self.p = x0, num_timesteps, batch_size, seed, caption_dropout
        self.p_colour = colour_dropout
        self.per_row = per_row or {}  # more inputs, one row per image (a ControlNet's hints)
        self.variant_index = None  # rows of each caption with one colour left out (train.colour_dropout)
        if embeddings is not None:  # unCLIP's decoder: each image's own CLIP embedding, then a zero token (∅)
            from .unclip import embedding_context

            states, mask = embedding_context(embeddings)
            self.states = torch.cat([states, torch.zeros_like(states[:1])])
            self.mask = torch.cat([mask, mask[:1]])
            self.caption_index, self.null = torch.arange(len(embeddings)), len(embeddings)
            return
        variants = colour_variants(captions, seed) if colour_dropout > 0 else []
        distinct = list(dict.fromkeys([*captions, *variants, ""]))
        self.states, self.mask = encode_captions(clip, distinct)
        where = {c: k for k, c in enumerate(distinct)}
        self.caption_index = torch.tensor([where[c] for c in captions])
        self.variant_index = torch.tensor([where[c] for c in variants]) if variants else None
        self.null = where[""]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rows = batch_indices(step, self.batch_size, len(self.x0), self.seed)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        x0 = self.x0[rows]
        t = torch.randint(0, self.T, (len(rows),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        dropped = torch.rand(len(rows), generator=g) < self.p
        caption = self.caption_index[rows]
        if self.variant_index is not None:  # drawn after the others, so a run without it sees the same batches
            shorter = torch.rand(len(rows), generator=g) < self.p_colour
            caption = torch.where(shorter, self.variant_index[rows], caption)
        caption = torch.where(dropped, torch.full_like(rows, self.null), caption)
        return {"x0": x0, "t": t, "noise": noise, "context": self.states[caption],
                "context_mask": self.mask[caption], "dropped": dropped,
                **{k: v[rows] for k, v in self.per_row.items()}}


def colour_variants(captions: list[str], seed: int) -> list[str]:
    """For each caption, the same caption with one object's colour left out (the object drawn by a generator
    seeded by `seed`), still true of the image: an unstated attribute is free."""
    from dataclasses import replace as with_

    from .shapes import caption as caption_of, parse_caption

    r, out = np.random.default_rng([seed, 7919]), []
    for text in captions:
        scene = parse_caption(text)
        stated = [(k, "colour") for k, o in enumerate(scene.objects) if o.colour]
        if not stated:
            out.append(text)
            continue
        k, attr = stated[int(r.integers(len(stated)))]
        objects = list(scene.objects)
        objects[k] = with_(objects[k], **{attr: None})
        out.append(caption_of(with_(scene, objects=tuple(objects))))
    return out


def unet_loss(unet: UNet, diffusion: GaussianDiffusion, batch: dict) -> torch.Tensor:
    """|ε − ε_θ(x_t, t, c)|² (or the same with v for v-prediction), averaged over every element. A batch
    with a `control` (hints) trains a ControlledUNet."""
    x0, t, noise = batch["x0"], batch["t"], batch["noise"]
    x_t = diffusion.q_sample(x0, t, noise)
    target = noise if unet.config.prediction == "eps" else diffusion.v_from_x0_eps(x0, noise, t)
    extra = {"control": batch["control"]} if "control" in batch else {}
    return F.mse_loss(unet(x_t, t, context=batch["context"], context_mask=batch["context_mask"], **extra), target)


def _check_same_run(out: Path, config: UNetConfig, diffusion: DiffusionConfig, condition: str = "caption") -> None:
    from .unclip import read_conditioning

    there = read_conditioning(out)
    if there != condition:
        raise UserError(f"{out} holds a UNet run with train.condition={there}, not {condition}; "
                        f"choose another out_dir or delete it")
    saved = load_json(out / "config.json")
    now = asdict(config)
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise UserError(f"{out} holds a UNet run with a different unet.{k} ({saved.get(k)} there, {now[k]} now); "
                        f"choose another out_dir or delete it")
    there = load_json(out / "diffusion.json")
    if there != asdict(diffusion):
        raise UserError(f"{out} holds a run with a different diffusion ({there} there, {asdict(diffusion)} now); "
                        f"choose another out_dir or delete it")


def frozen_parts(space: str, train, autoencoder=None, clip=None):
    """The frozen autoencoder (None in pixel space) and CLIP pair a trainer reads, in eval mode without
    gradients: the ones given, else the folders (or `shipped`) named by train.autoencoder and train.clip."""
    if space == "latent" and autoencoder is None:
        autoencoder = load_autoencoder(resolve_asset(train.autoencoder, "model", "image-autoencoder"))
    if space != "latent":
        autoencoder = None
    if clip is None:
        clip = ClipModel.from_pretrained(resolve_asset(train.clip, "model", "image-clip"))
    for part in (autoencoder, clip):
        if isinstance(part, torch.nn.Module):
            part.eval().requires_grad_(False)
    return autoencoder, clip


def train_unet(unet_cfg: UNetConfig, diffusion_cfg: DiffusionConfig, train: UNetTrainConfig, *,
               full_config: dict | None = None, progress: bool = True, dataset=None, autoencoder=None,
               clip=None) -> dict:
    """Train (or resume) a caption-conditioned UNet; returns a summary.

    `dataset` (columns image, caption), `autoencoder` and `clip` default to the shapes train split
    and the folders `train.autoencoder` / `train.clip`; tests pass small ones."""
    try:
        diffusion = GaussianDiffusion.from_config(diffusion_cfg)
    except ValueError as e:
        raise UserError(f"bad diffusion config: diffusion.{e}") from None
    if unet_cfg.space not in SPACES:  # before any part loads
        raise UserError(f"unet.space must be latent or pixel, got {unet_cfg.space!r}")
    if unet_cfg.space == "latent" and unet_cfg.prediction == "eps" and eps_gain(diffusion) > MAX_EPS_GAIN:
        # latents have no range to clip x0 to, so nothing at sampling would catch the blown-up first step
        raise UserError(f"unet.prediction=eps on latents with diffusion.schedule={diffusion_cfg.schedule}: "
                        f"alpha_bar_T = {float(diffusion.alpha_bar[-1]):.1e}, so x0 from eps multiplies the model's "
                        f"error by {eps_gain(diffusion):.0e} at the first step and samples stay noise; "
                        f"use unet.prediction=v (or diffusion.schedule=linear)")
    if isinstance(train.caption_dropout, bool) or not 0 <= train.caption_dropout < 1:
        raise UserError(f"train.caption_dropout must be in [0, 1), got {train.caption_dropout!r}")
    a = train.colour_dropout
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < 1:
        raise UserError(f"train.colour_dropout must be in [0, 1), got {a!r}")
    if a and train.condition != "caption":
        raise UserError("train.colour_dropout shortens captions: it needs train.condition=caption")
    from .unclip import CONDITIONS, image_embeddings, write_conditioning

    if train.condition not in CONDITIONS:
        raise UserError(f"train.condition must be caption or image_embedding, got {train.condition!r}")
    loop = loop_config({"train": train})
    distributed.check_batch(train.batch_size)
    device = pick_device(train.device, "train.device")
    if train.threads:
        torch.set_num_threads(train.threads)
    autoencoder, clip = frozen_parts(unet_cfg.space, train, autoencoder, clip)
    match_parts(unet_cfg, autoencoder, clip, where=f"unet (space={unet_cfg.space})", context=train.condition)

    out = Path(train.out_dir)
    resuming = has_checkpoint(out)
    if resuming:
        _check_same_run(out, unet_cfg, diffusion_cfg, train.condition)
    init = (_init_unet(train.init_from, unet_cfg, diffusion_cfg, train.condition)
            if train.init_from is not None and not resuming else None)
    if dataset is None:
        dataset = load_shapes("train", train.train_size, train.data_seed)
    data = dataset.with_format("numpy")
    images, captions = np.asarray(data["image"], dtype=np.uint8), [str(c) for c in dataset["caption"]]
    embeddings = image_embeddings(clip, images_to_tensor(images)) if train.condition == "image_embedding" else None
    batches = UNetBatches(encode_images(images, autoencoder), captions, clip, diffusion.num_timesteps,
                          train.batch_size, train.seed, train.caption_dropout, embeddings=embeddings,
                          colour_dropout=train.colour_dropout)
    del images

    torch.manual_seed(train.seed)
    unet = UNet(unet_cfg).to(device)
    if init is not None:  # caption layers the init lacks (unet.text_layers grown) keep their identity start
        missing, unexpected = unet.load_state_dict(init.state_dict(), strict=False)
        if unexpected or any(not k.startswith("text.") for k in missing):
            raise UserError(f"train.init_from: {train.init_from}'s weights do not fit this run's UNet")
    if not resuming and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        if train.condition != "caption":
            write_conditioning(out, train.condition, unet_cfg.clip_fingerprint)
        unet.save_pretrained(out, diffusion)  # config and process first, for a resume to check against
        if full_config is not None:
            save_json(out / "train_config.json", full_config)

    def loss_at(step: int):  # the step's global batch, this process's slice of it (all of it without torchrun)
        batch = {k: v.to(device) for k, v in distributed.shard(batches(step)).items()}
        return unet_loss(unet, diffusion, batch)

    def write_model(state) -> None:  # the EMA UNet beside each checkpoint, loadable by from_pretrained
        unet.save_pretrained(out, diffusion, state_dict=state.ema)

    result = fit(unet, loss_at, loop, out, name=f"UNet ({unet_cfg.space})", progress=progress,
                 on_checkpoint=write_model)
    summary = {"steps": result.step, "stopped": result.stopped, "train_minutes": round(result.elapsed_s / 60, 2),
               "seconds_per_step": round(result.elapsed_s / max(1, result.step), 4), "final_terms": result.last,
               "parameters": unet.num_parameters(), "space": unet_cfg.space,
               "input": [unet_cfg.in_channels, unet_cfg.image_size, unet_cfg.image_size],
               "train_images": len(captions), "distinct_captions": len(set(captions)),
               "autoencoder": train.autoencoder if unet_cfg.space == "latent" else None, "clip": train.clip,
               "processes": distributed.world()[1], "condition": train.condition}
    if distributed.is_main():
        save_json(out / "summary.json", summary)
    return summary


def _init_unet(value, unet_cfg: UNetConfig, diffusion_cfg: DiffusionConfig, condition: str = "caption") -> UNet:
    """The UNet `train.init_from` names, checked against this run's UNet (shape, space, frozen parts,
    conditioning) and process."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"train.init_from must name a UNet folder or `shipped`, got {value!r}")
    folder = resolve_asset(value, "model", f"image-unet-{unet_cfg.space}")
    if not (Path(folder) / "config.json").is_file():
        raise UserError(f"train.init_from: no UNet in {folder} (no config.json)")
    from .unclip import read_conditioning

    if read_conditioning(folder) != condition:
        raise UserError(f"train.init_from: {folder} is a UNet conditioned on {read_conditioning(folder)}, this run "
                        f"trains one on {condition} (train.condition)")
    init = UNet.from_pretrained(folder)
    there, now = asdict(init.config), asdict(unet_cfg)
    # dropout is training's, not the shape's; caption layers may be added (they start as the identity)
    grow = there.get("text_layers", 0) < now["text_layers"]
    diff = [k for k in now if k != "dropout" and not (k == "text_layers" and grow) and there.get(k) != now[k]]
    if diff:
        k = diff[0]
        if k.endswith("_fingerprint"):
            part = k.removesuffix("_fingerprint")
            raise UserError(f"train.init_from: {folder} was trained with another {part} (fingerprint "
                            f"{str(there.get(k))[:12]}); set train.{part} to the one it was trained with")
        raise UserError(f"train.init_from: {folder} has unet.{k}={there.get(k)}, this run's unet.{k}={now[k]}; "
                        f"set it to match (or train from scratch)")
    process = load_json(Path(folder) / "diffusion.json")
    if process != asdict(diffusion_cfg):
        raise UserError(f"train.init_from: {folder} was trained with diffusion {process}, this run's is "
                        f"{asdict(diffusion_cfg)}")
    return init


# ---- ControlNet --------------------------------------------------------------------------------
@dataclass
class ControlNetTrainConfig(LoopKeys):
    """train_controlnet's settings. Folder layout of a run (`out_dir`):
        config.json, model.safetensors   the EMA ControlNet (ControlNet.from_pretrained, with its base UNet)
        checkpoint/, train_config.json, train_log.jsonl, loss_curve.png, summary.json
    """
    out_dir: str = "runs/image-controlnet"
    unet: str = "shipped"  # the frozen base UNet (a train-unet folder, or shipped)
    autoencoder: str = "shipped"
    clip: str = "shipped"
    train_size: int = 20000
    caption_dropout: float = 0.1
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    ema_decay: float | None = 0.999


def train_controlnet(cn_cfg, train: ControlNetTrainConfig, *, full_config: dict | None = None, progress: bool = True,
                     dataset=None, unet=None, diffusion=None, autoencoder=None, clip=None) -> dict:
    """Train (or resume) a ControlNet on the frozen base UNet, with the object masks of the training images
    as hints; returns a summary. `dataset`, `unet` (with `diffusion`), `autoencoder`, `clip` default to the
    shapes train split and the folders in `train`; tests pass small ones."""
    from .controlnet import ControlledUNet, ControlNet, check_base, object_mask
    from .unet import fingerprint, load_diffusion

    if isinstance(train.caption_dropout, bool) or not 0 <= train.caption_dropout < 1:
        raise UserError(f"train.caption_dropout must be in [0, 1), got {train.caption_dropout!r}")
    cn_cfg.validate()
    loop = loop_config({"train": train})
    distributed.check_batch(train.batch_size)
    device = pick_device(train.device, "train.device")
    if train.threads:
        torch.set_num_threads(train.threads)
    if unet is None:
        path = resolve_asset(train.unet, "model", "image-unet-latent")
        unet, diffusion = UNet.from_pretrained(path), load_diffusion(path)
    unet.eval().requires_grad_(False)
    autoencoder, clip = frozen_parts(unet.config.space, train, autoencoder, clip)
    match_parts(unet.config, autoencoder, clip, where="the base UNet")
    cn_cfg.base, cn_cfg.base_fingerprint = asdict(unet.config), fingerprint(unet)

    out = Path(train.out_dir)
    resuming = has_checkpoint(out)
    if resuming:
        from .controlnet import ControlNetConfig

        saved = load_json(out / "config.json")
        if not isinstance(saved, dict):
            raise UserError(f"{out / 'config.json'} must hold a JSON object, not {type(saved).__name__}")
        check_base(ControlNetConfig(**{k: saved.get(k) for k in ("hint_channels", "hint_width", "base",
                                                                  "base_fingerprint")}), unet, str(out))
        _check_same_model(out, "controlnet", {"hint_channels": cn_cfg.hint_channels, "hint_width": cn_cfg.hint_width})
    if dataset is None:
        dataset = load_shapes("train", train.train_size, train.data_seed)
    data = dataset.with_format("numpy")
    images, captions = np.asarray(data["image"], dtype=np.uint8), [str(c) for c in dataset["caption"]]
    batches = UNetBatches(encode_images(images, autoencoder), captions, clip, diffusion.num_timesteps,
                          train.batch_size, train.seed, train.caption_dropout,
                          per_row={"control": torch.from_numpy(object_mask(images))})
    del images

    torch.manual_seed(train.seed)
    unet = unet.to(device)
    controlnet = ControlNet(unet, cn_cfg).to(device)
    controlled = ControlledUNet(unet, controlnet)
    if not resuming and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        controlnet.save_pretrained(out)
        if full_config is not None:
            save_json(out / "train_config.json", full_config)

    def loss_at(step: int):
        batch = {k: v.to(device) for k, v in distributed.shard(batches(step)).items()}
        return unet_loss(controlled, diffusion, batch)

    def write_model(state) -> None:
        controlnet.save_pretrained(out, state_dict=state.ema)

    unet.eval()
    result = fit(controlnet, loss_at, loop, out, name="ControlNet", progress=progress, on_checkpoint=write_model)
    summary = {"steps": result.step, "stopped": result.stopped, "train_minutes": round(result.elapsed_s / 60, 2),
               "seconds_per_step": round(result.elapsed_s / max(1, result.step), 4), "final_terms": result.last,
               "parameters": controlnet.num_parameters(), "base_parameters": unet.num_parameters(),
               "space": unet.config.space, "unet": train.unet, "train_images": len(captions),
               "processes": distributed.world()[1]}
    if distributed.is_main():
        save_json(out / "summary.json", summary)
    return summary


# ---- noisy classifiers (CLIP guidance, attribute guidance) ----------------------------------------
@dataclass
class NoisyTrainConfig(LoopKeys):
    """train_noisy's settings. Folder layout of a run (`out_dir`):
        config.json, model.safetensors   the EMA model (NoisyImageModel.from_pretrained)
        checkpoint/, train_config.json, train_log.jsonl, loss_curve.png, metrics.json
    """
    out_dir: str = "runs/image-noisy-clip"
    autoencoder: str = "shipped"  # the latents it reads (space latent)
    clip: str = "shipped"  # kind clip: the frozen text tower it is aligned to
    diffusion_schedule: str = "cosine"  # the noise it is trained on: the UNet's process
    diffusion_steps: int = 1000
    train_size: int = 20000
    steps: int = 2000
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    ema_decay: float | None = 0.999
    test_size: int = 1000


T_BUCKETS = ((0, 250), (250, 500), (500, 750), (750, 1000))  # as fractions of T x 1000


def train_noisy(cfg, train: NoisyTrainConfig, *, full_config: dict | None = None, progress: bool = True,
                dataset=None, autoencoder=None, clip=None, test=None) -> dict:
    """Train (or resume) a model of noisy images (image/noisy.py): kind clip aligns x_t with the frozen CLIP
    text tower's caption embeddings (InfoNCE); kind attributes classifies a one-object scene's colour,
    shape, size and position from x_t. Returns metrics on the test split by noise level."""
    from .noisy import ATTRIBUTES, NoisyImageModel
    from .shapes import parse_caption
    from .unet import fingerprint

    if cfg.space not in SPACES:
        raise UserError(f"classifier.space must be latent or pixel, got {cfg.space!r}")
    distributed.check_batch(train.batch_size)
    try:
        diffusion = GaussianDiffusion.from_config(DiffusionConfig(train.diffusion_schedule, train.diffusion_steps))
    except ValueError as e:
        raise UserError(f"bad diffusion: train.diffusion_{e}") from None
    loop = loop_config({"train": train})
    device = pick_device(train.device, "train.device")
    if train.threads:
        torch.set_num_threads(train.threads)
    autoencoder, clip = frozen_parts(cfg.space, train, autoencoder, clip)
    from .unet import latent_shape

    cfg.in_channels, cfg.image_size = latent_shape(autoencoder) if autoencoder is not None else (3, 32)
    cfg.diffusion_schedule, cfg.diffusion_steps = train.diffusion_schedule, train.diffusion_steps
    cfg.autoencoder_fingerprint = fingerprint(autoencoder) if autoencoder is not None else None
    if cfg.kind == "clip":
        cfg.embed_dim, cfg.clip_fingerprint = int(clip.encode_text([""]).shape[-1]), fingerprint(clip)
    out = Path(train.out_dir)
    resuming = has_checkpoint(out)
    if resuming:
        _check_same_model(out, "classifier", asdict(cfg))

    def prepare(data):
        arr = data.with_format("numpy")
        images, captions = np.asarray(arr["image"], dtype=np.uint8), [str(c) for c in data["caption"]]
        if cfg.kind == "attributes":  # one-object captions state every attribute of their object
            keep = [i for i, c in enumerate(captions) if len(parse_caption(c).objects) == 1]
            images, captions = images[keep], [captions[i] for i in keep]
        return encode_images(images, autoencoder), captions

    x0, captions = prepare(dataset if dataset is not None else load_shapes("train", train.train_size, train.data_seed))
    if len(x0) < 2:
        raise UserError(f"{len(x0)} usable training scenes; give a larger train.train_size")
    distinct = list(dict.fromkeys(captions))
    where = {c: k for k, c in enumerate(distinct)}
    group = torch.tensor([where[c] for c in captions])
    with torch.no_grad():
        text = torch.cat([clip.encode_text(distinct[k: k + 256]).float().cpu() for k in range(0, len(distinct), 256)]) \
            if cfg.kind == "clip" else None

    def labels_of(caps):
        objs = [parse_caption(c).objects[0] for c in caps]
        return {k: torch.tensor([v.index(getattr(o, k)) for o in objs]) for k, v in ATTRIBUTES.items()}

    labels = labels_of(captions) if cfg.kind == "attributes" else None
    torch.manual_seed(train.seed)
    model = NoisyImageModel(cfg).to(device)
    if not resuming and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        if full_config is not None:
            save_json(out / "train_config.json", full_config)

    def loss_on(m, rows, t, noise):
        x_t = diffusion.q_sample(x0[rows].to(device), t.to(device), noise.to(device))
        if cfg.kind == "clip":
            img = m(x_t, t.to(device))
            logits = m.scale() * img @ text[group[rows]].to(device).t()
            loss = info_nce(logits, group[rows].to(device))
            acc = (group[rows].to(device)[logits.argmax(1)] == group[rows].to(device)).float().mean()
            return loss, {"loss": loss, "acc": acc.detach()}
        logits = m.logits(x_t, t.to(device))
        loss = sum(F.cross_entropy(logits[k], labels[k][rows].to(device)) for k in ATTRIBUTES)
        acc = torch.stack([(logits[k].argmax(1) == labels[k][rows].to(device)).float().mean() for k in ATTRIBUTES]).mean()
        return loss, {"loss": loss, "acc": acc.detach()}

    def loss_at(step: int):  # the step's global batch, this process's slice of it
        rows = batch_indices(step, train.batch_size, len(x0), train.seed)
        g = torch.Generator().manual_seed(train.seed * 1_000_003 + step)
        t = torch.randint(0, diffusion.num_timesteps, (len(rows),), generator=g)
        noise = torch.randn(x0[rows].shape, generator=g)
        if cfg.kind == "clip" and distributed.world()[1] > 1:
            # InfoNCE contrasts the whole batch: each rank embeds its slice, the embeddings are gathered
            # (differentiably) and every rank takes the global batch's loss
            local = [distributed.shard(v) for v in (rows, t, noise)]
            x_t = diffusion.q_sample(x0[local[0]].to(device), local[1].to(device), local[2].to(device))
            img = distributed.gather_with_grad(model(x_t, local[1].to(device)))
            groups = group[rows].to(device)
            logits = model.scale() * img @ text[group[rows]].to(device).t()
            loss = info_nce(logits, groups)
            acc = (groups[logits.argmax(1)] == groups).float().mean()
            return loss, {"loss": loss, "acc": acc.detach()}
        return loss_on(model, *(distributed.shard(v) for v in (rows, t, noise)))

    def write_model(state) -> None:
        _exported(model, state.ema).save_pretrained(out)

    result = fit(model, loss_at, loop, out, name=f"noisy {cfg.kind} classifier", progress=progress,
                 on_checkpoint=write_model)
    if not distributed.is_main():  # rank 0 measures and writes
        return {"kind": cfg.kind, "steps": result.step, "stopped": result.stopped}
    final = _exported(model, result.ema).eval()
    # metrics by noise level on the test split (one-object scenes for attributes)
    tx0, tcaps = prepare(test if test is not None else load_shapes("test", train.test_size, train.data_seed))
    by_t = {}
    with torch.no_grad():
        g = torch.Generator().manual_seed(12345)
        for lo, hi in T_BUCKETS:
            a, b = lo * diffusion.num_timesteps // 1000, hi * diffusion.num_timesteps // 1000
            t = torch.randint(a, max(a + 1, b), (len(tx0),), generator=g)
            x_t = diffusion.q_sample(tx0, t, torch.randn(tx0.shape, generator=g)).to(device)
            if cfg.kind == "clip":
                emb = torch.cat([final(x_t[k: k + 256], t[k: k + 256].to(device)).cpu() for k in range(0, len(x_t), 256)])
                txt = torch.cat([clip.encode_text(tcaps[k: k + 256]).float().cpu() for k in range(0, len(tcaps), 256)])
                sets = [retrieval_scores(emb[k: k + 100] @ txt[k: k + 100].t(), tcaps[k: k + 100])["image_to_text_top1"]
                        for k in range(0, len(tcaps) - 99, 100)]
                by_t[f"t {a}-{b}"] = {"image_to_text_top1_among_100": round(float(np.mean(sets)), 4) if sets else None}
            else:
                logits = final.logits(x_t, t.to(device))
                truth = labels_of(tcaps)
                by_t[f"t {a}-{b}"] = {k: round(float((logits[k].argmax(1).cpu() == truth[k]).float().mean()), 4)
                                      for k in ATTRIBUTES}
    metrics = {"kind": cfg.kind, "steps": result.step, "stopped": result.stopped,
               "train_minutes": round(result.elapsed_s / 60, 2), "final_terms": result.last,
               "parameters": final.num_parameters(), "train_scenes": len(x0), "test_scenes": len(tx0), "test_by_t": by_t}
    if distributed.is_main():
        final.save_pretrained(out, manifest={"kind": f"image-noisy-{cfg.kind}",
                                             "command": (full_config or {}).get("command"), "metrics": metrics})
        save_json(out / "metrics.json", metrics)
    return metrics


# ---- unCLIP's prior ----------------------------------------------------------------------------
@dataclass
class PriorTrainConfig(LoopKeys):
    """train_prior's settings. Folder layout of a run (`out_dir`):
        config.json, model.safetensors, diffusion.json, manifest.json   DiffusionPrior.from_pretrained
        checkpoint/, train_config.json, train_log.jsonl, loss_curve.png, metrics.json
    """
    out_dir: str = "runs/image-prior"
    clip: str = "shipped"  # the frozen CLIP pair whose text embeddings it maps to image embeddings
    diffusion_schedule: str = "cosine"
    diffusion_steps: int = 1000
    train_size: int = 20000
    text_dropout: float = 0.1  # share of text embeddings replaced by ∅ = 0, for classifier-free guidance
    steps: int = 4000
    batch_size: int = 256
    lr: float = 5e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    ema_decay: float | None = 0.999
    test_size: int = 1000  # test pairs the sampled embeddings are scored on, in sets of 100
    guidance: float = 1.0  # w of the metrics' prior samples
    sample_steps: int = 50


@torch.no_grad()
def prior_metrics(prior, diffusion, clip, images: np.ndarray, captions: list[str], guidance: float, steps: int,
                  seed: int = 0) -> dict:
    """How well the prior's samples for test captions stand in for the true images' embeddings: cosine to
    the true image embedding and to the text embedding (beside the true pair's), and the image-to-text
    top-1 among sets of 100 captions of a sampled embedding against a true one's."""
    from .unclip import image_embeddings, sample_prior, text_embeddings

    img = image_embeddings(clip, images_to_tensor(images))
    txt = text_embeddings(clip, captions)
    gen = sample_prior(prior, diffusion, txt, guidance=guidance, steps=steps,
                       generator=torch.Generator().manual_seed(seed))
    out = {"n": len(captions), "guidance": guidance, "steps": steps,
           "cos_sample_image": round(float((gen * img).sum(-1).mean()), 4),
           "cos_sample_text": round(float((gen * txt).sum(-1).mean()), 4),
           "cos_image_text": round(float((img * txt).sum(-1).mean()), 4)}
    for name, emb in (("sample", gen), ("image", img)):
        sets = [retrieval_scores(emb[k: k + 100] @ txt[k: k + 100].t(), captions[k: k + 100])["image_to_text_top1"]
                for k in range(0, len(captions) - 99, 100)]
        out[f"{name}_to_text_top1_among_100"] = round(float(np.mean(sets)), 4) if sets else None
    return out


def train_prior(prior_cfg, train: PriorTrainConfig, *, full_config: dict | None = None, progress: bool = True,
                dataset=None, clip=None, test=None) -> dict:
    """Train (or resume) unCLIP's diffusion prior from the frozen CLIP's text embeddings of the train split's
    captions to its image embeddings of the images; returns metrics of its samples on the test split."""
    from .unclip import DiffusionPrior, image_embeddings, prior_loss, text_embeddings
    from .unet import fingerprint

    if isinstance(train.text_dropout, bool) or not isinstance(train.text_dropout, (int, float)) \
            or not 0 <= train.text_dropout < 1:
        raise UserError(f"train.text_dropout must be in [0, 1), got {train.text_dropout!r}")
    g = train.guidance
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not np.isfinite(g) or g < 0:
        raise UserError(f"train.guidance must be a finite number >= 0, got {g!r}")
    for key in ("test_size", "sample_steps"):
        _check_positive(getattr(train, key), f"train.{key}")
    try:
        diffusion = GaussianDiffusion.from_config(DiffusionConfig(train.diffusion_schedule, train.diffusion_steps))
    except ValueError as e:
        raise UserError(f"bad diffusion: train.diffusion_{e}") from None
    if train.sample_steps > diffusion.num_timesteps:
        raise UserError(f"train.sample_steps must be at most train.diffusion_steps ({diffusion.num_timesteps}), "
                        f"got {train.sample_steps}")
    loop = loop_config({"train": train})
    distributed.check_batch(train.batch_size)
    device = pick_device(train.device, "train.device")
    if train.threads:
        torch.set_num_threads(train.threads)
    _, clip = frozen_parts("pixel", train, None, clip)
    prior_cfg.embed_dim, prior_cfg.clip_fingerprint = int(clip.config.embed_dim), fingerprint(clip)
    out = Path(train.out_dir)
    resuming = has_checkpoint(out)
    if resuming:
        _check_same_model(out, "prior", asdict(prior_cfg))
    data = dataset if dataset is not None else load_shapes("train", train.train_size, train.data_seed)
    arr = data.with_format("numpy")
    image = image_embeddings(clip, images_to_tensor(np.asarray(arr["image"], dtype=np.uint8)))
    text = text_embeddings(clip, [str(c) for c in data["caption"]])
    torch.manual_seed(train.seed)
    prior = DiffusionPrior(prior_cfg).to(device)
    if not resuming and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        prior.save_pretrained(out, diffusion)
        if full_config is not None:
            save_json(out / "train_config.json", full_config)

    def loss_at(step: int):
        rows = batch_indices(step, train.batch_size, len(image), train.seed)
        g = torch.Generator().manual_seed(train.seed * 1_000_003 + step)
        t = torch.randint(0, diffusion.num_timesteps, (len(rows),), generator=g)
        noise = torch.randn(image[rows].shape, generator=g)
        dropped = torch.rand(len(rows), generator=g) < train.text_dropout
        parts = [distributed.shard(v).to(device) for v in (image[rows], text[rows], t, noise, dropped)]
        return prior_loss(prior, diffusion, *parts)

    def write_model(state) -> None:
        _exported(prior, state.ema).save_pretrained(out, diffusion)

    result = fit(prior, loss_at, loop, out, name="unCLIP prior", progress=progress, on_checkpoint=write_model)
    if not distributed.is_main():
        return {"steps": result.step, "stopped": result.stopped}
    final = _exported(prior, result.ema).eval()
    test_data = test if test is not None else load_shapes("test", train.test_size, train.data_seed)
    tarr = test_data.with_format("numpy")
    metrics = {"steps": result.step, "stopped": result.stopped, "train_minutes": round(result.elapsed_s / 60, 2),
               "final_terms": result.last, "parameters": final.num_parameters(), "train_pairs": len(image),
               "test": prior_metrics(final, diffusion, clip, np.asarray(tarr["image"], dtype=np.uint8),
                                     [str(c) for c in test_data["caption"]], train.guidance, train.sample_steps)}
    final.save_pretrained(out, diffusion, manifest={"kind": "image-prior", "command": (full_config or {}).get("command"),
                                                    "metrics": metrics})
    save_json(out / "metrics.json", metrics)
    return metrics


# ---- shared by the autoencoder and CLIP trainers ------------------------------------------------
STEP_STREAMS = 1_000_003  # data_seed's stride between batch streams: step s of data_seed d draws stream d·this + s


def step_batch(step: int, batch_size: int, data_seed: int) -> tuple[torch.Tensor, list[str]]:
    """The training pairs of `step`: a fresh draw of the train split's stream seeded by (data_seed, step),
    as images in [−1, 1] (B, 3, 32, 32) and captions; a function of the step alone (exact resume)."""
    images, captions = make_batch("train", batch_size, data_seed * STEP_STREAMS + step)
    return images_to_tensor(images), captions


def step_negatives(captions: list[str], step: int, data_seed: int, kinds=None) -> list[str]:
    """A hard negative of each caption of `step` (data.hard_negative of `kinds`, seeded by the step, so a
    resumed run draws the same); a caption without one stands for itself, which the loss counts as a positive."""
    r = random.Random(f"hard-negatives/{int(data_seed)}/{int(step)}")
    return [hard_negative(c, r, kinds) or c for c in captions]


def held_images(split: str, n: int, data_seed: int) -> tuple[np.ndarray, list[str]]:
    """n images of `split` for calibration and metrics; for train, a stream no training step draws."""
    return make_batch(split, n, -1 - data_seed if split == "train" else data_seed)


def _check_same_model(out: Path, what: str, now: dict, ignore: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """`defaults`: values a config saved before those keys existed holds implicitly."""
    saved = {**(defaults or {}), **load_json(out / "config.json")}
    diff = [k for k in now if k not in ignore and saved.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise UserError(f"{out} holds a {what} run with a different {what}.{k} ({saved.get(k)} there, {now[k]} "
                        f"now); choose another out_dir or delete it")


def _check_positive(value, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key} must be an integer >= 1, got {value!r}")


def _exported(model: torch.nn.Module, state: dict | None) -> torch.nn.Module:
    """The model a user loads: `model` itself, or a copy holding the EMA weights."""
    if state is None:
        return model
    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return twin


def _batched(fn, x: torch.Tensor, device, batch_size: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[k: k + batch_size].to(device)).float().cpu() for k in range(0, len(x), batch_size)])


# ---- the autoencoder (LDM's first stage) --------------------------------------------------------
@dataclass
class AutoencoderTrainConfig(LoopKeys):
    """train_autoencoder's settings. Folder layout of a run (`out_dir`):
        config.json (+ scale_factor), model.safetensors, manifest.json   AutoencoderKL.from_pretrained
        checkpoint/, train_config.json, train_log.jsonl, loss_curve.png, metrics.json, reconstructions.png
    """
    out_dir: str = "runs/image-autoencoder"
    kl_weight: float = 1.0e-6  # on KL / (3·H·W), as LDM's (whose losses are sums over the image)
    rec_loss: str = "mse"  # mse | l1 (with l1 the sparse shapes stayed blurs far longer)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    ema_decay: float | None = None  # None: the model is the raw weights
    calibration_size: int = 1024  # train images (a stream no step draws) the latent scale is measured on
    test_size: int = 1000  # test images for PSNR and the oracle's accuracy
    grid: int = 16  # pairs of originals and reconstructions in reconstructions.png
    # the VQ autoencoder only (autoencoder._target_ VQConfig, autoencoder_preset=vq_cpu)
    restart_every: int = 100  # every this many steps, codes out of use move onto encoder outputs (0: never)
    disc_weight: float = 0.0  # > 0: a patch discriminator (hinge loss) joins, its generator term weighted so
    disc_start: int = 0  # the step it joins at (after the reconstruction's warm-up, as VQGAN)


@torch.no_grad()
def autoencoder_metrics(ae: AutoencoderKL, images: np.ndarray, captions: list[str]) -> tuple[dict, np.ndarray]:
    """PSNR of the reconstructions decode(encode(x)) (posterior means) of uint8 `images`, and the oracle's
    accuracy on the originals and on the reconstructions against the captions; also the reconstructions."""
    ae.eval()
    dev = next(ae.parameters()).device
    x = images_to_tensor(images)
    recon = _batched(lambda b: ae.decode(ae.encode(b)), x, dev)
    rec_images = tensor_to_images(recon)
    orig, rec = oracle.accuracy(images, captions), oracle.accuracy(rec_images, captions)
    keys = [k for k in orig if k != "n" and orig[k] is not None]
    out = {"n": len(images), **psnr(recon, x),
           "oracle_original": {k: round(orig[k], 4) for k in keys},
           "oracle_reconstructed": {k: round(rec[k], 4) for k in keys},
           # whole-caption accuracy lost by reconstructing, in points (the bar: within 1)
           "caption_gap_points": round(100 * (orig["caption"] - rec["caption"]), 2)}
    if isinstance(ae, AutoencoderVQ):
        codes = _batched(lambda b: ae.codes(b).float(), x, dev).long()
        size = ae.config.codebook_size
        out["codebook"] = {"size": size, "perplexity": round(code_perplexity(codes, size), 2),
                           "used": int(len(codes.unique())), "positions": int(codes.numel())}
    return out, rec_images


def train_autoencoder(model_cfg: AutoencoderConfig, train: AutoencoderTrainConfig, *, full_config: dict | None = None,
                      command: str | None = None, progress: bool = True) -> dict:
    """Train (or resume) the KL autoencoder (or, with a VQConfig, the VQ one) on fresh train-split batches;
    calibrate its latent scale; write the model folder with PSNR and oracle metrics on the test split (and
    the codebook's usage for VQ). Returns the metrics."""
    vq = isinstance(model_cfg, VQConfig)
    for key in ("restart_every", "disc_start"):
        v = getattr(train, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"train.{key} must be an integer >= 0, got {v!r}")
    w = train.disc_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
        raise UserError(f"train.disc_weight must be a number >= 0, got {w!r}")
    if w > 0 and not vq:
        raise UserError("train.disc_weight applies to the VQ autoencoder (autoencoder_preset=vq_cpu), not the KL one")
    if vq and distributed.world()[1] > 1:
        raise UserError("the VQ autoencoder trains in one process: its code-usage statistics and code restarts "
                        "would differ between processes")
    if train.rec_loss not in REC_LOSSES:
        raise UserError(f"unknown train.rec_loss {train.rec_loss!r}; choose l1 or mse")
    if isinstance(train.kl_weight, bool) or not isinstance(train.kl_weight, (int, float)) or not train.kl_weight >= 0:
        raise UserError(f"train.kl_weight must be a number >= 0, got {train.kl_weight!r}")
    for key in ("calibration_size", "test_size", "grid"):
        _check_positive(getattr(train, key), f"train.{key}")
    loop = loop_config({"train": train})
    distributed.check_batch(train.batch_size)
    device = pick_device(train.device, "train.device")
    if train.threads:
        torch.set_num_threads(train.threads)
    out = Path(train.out_dir)
    torch.manual_seed(train.seed)
    ae = (AutoencoderVQ if vq else AutoencoderKL)(model_cfg).to(device)
    disc = PatchDiscriminator(model_cfg.in_channels).to(device) if w > 0 else None
    trainee = torch.nn.ModuleDict({"autoencoder": ae, "discriminator": disc}) if disc is not None else ae
    resuming = has_checkpoint(out)
    if resuming:
        _check_same_model(out, "autoencoder", asdict(model_cfg))
    elif distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        ae.save_pretrained(out)  # config first, for a resume to check against (scale 1 until calibrated)
        if full_config is not None:
            save_json(out / "train_config.json", full_config)
    calib = images_to_tensor(held_images("train", train.calibration_size, train.data_seed)[0])

    def loss_at(step: int):
        x, _ = step_batch(step, train.batch_size, train.data_seed)
        if vq:
            x = x.to(device)
            if train.restart_every and step and step % train.restart_every == 0:
                with torch.no_grad():
                    h = ae.latent(x)
                ae.quantizer.restart_dead(h, torch.Generator().manual_seed(train.seed * STEP_STREAMS + step))
            use_disc = disc is not None and step >= train.disc_start
            return ae.loss(x, train.rec_loss, disc if use_disc else None, w)
        noise = torch.randn((len(x), model_cfg.latent_channels, *(s // model_cfg.factor for s in x.shape[2:])),
                            generator=torch.Generator().manual_seed(train.seed * STEP_STREAMS + step))
        x, noise = distributed.shard(x), distributed.shard(noise)  # this process's slice of the global batch
        return ae.loss(x.to(device), noise.to(device), kl_weight=train.kl_weight, rec_loss=train.rec_loss)

    def export(state):
        ema = state.ema if state is not None else None
        if ema is not None and disc is not None:  # the trainee's EMA holds both; the model is the autoencoder's part
            ema = {k.split(".", 1)[1]: v for k, v in ema.items() if k.startswith("autoencoder.")}
        model = _exported(ae, ema)
        model.calibrate(calib.to(device))
        return model

    def write_model(state) -> None:  # the calibrated model beside each checkpoint, loadable by from_pretrained
        export(state).save_pretrained(out)

    result = fit(trainee, loss_at, loop, out, name=f"{'VQ' if vq else 'KL'} autoencoder", progress=progress,
                 on_checkpoint=write_model)
    if not distributed.is_main():  # rank 0 measures and writes the model
        return {"steps": result.step, "stopped": result.stopped}
    final = export(result)
    images, captions = held_images("test", train.test_size, train.data_seed)
    metrics, rec_images = autoencoder_metrics(final, images, captions)
    z = _batched(final.encode, calib, device)
    metrics = {"steps": result.step, "stopped": result.stopped, "train_minutes": round(result.elapsed_s / 60, 2),
               "seconds_per_step": round(result.elapsed_s / max(1, result.step), 4), "final_terms": result.last,
               "parameters": final.num_parameters(), "scale_factor": round(final.scale_factor, 6),
               "latent_shape": list(z.shape[1:]), "latent_std": round(float(z.std()), 4),
               "latent_mean": round(float(z.mean()), 4), "test": metrics,
               "bars": {"psnr >= 28": metrics["psnr"] >= 28, "caption gap <= 1 point": metrics["caption_gap_points"] <= 1}}
    k = min(train.grid, len(images))
    rows = [part for lo in range(0, k, 8) for part in (images[lo: min(lo + 8, k)], rec_images[lo: min(lo + 8, k)])]
    save_grid(np.concatenate(rows), out / "reconstructions.png", ncol=min(8, k))
    final.save_pretrained(out, manifest={"kind": "image-autoencoder-vq" if vq else "image-autoencoder",
                                         "command": command, "metrics": metrics})
    save_json(out / "metrics.json", metrics)
    return metrics


# ---- CLIP ---------------------------------------------------------------------------------------
@dataclass
class ClipTrainConfig(LoopKeys):
    """train_clip's settings. Folder layout of a run (`out_dir`):
        config.json, model.safetensors, manifest.json   ClipModel.from_pretrained
        checkpoint/, train_config.json, train_log.jsonl, loss_curve.png, metrics.json
    """
    out_dir: str = "runs/image-clip"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    ema_decay: float | None = None
    test_size: int = 1000  # test pairs, scored in sets of retrieval_set
    retrieval_set: int = 100  # retrieval is among this many captions (the bar: top-1 among 100)
    hard_negatives: bool = False  # contrast each image with a swapped caption too (data.hard_negative)
    negative_kinds: list | None = None  # the kinds drawn from (data.NEGATIVE_KINDS; None: all)


@torch.no_grad()
def clip_metrics(clip: ClipModel, images: np.ndarray, captions: list[str], set_size: int = 100) -> dict:
    """Zero-shot retrieval within consecutive sets of `set_size` pairs (means over the sets): top-1/5 both
    ways; `image_to_text_top1_true` counts the retrieved caption right when the pixel oracle says it holds
    for the image (another caption can describe it too); CLIP score of the true pairs and of shuffled ones."""
    clip.eval()
    dev = clip.device
    x = images_to_tensor(images)
    img = _batched(clip.encode_image, x, dev)
    txt = torch.cat([clip.encode_text(captions[k: k + 250]).float().cpu() for k in range(0, len(captions), 250)])
    sets, chosen = [], []
    for lo in range(0, len(captions) - set_size + 1, set_size):
        caps = captions[lo: lo + set_size]
        sets.append(retrieval_scores(img[lo: lo + set_size] @ txt[lo: lo + set_size].t(), caps))
        chosen += [caps[j] for j in (img[lo: lo + set_size] @ txt[lo: lo + set_size].t()).argmax(1).tolist()]
    if not sets:
        raise UserError(f"train.test_size={len(captions)} is smaller than train.retrieval_set={set_size}")
    out = {"sets": len(sets), "set_size": set_size,
           **{k: round(float(np.mean([s[k] for s in sets])), 4) for k in sets[0] if k != "n"}}
    n = len(chosen)
    out["image_to_text_top1_true"] = round(oracle.accuracy(images[:n], chosen)["caption"], 4)
    cos = (img * txt).sum(-1)
    perm = torch.randperm(len(captions), generator=torch.Generator().manual_seed(0))
    out["clip_score"] = round(float(100 * cos.clamp_min(0).mean()), 3)
    out["clip_score_shuffled"] = round(float(100 * (img * txt[perm]).sum(-1).clamp_min(0).mean()), 3)
    out["binding"] = binding_scores(clip, img, captions)
    return out


@torch.no_grad()
def binding_scores(clip: ClipModel, img: torch.Tensor, captions: list[str]) -> dict:
    """For each kind of data.hard_negatives (the converse relation, an attribute swapped between the two
    objects, one attribute of a lone object changed), the share of images whose own caption CLIP scores
    above that negative (chance 0.5; a bag-of-words model scores the swaps at chance), and its count."""
    pairs = [(k, kind, neg) for k, c in enumerate(captions) for kind, neg in hard_negatives(c, allow_heldout=True).items()]
    if not pairs:
        return {}
    encode = lambda texts: torch.cat([clip.encode_text(texts[lo: lo + 250]).float().cpu()  # noqa: E731
                                      for lo in range(0, len(texts), 250)])
    own_scores = (img * encode(captions)).sum(-1)  # each caption once
    idx = torch.tensor([k for k, _, _ in pairs])
    wins = own_scores[idx] > (img[idx] * encode([n for _, _, n in pairs])).sum(-1)
    kinds = [kind for _, kind, _ in pairs]
    out = {}
    for kind in sorted(set(kinds)):
        mine = torch.tensor([k == kind for k in kinds])
        out[kind] = {"accuracy": round(float(wins[mine].float().mean()), 4), "n": int(mine.sum())}
    return out


def train_clip(model_cfg: ClipConfig, train: ClipTrainConfig, *, full_config: dict | None = None,
               command: str | None = None, progress: bool = True) -> dict:
    """Train (or resume) the CLIP pair on fresh train-split batches; write the model folder with zero-shot
    retrieval and CLIP-score metrics on the test split (and the held-out compositions). Returns the metrics."""
    for key in ("test_size", "retrieval_set"):
        _check_positive(getattr(train, key), f"train.{key}")
    loop = loop_config({"train": train})
    if train.batch_size < 2:
        raise UserError("train.batch_size must be at least 2 (InfoNCE contrasts the pairs of a batch)")
    if not isinstance(train.hard_negatives, bool):
        raise UserError(f"train.hard_negatives must be true or false, got {train.hard_negatives!r}")
    kinds = None if train.negative_kinds is None else list(train.negative_kinds)
    if kinds is not None and (not kinds or set(map(str, kinds)) - set(NEGATIVE_KINDS)):
        raise UserError(f"train.negative_kinds must be a non-empty list of {', '.join(NEGATIVE_KINDS)}, got {kinds}")
    distributed.check_batch(train.batch_size)
    device = pick_device(train.device, "train.device")
    if train.threads:
        torch.set_num_threads(train.threads)
    out = Path(train.out_dir)
    torch.manual_seed(train.seed)
    clip = ClipModel(model_cfg).to(device)
    if has_checkpoint(out):
        _check_same_model(out, "clip", asdict(model_cfg), defaults=LATER_OPTIONS)
    elif distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        clip.save_pretrained(out)
        if full_config is not None:
            save_json(out / "train_config.json", full_config)

    def loss_at(step: int):
        x, captions = step_batch(step, train.batch_size, train.data_seed)
        negatives = step_negatives(captions, step, train.data_seed, kinds) if train.hard_negatives else None
        if distributed.world()[1] == 1:
            return clip.loss(x.to(device), captions, negatives)
        # under torchrun: each rank embeds its slice of the pairs; the embeddings are gathered (differentiably)
        # and every rank takes the InfoNCE of the whole global batch
        ids, mask = clip.tokenize(captions)
        img = distributed.gather_with_grad(clip.encode_image(distributed.shard(x).to(device)))
        txt = distributed.gather_with_grad(clip._text_embedding(distributed.shard(ids), distributed.shard(mask)))
        if negatives is None:
            return clip.pair_loss(img, txt, ids)
        neg_ids, neg_mask = clip.tokenize(negatives)
        neg = distributed.gather_with_grad(clip._text_embedding(distributed.shard(neg_ids), distributed.shard(neg_mask)))
        return clip.pair_loss(img, txt, ids, neg, neg_ids)

    def write_model(state) -> None:
        _exported(clip, state.ema).save_pretrained(out)

    result = fit(clip, loss_at, loop, out, name="CLIP", progress=progress, on_checkpoint=write_model)
    if not distributed.is_main():  # rank 0 measures and writes
        return {"steps": result.step, "stopped": result.stopped}
    final = _exported(clip, result.ema)
    set_size = min(train.retrieval_set, train.test_size)
    test = clip_metrics(final, *held_images("test", train.test_size, train.data_seed), set_size)
    heldout = clip_metrics(final, *held_images("heldout", train.test_size, train.data_seed), set_size)
    metrics = {"steps": result.step, "stopped": result.stopped, "train_minutes": round(result.elapsed_s / 60, 2),
               "seconds_per_step": round(result.elapsed_s / max(1, result.step), 4), "final_terms": result.last,
               "parameters": final.num_parameters(), "temperature": round(1 / float(final.temperature_scale().detach()), 5),
               "test": test, "heldout": heldout,
               "bars": {f"image->text top-1 among {set_size} >= 0.9": test["image_to_text_top1"] >= 0.9}}
    final.save_pretrained(out, manifest={"kind": "image-clip", "command": command, "metrics": metrics})
    save_json(out / "metrics.json", metrics)
    return metrics
