"""E2E restaurant descriptions through the `datasets` library.

Three sources, one shape (columns `mr`, `text`; `text` tokenised with spaces):

- ``shipped`` (default): the copy inside this package (assets/e2e, xz CSVs; see
  assets/e2e/README.md for provenance and licence). Its train split is already
  tokenised like Diffusion-LM's files; valid and test are tokenised here.
- ``csv``: a folder with the official CSVs (trainset.csv, devset.csv,
  testset_w_refs.csv) or train.csv/valid.csv/test.csv; all tokenised here.
- ``hub``: Hugging Face's ``e2e_nlg``, when a hub is reachable.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserError

SPLITS = ("train", "valid", "test")
_OFFICIAL = {"train": "trainset.csv", "valid": "devset.csv", "test": "testset_w_refs.csv"}
_HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}


MAX_LEN = 4096  # padded length; as the model's max_len (text.model.LIMITS)


@dataclass
class DataConfig:
    source: str = "shipped"  # shipped | csv | hub
    path: str | None = None  # folder of CSVs when source=csv
    max_len: int = 64  # padded length, START and END included
    min_freq: int = 5  # words rarer than this in train become UNK
    limit: int | None = None  # use only the first N training sentences (tests)

    def validate(self) -> None:
        """A one-line UserError for a value out of range (before any data is read or padded)."""
        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not integer(self.max_len) or not 3 <= self.max_len <= MAX_LEN:
            raise UserError(f"data.max_len must be an integer in 3..{MAX_LEN} (START and END included), "
                            f"got {self.max_len!r}")
        if not integer(self.min_freq) or self.min_freq < 0:
            raise UserError(f"data.min_freq must be an integer >= 0, got {self.min_freq!r}")
        if self.limit is not None and (not integer(self.limit) or self.limit < 1):
            raise UserError(f"data.limit must be an integer >= 1 or null, got {self.limit!r}")


_CONTRACTION = re.compile(r"(?i)(\w)n't\b")
_CLITIC = re.compile(r"(?i)(\w)('s|'re|'ll|'ve|'m|'d)\b")
_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCT = re.compile(r"([,!?;:()\"£&/])")


def tokenize_e2e(text: str) -> str:
    """Tokenise a raw E2E reference the way the tokenised train split is.

    'It isn't family-friendly, prices £20-25.' → "It isn 't family - friendly , prices £ 20 - 25 ."
    """
    text = _CONTRACTION.sub(r"\1n 't", text)
    text = _CLITIC.sub(r"\1 \2", text)
    text = _HYPHEN.sub(" - ", text)
    text = _PERIOD.sub(" . ", text)
    text = _PUNCT.sub(r" \1 ", text)
    return " ".join(text.split())


def _shipped_file(split: str) -> str:
    return str(resources.files("diffusion_lm") / "assets" / "e2e" / f"{split}.csv.xz")


def _csv_file(folder: str, split: str) -> str:
    base = Path(folder)
    for name in (_OFFICIAL[split], f"{split}.csv", f"{split}.csv.xz", f"{split}.csv.gz"):
        if (base / name).is_file():
            return str(base / name)
    raise UserError(f"no E2E {split} file in {folder} (looked for {_OFFICIAL[split]} or {split}.csv)")


def load_e2e(split: str, cfg: DataConfig | None = None):
    """The E2E `split` as a `datasets.Dataset` with columns mr and text."""
    import datasets

    cfg = cfg or DataConfig()
    cfg.validate()
    if split not in SPLITS:
        raise UserError(f"unknown E2E split {split!r}; choose one of {SPLITS}")
    datasets.disable_progress_bars()
    if cfg.source == "hub":
        ds = datasets.load_dataset("e2e_nlg", split=_HUB_SPLIT[split])
        ds = ds.rename_columns({"meaning_representation": "mr", "human_reference": "ref"})
        pretokenized = False
    elif cfg.source in ("shipped", "csv"):
        if cfg.source == "csv":
            if not cfg.path:
                raise UserError("data.source=csv needs data.path, a folder of E2E CSV files")
            if not Path(cfg.path).is_dir():
                raise UserError(f"data.path {cfg.path} is not a folder")
            file = _csv_file(cfg.path, split)
        else:
            file = _shipped_file(split)
            if not Path(file).is_file():
                raise UserError(f"the shipped E2E file is missing: {file}")
        ds = datasets.load_dataset("csv", data_files={split: file}, split=split)
        pretokenized = cfg.source == "shipped" and split == "train"
    else:
        raise UserError(f"unknown data.source {cfg.source!r}; choose shipped, csv or hub")
    if not {"mr", "ref"} <= set(ds.column_names):
        raise UserError(f"E2E {split} data needs columns mr and ref, found {ds.column_names}")
    if cfg.limit is not None and split == "train":
        ds = ds.select(range(min(cfg.limit, len(ds))))
    if pretokenized:
        return ds.rename_column("ref", "text")
    return ds.map(lambda row: {"text": tokenize_e2e(row["ref"])}, remove_columns=["ref"])


def e2e_split(split: str, limit: int | None, max_words: int,
              cfg: DataConfig | None = None) -> tuple[list[list[str]], list[str]]:
    """(word lists, MRs) of a split's sentences with 1..max_words words, the first `limit` of them."""
    ds = load_e2e(split, cfg)
    rows = [(t.split(), m) for t, m in zip(ds["text"], ds["mr"]) if 1 <= len(t.split()) <= max_words]
    rows = rows[:limit] if limit else rows
    return [w for w, _ in rows], [m for _, m in rows]


# ---- meaning representations: "name[The Vaults], eatType[pub], ..." ---------------------------

MR_FIELDS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")
UNSTATED_FIELDS = ("familyFriendly",)  # yes/no: the value's words never appear as such in a sentence
MR_PATTERN = re.compile(r"\s*([^,\[\]]+?)\s*\[([^\]]*)\]")


def parse_mr(mr: str) -> dict[str, str]:
    """{field: value} of an MR, or a one-line UserError if it has none."""
    fields = dict(MR_PATTERN.findall(mr))
    if not fields:
        raise UserError(f"malformed E2E meaning representation: {mr[:60]!r}")
    return fields


def mr_pairs(mr: str) -> list[tuple[str, str]]:
    """The (field, value) pairs of an MR that a sentence can state (UNSTATED_FIELDS left out)."""
    return [(f.strip(), v.strip()) for f, v in MR_PATTERN.findall(mr) if f.strip() not in UNSTATED_FIELDS]


def value_words(value: str) -> list[str]:
    """The lower-cased, E2E-tokenised words a sentence must show to state `value`."""
    return tokenize_e2e(value).lower().split()
