"""An autoregressive LM as a fluency potential on Diffusion-LM's continuous words.

At step t the latent sentence is x_t = √ᾱ_t · EMB(w) + √(1 − ᾱ_t) · ε, position by position. With no
other knowledge, the posterior over position i's word is the soft rounding

    q_i(w | x_t) ∝ exp(−‖x_{t,i} − √ᾱ_t · EMB(w)‖² / (2 (1 − ᾱ_t)))

— nearly uniform where the noise dominates, one word once it has settled. The potential feeds the
soft words (the q-weighted mix of the LM's input embeddings) to the AR LM and returns the expected
log-likelihood of the sentence under it,

    log p_LM(x_t) ≈ Σ_i (1 − q_i(PAD)) · Σ_w q_i(w) · log p_LM(w | soft words < i),

which is differentiable in x_t: used as a `Control` of the guidance hook it pulls each step's
x_{t−1} toward sentences the LM finds likely. The LM is the baselines' base LM, never the teacher
that judges fluency. Its vocabulary must cover the Diffusion-LM's (words outside it are the LM's
[UNK]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text.tokenizer import PAD, UNK
from .teacher import ARLM


class LMPotential:
    """`log_prob(x_t, t, target=None) -> (B,)`, the classifiers' interface, for the guidance hook."""

    def __init__(self, lm: ARLM, model, tokenizer, alpha_bar: torch.Tensor):
        self.lm = lm
        lm.model.requires_grad_(False)
        device = next(lm.model.parameters()).device
        vocab = tokenizer.tok.get_vocab()  # word -> Diffusion-LM id
        lm_unk = lm.tokenizer.word_id(UNK)
        ids = torch.full((len(tokenizer),), -1, dtype=torch.long)
        for word, i in vocab.items():
            j = lm.tokenizer.word_id(word)
            ids[i] = lm_unk if j is None else j
        self.word_map = ids.to(device)  # Diffusion-LM id -> LM id
        self.pad = tokenizer.word_id(PAD)
        with torch.no_grad():
            self.table = model.embed(torch.arange(len(tokenizer), device=device)).detach().float()  # (V, d)
        self.alpha_bar = alpha_bar.to(device=device, dtype=torch.float32)
        self.lm_inputs = lm.model.get_input_embeddings().weight[self.word_map].detach()  # (V, h)

    def soft_words(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(w | x_t) per position, (B, L, V)."""
        ab = self.alpha_bar[t].view(-1, 1, 1)
        d2 = (x.pow(2).sum(-1, keepdim=True) - 2 * ab.sqrt() * x @ self.table.T
              + ab * self.table.pow(2).sum(-1))
        return torch.softmax(-d2 / (2 * (1 - ab).clamp_min(1e-6)), dim=-1)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, target=None) -> torch.Tensor:
        q = self.soft_words(x.float(), t)
        logits = self.lm.model(inputs_embeds=q @ self.lm_inputs).logits[:, :-1]  # predicts positions 1..L-1
        logp = F.log_softmax(logits.float(), -1)[..., self.word_map]  # (B, L-1, V) over Diffusion-LM ids
        nxt = q[:, 1:]
        expected = (nxt * logp).sum(-1) * (1 - nxt[..., self.pad])
        return expected.sum(-1)

    @torch.no_grad()
    def mean_nll(self, sentences: list[str]) -> torch.Tensor:
        """Mean NLL per token of finished sentences (log of their perplexity under the LM), (B,)."""
        return torch.tensor(self.lm.perplexity(sentences)).log()
