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
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from nltk import Tree

from ..errors import UserError
from .trees import bracket_f1, clean_ptb, tree_to_string

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
    from .oracles import use_shipped_nltk_data

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
    from .trees import labelled_spans

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
    """Train on the WSJ sample, keep the best held-out F1, save it to cfg.out_dir."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train, held = split_trees(treebank_trees(cfg.limit), cfg.heldout, cfg.seed)
    parser = build_parser(cfg, train)
    opt = torch.optim.Adam(parser.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    start, best, history, step = time.time(), -1.0, [], 0

    def progress_at(s: int) -> float:
        # cosine decay finishes by the last epoch or by the time budget, whichever comes first
        by_time = (time.time() - start) / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
        return min(1.0, max(s / total, by_time))

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * progress_at(s))))
    bar = tqdm(total=total, desc="parser", disable=not progress)
    for epoch in range(cfg.epochs):
        parser.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            batch = [_example(train[i]) for i in order[b:b + cfg.batch_size]]
            opt.zero_grad()
            loss_total = 0.0
            for _, sub in parser.encode_and_collate_subbatches(batch, subbatch_max_tokens=2000):
                loss = parser.compute_loss(sub)
                loss.backward()
                loss_total += loss.item()
            torch.nn.utils.clip_grad_norm_(parser.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_total:.2f}", best_f1=f"{best:.1f}")
        f1 = heldout_f1(parser, held)
        minutes = (time.time() - start) / 60
        history.append({"epoch": epoch + 1, "step": step, "heldout_f1": round(f1, 2), "minutes": round(minutes, 2)})
        if f1 > best:
            best = f1
            save_parser(parser, cfg.out_dir, {"heldout_f1": round(f1, 2), "epoch": epoch + 1,
                                              "train_trees": len(train), "heldout_trees": len(held),
                                              "minutes": round(minutes, 2), "config": asdict(cfg)})
        if cfg.max_minutes is not None and minutes * (epoch + 2) / (epoch + 1) > cfg.max_minutes:
            break  # the next epoch would end past the budget
    bar.close()
    summary = {"heldout_f1": round(best, 2), "train_trees": len(train), "heldout_trees": len(held),
               "minutes": round((time.time() - start) / 60, 2), "history": history}
    Path(cfg.out_dir, "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def save_parser(parser, out_dir: str, metrics: dict) -> None:
    from safetensors.torch import save_file

    from ..text.io import atomic_write

    cfg = {"tag_vocab": parser.tag_vocab, "label_vocab": parser.label_vocab,
           "char_vocab": parser.char_vocab, "hparams": parser.config["hparams"], "metrics": metrics}
    state = {k: v.detach().contiguous() for k, v in parser.state_dict().items()}
    atomic_write(Path(out_dir, "model.safetensors"), lambda p: save_file(state, p))
    atomic_write(Path(out_dir, "config.json"), lambda p: Path(p).write_text(json.dumps(cfg, indent=1) + "\n"))


def load_parser(name_or_path: str):
    """Our trained parser from a folder (config.json + model.safetensors), or a benepar model by name."""
    from benepar import nkutil
    from benepar.parse_chart import ChartParser

    path = Path(name_or_path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        cfg = json.loads((path / "config.json").read_text())
        parser = ChartParser(cfg["tag_vocab"], cfg["label_vocab"], cfg["char_vocab"], nkutil.HParams(**cfg["hparams"]))
        state = load_file(str(path / "model.safetensors"))
        parser.load_state_dict({k: v.float() for k, v in state.items()})
        parser.eval()
        return parser
    try:
        from benepar.integrations.downloader import load_trained_model

        return load_trained_model(name_or_path).eval()
    except (LookupError, OSError) as e:
        raise UserError(f"no parser at {name_or_path!r}: not a trained parser folder, and benepar has no "
                        f"model by that name installed ({str(e).strip().splitlines()[0][:80]})") from None


__all__ = ["ParserConfig", "train_parser", "load_parser", "parse_words", "heldout_f1", "treebank_trees",
           "tree_to_string", "bracket_f1"]
