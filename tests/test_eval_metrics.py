"""The success metrics on hand-made examples with known answers, and bad targets."""
import pytest
from nltk import Tree

from diffusion_lm.errors import UserError
from diffusion_lm.eval.metrics import (LengthMatch, compose_score, PosMatch, SemanticContent, SpanMatch, TreeF1, pos_score,
                                       semantic_score, span_hit, validate_target)
from diffusion_lm.eval.oracles import pos_tagger
from diffusion_lm.eval.trees import bracket_f1, clean_ptb
from diffusion_lm.tasks.trees import labelled_spans, parse_bracketed

EAGLE = "The Eagle is a cheap pub ."
EAGLE_TREE = "(S (NP (DT The) (NNP Eagle)) (VP (VBZ is) (NP (DT a) (JJ cheap) (NN pub))) (. .))"


class FixedParser:
    """Stands in for the parser oracle: returns given trees, so metrics are tested apart from its skill."""

    def __init__(self, trees):
        self.trees = [parse_bracketed(t) for t in trees]

    def parse(self, sentences):
        assert len(sentences) == len(self.trees)
        return self.trees


def test_tagger_is_the_shipped_perceptron():
    assert pos_tagger().tag(EAGLE.split()) == ["DT", "NNP", "VBZ", "DT", "JJ", "NN", "."]
    assert pos_tagger().to_universal(["DT", "NNP", "VBZ"]) == ["DET", "NOUN", "VERB"]


def test_pos_exact_partial_universal_and_length_mismatch():
    assert pos_score(EAGLE, "DT NNP VBZ DT JJ NN .") == 100.0
    assert pos_score(EAGLE, "DT NNP VBZ DT JJ JJ .") == pytest.approx(100 * 6 / 7)
    assert pos_score(EAGLE, "DET NOUN VERB DET ADJ NOUN .") == 100.0
    # a generation longer than the target: extra words count as misses (7 right of 9)
    assert pos_score(EAGLE, "DT NNP VBZ DT JJ NN . NN NN") == pytest.approx(100 * 7 / 9)
    out = PosMatch().compute(predictions=[EAGLE, EAGLE], references=["DT NNP VBZ DT JJ NN .", "NN NN"])
    assert out["scores"] == [100.0, 0.0] and out["success"] == 50.0


def test_bracket_f1_closed_forms():
    gold = parse_bracketed(EAGLE_TREE)
    # brackets (EVALB: punctuation removed): S(0,5) NP(0,1) VP(2,5) NP(3,5)
    assert labelled_spans(gold) == {(0, 5, "S"): 1, (0, 1, "NP"): 1, (2, 5, "VP"): 1, (3, 5, "NP"): 1}
    assert bracket_f1(gold, gold) == 1.0
    # pred gets S, NP(0,1) and VP right, and says ADJP for the object: P = R = 3/4
    pred = parse_bracketed("(S (NP (DT The) (NNP Eagle)) (VP (VBZ is) (ADJP (DT a) (JJ cheap) (NN pub))) (. .))")
    assert bracket_f1(gold, pred) == pytest.approx(0.75)
    # pred with one extra bracket and all of gold: P = 4/5, R = 1, F1 = 8/9
    extra = parse_bracketed("(S (NP (DT The) (NNP Eagle)) (VP (VBZ is) (NP (DT a) (ADJP (JJ cheap) (NN pub)))) (. .))")
    assert bracket_f1(gold, extra) == pytest.approx(8 / 9)
    assert TreeF1(parser=FixedParser([EAGLE_TREE])).compute(predictions=[EAGLE], references=[EAGLE_TREE])[
        "success"] == 100.0


def test_evalb_conventions_function_tags_prt_and_traces():
    raw = Tree.fromstring("(S (NP-SBJ (-NONE- *)) (VP (VBD gave) (PRT (RP up)) (NP-TMP (NN today))) (. .))")
    cleaned = clean_ptb(raw)
    assert cleaned.leaves() == ["gave", "up", "today", "."]
    assert "NP-TMP" not in str(cleaned) and "-NONE-" not in str(cleaned)
    advp = parse_bracketed("(S (VP (VBD gave) (ADVP (RP up)) (NP (NN today))) (. .))")
    assert bracket_f1(cleaned, advp) == 1.0  # PRT and ADVP are one label


def test_span_indices_count_punctuation_and_are_inclusive():
    tree = parse_bracketed("(S (PP (IN In) (NP (NNP Soho))) (, ,) (NP (DT the) (NN pub)) (VP (VBZ is) (ADJP (JJ cheap))) (. .))")
    assert span_hit(tree, (0, 1, "PP")) == 100.0
    assert span_hit(tree, (3, 4, "NP")) == 100.0  # the comma is word 2
    assert span_hit(tree, (3, 4, "VP")) == 0.0
    out = SpanMatch(parser=FixedParser([EAGLE_TREE, EAGLE_TREE])).compute(
        predictions=[EAGLE, EAGLE], references=['[3, 5, "NP"]', '[2, 6, "VP"]'])
    assert out["scores"] == [100.0, 0.0]


def test_semantic_value_words_case_insensitive():
    assert semantic_score("The Eagle serves italian food .", "food : Italian") == 100.0
    assert semantic_score("Prices are in the £ 20 - 25 range .", "priceRange : £20-25") == 100.0
    assert semantic_score("The Eagle is a pub .", "near : Café Rouge") == 0.0
    assert semantic_score("A pub near Café Rouge .", "near : Café Rouge") == 100.0
    assert SemanticContent().compute(predictions=["a pub"], references=["eatType : pub"])["success"] == 100.0


def test_compose_needs_both_the_value_and_the_tags():
    target = '{"pos": "NNP VBZ JJ NN .", "semantic": "food : Italian"}'
    assert compose_score("Zizzi serves Italian food .", target) == 100.0
    assert compose_score("Zizzi serves French food .", target) == 0.0  # tags match, value missing
    assert compose_score("Italian food .", target) == pytest.approx(pos_score("Italian food .", "NNP VBZ JJ NN ."))


def test_length_within_two_tokens():
    out = LengthMatch().compute(predictions=["a b c d e f g h i j"] * 4, references=["10", "12", "13", "7"])
    assert out["scores"] == [100.0, 100.0, 0.0, 0.0]


@pytest.mark.parametrize("task,target,n_words,message", [
    ("tree", "(S (NP (DT The) (NN pub)", None, "unbalanced"),
    ("tree", "S NP The", None, "must start"),
    ("tree", "(S (NP ) (VP (VBZ is)))", None, "empty constituent"),
    ("pos", "DT NNP FOO .", None, "unknown POS tag 'FOO'"),
    ("pos", "", None, "empty POS target"),
    ("spans", "[3, 9, \"PP\"]", 5, "outside a sentence of 5 words"),
    ("spans", "[3, 1, \"PP\"]", None, "0 <= i <= j"),
    ("spans", "3 5 PP", None, "malformed span"),
    ("semantic", "cuisine : Italian", None, "unknown MR field 'cuisine'"),
    ("semantic", "food Italian", None, "malformed semantic"),
    ("length", "0", 40, "out of range"),
    ("length", "abc", 40, "not an integer"),
    ("compose", '{"pos": "DT NN"}', None, "malformed compose"),
    ("compose", '{"pos": "DT XX", "semantic": "food : Italian"}', None, "unknown POS tag 'XX'"),
    ("colour", "red", None, "unknown task"),
])
def test_bad_targets_fail_with_one_line(task, target, n_words, message):
    with pytest.raises(UserError, match=message) as e:
        validate_target(task, target, n_words)
    assert "\n" not in str(e.value)


def test_empty_generation_is_an_error():
    with pytest.raises(UserError, match="empty generation"):
        LengthMatch().compute(predictions=["  "], references=["10"])


def test_fluent_share_counts_sentences_within_the_references_90th_percentile():
    from diffusion_lm.eval.fluency import summarise, threshold

    refs = [float(i) for i in range(1, 11)]  # 90th percentile (linear interpolation): 9.1
    assert threshold(refs) == pytest.approx(9.1)
    out = summarise([2.0, 9.0, 9.1, 9.2, 50.0], refs)
    assert out == {"median_ppl": 9.1, "mean_ppl": 15.86, "fluent_share": 0.6}
    with pytest.raises(ValueError, match="no perplexities"):
        summarise([], refs)


def test_distinct_n_and_self_bleu_against_hand_counts():
    import math

    from diffusion_lm.eval.diversity import diversity, distinct_n, self_bleu

    texts = ["a b c d", "a b c e"]
    assert distinct_n(texts, 1) == pytest.approx(100 * 5 / 8)  # a b c d e over 8 words
    assert distinct_n(texts, 2) == pytest.approx(100 * 4 / 6)  # ab bc cd ce over 6 bigrams
    # each against the other: p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> 0.1 (method-1 smoothing), no brevity penalty
    bleu = math.exp(sum(map(math.log, (3 / 4, 2 / 3, 1 / 2, 0.1))) / 4)
    assert self_bleu(texts) == pytest.approx(100 * bleu)
    same = diversity(["the pub is cheap ."] * 5)  # one sentence repeated: no diversity at all
    assert same["self_bleu"] == pytest.approx(100.0) and same["distinct1"] == pytest.approx(100 * 5 / 25)
    with pytest.raises(ValueError, match="two sentences"):
        self_bleu(["a b"])
    with pytest.raises(ValueError, match="no sentence has 2 words"):
        distinct_n(["a", "b"], 2)
