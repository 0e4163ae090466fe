"""PPLM (Dathathri et al., ICLR 2020): steer a frozen LM by gradient steps on its past key/values.

At every step the cached keys and values H_t of the prefix get a
perturbation ΔH, found by a few normalised gradient steps on

    −log P(a | ·) + kl_scale · KL(p̃_{t+1} ‖ p_{t+1})

(the attribute loss and the KL term that keeps the next-word distribution
near the LM's), and the next word is drawn from the *fused* distribution
p̃^γ_gm · p^(1−γ_gm) over its top-k. The perturbed cache is carried forward.

Attribute models, as in the paper:
- `discrim`: a linear head on the mean of the LM's last hidden states over the
  sentence, trained (LM frozen) to say which E2E values the sentence states.
  During decoding the mean covers the prefix, the current word under the
  perturbed cache and the expected next word's embedding (p̃ · W_te).
- `bow`: a bag of words, −log Σ_{w ∈ bag} p̃_{t+1}(w), the bag being the
  value's words (in every casing the vocabulary holds).

Only semantic content is a sentence-level attribute; POS, tree, spans and
length have no PPLM attribute model here, and Table 2 shows "–" for them, as
the paper's does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import UserError
from ..lm import ARLM
from ..runtime import pick_device
from ..tasks import TASKS as REGISTRY
from ..training import fit, loop_config
from .decoding import advance, draw, next_log_probs, texts, top_k
from .io import save_discriminator
from .labels import label_e2e, semantic_value, states, value_key, value_vocabulary

TASKS = tuple(name for name, task in REGISTRY.items() if task.pplm)  # semantic: PPLM's one attribute model


class MeanDiscriminator(nn.Module):
    """PPLM's discriminator: logits over E2E values from the mean last hidden state."""

    kind = "pplm"

    def __init__(self, hidden: int, pairs: list[str], values: list[str]):
        super().__init__()
        self.hidden, self.pairs, self.values = hidden, list(pairs), list(values)
        self.head = nn.Linear(hidden, max(1, len(self.values)))

    def config(self) -> dict:
        return {"kind": self.kind, "hidden": self.hidden, "pairs": self.pairs, "values": self.values}

    def forward(self, mean_hidden: torch.Tensor) -> torch.Tensor:
        return self.head(mean_hidden)


@torch.no_grad()
def mean_hidden(lm, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the LM's last hidden states over each sentence's tokens ([START] … [END])."""
    h = lm(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[-1]
    m = mask[..., None].float()
    return (h * m).sum(1) / m.sum(1)


@dataclass
class PPLMTrainConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-3
    min_count: int = 10
    limit: int | None = 20000
    max_words: int = 46
    eval_size: int = 400
    seed: int = 0
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 500  # a killed run resumes from out_dir/checkpoint with the same command
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward


def _features(lm, data, values: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], torch.zeros(len(data), len(values))
    for k in range(0, len(data), batch_size):
        ids, mask = lm.batch([" ".join(w) for w in data.words[k:k + batch_size]])
        feats.append(mean_hidden(lm.model, ids, mask))
    for r, words in enumerate(data.words):
        for v, key in enumerate(values):
            labels[r, v] = float(states(words, key))
    return torch.cat(feats), labels


def train_pplm(lm_dir: str, out_dir: str, cfg: PPLMTrainConfig, progress: bool = True,
               command: str | None = None, lm_label: str | None = None) -> dict:
    """Fit the mean-hidden-state discriminator on E2E train (the base LM frozen); resumes from out_dir/checkpoint."""
    loop = loop_config({"pplm": cfg}, steps=cfg.epochs, keys={"steps": "pplm.epochs"})  # checked before the work
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    started = time.time()
    lm = ARLM.load(lm_dir)
    words = min(cfg.max_words, lm.model.config.n_positions - 2)
    data = label_e2e("train", cfg.limit, words, out, progress, oracles=False)
    valid = label_e2e("valid", cfg.eval_size, words, out, progress, oracles=False)
    pairs, values = value_vocabulary(data, cfg.min_count)
    disc = MeanDiscriminator(lm.model.config.n_embd, pairs, values)
    x, y = _features(lm, data, values)
    vx, vy = _features(lm, valid, values)
    if not len(x):
        raise UserError("no E2E train sentences for the PPLM discriminator (pplm.limit, pplm.max_words)")
    device = pick_device(cfg.device, "pplm.device")
    disc, x, y = disc.to(device), x.to(device), y.to(device)
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    g = torch.Generator().manual_seed(cfg.seed)
    perm, drawn = torch.arange(0), 0  # the current epoch's permutation, and how many epochs' are drawn

    def loss_at(step: int) -> torch.Tensor:
        nonlocal perm, drawn
        epoch, k = divmod(step, per_epoch)
        while drawn <= epoch:  # each epoch a permutation, drawn in turn from one seeded stream (steps go forward)
            perm, drawn = torch.randperm(len(x), generator=g), drawn + 1
        rows = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        if not parallel:
            return F.binary_cross_entropy_with_logits(disc(x[rows]), y[rows])
        # under torchrun: this rank's rows (an epoch's last batch may not split evenly) and its share of the
        # global batch's mean over rows x values
        local = rows[distributed.shard_rows(len(rows))]
        bce = F.binary_cross_entropy_with_logits(disc(x[local]), y[local], reduction="sum")
        return distributed.global_mean(bce, len(rows) * y.shape[1])

    parallel = distributed.world()[1] > 1
    result = fit(disc, loss_at, replace(loop, steps=cfg.epochs * per_epoch), out, name="PPLM discriminator",
                 progress=progress)
    if not distributed.is_main():  # rank 0 measures and writes
        return {"steps": result.step}
    with torch.no_grad():
        vx, vy = vx.to(device), vy.to(device)
        pred = disc(vx) > 0
        exact = (pred == (vy > 0.5)).all(-1).float().mean().item()
        recall = (pred & (vy > 0.5)).sum().item() / max(1.0, vy.sum().item())
    metrics = {"train_sentences": len(x), "final_loss": round(result.last.get("loss", float("nan")), 4),
               "heldout_all_values_correct": round(exact, 4),
               "heldout_recall_of_stated_values": round(recall, 4), "train_minutes": round((time.time() - started) / 60, 2),
               "base_lm": lm_label or str(lm_dir)}
    if command:
        metrics["command"] = command
    save_discriminator(disc, out, metrics)
    return metrics


# ---- decoding --------------------------------------------------------------------------------

@dataclass
class PPLMConfig:
    attribute: str = "discrim"  # discrim | bow
    step_size: float = 0.02
    iterations: int = 3  # gradient steps on ΔH per word
    kl_scale: float = 0.01
    gm_scale: float = 0.95  # fusion: p̃^gm · p^(1−gm)
    gamma: float = 1.5  # gradient normalisation exponent
    top_k: int = 10
    max_words: int = 62


def _cache(past: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(past):
        cache.update(k, v, layer)
    return cache


def _tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def bag_mask(tok, value_key: str) -> torch.Tensor:
    """(V,) bool: every vocabulary word that matches one of the value's words ignoring case."""
    want = set(value_key.split())
    mask = torch.zeros(len(tok), dtype=torch.bool)
    for i in range(len(tok)):
        if tok._id_to_word[i].lower() in want:
            mask[i] = True
    return mask


class PPLM:
    """Decoding with perturbed past key/values toward one value per sentence."""

    def __init__(self, lm, tok, cfg: PPLMConfig, disc: MeanDiscriminator | None = None):
        if cfg.attribute not in ("discrim", "bow"):
            raise UserError(f"unknown PPLM attribute model {cfg.attribute!r}; choose discrim or bow")
        if cfg.attribute == "discrim" and disc is None:
            raise UserError("PPLM attribute=discrim needs a discriminator (diffusion-lm train-baseline method=pplm)")
        if not (cfg.step_size >= 0 and cfg.iterations >= 0 and 0 <= cfg.gm_scale <= 1 and cfg.top_k >= 1):  # NaN fails
            raise UserError("PPLM needs step_size >= 0, iterations >= 0, 0 <= gm_scale <= 1 and top_k >= 1")
        self.lm, self.tok, self.cfg, self.disc = lm, tok, cfg, disc
        self.pairs = disc.pairs if disc is not None else None

    def target(self, task: str, target) -> str:
        """The value key a target asks for (semantic only; other tasks have no PPLM attribute model)."""
        if task not in TASKS:
            raise UserError(f"PPLM has no attribute model for task {task!r} (only {', '.join(TASKS)}; "
                            "the paper reports – for the others)")
        goal = REGISTRY[task].parse(target, None)
        if self.pairs is None:
            return value_key(goal.semantic[1])
        return semantic_value(goal.semantic, self.pairs)

    def _attribute_loss(self, out, probs: torch.Tensor, hidden_sum: torch.Tensor, length: int,
                        goal: torch.Tensor) -> torch.Tensor:
        if self.cfg.attribute == "bow":
            return -torch.log((probs * goal).sum(-1).clamp_min(1e-12))
        # the expected next word's embedding, read under the perturbed cache (which now holds the current word)
        emb = probs @ self.lm.transformer.wte.weight
        nxt = self.lm(inputs_embeds=emb[:, None], past_key_values=out.past_key_values, output_hidden_states=True)
        h = out.hidden_states[-1][:, -1] + nxt.hidden_states[-1][:, -1]
        logits = self.disc((hidden_sum + h) / (length + 1))
        return -F.logsigmoid(logits.gather(1, goal[:, None]).squeeze(1))

    def generate(self, goals: list[str], generator: torch.Generator | None = None) -> list[str]:
        cfg, tok, lm = self.cfg, self.tok, self.lm
        device = next(lm.parameters()).device
        B = len(goals)
        if cfg.attribute == "bow":
            goal = torch.stack([bag_mask(tok, g) for g in goals]).float().to(device)
        else:
            goal = torch.tensor([self.disc.values.index(g) for g in goals], device=device)
        ids = torch.full((B, 1), tok.start_id, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        past = None  # keys/values of ids[:, :-1], perturbations included
        hidden_sum = torch.zeros(B, lm.config.n_embd, device=device)  # unperturbed last hidden over ids[:, :-1]
        for step in range(cfg.max_words + 1):
            last = ids[:, -1:]
            with torch.no_grad():
                plain = lm(input_ids=last, past_key_values=_cache(past) if past else None, output_hidden_states=True)
            log_p = next_log_probs(plain.logits[:, -1], tok, step)
            if past and cfg.iterations:
                delta = self._perturb(past, last, log_p, hidden_sum, ids.shape[1], goal)
                past_used = [(k + dk, v + dv) for (k, v), (dk, dv) in zip(past, delta)]
                with torch.no_grad():
                    pert = lm(input_ids=last, past_key_values=_cache(past_used))
                log_q = next_log_probs(pert.logits[:, -1], tok, step)
                new_past = _tensors(pert.past_key_values)
                # p̃^gm · p^(1−gm); at gm 0 or 1 the unused side is left out (0 · −inf would be NaN)
                fused = (log_p if cfg.gm_scale == 0 else log_q if cfg.gm_scale == 1
                         else cfg.gm_scale * log_q + (1 - cfg.gm_scale) * log_p)
            else:
                new_past, fused = _tensors(plain.past_key_values), log_p
            cand, logp = top_k(fused, cfg.top_k)
            pick = draw(torch.log_softmax(logp, -1), generator)
            hidden_sum = hidden_sum + plain.hidden_states[-1][:, -1]
            past = [(k.detach(), v.detach()) for k, v in new_past]
            ids, done = advance(ids, cand.gather(1, pick[:, None]).squeeze(1), done, tok)
            if bool(done.all()):
                break
        return texts(ids, tok)

    def _perturb(self, past, last, log_p, hidden_sum, length, goal):
        cfg = self.cfg
        delta = [(torch.zeros_like(k, requires_grad=True), torch.zeros_like(v, requires_grad=True)) for k, v in past]
        p = log_p.exp()
        for _ in range(cfg.iterations):
            with torch.enable_grad():
                out = self.lm(input_ids=last, output_hidden_states=True,
                              past_key_values=_cache([(k + dk, v + dv) for (k, v), (dk, dv) in zip(past, delta)]))
                log_q = torch.log_softmax(out.logits[:, -1].float(), -1)
                q = log_q.exp()
                loss = self._attribute_loss(out, q, hidden_sum, length, goal)
                keep = p > 1e-10  # KL(q ‖ p) where the LM gives the word any mass
                kl = torch.where(keep, q * (log_q - log_p.clamp_min(-1e4)), torch.zeros_like(q)).sum(-1)
                total = (loss + cfg.kl_scale * kl).sum()
                flat = [d for pair in delta for d in pair]
                grads = torch.autograd.grad(total, flat)
            new = []
            for d, g in zip(flat, grads):
                norm = g.flatten(1).norm(dim=1).clamp_min(1e-10).view(-1, *[1] * (g.dim() - 1))
                new.append((d - cfg.step_size * g / norm ** cfg.gamma).detach().requires_grad_(True))
            delta = [(new[2 * i], new[2 * i + 1]) for i in range(len(past))]
        return [(dk.detach(), dv.detach()) for dk, dv in delta]
