import math

from diffusion_lm.lm import ARLM, ARLMConfig, ARTrainConfig, corpus_perplexity, train_lm
from diffusion_lm.data.e2e import DataConfig, load_e2e


def test_teacher_trains_saves_and_prefers_real_sentences(tmp_path):
    summary = train_lm(ARLMConfig(layers=1, hidden=32, heads=2, dropout=0.0),
                       ARTrainConfig(out_dir=str(tmp_path / "lm"), steps=60, batch_size=32, lr=3e-3, warmup=5,
                                     log_every=20, threads=1),
                       DataConfig(limit=300), progress=False)
    assert summary["valid_perplexity"] < summary["vocab_size"]  # better than uniform
    lm = ARLM.load(tmp_path / "lm")
    train = load_e2e("train", DataConfig(limit=300))["text"][:40]
    shuffled = [" ".join(reversed(s.split())) for s in train]
    assert corpus_perplexity(lm, train) < corpus_perplexity(lm, shuffled)
    ppl = lm.perplexity(train[:3])
    assert len(ppl) == 3 and all(p > 1 and math.isfinite(p) for p in ppl)
    assert lm.perplexity([]) == []
