"""The image pipeline: captions in, uint8 images out.

    pipe = ImagePipeline.from_pretrained("shipped")                   # the latent UNet + its autoencoder and CLIP
    images = pipe("a small red circle at the top left", n=8, guidance=4)   # uint8 (8, 32, 32, 3)

It composes the frozen parts and the core sampler, nothing more: the captions' token states from
the CLIP text tower (the empty caption's are the unconditional ∅), `core.sample` over the UNet
wrapped by `ClassifierFreeGuidance` (conditioning through `model_kwargs`), a threshold on x̂_0 as
the sampler's `x0_transform` (Imagen's dynamic thresholding for the pixel model, none by default for
latents, whose range is not [−1, 1]), then the autoencoder's decoder for a latent UNet.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from ..assets import resolve_asset
from ..core import (ClassifierFreeGuidance, Control, ControlGuidance, DynamicThreshold, GaussianDiffusion, GuidanceConfig,
                    Known, StaticThreshold, sample)
from ..errors import UserError
from ..image.autoencoder import load_autoencoder
from ..image.controlnet import ControlledUNet, ControlNet, check_base
from ..image.clip import ClipModel
from ..image.evaluate import save_grid
from ..image.shapes import parse_caption
from ..image.unclip import read_conditioning
from ..image.unet import UNet, images_to_tensor, load_diffusion, match_parts, tensor_to_images
from ..runtime import pick_device
from ..sharding import owned_batches

THRESHOLDS = ("dynamic", "static", "none")


def check_guidance(w, key: str = "guidance") -> float:
    """The classifier-free guidance scale w: a finite number >= 0, or a one-line UserError naming `key`."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise UserError(f"{key} must be a finite number >= 0 (0 = unconditional, 1 = conditional), got {w!r}")
    return float(w)


def check_rerank_clip(cfg, select: int) -> Optional[list[str]]:
    """The CLIP folders rerank_clip= names (None: the pipeline's own CLIP). It only means something with
    select > 1: refused alone, in one line, rather than ignored."""
    value = cfg.get("rerank_clip")
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    members = value if isinstance(value, list) else [value]
    if value is not None and (not members or not all(isinstance(v, str) and v.strip() for v in members)):
        raise UserError(f"rerank_clip must be a CLIP folder (from train-clip) or shipped[:name], or a list of them, "
                        f"got {value!r}")
    if value is not None and select <= 1:
        raise UserError("rerank_clip= picks among select= candidates: give select > 1 with it (or leave it out)")
    return None if value is None else members


def shipped_clip_for(unet: UNet) -> ClipModel:
    """`clip=shipped`: the shipped CLIP pair (image-clip, image-clip-neg, ...) whose fingerprint the UNet
    was trained with, so a shipped UNet needs no CLIP named; image-clip when none matches (match_parts
    then names the mismatch)."""
    from ..assets import assets_dir
    from ..image.unet import fingerprint

    wanted = unet.config.clip_fingerprint
    default = Path(resolve_asset("shipped", "model", "image-clip"))
    for folder in [default, *sorted(p for p in (assets_dir() / "models").glob("image-clip*") if p != default)]:
        if not (folder / "config.json").is_file():
            continue
        clip = ClipModel.from_pretrained(folder)
        if wanted is None or fingerprint(clip) == wanted:
            return clip
    return ClipModel.from_pretrained(default)


class ImagePipeline:
    context = "caption"  # what the UNet cross-attends to (the unCLIP pipeline's decoder: the image embedding)

    def __init__(self, unet: UNet, diffusion: GaussianDiffusion, clip, autoencoder=None, device: str = "cpu",
                 controlnet: Optional[ControlNet] = None):
        # refuses an autoencoder or CLIP the UNet was not trained with
        match_parts(unet.config, autoencoder, clip, context=self.context)
        self.unet, self.diffusion, self.clip, self.autoencoder, self.device = unet, diffusion, clip, autoencoder, device
        self.controlnet = controlnet
        self.reranker = None  # the CLIP pairs that rerank `select` candidates (set_reranker); None: `clip` alone
        if controlnet is not None:
            check_base(controlnet.config, unet, "the ControlNet")
        # what the sampler calls: the UNet, or the UNet steered by the ControlNet's residuals (hint in model_kwargs)
        self.model = unet if controlnet is None else ControlledUNet(unet, controlnet)
        for part in (unet, clip, autoencoder, controlnet):
            if isinstance(part, torch.nn.Module):
                part.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, unet_dir: str = "shipped", autoencoder_dir: Optional[str] = "shipped",
                        clip_dir: str = "shipped", device: str = "auto",
                        controlnet_dir: Optional[str] = None) -> "ImagePipeline":
        """Folders from `diffusion-lm train-unet` (and the autoencoder / CLIP trainers), or `shipped`
        (`image-unet-latent`, `image-autoencoder`, `image-clip`) / `shipped:<name>` (`image-unet-pixel`).
        A pixel UNet loads no autoencoder."""
        device = str(pick_device(device))
        unet_path = resolve_asset(unet_dir, "model", "image-unet-latent")
        if read_conditioning(unet_path) != "caption":
            raise UserError(f"{unet_path} is an unCLIP decoder (conditioned on CLIP image embeddings, not captions); "
                            f"draw with it through its prior: prior=<folder from train-prior>")
        unet = UNet.from_pretrained(unet_path, device=device)
        diffusion = load_diffusion(unet_path)
        autoencoder = None
        if unet.config.space == "latent":
            if autoencoder_dir is None:
                raise UserError(f"{unet_path} is a latent UNet and needs its autoencoder (autoencoder=<folder>)")
            autoencoder = load_autoencoder(resolve_asset(autoencoder_dir, "model", "image-autoencoder"))
            autoencoder = autoencoder.to(device)
        clip = shipped_clip_for(unet) if clip_dir == "shipped" else \
            ClipModel.from_pretrained(resolve_asset(clip_dir, "model", "image-clip"))
        clip = clip.to(device)
        controlnet = None
        if controlnet_dir is not None:
            controlnet = ControlNet.from_pretrained(resolve_asset(controlnet_dir, "model", "image-controlnet"), unet,
                                                    device=device)
        return cls(unet, diffusion, clip, autoencoder, device, controlnet=controlnet)

    # ---- parts -----------------------------------------------------------------------------
    def set_reranker(self, clip_dirs) -> None:
        """Rerank `select` candidates by other CLIP pairs (folders from train-clip, or `shipped[:name]`), e.g. ones
        trained with hard negatives that tell a caption from its swapped version: one folder, or a list whose
        members rank by their mean cosine (an ensemble); None: the pipeline's own CLIP. The UNet's conditioning
        and every metric keep the pipeline's CLIP."""
        if clip_dirs is None:
            self.reranker = None
            return
        folders = [clip_dirs] if isinstance(clip_dirs, str) else list(clip_dirs)
        if not folders:
            raise UserError("rerank_clip is an empty list: name at least one CLIP folder (or leave it out)")
        self.reranker = [ClipModel.from_pretrained(resolve_asset(f, "model", "image-clip")).to(self.device).eval()
                         .requires_grad_(False) for f in folders]

    @property
    def space(self) -> str:
        return self.unet.config.space

    def threshold(self, name: Optional[str]):
        """The x0_transform `name` names; None is dynamic for a pixel UNet and none for a latent one."""
        name = name if name is not None else ("dynamic" if self.space == "pixel" else "none")
        if name not in THRESHOLDS:
            raise UserError(f"unknown threshold {name!r}; choose dynamic, static or none")
        return {"dynamic": DynamicThreshold(), "static": StaticThreshold(), "none": None}[name]

    @torch.no_grad()
    def caption_states(self, captions: Sequence[str]):
        """(states, mask) of `captions` and, last, of the empty caption ∅, padded to one length."""
        for c in captions:
            if not isinstance(c, str):
                raise UserError(f"a caption must be a string, got {c!r}")
            if not c.strip():  # the null caption is the model's own business; a user asks with guidance=0
                raise UserError("empty caption: write e.g. 'a small red circle at the top left' "
                                "(for unconditional samples, give any caption and guidance=0)")
            parse_caption(c)
        states, mask = self.clip.text_states(list(captions) + [""])
        return states.to(self.device), mask.to(self.device).bool()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The sampler's x_0 as an image in [−1, 1] (unclipped): decoded for a latent UNet."""
        return self.autoencoder.decode(x0) if self.space == "latent" else x0

    # ---- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, captions: str | Sequence[str], n: int = 1, *, guidance: float = 4.0, steps: int = 50,
               sampler: str = "ddim", eta: float = 0.0, threshold: Optional[str] = None, seed: int = 0,
               batch_size: int = 64, callback: Optional[Callable[[dict], None]] = None,
               progress: bool = False, known: Optional[Known] = None, control=None,
               control_scale: float = 1.0, controls: Optional[Sequence[Control]] = None,
               control_config: Optional[GuidanceConfig] = None, shard: Optional[tuple[int, int]] = None,
               select: int = 1, rerank: bool = True) -> torch.Tensor:
        """Images (len(captions) · n, 3, 32, 32) in [−1, 1] before clipping, caption by caption; with
        `shard=(i, N)`, only the images of shard i's batches (diffusion_lm.sharding), concatenated.

        `select=K` draws K candidates for every image and keeps the one the pipeline's CLIP scores
        highest against its caption (DALL·E's CLIP reranking), at K times the cost. With `rerank=False`
        it returns all K blocks of candidates instead (block 0 is the select=1 draw; `rerank` picks from
        them later): the form that can be sharded, since the pick needs every candidate of an image.

        `known` (values and mask of the UNet's input shape, one row per image drawn) holds those
        positions to the given x_0 through the core's masked replacement (see `inpaint`). `control`
        (a ControlNet's hint: (1, 32, 32) for every image, or one per image drawn) steers a pipeline
        built with a ControlNet, its residuals scaled by `control_scale` (0: the base model).

        `controls` (core.Control: a model of noisy images with `log_prob(x_t, t, target)`, its target and
        weight) steer every step through the core's step hook with `control_config` (λ = strength, K
        updates), as the text classifiers steer Diffusion-LM: CLIP guidance, attribute guidance. A
        target that is a tensor or list with one entry per image drawn is split with the batches."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise UserError("no captions to draw")
        _check_counts(n=n, batch_size=batch_size, steps=steps, select=select)
        if select > 1 and (known is not None or control is not None or controls):
            raise UserError("select (CLIP reranking) works on plain caption sampling: "
                            "not with known pixels, a ControlNet hint or guidance controls")
        if select > 1 and rerank and shard is not None:
            raise UserError("select (CLIP reranking) under shard: draw with rerank=False, gather, then rerank")
        states, mask = self.caption_states(captions)
        # candidate k of every image is drawn in block k: block 0 is exactly the select=1 draw (same x_T)
        rows = torch.arange(len(captions)).repeat_interleave(n).repeat(select)
        out = self.draw(states, mask, rows, guidance=guidance, steps=steps, sampler=sampler, eta=eta,
                        threshold=threshold, seed=seed, batch_size=batch_size, callback=callback, progress=progress,
                        known=known, control=control, control_scale=control_scale, controls=controls,
                        control_config=control_config, shard=shard)
        return out if select == 1 or not rerank else self.rerank(out, captions, n, select)

    @torch.no_grad()
    def rerank(self, candidates: torch.Tensor, captions: Sequence[str], n: int, select: int) -> torch.Tensor:
        """From `candidates` (`select` blocks of len(captions) · n images: candidate k of image j is row
        k · len(captions) · n + j), the one per image whose CLIP embedding (of the image clipped to [−1, 1]) is
        closest to its caption's (by the mean cosine of the `reranker` CLIPs where they are set)."""
        images = len(captions) * n
        best = self.rerank_scores(candidates, captions, n, select).argmax(0) * images + torch.arange(images)
        return candidates[best]

    @torch.no_grad()
    def rerank_scores(self, candidates: torch.Tensor, captions: Sequence[str], n: int, select: int) -> torch.Tensor:
        """(select, len(captions) · n): the cosine of every candidate to its caption that `rerank` ranks by."""
        clips = self.reranker if self.reranker is not None else [self.clip]
        images = len(captions) * n
        owner = torch.arange(len(captions)).repeat_interleave(n).repeat(select)
        cos = 0
        for clip in clips:
            dev = next(clip.parameters()).device
            text = clip.encode_text(list(captions)).float().cpu()  # (C, D), unit vectors
            image = torch.cat([clip.encode_image(candidates[lo: lo + 256].clamp(-1, 1).to(dev)).float().cpu()
                               for lo in range(0, len(candidates), 256)])
            cos = cos + (image * text[owner]).sum(-1).view(select, images) / len(clips)
        return cos

    @torch.no_grad()
    def draw(self, states: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, *, guidance: float = 4.0,
             steps: int = 50, sampler: str = "ddim", eta: float = 0.0, threshold: Optional[str] = None, seed: int = 0,
             batch_size: int = 64, callback=None, progress: bool = False, known: Optional[Known] = None, control=None,
             control_scale: float = 1.0, controls: Optional[Sequence[Control]] = None,
             control_config: Optional[GuidanceConfig] = None, shard: Optional[tuple[int, int]] = None) -> torch.Tensor:
        """Images (len(rows), 3, 32, 32) in [−1, 1]: image k drawn under the context states[rows[k]] (mask
        alike); the last row of `states` is the null context ∅ classifier-free guidance extrapolates from.
        What `sample` and the unCLIP pipeline share; keywords as `sample`."""
        _check_counts(batch_size=batch_size, steps=steps)
        w = check_guidance(guidance)
        try:
            diffusion = self.diffusion.respace(steps)
        except ValueError as e:
            raise UserError(f"steps: {e}") from None
        x0_transform = self.threshold(threshold)
        guided = ClassifierFreeGuidance(self.model, w, {"context": states[-1:], "context_mask": mask[-1:]})
        hints = self.hints(control, len(rows), control_scale)
        if controls and sampler == "ddim" and eta == 0:
            raise UserError("guidance controls steer a stochastic step: use sampler=ddpm, or ddim with eta > 0")
        for c in controls or []:
            self.check_control(c.classifier)
        c = self.unet.config
        generator = torch.Generator(device=self.device).manual_seed(seed)
        # every x_T first, so a sample does not depend on the batch it was drawn in (exactly so for DDIM)
        noise = torch.randn((len(rows), c.in_channels, c.image_size, c.image_size), generator=generator,
                            device=self.device)
        if shard is not None and (sampler != "ddim" or eta != 0):
            # DDPM's per-step noise runs on through the batches in turn, so a batch's images depend on the
            # batches before it; DDIM with eta = 0 is a function of x_T alone, which is drawn for all rows above
            raise UserError("sharded image sampling needs sampler=ddim with eta=0 (a batch's DDPM noise depends "
                            "on the batches drawn before it)")
        out = []
        for lo in owned_batches(len(rows), batch_size, shard):
            r = rows[lo: lo + batch_size].to(self.device)
            hook = None if not controls else ControlGuidance(
                [Control(c.classifier, _rows(c.target, lo, lo + batch_size, len(rows)), c.weight) for c in controls],
                control_config or GuidanceConfig())
            held = None if known is None else Known(known.values[lo: lo + batch_size].to(self.device),
                                                    known.mask[lo: lo + batch_size].to(self.device), known.noised,
                                                    known.resample)
            x0 = sample(guided, diffusion, tuple(noise[lo: lo + batch_size].shape), sampler=sampler, eta=eta,
                        prediction=c.prediction, x0_transform=x0_transform, noise=noise[lo: lo + batch_size],
                        generator=generator, device=self.device, callback=callback, progress=progress,
                        known=held, step_hook=hook, model_kwargs={"context": states[r], "context_mask": mask[r],
                                                  **({} if hints is None else {"control": hints[lo: lo + batch_size],
                                                                                "control_scale": float(control_scale)})})
            out.append(self.decode(x0).cpu())
        return torch.cat(out)

    def check_control(self, classifier) -> None:
        """A model of noisy images must read what this UNet samples: its space and shape, and for latents
        the same autoencoder (by fingerprint); a one-line UserError otherwise."""
        cfg, mine = getattr(classifier, "config", None), self.unet.config
        if cfg is None or not hasattr(cfg, "in_channels"):
            return  # a plain callable with log_prob: the caller vouches for it
        if (cfg.space, cfg.in_channels, cfg.image_size) != (mine.space, mine.in_channels, mine.image_size):
            raise UserError(f"the {cfg.kind} classifier reads {cfg.space} inputs of {cfg.in_channels} x {cfg.image_size} "
                            f"x {cfg.image_size}, the UNet samples {mine.space} {mine.in_channels} x {mine.image_size} "
                            f"x {mine.image_size}; use one trained for this UNet's space")
        trained_on = (getattr(cfg, "diffusion_schedule", None), getattr(cfg, "diffusion_steps", None))
        mine_process = self.diffusion.config
        if trained_on[0] is not None and mine_process is not None and \
                trained_on != (mine_process.schedule, mine_process.steps):
            raise UserError(f"the {cfg.kind} classifier learned the noise of a {trained_on[0]} schedule with "
                            f"{trained_on[1]} steps, the UNet's process is {mine_process.schedule} with "
                            f"{mine_process.steps}; train it with train.diffusion_schedule / train.diffusion_steps")
        if cfg.kind == "clip" and cfg.clip_fingerprint is not None and cfg.clip_fingerprint != mine.clip_fingerprint:
            raise UserError(f"the noised CLIP was aligned to another CLIP pair (fingerprint {cfg.clip_fingerprint}, "
                            f"the UNet's {mine.clip_fingerprint}); the targets come from the pipeline's CLIP")
        if cfg.space == "latent" and cfg.autoencoder_fingerprint is not None:
            if cfg.autoencoder_fingerprint != mine.autoencoder_fingerprint:
                raise UserError(f"the {cfg.kind} classifier was trained on another autoencoder's latents (fingerprint "
                                f"{cfg.autoencoder_fingerprint}, the UNet's {mine.autoencoder_fingerprint})")

    @torch.no_grad()
    def caption_embeddings(self, captions: Sequence[str], n: int = 1) -> torch.Tensor:
        """The CLIP text tower's unit embeddings of `captions`, each repeated n times: a noised-CLIP
        control's target, one row per image `sample(captions, n)` draws."""
        for c in captions:
            parse_caption(c)
        return self.clip.encode_text(list(captions)).repeat_interleave(n, 0).to(self.device)

    def hints(self, control, rows: int, scale: float) -> Optional[torch.Tensor]:
        """The ControlNet hint as (rows, C, 32, 32) on the device, or None without one."""
        if control is None:
            return None
        if self.controlnet is None:
            raise UserError("a control map needs a ControlNet (controlnet=<folder from train-controlnet>)")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise UserError(f"control_scale (control_strength) must be a finite number >= 0, got {scale!r}")
        hint = torch.as_tensor(np.asarray(control) if not torch.is_tensor(control) else control).float()
        want = (self.controlnet.config.hint_channels, 32, 32)
        if hint.dim() == 3:
            hint = hint[None]
        if hint.dim() != 4 or tuple(hint.shape[1:]) != want or len(hint) not in (1, rows):
            raise UserError(f"the control map must be {want[0]} x 32 x 32 (one for all images or one per image), "
                            f"got {tuple(hint.shape)}")
        return hint.expand(rows, *want).to(self.device)

    @torch.no_grad()
    def inpaint(self, images, keep, captions: str | Sequence[str], *, paste: bool = False, resample: int = 1,
                **kwargs) -> torch.Tensor:
        """Redraw what `keep` does not keep of uint8 `images` (N, 32, 32, 3) under `captions` (one, or one
        per image); `keep` is bool (N, 32, 32) or one (32, 32) mask for all, True where the image stays.

        The kept part is held through the core's masked replacement (`Known`, noised to each step's
        level): pixels for a pixel UNet (kept exactly), the autoencoder's latent cells whose whole
        patch is kept for a latent one (kept as well as the decoder reproduces them; `paste` copies
        the kept pixels back after decoding). `resample` > 1 takes every step that many times (RePaint's
        resampling, `core.Known`). Keywords as `sample`; returns (N, 3, 32, 32) in [−1, 1]."""
        _check_counts(resample=resample)
        x = torch.as_tensor(np.asarray(images))
        if x.dim() != 4 or tuple(x.shape[1:]) != (32, 32, 3) or x.dtype != torch.uint8:
            raise UserError(f"inpainting needs uint8 images of shape (N, 32, 32, 3), got {tuple(x.shape)} {x.dtype}")
        m = torch.as_tensor(np.asarray(keep))
        if m.dtype != torch.bool:
            raise UserError(f"the keep mask must be boolean (True where the image stays), got {m.dtype}")
        if m.dim() == 2:
            m = m.expand(len(x), -1, -1)
        if tuple(m.shape) != (len(x), 32, 32):
            raise UserError(f"the keep mask must be (32, 32) or ({len(x)}, 32, 32) like the images, got {tuple(m.shape)}")
        for i in range(len(m)):
            if not m[i].any() or m[i].all():
                raise UserError(f"keep mask {i} keeps {'nothing' if not m[i].any() else 'everything'}: "
                                f"nothing to hold, or nothing to redraw")
        captions = [captions] * len(x) if isinstance(captions, str) else list(captions)
        if len(captions) != len(x):
            raise UserError(f"{len(captions)} captions for {len(x)} images: give one, or one per image")
        pixels = images_to_tensor(x)
        if self.space == "latent":
            values = torch.cat([self.autoencoder.encode(pixels[k: k + 256].to(self.device)).cpu()
                                for k in range(0, len(pixels), 256)])
            f = 32 // values.shape[-1]
            held = m.view(len(m), 1, values.shape[-1], f, values.shape[-1], f).all(5).all(3)  # whole patch kept
        else:
            values, held = pixels, m[:, None]
        out = self.sample(captions, 1, known=Known(values, held.expand_as(values).clone(), resample=resample), **kwargs)
        if paste:
            out = torch.where(m[:, None], pixels, out)
        return out

    def __call__(self, captions: str | Sequence[str], n: int = 1, **kwargs):
        """uint8 images (len(captions) · n, 32, 32, 3); keywords as `sample`."""
        return tensor_to_images(self.sample(captions, n, **kwargs))


def _check_counts(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")


def _rows(target, lo: int, hi: int, rows: int):
    """A control's target for images lo:hi: sliced when it has one entry per image drawn."""
    if (torch.is_tensor(target) and target.dim() > 1 or isinstance(target, (list, tuple))) and len(target) == rows:
        return target[lo:hi]
    return target


class ImageTrajectory:
    """A sampling callback: x̂_0 of one sample, decoded every `every` steps, for a PNG strip.

    Records the first batch only (the first caption's first sample by default)."""

    def __init__(self, pipe: ImagePipeline, every: int = 5, sample_index: int = 0):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"trajectory every must be an integer >= 1, got {every!r}")
        self.pipe, self.every, self.i = pipe, every, sample_index
        self.frames: list[tuple[int, torch.Tensor]] = []
        self.done = False

    @torch.no_grad()
    def __call__(self, info: dict) -> None:
        if self.done:
            return
        index = info["index"]
        self.done = index == 0
        if index % self.every == 0 or self.done or not self.frames:
            x0 = info["x0"][self.i: self.i + 1]
            self.frames.append((int(info["t"][self.i]) + 1, self.pipe.decode(x0).cpu()))

    def write(self, path: str | Path) -> Path:
        """One row of frames, noisiest (largest t) on the left, as a PNG."""
        if not self.frames:
            raise UserError("the trajectory recorded nothing (was it passed as the callback?)")
        images = tensor_to_images(torch.cat([x for _, x in self.frames]))
        return save_grid(images, path, ncol=len(images), labels=[f"t={t}" for t, _ in self.frames])
