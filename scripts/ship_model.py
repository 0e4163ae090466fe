"""Copy a trained model into the package (fp16 weights + manifest), so a fresh clone needs no training.

    python scripts/ship_model.py [kind=diffusion|teacher|parser|...] [run=<folder>] [name=<asset name>] [command="..."]
        [notes=<file.json>]   (a JSON object merged into the manifest: e.g. a continued run's history and hours)
        [guidance_weight=W]   (kind=classifier: how hard it pulls relative to λ, written into its config.json)

    kind=diffusion  run=runs/cpu      name=diffusion-lm-cpu     (diffusion-lm train preset=cpu)
    kind=teacher    run=runs/teacher  name=teacher-lm           (diffusion-lm train-lm)
    kind=parser     run=runs/parser   name=parser-wsj-charlstm  (diffusion-lm build-parser)
    kind=classifier run=runs/classifiers/pos  name=classifier-pos  (diffusion-lm train-classifier task=pos)
    kind=base-lm    run=runs/base-lm  name=base-lm              (the baselines' LM: diffusion-lm train-lm, BASE_LM_ARGS)
    kind=fudge      run=runs/fudge    name=fudge-discriminator  (diffusion-lm train-baseline method=fudge)
    kind=pplm       run=runs/pplm     name=pplm-discriminator   (diffusion-lm train-baseline method=pplm)
    kind=unet-latent run=runs/image-unet-latent name=image-unet-latent (diffusion-lm train-unet unet_preset=cpu)
    kind=unet-pixel  run=runs/image-unet-pixel  name=image-unet-pixel  (diffusion-lm train-unet unet_preset=cpu_pixel)
    kind=controlnet  run=runs/image-controlnet  name=image-controlnet  (diffusion-lm train-controlnet controlnet_preset=cpu)
    kind=noisy-clip / noisy-attributes  run=runs/image-noisy-<kind>  (diffusion-lm train-image-classifier classifier.kind=...)
    kind=prior          run=runs/image-prior           name=image-prior           (diffusion-lm train-prior prior_preset=cpu)
    kind=unclip-decoder run=runs/image-unclip-decoder  name=image-unclip-decoder  (diffusion-lm train-unet unet_preset=cpu_decoder)
    kind=clip        run=runs/image-clip-neg3 name=image-clip-binding (diffusion-lm train-clip ...): weights kept in fp32,
                     exactly, since a UNet conditioned on the pair names it by a fingerprint of its weights
    kind=clip-judge  run=runs/image-clip-neg  name=image-clip-judge: a CLIP pair that only reranks (rerank_clip=),
                     in fp16 (no UNet's fingerprint names it)
    (a UNet or the ControlNet also takes report=<its report.json>, whose figures join the manifest)

Writes diffusion_lm/assets/models/<name>/ with the run's JSON files and
model.safetensors (weights stored in fp16, the latent UNet's in per-channel int8 to keep the image
models under 12 MB together; every loader casts back to fp32),
and manifest.json: the command that built it, the commit, and the run's
metrics. The folder is assembled under a temporary name and renamed into place.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from classifiers.io import check_guidance_weight
from diffusion_lm.io import quantize_int8
from diffusion_lm.scripting import fail, parse, run_script

ASSETS = Path(__file__).resolve().parents[1] / "diffusion_lm" / "assets" / "models"
KINDS = {
    "diffusion": ("runs/cpu", "diffusion-lm-cpu", ("config.json", "diffusion.json", "tokenizer.json")),
    "teacher": ("runs/teacher", "teacher-lm", ("config.json", "tokenizer.json", "generation_config.json")),
    "parser": ("runs/parser", "parser-wsj-charlstm", ("config.json",)),
    "classifier": ("runs/classifiers/pos", None, ("config.json",)),  # name: classifier-<its task>
    "base-lm": ("runs/base-lm", "base-lm", ("config.json", "tokenizer.json", "generation_config.json")),
    "fudge": ("runs/fudge", "fudge-discriminator", ("config.json",)),
    "pplm": ("runs/pplm", "pplm-discriminator", ("config.json",)),
    "unet-latent": ("runs/image-unet-latent", "image-unet-latent", ("config.json", "diffusion.json")),
    "unet-pixel": ("runs/image-unet-pixel", "image-unet-pixel", ("config.json", "diffusion.json")),
    "controlnet": ("runs/image-controlnet", "image-controlnet", ("config.json",)),
    "clip": ("runs/image-clip", "image-clip", ("config.json", "metrics.json")),
    "clip-judge": ("runs/image-clip", "image-clip-judge", ("config.json", "metrics.json")),
    "noisy-clip": ("runs/image-noisy-clip", "image-noisy-clip", ("config.json",)),
    "noisy-attributes": ("runs/image-noisy-attributes", "image-noisy-attributes", ("config.json",)),
    "prior": ("runs/image-prior", "image-prior", ("config.json", "diffusion.json")),
    "unclip-decoder": ("runs/image-unclip-decoder", "image-unclip-decoder",
                       ("config.json", "diffusion.json", "conditioning.json")),
}
INT8 = ("unet-latent", "controlnet", "unclip-decoder", "prior")  # stored as per-channel int8 (diffusion_lm.io.quantize_int8); the rest as fp16
FP32 = ("clip",)  # stored exactly: a UNet conditioned on it checks its fingerprint (image.unet.fingerprint)
# smaller than the teacher (4 x 256, seed 1234) and another seed, so the judge is not the contestant
BASE_LM_ARGS = "model.layers=3 model.hidden=192 train.seed=7 train.out_dir=runs/base-lm"


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def manifest_for(kind: str, run: Path, report: Path | None = None) -> dict:
    if kind.startswith("noisy-") or kind in ("prior", "clip", "clip-judge"):
        trained = _json(run / "manifest.json") or {}
        return {"command": trained.get("command"), "metrics": trained.get("metrics")}
    if kind.startswith("unet-") or kind in ("controlnet", "unclip-decoder"):
        train_cfg = _json(run / "train_config.json") or {}
        return {"command": train_cfg.get("command"), "summary": _json(run / "summary.json"),
                "evaluation": _json(report) if report is not None else None}
    if kind == "diffusion":
        train_cfg = _json(run / "train_config.json") or {}
        return {"command": f"diffusion-lm train preset={train_cfg.get('preset_name')}", "train_config": train_cfg,
                "summary": _json(run / "summary.json"), "fluency": _json(run / "fluency.json"),
                "sampling_sweep": _json(run / "sampling_sweep.json"),
                "sampling_sweep_mbr": _json(run / "sampling_sweep_mbr.json")}
    if kind == "teacher":
        return {"command": "diffusion-lm train-lm", "summary": _json(run / "summary.json")}
    if kind == "base-lm":
        return {"command": f"diffusion-lm train-lm {BASE_LM_ARGS}", "summary": _json(run / "summary.json")}
    if kind in ("fudge", "pplm"):
        metrics = (_json(run / "config.json") or {}).get("metrics", {})
        return {"command": metrics.get("command"), "metrics": metrics}
    if kind == "classifier":
        summary = _json(run / "summary.json") or {}
        return {"command": summary.get("command"), "metrics": summary}
    summary = _json(run / "train_summary.json") or {}
    return {"command": "diffusion-lm build-parser", "heldout_f1": summary.get("heldout_f1"),
            "minutes": summary.get("minutes"), "metrics": (_json(run / "config.json") or {}).get("metrics")}


def main(argv: list[str]) -> None:
    args = parse(argv, {"kind": "diffusion", "run": "", "name": "", "command": "", "report": "", "notes": "",
                       "guidance_weight": ""})
    kind = args["kind"]
    if kind not in KINDS:
        fail(f"unknown kind {kind!r}; choose {', '.join(KINDS)}")
    weight = None
    if args["guidance_weight"]:  # checked before anything is written
        if kind != "classifier":
            fail("guidance_weight= is for kind=classifier")
        try:
            weight = check_guidance_weight(float(args["guidance_weight"]), "ship_model.py")
        except ValueError:
            fail(f"guidance_weight must be a number, got {args['guidance_weight']!r}")
    default_run, default_name, files = KINDS[kind]
    run = Path(args["run"] or default_run)
    name = args["name"] or (default_name or f"classifier-{(_json(run / 'config.json') or {}).get('kind')}")
    if not (run / "model.safetensors").is_file():
        fail(f"no model.safetensors in {run}")
    notes = {}
    if args["notes"]:
        try:
            notes = json.loads(Path(args["notes"]).read_text())
        except (OSError, ValueError) as e:
            fail(f"notes={args['notes']}: {e}")
        if not isinstance(notes, dict):
            fail(f"notes={args['notes']} must hold a JSON object")
    dest, tmp = ASSETS / name, ASSETS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = load_file(str(run / "model.safetensors"))
    if kind in INT8:
        save_file(quantize_int8(weights), str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "stored_dtype": "int8 per output channel"})
    elif kind in FP32:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "stored_dtype": "float32"})
    else:
        save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt", "stored_dtype": "float16"})
    for f in files:
        if (run / f).exists():
            shutil.copy(run / f, tmp / f)
    if weight is not None:
        config = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**config, "guidance_weight": weight}, indent=2) + "\n")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {"kind": kind, "commit": commit, "trained_on": "2-core CPU, fp32", **manifest_for(kind, run, Path(args["report"]) if args["report"] else None)}
    if args["command"]:  # the exact command, where the run's preset has changed since or overrides were given
        manifest["command"] = args["command"]
    manifest.update(notes)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"shipped {run} as {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_script(main)
