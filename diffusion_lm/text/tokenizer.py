"""A word-level tokenizer built from E2E train, saved as a Hugging Face tokenizer.json.

Special tokens: [PAD] = 0, [START] = 1, [END] = 2, [UNK] = 3. Encoding wraps a
sentence as [START] w_1 .. w_n [END] and pads with [PAD] to a fixed length;
Diffusion-LM generates the padding too, which is how it chooses a length.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing

from ..errors import UserError

PAD, START, END, UNK = "[PAD]", "[START]", "[END]", "[UNK]"
SPECIALS = (PAD, START, END, UNK)


class WordTokenizer:
    def __init__(self, tok: Tokenizer):
        self.tok = tok
        vocab = tok.get_vocab()
        missing = [s for s in SPECIALS if s not in vocab]
        if missing:
            raise UserError(f"tokenizer lacks special tokens {missing}")
        self.pad_id, self.start_id, self.end_id, self.unk_id = (vocab[s] for s in SPECIALS)
        self._id_to_word = {i: w for w, i in vocab.items()}

    @classmethod
    def train(cls, sentences: Iterable[str], min_freq: int = 1) -> "WordTokenizer":
        counts = Counter(w for s in sentences for w in s.split())
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        for w in words:
            vocab.setdefault(w, len(vocab))
        tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
        tok.pre_tokenizer = WhitespaceSplit()
        tok.post_processor = TemplateProcessing(
            single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])]
        )
        return cls(tok)

    def __len__(self) -> int:
        return self.tok.get_vocab_size()

    def word_id(self, word: str) -> int | None:
        """The id of a vocabulary word, or None if it is not in the vocabulary."""
        return self.tok.token_to_id(word)

    # ---- encode / decode ----------------------------------------------------
    def encode(self, sentence: str) -> list[int]:
        """[START] ids [END], unpadded."""
        return self.tok.encode(sentence).ids

    def encode_batch(self, sentences: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids padded to `length`, and a mask of sentences that fit (longer ones are dropped by callers)."""
        encs = self.tok.encode_batch(sentences)
        ids = torch.full((len(sentences), length), self.pad_id, dtype=torch.long)
        fits = torch.zeros(len(sentences), dtype=torch.bool)
        for i, e in enumerate(encs):
            if len(e.ids) <= length:
                ids[i, : len(e.ids)] = torch.tensor(e.ids)
                fits[i] = True
        return ids, fits

    def decode(self, ids) -> str:
        """Words between [START] and the first [END] or [PAD]; other specials dropped."""
        words = []
        for i in (ids.tolist() if torch.is_tensor(ids) else ids):
            if i in (self.end_id, self.pad_id):
                if words or i == self.end_id:
                    break
                continue
            if i == self.start_id:
                continue
            words.append(self._id_to_word.get(i, UNK))
        return " ".join(words)

    # ---- save / load ----------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        self.tok.save(str(Path(directory) / "tokenizer.json"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WordTokenizer":
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"no tokenizer.json in {directory}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise UserError(f"cannot read {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
