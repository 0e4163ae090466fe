"""`diffusion-lm <command> [key=value ...]`: one hydra-configured entry point per command.

Configs are composed with hydra's compose API from conf/ (shipped inside the
package as diffusion_lm/conf), so errors are ours to word: any bad input ends
in one line on stderr and exit code 2.
"""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Callable

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
}

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


LAST_COMMAND = ""  # the command line being run, for manifests


def config_dir() -> str:
    """conf/ of the source tree, or the copy installed inside the package."""
    here = Path(__file__).resolve().parents[2] / "conf"
    if here.is_dir():
        return str(here)
    return str(resources.files("diffusion_lm") / "conf")


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def one_line(e: BaseException) -> str:
    """The first meaningful line of an error, with hydra's option lists folded in."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0]
    if "Available options" in text:
        after = lines[[i for i, ln in enumerate(lines) if "Available options" in ln][0] + 1:]
        opts = [ln for ln in after if "=" not in ln and not ln.endswith(":")]
        first += f" (available: {', '.join(opts)})"
    return first


def user_message(e: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input (a UserError, or hydra / omegaconf
    failing to compose or instantiate a config); None for a bug, which should keep its traceback."""
    from ..errors import UserError

    if isinstance(e, UserError):
        return one_line(e)
    if type(e).__module__.startswith(("hydra", "omegaconf")):
        cause = e.__cause__ if e.__cause__ is not None and "instantiate" in one_line(e) else e
        return one_line(cause)
    return None


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
        global LAST_COMMAND
        LAST_COMMAND = " ".join(["diffusion-lm", name, *overrides])
        handler: Callable = getattr(__import__(f"diffusion_lm.cli.{COMMANDS[name][0]}", fromlist=["main"]), "main")
        from ..runtime import keep_freed_memory

        keep_freed_memory()  # every command trains or samples: reuse freed activations, no page faults
        return handler(cfg) or 0
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
