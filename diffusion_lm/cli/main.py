"""`diffusion-lm <command> [key=value ...]`: one hydra-configured entry point per command.

Configs are composed with hydra's compose API from conf/ (shipped inside the
package as diffusion_lm/conf), so errors are ours to word: any bad input ends
in one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from ..config import compose, user_message

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (config file, one-line description)
    "train": ("train", "train a Diffusion-LM on E2E (preset=tiny|cpu|paper); resumes from out_dir"),
    "sample": ("sample", "sample sentences from a trained Diffusion-LM (sampler, steps, clamping)"),
    "generate": ("generate", "controlled generation (task=pos|tree|spans|semantic|compose|length|infill), JSONL out"),
    "train-classifier": ("train_classifier", "train a control classifier (task=pos|tree|semantic) on a model's noisy latents"),
    "baseline": ("baseline", "the paper's baselines on an AR LM: method=fudge|pplm, same targets and JSONL as generate"),
    "train-baseline": ("train_baseline", "train a baseline's attribute model (method=fudge|pplm) on oracle-labelled E2E"),
    "train-lm": ("train_lm", "train a GPT-2-architecture LM on E2E: the fluency teacher, or the baselines' base LM"),
    "build-parser": ("build_parser", "train the constituency-parser oracle (benepar, char LSTM) on the WSJ sample"),
    "build-targets": ("build_targets", "derive 200 control targets a task from E2E valid with the oracles"),
    "evaluate": ("evaluate", "score generations (JSONL) into the paper's Table 2: ctrl and lm per task and system"),
    "train-autoencoder": ("train_autoencoder", "train the image KL or VQ autoencoder, 32x32x3 <-> 4x8x8 unit-variance latents (autoencoder_preset=tiny|cpu|vq_cpu)"),
    "train-clip": ("train_clip", "train the image CLIP pair on captioned shapes: InfoNCE, zero-shot retrieval (clip_preset=tiny|cpu)"),
    "train-unet": ("train_unet", "train the caption-conditioned image UNet (unet_preset=tiny|cpu|cpu_pixel) on latents or pixels"),
    "train-controlnet": ("train_controlnet", "train a ControlNet on a frozen image UNet, steered by object masks (controlnet_preset=tiny|cpu)"),
    "train-image-classifier": ("train_image_classifier", "train a noisy CLIP (kind=clip) or attribute classifier (kind=attributes) on x_t, for image guidance"),
    "train-prior": ("train_prior", "train unCLIP's diffusion prior: CLIP text embedding -> image embedding (prior_preset=tiny|cpu)"),
    "imagine": ("imagine", "draw images for a caption with the image UNet and classifier-free guidance: a PNG grid"),
    "evaluate-image": ("evaluate_image", "score the image UNet on test captions across guidance w: oracle, CLIP, Frechet"),
}

# the commands whose trainer splits each step's batch over torchrun's processes (diffusion_lm.distributed)
PARALLEL = frozenset({"train", "train-unet", "train-controlnet", "train-autoencoder", "train-image-classifier",
                      "train-prior", "train-classifier", "train-lm", "train-baseline", "train-clip"})

# the commands that split their batches over torchrun's processes (diffusion_lm.sharding), rank 0 writing
SHARDED = frozenset({"generate", "baseline", "evaluate-image"})

# keys a command also answers to: the image commands' guidance scale is `w` in their configs, since hydra
# reads `guidance=4` as a choice in the text commands' config group conf/guidance/; `guidance=4` is w=4 there
ALIASES: dict[str, dict[str, str]] = {"imagine": {"guidance": "w"}, "evaluate-image": {"guidance": "w"}}


def unalias(name: str, overrides: list[str]) -> list[str]:
    """`overrides` with the command's aliased keys (ALIASES) renamed to the keys its config holds."""
    aliases = ALIASES.get(name, {})
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        out.append(f"{aliases[key]}={value}" if sep and key in aliases else o)
    return out


USAGE = """usage: diffusion-lm <command> [key=value ...]

Diffusion-LM (Li et al., 2022): continuous diffusion over learned word embeddings.

commands:
{commands}

Settings are hydra overrides, e.g.
  diffusion-lm train preset=cpu optim.steps=500 run.out_dir=runs/mine
  diffusion-lm sample checkpoint=runs/cpu n=20 sample.steps=50 sample.sampler=ddim
  diffusion-lm generate task=pos target="DT NNP VBZ DT JJ NN ." n=5
  diffusion-lm baseline method=fudge task=semantic target="food : Italian" n=5
  diffusion-lm evaluate generations=[runs/gen/pos.jsonl]
`diffusion-lm <command> --help` prints every key with its default.
"""


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, COMMANDS))
        print(USAGE.format(commands="\n".join(f"  {k.ljust(width)}  {v[1]}" for k, v in COMMANDS.items())))
        return 0
    name, overrides = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    overrides = unalias(name, overrides)
    from omegaconf import OmegaConf

    from ..errors import UserError

    try:
        if "-h" in overrides or "--help" in overrides:
            cfg = compose(COMMANDS[name][0], [o for o in overrides if o not in ("-h", "--help")])
            print(f"diffusion-lm {name}: {COMMANDS[name][1]}\n\nkeys and defaults "
                  f"(override with key=value):\n\n{OmegaConf.to_yaml(cfg)}")
            return 0
        bad = [o for o in overrides if "=" not in o or o.startswith("-")]
        if bad:
            raise UserError(f"expected key=value overrides, got {bad[0]!r}")
        cfg = compose(COMMANDS[name][0], overrides)
        command = " ".join(["diffusion-lm", name, *overrides])  # recorded in the manifests trainers write
        handler: Callable = getattr(__import__(f"diffusion_lm.cli.{COMMANDS[name][0]}", fromlist=["main"]), "main")
        from ..runtime import keep_freed_memory

        keep_freed_memory()  # every command trains or samples: reuse freed activations, no page faults
        from .. import distributed

        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and name not in PARALLEL | SHARDED:
            raise UserError(f"{name} runs in one process; under torchrun: {', '.join(sorted(PARALLEL | SHARDED))}")
        distributed.setup()  # under torchrun: join the process group (a no-op in one process)
        return handler(cfg, command) or 0
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def main() -> None:
    sys.exit(run())
