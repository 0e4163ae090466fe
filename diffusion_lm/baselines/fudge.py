"""FUDGE (Yang & Klein, NAACL 2021): future discriminators reweight the LM's top-k next words.

At each step the LM proposes its k most likely next words x; a discriminator
reads each extended prefix and estimates the probability that the *finished*
sentence will meet the target, and decoding samples from

    p(x | prefix, a) ∝ p_LM(x | prefix) · P(a | prefix, x)^λ      over the top-k.

One discriminator serves every task: a causal GPT-2 trunk (initialised from
the base LM) reads the prefix, and heads on its last state predict the
future, each trained on E2E train labelled by the oracles:

| head | predicts from a prefix | used by |
| --- | --- | --- |
| tag | the oracle's tag of the word just read | pos, tree (its preterminals), compose |
| length | the finished sentence's number of words | pos, tree, length, compose |
| span | whether (i, j, label) will be a constituent of the finished sentence's parse | tree (every span), spans |
| value | whether the finished sentence will state the value | semantic, compose |

A target's log P(a | prefix) is the sum of its heads' terms (for POS, the
tag of the newest word: earlier words' terms are the same for every
candidate).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..distributed import global_mean
from ..errors import UserError
from ..lm import ARLM
from ..runtime import pick_device
from ..tasks import TASKS, Target, get_task
from ..tasks.tagsets import ptb_tags, to_universal
from ..tasks.trees import labelled_spans
from ..training import fit, has_checkpoint, loop_config
from .decoding import advance, draw, fudge_reweight, next_log_probs, texts, top_k
from .io import read_discriminator, save_discriminator
from .labels import Labelled, label_e2e, semantic_value, span_vocabulary, states, value_vocabulary
from .pplm import MeanDiscriminator

TAG_ALIASES = {"-LRB-": "(", "-RRB-": ")"}  # the parser's bracket tags, the tagger's spelling
FUDGE_TASKS = tuple(name for name, task in TASKS.items() if task.fudge_heads)


class FutureDiscriminator(nn.Module):
    kind = "fudge"

    def __init__(self, gpt2: dict, tags: list[str], span_labels: list[str], pairs: list[str], values: list[str],
                 span_dim: int = 128):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.gpt2, self.tags, self.span_labels = dict(gpt2), list(tags), list(span_labels)
        self.pairs, self.values, self.span_dim = list(pairs), list(values), span_dim
        self.trunk = GPT2Model(GPT2Config(**self.gpt2))
        H, L = self.trunk.config.n_embd, self.trunk.config.n_positions
        self.max_words = L - 2
        self.tag_head = nn.Linear(H, len(self.tags))
        self.length_head = nn.Linear(H, L)
        self.value_head = nn.Linear(H, max(1, len(self.values)))
        # a span (i, j) is read at the fenceposts around it (the states after words i−1 and j, or the
        # newest state where the prefix has not reached them yet) and at the prefix's own newest state
        self.span_query = nn.Linear(H, span_dim)
        self.span_left, self.span_right = nn.Linear(H, span_dim, bias=False), nn.Linear(H, span_dim, bias=False)
        self.span_start, self.span_end = nn.Embedding(L, span_dim), nn.Embedding(L, span_dim)
        self.span_label = nn.Embedding(max(1, len(self.span_labels)), span_dim)
        self.span_out = nn.Linear(span_dim, 1)

    def config(self) -> dict:
        return {"kind": self.kind, "gpt2": self.gpt2, "tags": self.tags, "span_labels": self.span_labels,
                "pairs": self.pairs, "values": self.values, "span_dim": self.span_dim}

    # ---- heads -----------------------------------------------------------------------------
    def span_logits(self, states: torch.Tensor, at: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """log-odds that each span will be a constituent, judged from prefixes ending at token positions `at`.

        states (N, T, H) token states ([START] = 0, word i at i + 1), at (N, P) positions, spans (N, S, 3) of
        (i, j, label id) → (N, P, S). Word i's left fencepost is token i, word j's right one token j + 1;
        a fencepost beyond the prefix reads the prefix's newest state instead.
        """
        N, P, S, D = at.shape[0], at.shape[1], spans.shape[1], self.span_dim

        def read(proj: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # proj (N, T, D), pos (N, P, S)
            return proj.gather(1, pos.reshape(N, P * S, 1).expand(-1, -1, D)).reshape(N, P, S, D)

        left = torch.minimum(spans[:, None, :, 0], at[:, :, None])
        right = torch.minimum(spans[:, None, :, 1] + 1, at[:, :, None])
        q = self.span_query(states.gather(1, at[..., None].expand(-1, -1, states.shape[-1])))  # (N, P, D)
        e = self.span_start(spans[..., 0]) + self.span_end(spans[..., 1]) + self.span_label(spans[..., 2])
        x = read(self.span_left(states), left) + read(self.span_right(states), right) + q[:, :, None] + e[:, None]
        return self.span_out(F.gelu(x)).squeeze(-1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.trunk(input_ids=ids, attention_mask=mask.long()).last_hidden_state

    def candidate_states(self, ids: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """The trunk's states over each prefix (B, t) extended by each candidate (B, k): (B, k, t + 1, H)."""
        B, k = cand.shape
        out = self.trunk(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        h = self.trunk(input_ids=cand.reshape(B * k, 1), past_key_values=cache).last_hidden_state
        prefix = out.last_hidden_state[:, None].expand(-1, k, -1, -1)
        return torch.cat([prefix, h.reshape(B, k, 1, -1)], dim=2)

    # ---- training ----------------------------------------------------------------------------
    @staticmethod
    def loss_totals(batch: dict) -> dict[str, torch.Tensor]:
        """What each loss term's mean runs over in `batch`: labelled tags, valid positions, weighted spans."""
        valid = batch["mask"].float()
        span_w = valid[:, :, None] * batch["span_mask"][:, None].float()
        return {"tag": (batch["tags"][:, 1:] != -1).sum(), "length": valid.sum(), "value": valid.sum(),
                "span": span_w.sum().clamp_min(1)}

    def loss(self, batch: dict, totals: dict | None = None) -> tuple[torch.Tensor, dict]:
        """The four heads' losses, each a mean over its own positions; with `totals` (the global batch's
        `loss_totals`, under torchrun) each is this rank's share of the global batch's mean."""
        h = self(batch["ids"], batch["mask"])
        valid = batch["mask"].float()  # START .. END
        tag_logits = self.tag_head(h[:, 1:]).transpose(1, 2)
        n = batch["length"][:, None].expand(-1, h.shape[1])
        length = (F.cross_entropy(self.length_head(h).transpose(1, 2), n, reduction="none") * valid).sum()
        # summed over values (a mean over 75 mostly-absent values starves the trunk of their signal)
        value = (F.binary_cross_entropy_with_logits(self.value_head(h), batch["values"][:, None].expand(-1, h.shape[1], -1),
                                                    reduction="none").sum(-1) * valid).sum()
        span_w = valid[:, :, None] * batch["span_mask"][:, None].float()
        at = torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)
        span = (F.binary_cross_entropy_with_logits(self.span_logits(h, at, batch["spans"]),
                                                   batch["span_gold"][:, None].expand(-1, h.shape[1], -1),
                                                   reduction="none") * span_w).sum()
        if totals is None:
            tag = F.cross_entropy(tag_logits, batch["tags"][:, 1:], ignore_index=-1)
            parts = {"tag": tag, "length": length / valid.sum(), "value": value / valid.sum(),
                     "span": span / span_w.sum().clamp_min(1)}
        else:
            tag = F.cross_entropy(tag_logits, batch["tags"][:, 1:], ignore_index=-1, reduction="sum")
            parts = {k: global_mean(v, totals[k]) for k, v in
                     (("tag", tag), ("length", length), ("value", value), ("span", span))}
        return sum(parts.values()), {k: round(v.item(), 4) for k, v in parts.items()}

    # ---- targets -------------------------------------------------------------------------------
    def tag_ids(self, tag: str, tagset: str = "ptb") -> list[int]:
        """The tag head's classes a target tag allows: a universal tag allows each of its PTB tags, [] = any."""
        if tagset == "universal":
            return [i for i, u in enumerate(self._universal) if u == tag]
        tag = TAG_ALIASES.get(tag, tag)
        return [self.tags.index(tag)] if tag in self.tags else []

    def span_id(self, label: str) -> int:
        if label not in self.span_labels:
            raise UserError(f"unknown constituent label {label!r} (known: {', '.join(self.span_labels)})")
        return self.span_labels.index(label)

    def target(self, task: str, target) -> "FudgeTarget":
        """A task's target as the terms of the heads the registry names for it; a bad target is a one-line UserError."""
        goal = get_task(task, FUDGE_TASKS).parse(target, self.max_words)
        out = FudgeTarget()
        for head in TASKS[task].fudge_heads:
            self._TERMS[head](self, goal, out)
        return out

    def _tag_term(self, goal: Target, out: "FudgeTarget") -> None:
        out.tags = [self.tag_ids(t, goal.tagset) for t in goal.tags]

    def _length_term(self, goal: Target, out: "FudgeTarget") -> None:
        out.length = goal.length

    def _span_term(self, goal: Target, out: "FudgeTarget") -> None:
        if goal.tree is not None:  # every bracket of a whole tree that the head knows and can reach
            out.spans = [(i, j, self.span_labels.index(lab)) for i, j, lab in sorted(labelled_spans(goal.tree, evalb=False))
                         if lab in self.span_labels and j < self.max_words]
        else:  # the one span the user asked for: its label must be known
            i, j, label = goal.span
            out.spans = [(i, j, self.span_id(label))]

    def _value_term(self, goal: Target, out: "FudgeTarget") -> None:
        out.value = self.values.index(semantic_value(goal.semantic, self.pairs))

    _TERMS = {"tag": _tag_term, "length": _length_term, "span": _span_term, "value": _value_term}  # by head

    @property
    def _universal(self) -> list[str]:
        if not hasattr(self, "_universal_tags"):
            self._universal_tags = to_universal(self.tags)
        return self._universal_tags

    def log_prob(self, states: torch.Tensor, word: int, targets: "BatchedTargets") -> torch.Tensor:
        """log P(target met | prefix + candidate) from candidate_states (B, k, t + 1, H); the candidate is word `word`."""
        h = states[:, :, -1]
        total = torch.zeros(h.shape[:2], device=h.device)
        if targets.tags is not None and word < targets.tags.shape[1]:
            lp = torch.log_softmax(self.tag_head(h), -1).masked_fill(~targets.tags[:, word, None], float("-inf"))
            term = torch.logsumexp(lp, -1)
            total = total + torch.where(targets.has_tag[:, word, None], term, torch.zeros_like(term))
        if targets.length is not None:
            lp = torch.log_softmax(self.length_head(h), -1)
            term = lp.gather(2, targets.length.clamp_min(0)[:, None, None].expand(-1, h.shape[1], 1)).squeeze(2)
            total = total + torch.where(targets.length[:, None] >= 0, term, torch.zeros_like(term))
        if targets.spans is not None:
            B, k, T, H = states.shape
            at = torch.full((B * k, 1), T - 1, dtype=torch.long, device=h.device)
            logits = self.span_logits(states.reshape(B * k, T, H), at, targets.spans.repeat_interleave(k, 0))
            term = F.logsigmoid(logits.reshape(B, k, -1)) * targets.span_mask[:, None].float()
            total = total + term.sum(-1)
        if targets.value is not None:
            lp = F.logsigmoid(self.value_head(h))
            term = lp.gather(2, targets.value.clamp_min(0)[:, None, None].expand(-1, h.shape[1], 1)).squeeze(2)
            total = total + torch.where(targets.value[:, None] >= 0, term, torch.zeros_like(term))
        return total


@dataclass
class FudgeTarget:
    tags: list[list[int]] | None = None  # per word, the tag classes allowed ([] = any)
    length: int | None = None
    spans: list[tuple[int, int, int]] | None = None
    value: int | None = None


@dataclass
class BatchedTargets:
    tags: torch.Tensor | None  # (B, n, n_tags) allowed
    has_tag: torch.Tensor | None  # (B, n)
    length: torch.Tensor | None  # (B,), −1 = free
    spans: torch.Tensor | None  # (B, S, 3)
    span_mask: torch.Tensor | None  # (B, S)
    value: torch.Tensor | None  # (B,), −1 = none

    @classmethod
    def stack(cls, targets: list[FudgeTarget], n_tags: int, device=None) -> "BatchedTargets":
        B = len(targets)
        tags = has_tag = length = spans = span_mask = value = None
        if any(t.tags for t in targets):
            n = max(len(t.tags or []) for t in targets)
            tags = torch.ones(B, n, n_tags, dtype=torch.bool)
            has_tag = torch.zeros(B, n, dtype=torch.bool)
            for b, t in enumerate(targets):
                for i, allowed in enumerate(t.tags or []):
                    if allowed:
                        tags[b, i] = False
                        tags[b, i, allowed] = True
                        has_tag[b, i] = True
        if any(t.length is not None for t in targets):
            length = torch.tensor([-1 if t.length is None else t.length for t in targets])
        if any(t.spans for t in targets):
            S = max(len(t.spans or []) for t in targets)
            spans = torch.zeros(B, S, 3, dtype=torch.long)
            span_mask = torch.zeros(B, S, dtype=torch.bool)
            for b, t in enumerate(targets):
                for s, sp in enumerate(t.spans or []):
                    spans[b, s] = torch.tensor(sp)
                    span_mask[b, s] = True
        if any(t.value is not None for t in targets):
            value = torch.tensor([-1 if t.value is None else t.value for t in targets])
        move = (lambda x: None if x is None else x.to(device))
        return cls(*(move(x) for x in (tags, has_tag, length, spans, span_mask, value)))


# ---- decoding --------------------------------------------------------------------------------

@dataclass
class FudgeConfig:
    top_k: int = 50  # candidates the LM proposes at each step
    strength: float = 3.0  # λ: the discriminator's exponent
    max_words: int = 62


@torch.no_grad()
def fudge_generate(lm, tok, disc: FutureDiscriminator, targets: list[FudgeTarget], cfg: FudgeConfig,
                   generator: torch.Generator | None = None) -> list[str]:
    """One sentence per target, sampled from the reweighted top-k at every step."""
    device = next(lm.parameters()).device
    B = len(targets)
    batched = BatchedTargets.stack(targets, len(disc.tags), device)
    ids = torch.full((B, 1), tok.start_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(cfg.max_words + 1):
        cand, lm_logp = top_k(next_log_probs(lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1], tok, step), cfg.top_k)
        if cfg.strength:
            attr = disc.log_prob(disc.candidate_states(ids, cand), step, batched)
        else:
            attr = torch.zeros_like(lm_logp)
        pick = draw(fudge_reweight(lm_logp, attr, cfg.strength), generator)
        ids, done = advance(ids, cand.gather(1, pick[:, None]).squeeze(1), done, tok)
        if bool(done.all()):
            break
    return texts(ids, tok)


# ---- training --------------------------------------------------------------------------------

@dataclass
class FudgeTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 100
    schedule: str = "cosine"  # cosine | linear | constant after warm-up (diffusion_lm.training.lr_at)
    min_lr_ratio: float = 0.0
    spans_per_sentence: int = 32  # half the sentence's own constituents, half other sentences'
    min_count: int = 10  # span labels and MR values rarer than this are left out
    limit: int | None = 20000  # first N E2E train sentences (parsing them is the slow part)
    max_words: int = 46  # longer sentences (< 0.5%) are left out, as for the Diffusion-LM's classifiers
    eval_size: int = 400
    seed: int = 0
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 250
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward


def encode_rows(disc: FutureDiscriminator, tok, data: Labelled) -> list[dict]:
    """Each sentence as ids and the heads' labels."""
    tag_id = {t: i for i, t in enumerate(disc.tags)}
    label_id = {lab: i for i, lab in enumerate(disc.span_labels)}
    rows = []
    for words, tags, spans in zip(data.words, data.tags, data.spans):
        ids = tok.encode(" ".join(words))
        rows.append({"ids": ids, "tags": [tag_id.get(t, -1) for t in tags],
                     "spans": {(i, j, label_id[lab]) for i, j, lab in spans if lab in label_id},
                     "values": [v for v, key in enumerate(disc.values) if states(words, key)]})
    return rows


def collate(rows: list[dict], n_values: int, spans_per_sentence: int, rng: random.Random, pad_id: int) -> dict:
    B, L = len(rows), max(len(r["ids"]) for r in rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    tags = torch.full((B, L), -1, dtype=torch.long)
    values = torch.zeros(B, n_values)
    for b, r in enumerate(rows):
        ids[b, :len(r["ids"])] = torch.tensor(r["ids"])
        tags[b, 1:1 + len(r["tags"])] = torch.tensor(r["tags"])
        values[b, r["values"]] = 1.0
    pool = [s for r in rows for s in r["spans"]]
    S = spans_per_sentence
    spans = torch.zeros(B, S, 3, dtype=torch.long)
    gold = torch.zeros(B, S)
    span_mask = torch.zeros(B, S, dtype=torch.bool)
    for b, r in enumerate(rows):
        own = rng.sample(sorted(r["spans"]), min(S // 2, len(r["spans"])))
        others = [pool[rng.randrange(len(pool))] for _ in range(S - len(own))] if pool else []
        for s, sp in enumerate(own + others):
            spans[b, s] = torch.tensor(sp)
            gold[b, s] = float(sp in r["spans"])
            span_mask[b, s] = True
    return {"ids": ids, "mask": ids != pad_id, "tags": tags, "length": torch.tensor([len(r["tags"]) for r in rows]),
            "values": values, "spans": spans, "span_gold": gold, "span_mask": span_mask}


def for_lm(lm, data: Labelled, min_count: int) -> FutureDiscriminator:
    """A discriminator whose trunk is a copy of the base LM's transformer, with the label sets of `data`."""
    pairs, values = value_vocabulary(data, min_count)
    gpt2 = {k: v for k, v in lm.config.to_dict().items()
            if k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "resid_pdrop", "embd_pdrop",
                     "attn_pdrop", "bos_token_id", "eos_token_id", "pad_token_id")}
    disc = FutureDiscriminator(gpt2, sorted(ptb_tags()), span_vocabulary(data, min_count), pairs, values)
    disc.trunk.load_state_dict(lm.transformer.state_dict())
    return disc


@torch.no_grad()
def heldout(disc: FutureDiscriminator, rows: list[dict], pad_id: int) -> dict:
    """Accuracy of each head on held-out sentences, over all prefix positions (tags: per word)."""
    disc.eval()
    device = next(disc.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, len(disc.values), 32, random.Random(0), pad_id).items()}
    h = disc(batch["ids"], batch["mask"])
    valid = batch["mask"]
    end = valid.sum(1) - 1  # the [END] state: the whole sentence read
    idx = torch.arange(len(rows), device=device)
    at = torch.arange(h.shape[1], device=device)[None].expand(h.shape[0], -1)
    tag_ok = (disc.tag_head(h[:, 1:]).argmax(-1) == batch["tags"][:, 1:])[batch["tags"][:, 1:] >= 0]
    length_ok = (disc.length_head(h).argmax(-1) == batch["length"][:, None])[valid]
    value_ok = (disc.value_head(h) > 0) == (batch["values"][:, None] > 0.5)
    span_ok = (disc.span_logits(h, at, batch["spans"]) > 0) == (batch["span_gold"][:, None] > 0.5)
    span_mask = valid[:, :, None] & batch["span_mask"][:, None]
    disc.train()
    mean = (lambda x: round(x.float().mean().item(), 4))
    return {"tag_accuracy": mean(tag_ok), "length_accuracy_all_prefixes": mean(length_ok),
            "value_accuracy_all_prefixes": mean(value_ok[valid]), "value_accuracy_at_end": mean(value_ok[idx, end]),
            "span_accuracy_all_prefixes": mean(span_ok[span_mask]),
            "span_accuracy_at_end": mean(span_ok[idx, end][batch["span_mask"]])}


def train_fudge(lm_dir: str, out_dir: str, cfg: FudgeTrainConfig, progress: bool = True,
                command: str | None = None, lm_label: str | None = None) -> dict:
    """Train (or resume, from out_dir/checkpoint) the future discriminator on oracle-labelled E2E train."""
    loop = loop_config({"fudge": cfg}, weight_decay=0.01, grad_clip=1.0)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    lm = ARLM.load(lm_dir)
    L = lm.model.config.n_positions
    # under torchrun rank 0 labels (and caches) the sentences; the other ranks read its cache
    data = distributed.main_first(lambda: label_e2e("train", cfg.limit, min(cfg.max_words, L - 2), out, progress))
    valid = distributed.main_first(lambda: label_e2e("valid", cfg.eval_size, min(cfg.max_words, L - 2), out, progress))
    if has_checkpoint(out):  # the label sets were fixed (and config.json written) on the first run
        disc = load_discriminator(out, "fudge").train()
    else:
        disc = for_lm(lm.model, data, cfg.min_count).train()
        if distributed.is_main():
            save_discriminator(disc, out)
    rows, v_rows = encode_rows(disc, lm.tokenizer, data), encode_rows(disc, lm.tokenizer, valid)
    device = pick_device(cfg.device, "fudge.device")
    disc = disc.to(device)

    distributed.check_batch(cfg.batch_size, "fudge.batch_size")
    parallel = distributed.world()[1] > 1

    def loss_at(step: int):
        rng = random.Random(cfg.seed * 1_000_003 + step)  # each step's own draw: a resumed run sees the same batches
        batch = collate(rng.sample(rows, cfg.batch_size), len(disc.values), cfg.spans_per_sentence, rng,
                        lm.tokenizer.pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        if not parallel:
            return disc.loss(batch)
        # every rank draws the same global batch; each takes its slice and its share of each term's mean
        return disc.loss(distributed.shard(batch), totals=disc.loss_totals(batch))

    result = fit(disc, loss_at, loop, out, name="FUDGE discriminator", progress=progress)
    if not distributed.is_main():  # rank 0 measures and writes
        return {"steps": result.step}
    metrics = {"steps": result.step, "train_minutes": round(result.elapsed_s / 60, 2),
               "train_sentences": len(rows), "final_loss": result.last,
               "heldout": heldout(disc, v_rows, lm.tokenizer.pad_id),
               "parameters": sum(p.numel() for p in disc.parameters()), "base_lm": lm_label or str(lm_dir)}
    if command:
        metrics["command"] = command
    save_discriminator(disc, out, metrics)
    return metrics


# ---- save / load -----------------------------------------------------------------------------

DISCRIMINATORS = {"fudge": FutureDiscriminator, "pplm": MeanDiscriminator}


def load_discriminator(directory, kind: str, device="cpu") -> nn.Module:
    """A saved FUDGE (`fudge`) or PPLM (`pplm`) attribute model."""
    return read_discriminator(directory, kind, DISCRIMINATORS, device)
