"""Autoregressive LMs (transformers' GPT-2 architecture) trained from scratch on E2E train.

Used as the *teacher* that scores fluency (lm-score = perplexity of a
generated sentence, as in Li et al., 2022), and later as the base LM of the
FUDGE and PPLM baselines (a different seed and size, so the judge is not the
contestant). A model folder holds transformers' config.json +
model.safetensors and our tokenizer.json (and checkpoint/, from which a killed
`train_lm` resumes with the same command).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed
from ..errors import UserError
from ..data import DataConfig, load_e2e
from ..io import check_finite, check_output_dir, load_json, save_json
from ..text.tokenizer import WordTokenizer
from ..runtime import pick_device
from ..training import fit, generator_state, loop_config


@dataclass
class ARLMConfig:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    max_len: int = 64  # START and END included
    dropout: float = 0.1
    min_freq: int = 2

    def validate(self, section: str = "model") -> None:
        for name, most in (("layers", 1024), ("hidden", 65536), ("heads", 4096), ("max_len", 8192),
                           ("min_freq", 10 ** 9)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
                raise UserError(f"{section}.{name} must be an integer in 1..{most:,}, got {v!r}")
        if self.hidden % self.heads:
            raise UserError(f"{section}.hidden ({self.hidden}) must be divisible by {section}.heads ({self.heads})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"{section}.dropout must be in [0, 1), got {self.dropout!r}")
        if 12 * self.layers * self.hidden ** 2 > 4 * 10 ** 9:
            raise UserError(f"an LM of {self.layers} layers of width {self.hidden} is too large to build")


# GPT-2 config.json sizes past which a folder is damaged rather than a model this machine could hold
_HF_LIMITS = {"n_embd": 65536, "n_layer": 1024, "n_head": 4096, "n_positions": 8192, "vocab_size": 10_000_000}


def _check_hf_config(directory: Path) -> None:
    cfg = load_json(directory / "config.json")
    if not isinstance(cfg, dict):
        raise UserError(f"{directory / 'config.json'} must hold a JSON object, not {type(cfg).__name__}")
    for k, most in _HF_LIMITS.items():
        v = cfg.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most):
            raise UserError(f"{directory / 'config.json'}: {k} must be an integer in 1..{most:,}, got {v!r}")
    n_embd, n_layer = cfg.get("n_embd", 768), cfg.get("n_layer", 12)
    if 12 * n_layer * n_embd ** 2 + cfg.get("vocab_size", 50257) * n_embd > 4 * 10 ** 9:
        raise UserError(f"{directory / 'config.json'} describes an LM too large to build")


@dataclass
class ARTrainConfig:
    out_dir: str = "runs/teacher"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    schedule: str = "cosine"  # cosine | linear | constant after warm-up (diffusion_lm.training.lr_at)
    min_lr_ratio: float = 0.0
    seed: int = 1234
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 250  # a killed run resumes from out_dir/checkpoint with the same command
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward


def _gpt2(cfg: ARLMConfig, vocab_size: int, tok: WordTokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.max_len, n_embd=cfg.hidden, n_layer=cfg.layers,
                        n_head=cfg.heads, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                        bos_token_id=tok.start_id, eos_token_id=tok.end_id, pad_token_id=tok.pad_id)
    return GPT2LMHeadModel(config)


class ARLM:
    """A GPT-2 LM with its word tokenizer: scores and (later) generates sentences."""

    def __init__(self, model, tokenizer: WordTokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "ARLM":
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar for loading 40 tensors is noise beside ours
        directory = Path(directory)
        if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
            raise UserError(f"no LM (config.json + model.safetensors) in {directory}")
        tokenizer = WordTokenizer.load(directory)
        _check_hf_config(directory)
        try:
            model = GPT2LMHeadModel.from_pretrained(str(directory), use_safetensors=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(f"cannot load the LM in {directory}: {first}") from None
        check_finite(model.state_dict(), str(directory))
        if model.config.vocab_size != len(tokenizer):
            raise UserError(f"{directory}: tokenizer has {len(tokenizer)} words, the LM {model.config.vocab_size}")
        return cls(model.float().to(device), tokenizer)  # shipped weights may be fp16

    def batch(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n_pos = self.model.config.n_positions
        encs = [self.tokenizer.encode(s)[:n_pos] for s in sentences]
        L = max(len(e) for e in encs)
        ids = torch.full((len(encs), L), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(encs), L, dtype=torch.bool)
        for i, e in enumerate(encs):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = True
        return ids, mask

    def token_nll(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """−log p(w_i | w_<i) for every predicted token (B, L−1), zero where padded."""
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        logits = self.model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return nll * mask[:, 1:]

    @torch.no_grad()
    def perplexity(self, sentences: list[str], batch_size: int = 128) -> list[float]:
        """Per-sentence perplexity exp(mean NLL over its words and END); START is given."""
        if not sentences:
            return []
        out = []
        for i in range(0, len(sentences), batch_size):
            ids, mask = self.batch(sentences[i: i + batch_size])
            nll = self.token_nll(ids, mask)
            counts = mask[:, 1:].sum(1).clamp_min(1)
            out += torch.exp(nll.sum(1).cpu() / counts.cpu()).tolist()
        return out


def train_lm(model_cfg: ARLMConfig, train_cfg: ARTrainConfig, data: DataConfig | None = None,
             progress: bool = True) -> dict:
    """Train a GPT-2 LM on E2E train; returns valid perplexity and timings."""
    data = data or DataConfig()
    model_cfg.validate()
    loop = loop_config({"train": train_cfg}, weight_decay=0.01, grad_clip=1.0)
    check_output_dir(train_cfg.out_dir, "train.out_dir")
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    out = Path(train_cfg.out_dir)
    started = time.time()
    texts = load_e2e("train", data)["text"]
    tok = WordTokenizer.train(texts, min_freq=model_cfg.min_freq)
    ids, fits = tok.encode_batch(texts, model_cfg.max_len)
    ids = ids[fits]
    lengths = (ids != tok.pad_id).sum(1)
    device = pick_device(train_cfg.device, "train.device")
    model = _gpt2(model_cfg, len(tok), tok).to(device)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    lm = ARLM(model, tok)

    distributed.check_batch(train_cfg.batch_size)
    parallel = distributed.world()[1] > 1

    def loss_at(step: int) -> torch.Tensor:
        # every rank draws the same global batch (the generator rides in the checkpoint) and, under torchrun,
        # keeps its slice; the loss is then its share of the global batch's mean over predicted tokens
        rows = torch.randint(0, len(ids), (train_cfg.batch_size,), generator=gen)
        batch = ids[rows, :int(lengths[rows].max())]
        mask = batch != tok.pad_id
        if not parallel:
            return lm.token_nll(batch, mask).sum() / mask[:, 1:].sum()
        local, local_mask = distributed.shard(batch), distributed.shard(mask)
        return distributed.global_mean(lm.token_nll(local, local_mask).sum(), mask[:, 1:].sum())

    fit(model, loss_at, loop, out, name="LM", progress=progress, extra={"batches": generator_state(gen)})
    if not distributed.is_main():  # rank 0 measures and writes the model
        return {"steps": train_cfg.steps}
    model.eval()
    valid = load_e2e("valid", data)["text"]
    ppl = corpus_perplexity(lm, valid)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(".saving.*"):  # left by a run killed while saving
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".saving.") as tmp:
        # written whole beside the target, then each file moved into place in one step
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save(tmp)
        for f in sorted(Path(tmp).iterdir(), key=lambda f: f.name == "model.safetensors"):
            os.replace(f, out / f.name)
    summary = {"valid_perplexity": round(ppl, 3), "train_minutes": round((time.time() - started) / 60, 2),
               "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok),
               "steps": train_cfg.steps, "seed": train_cfg.seed}
    save_json(out / "summary.json", summary)
    return summary


@torch.no_grad()
def corpus_perplexity(lm: ARLM, sentences: list[str], batch_size: int = 256) -> float:
    """exp(total NLL / total predicted tokens) over a corpus."""
    total, count = 0.0, 0
    for i in range(0, len(sentences), batch_size):
        ids, mask = lm.batch(sentences[i: i + batch_size])
        total += lm.token_nll(ids, mask).sum().item()
        count += int(mask[:, 1:].sum())
    return math.exp(total / max(1, count))
