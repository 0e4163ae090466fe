"""The constituency-parser oracle: benepar's ChartParser, trained here on NLTK's WSJ sample.

The released benepar models need a download (and a pretrained encoder); this
module trains the same architecture with a character LSTM and no pretrained
encoder, small enough for a CPU, and saves it as config.json + model.safetensors.
`load_parser("benepar_en3")` still loads a released model where benepar's models
are installed.
"""
from __future__ import annotations

import json
import math
import random
import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from nltk import Tree

from ..assets import use_shipped_nltk_data
from ..errors import UserError
from ..io import atomic_write, build_checked, load_pretrained, load_weights, save_json, save_pretrained
from ..training import Extra, fit, loop_config
from ..tasks.trees import labelled_spans, tree_to_string
from .trees import bracket_f1, clean_ptb

SHIPPED_PARSER = "parser-wsj-charlstm"
# torch-struct's TreeCRF (benepar's chart decoder) predates torch's distribution validation
warnings.filterwarnings("ignore", message=".*TreeCRF'> does not define `arg_constraints`")


@dataclass
class ParserConfig:
    """benepar ChartParser hyper-parameters (a small char-LSTM model) and training settings."""

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 8
    d_kv: int = 32
    d_ff: int = 768
    d_char_emb: int = 64
    d_label_hidden: int = 256
    d_tag_hidden: int = 256
    tag_loss_scale: float = 5.0
    dropout: float = 0.2
    # training
    heldout: float = 0.1        # share of the 3,914 trees held out for F1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    seed: int = 0
    threads: int = 0
    max_minutes: float | None = 40.0
    limit: int | None = None    # first N trees only (tests)
    out_dir: str = "runs/parser"
    log_every: int = 10
    checkpoint_every: int = 100  # a killed run resumes from out_dir/checkpoint with the same command

    def hparams(self) -> dict:
        d = self.dropout
        return dict(
            d_model=self.d_model, num_layers=self.num_layers, num_heads=self.num_heads, d_kv=self.d_kv,
            d_ff=self.d_ff, d_char_emb=self.d_char_emb, d_label_hidden=self.d_label_hidden,
            d_tag_hidden=self.d_tag_hidden, tag_loss_scale=self.tag_loss_scale,
            use_chars_lstm=True, use_pretrained=False, pretrained_model="", use_encoder=True,
            predict_tags=True, force_root_constituent=True, encoder_max_len=512,
            char_lstm_input_dropout=d, morpho_emb_dropout=d, attention_dropout=d, relu_dropout=d / 2,
            residual_dropout=d,
        )


@dataclass
class _Example:
    """One sentence in the shape benepar's ChartParser reads (words, space_after, tree, pos)."""

    words: list[str]
    tree: Tree | None = None
    tags: list[str] | None = None
    space_after: list[bool] = field(default_factory=list)

    def __post_init__(self):
        self.space_after = [True] * len(self.words)

    def leaves(self):
        return self.words

    def pos(self):
        if self.tree is not None:
            return self.tree.pos()
        return list(zip(self.words, self.tags or ["UNK"] * len(self.words)))


def _unescape(word: str) -> str:
    from benepar.ptb_unescape import ptb_unescape

    return ptb_unescape([word])[0]


def treebank_trees(limit: int | None = None) -> list[Tree]:
    """NLTK's WSJ sample (shipped), cleaned of traces and function tags."""
    use_shipped_nltk_data()
    from nltk.corpus import treebank

    trees = [clean_ptb(t) for t in treebank.parsed_sents()[: limit or None]]
    # a TOP wrapper, as benepar's own treebank loader adds, lets a unary root (SQ → FRAG) collapse
    return [Tree("TOP", [t]) for t in trees if t is not None and len(t.leaves()) > 0]


def split_trees(trees: list[Tree], heldout: float, seed: int) -> tuple[list[Tree], list[Tree]]:
    order = list(range(len(trees)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(trees) * heldout))
    return [trees[i] for i in order[n_held:]], [trees[i] for i in order[:n_held]]


def _example(tree: Tree) -> _Example:
    return _Example(words=[_unescape(w) for w in tree.leaves()], tree=tree)


def build_parser(cfg: ParserConfig, train: list[Tree]):
    from benepar import char_lstm, decode_chart, nkutil
    from benepar.parse_chart import ChartParser

    label_vocab = decode_chart.ChartDecoder.build_vocab(train)
    tags = sorted({tag for t in train for _, tag in t.pos()})
    tag_vocab = {tag: i for i, tag in enumerate(["UNK"] + tags)}
    char_vocab = char_lstm.RetokenizerForCharLSTM.build_vocab([_example(t).words for t in train])
    return ChartParser(tag_vocab, label_vocab, char_vocab, nkutil.HParams(**cfg.hparams()))


def parse_words(parser, sentences: list[list[str]], batch_size: int = 64) -> list[Tree]:
    """Oracle parses of tokenised sentences; tags come from the parser's own tagger."""
    out: list[Tree] = []
    for i in range(0, len(sentences), batch_size):
        batch = [_Example(words=list(s)) for s in sentences[i:i + batch_size]]
        for ex, comp in zip(batch, parser.parse(batch, return_compressed=True)):
            out.append(comp.to_tree(ex.pos(), parser.decoder.label_from_index, parser.tag_from_index))
    return out


def heldout_f1(parser, trees: list[Tree]) -> float:
    """Corpus-level labelled bracket F1 (EVALB conventions), in percent."""
    pred = parse_words(parser, [[_unescape(w) for w in t.leaves()] for t in trees])
    match = n_gold = n_pred = 0
    for g, p in zip(trees, pred):
        gs, ps = labelled_spans(g), labelled_spans(p)
        match += sum((gs & ps).values())
        n_gold += sum(gs.values())
        n_pred += sum(ps.values())
    if match == 0:
        return 0.0
    prec, rec = match / n_pred, match / n_gold
    return 100 * 2 * prec * rec / (prec + rec)


def train_parser(cfg: ParserConfig, progress: bool = True) -> dict:
    """Train on the WSJ sample, keep the best held-out F1 (judged after each epoch), save it to cfg.out_dir.

    The lr decays (cosine after warm-up) by the last epoch or by max_minutes, whichever comes first,
    and no epoch starts that would end past max_minutes.
    """
    loop = loop_config({"parser": cfg}, steps=cfg.epochs, keys={"steps": "parser.epochs"}, grad_clip=1.0,
                       schedule="cosine", anneal_by_time=True, betas=(0.9, 0.98))  # checked before the work
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train, held = split_trees(treebank_trees(cfg.limit), cfg.heldout, cfg.seed)
    parser = build_parser(cfg, train)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    rng, order, drawn = random.Random(cfg.seed), [], 0  # each epoch's order, shuffled in turn by one seeded stream
    record = {"best": -1.0, "history": []}

    def loss_at(step: int) -> float:
        nonlocal order, drawn
        epoch, k = divmod(step, per_epoch)
        while drawn <= epoch:
            order, drawn = list(range(len(train))), drawn + 1
            rng.shuffle(order)
        batch = [_example(train[i]) for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]]
        total = 0.0
        for _, sub in parser.encode_and_collate_subbatches(batch, subbatch_max_tokens=2000):
            loss = parser.compute_loss(sub)
            loss.backward()
            total += loss.item()
        return total

    def end_of_epoch(state) -> bool:
        epoch, k = divmod(state.step, per_epoch)
        if k:
            return False
        f1, minutes = heldout_f1(parser, held), state.elapsed_s / 60
        record["history"].append({"epoch": epoch, "step": state.step, "heldout_f1": round(f1, 2),
                                  "minutes": round(minutes, 2)})
        if f1 > record["best"]:
            record["best"] = f1
            save_parser(parser, cfg.out_dir, {"heldout_f1": round(f1, 2), "epoch": epoch, "train_trees": len(train),
                                              "heldout_trees": len(held), "minutes": round(minutes, 2),
                                              "config": asdict(cfg)})
        # stop when the next epoch would end past the budget
        return cfg.max_minutes is not None and minutes * (epoch + 1) / epoch > cfg.max_minutes

    result = fit(parser, loss_at, replace(loop, steps=per_epoch * cfg.epochs), cfg.out_dir, name="parser",
                 progress=progress, backward=False, on_step=end_of_epoch,
                 extra={"record": Extra(lambda: dict(record), record.update)})
    summary = {"heldout_f1": round(record["best"], 2), "train_trees": len(train), "heldout_trees": len(held),
               "minutes": round(result.elapsed_s / 60, 2), "history": record["history"]}
    save_json(Path(cfg.out_dir, "train_summary.json"), summary)
    return summary


def save_parser(parser, out_dir: str, metrics: dict) -> None:
    cfg = {"tag_vocab": parser.tag_vocab, "label_vocab": parser.label_vocab,
           "char_vocab": parser.char_vocab, "hparams": parser.config["hparams"], "metrics": metrics}
    save_pretrained(out_dir, cfg, parser.state_dict())


def check_parser(name_or_path) -> str:
    """"folder" (our safetensors + JSON parser) or "name" (a benepar model to look up), else a UserError.

    Nothing is unpickled from a path the user names: benepar's own files are torch pickles, so only an
    installed benepar model, by its bare name, is handed to benepar (which finds it in nltk_data)."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise UserError(f"parser must be a folder or a benepar model name, got {name_or_path!r}")
    path = Path(name_or_path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "folder"
    if path.exists():
        raise UserError(f"parser={name_or_path}: not a parser folder (config.json + model.safetensors from "
                        "diffusion-lm build-parser); other files are not loaded")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path):
        raise UserError(f"no parser at {name_or_path!r}: not a folder, and not a benepar model name (e.g. benepar_en3)")
    return "name"


def load_parser(name_or_path: str):
    """Our trained parser from a folder (config.json + model.safetensors), or a benepar model by name."""
    from benepar import nkutil
    from benepar.parse_chart import ChartParser

    if check_parser(name_or_path) == "folder":
        path = Path(name_or_path)
        cfg, state = load_pretrained(path, "parser")
        try:
            parser = build_checked(lambda: ChartParser(cfg["tag_vocab"], cfg["label_vocab"], cfg["char_vocab"],
                                                       nkutil.HParams(**cfg["hparams"])), state, str(path))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise UserError(f"{path}/config.json does not describe a parser ({type(e).__name__}: {e})") from None
        load_weights(parser, state, str(path))
        return parser.eval()
    try:
        from benepar.integrations.downloader import load_trained_model

        return load_trained_model(name_or_path).eval()
    except (LookupError, OSError) as e:
        raise UserError(f"no parser at {name_or_path!r}: not a trained parser folder, and benepar has no "
                        f"model by that name installed ({(str(e).strip().splitlines() or [type(e).__name__])[0][:80]})") from None


__all__ = ["ParserConfig", "train_parser", "check_parser", "load_parser", "parse_words", "heldout_f1", "treebank_trees",
           "tree_to_string", "bracket_f1"]
