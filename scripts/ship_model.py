"""Copy a trained Diffusion-LM run into the package as the shipped model (fp16 weights + manifest).

    python scripts/ship_model.py [run=runs/cpu] [name=diffusion-lm-cpu]

Writes diffusion_lm/assets/models/<name>/ with config.json, tokenizer.json,
model.safetensors (weights stored in fp16, loaded back as fp32) and
manifest.json: the command that trained it, the commit, and the run's summary.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ASSETS = Path(__file__).resolve().parents[1] / "diffusion_lm" / "assets" / "models"


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv) if argv else {}
    run = Path(args.get("run", "runs/cpu"))
    name = args.get("name", "diffusion-lm-cpu")
    dest = ASSETS / name
    tmp = ASSETS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = load_file(str(run / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt", "stored_dtype": "float16"})
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(run / f, tmp / f)
    train_cfg = json.loads((run / "train_config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    manifest = {
        "command": f"diffusion-lm train preset={train_cfg.get('preset_name')}",
        "commit": commit, "trained_on": "2-core CPU, fp32", "summary": summary,
        "fluency": json.loads((run / "fluency.json").read_text()) if (run / "fluency.json").exists() else None,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"shipped {run} as {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
