"""Left-to-right decoding shared by the baselines: top-k sampling, FUDGE's reweighting, finished text.

All sentences of a batch advance in lockstep from [START]; a sentence that has
emitted [END] keeps receiving [PAD], which is dropped when it is decoded.
"""
from __future__ import annotations

import torch


def banned_ids(tok, step: int) -> list[int]:
    """Tokens a sentence may never emit ([PAD], [START], [UNK]), and [END] as the first word."""
    ids = [tok.pad_id, tok.start_id, tok.unk_id]
    return ids + [tok.end_id] if step == 0 else ids


def next_log_probs(logits: torch.Tensor, tok, step: int) -> torch.Tensor:
    """log p(w | prefix) over the vocabulary with the banned tokens removed (B, V)."""
    logits = logits.float().clone()
    logits[:, banned_ids(tok, step)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def top_k(log_probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely next tokens and their log-probabilities, (B, k) each."""
    values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    return ids, values


def fudge_reweight(lm_log_probs: torch.Tensor, attribute_log_probs: torch.Tensor, strength: float) -> torch.Tensor:
    """FUDGE's candidate distribution: p(x | prefix, a) ∝ p_LM(x | prefix) · P(a | prefix, x)^λ over the top-k.

    Both inputs are (B, k) log-probabilities of the same candidates; returns (B, k) normalised log-probabilities.
    """
    return torch.log_softmax(lm_log_probs + strength * attribute_log_probs, dim=-1)


def draw(log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row from (B, k) log-probabilities: (B,) indices into the k."""
    return torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)


def advance(ids: torch.Tensor, new: torch.Tensor, done: torch.Tensor, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the chosen tokens ([PAD] after [END]) and update which sentences are finished."""
    new = torch.where(done, torch.full_like(new, tok.pad_id), new)
    return torch.cat([ids, new[:, None]], dim=1), done | (new == tok.end_id)


def texts(ids: torch.Tensor, tok) -> list[str]:
    """Each row's words between [START] and its first [END] (or the end of the row)."""
    out = []
    for row in ids.tolist():
        words = []
        for i in row[1:]:
            if i in (tok.end_id, tok.pad_id):
                break
            words.append(tok._id_to_word[i])
        out.append(" ".join(words))
    return out


@torch.no_grad()
def sample_plain(model, tok, n: int, max_words: int, k: int, generator: torch.Generator | None) -> list[str]:
    """Uncontrolled top-k sampling from the LM (FUDGE at λ = 0, PPLM with step size 0)."""
    device = next(model.parameters()).device
    ids = torch.full((n, 1), tok.start_id, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_words + 1):
        cand, logp = top_k(next_log_probs(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1], tok, step), k)
        pick = draw(torch.log_softmax(logp, -1), generator)
        ids, done = advance(ids, cand.gather(1, pick[:, None]).squeeze(1), done, tok)
        if bool(done.all()):
            break
    return texts(ids, tok)
