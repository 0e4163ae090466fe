"""Denoising trajectories: what each position of a sample rounds to at every step.

A `TrajectoryRecorder` is a sampling-loop callback; `write` saves the rows as
text and as a PNG (one line per recorded step, noisiest at the top).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..io import atomic_write, check_output_file
from .model import DiffusionLM
from .tokenizer import WordTokenizer


def trajectory_files(path: str | Path) -> tuple[Path, Path]:
    """<path>.txt and <path>.png, or a one-line UserError where `path` names no file."""
    try:
        base = Path(str(path)).with_suffix("")
        return base.with_suffix(".txt"), base.with_suffix(".png")
    except ValueError as e:
        raise UserError(f"trajectory={path!s}: not a file name ({e})") from None


def check_trajectory(path: str | Path) -> None:
    """Before any work: both trajectory files can be written."""
    for f in trajectory_files(path):
        check_output_file(f, "trajectory")


class TrajectoryRecorder:
    def __init__(self, model: DiffusionLM, tokenizer: WordTokenizer, sample_index: int = 0):
        self.model, self.tokenizer, self.i = model, tokenizer, sample_index
        self.rows: list[tuple[int, list[str]]] = []
        self.done = False

    def __call__(self, info: dict) -> None:
        if self.done:  # later batches of the same run
            return
        self.done = info["index"] == 0
        ids = self.model.round(info["x0"][self.i: self.i + 1])[0]
        words = [self.tokenizer._id_to_word.get(int(j), "?") for j in ids]
        self.rows.append((int(info["t"][self.i]) + 1, words))

    def lines(self, max_rows: int = 25) -> list[str]:
        keep = self.rows if len(self.rows) <= max_rows else [
            self.rows[round(k * (len(self.rows) - 1) / (max_rows - 1))] for k in range(max_rows)]
        return [f"t={t:>4}  " + " ".join(w for w in words if w != "[PAD]") for t, words in keep]

    def write(self, path: str | Path, title: str | None = None) -> tuple[Path, Path]:
        """Write <path>.txt (every step) and <path>.png (up to 25 steps)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        txt, png = trajectory_files(path)
        text = (f"# {title}\n" if title else "") + "\n".join(self.lines(max_rows=len(self.rows) or 1)) + "\n"
        atomic_write(txt, lambda p: Path(p).write_text(text, encoding="utf-8"))
        lines = self.lines()
        fig = plt.figure(figsize=(14, 0.28 * len(lines) + 0.8))
        heading = "Denoising trajectory: x̂_0 rounded to words at each step t (noisiest first)"
        fig.text(0.01, 0.98, heading + (f"\n{title}" if title else ""), va="top", fontsize=10, weight="bold")
        for k, line in enumerate(lines):
            fig.text(0.01, 0.93 - k * (0.9 / max(1, len(lines))), line, va="top", family="monospace", fontsize=8)
        try:
            atomic_write(png, lambda p: fig.savefig(p, dpi=110, format="png"))
        finally:
            plt.close(fig)
        return txt, png
