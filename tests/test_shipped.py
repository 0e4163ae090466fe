"""The models and targets shipped in the package load offline and behave."""
import json

import torch

from diffusion_lm.assets import resolve_asset, resolve_checkpoint
from diffusion_lm.eval.oracles import ConstituencyParser
from diffusion_lm.eval.targets import load_targets
from diffusion_lm.tasks.trees import labelled_spans
from diffusion_lm.lm import ARLM
from diffusion_lm.text import SampleConfig, from_pretrained, generate


def test_shipped_targets_are_valid_and_complete():
    targets = load_targets(resolve_asset("shipped", "targets"))  # validates every target against its reference
    assert {t: len(r) for t, r in targets.items()} == {t: 200 for t in ("semantic", "pos", "tree", "spans", "length", "compose")}


def test_shipped_teacher_prefers_real_sentences():
    lm = ARLM.load(resolve_asset("shipped", "teacher"))
    real = "The Eagle is a cheap coffee shop near Burger King ."
    ppl_real, ppl_scrambled = lm.perplexity([real, " ".join(sorted(real.split()))])
    assert ppl_real < 20 < ppl_scrambled


def test_shipped_parser_finds_the_obvious_constituents():
    tree = ConstituencyParser("shipped").parse([["The", "Eagle", "is", "a", "cheap", "pub", "."]])[0]
    spans = labelled_spans(tree, evalb=False)
    assert (0, 1, "NP") in spans and (3, 5, "NP") in spans


def test_shipped_cpu_preset_model_matches_the_preset_and_samples_words():
    import json

    from diffusion_lm.config import build, compose

    cfg = compose("train", ["preset=cpu"])
    preset = {k: v for k, v in cfg.model.items() if k != "_target_"}
    optim_steps = cfg.optim.steps
    folder = resolve_checkpoint("shipped:diffusion-lm-cpu")  # the cpu preset's model, where the default began
    model, tok, diffusion = from_pretrained(folder)
    assert (model.config.hidden, model.config.layers, model.config.emb_dim) == (preset["hidden"], preset["layers"], preset["emb_dim"])
    trained = json.loads(open(f"{folder}/manifest.json").read())["train_config"]
    assert {k: trained["model"][k] for k in preset} == dict(preset) and trained["optim"]["steps"] == optim_steps
    assert trained["optim"].get("t_sampling", "uniform") == cfg.optim.t_sampling
    # the process beside the model is the preset's (the manifest's train_config predates diffusion.json)
    assert diffusion.config == build(cfg, "diffusion")
    assert (trained["model"]["schedule"], trained["model"]["diffusion_steps"]) == (cfg.diffusion.schedule,
                                                                                  cfg.diffusion.steps)
    out = generate(model, tok, diffusion, 2, SampleConfig(steps=10), seed=0, progress=False)
    assert len(out) == 2 and all(tok.word_id(w) is not None for s in out for w in s.split())


def test_default_model_is_the_cpu_preset_model_continued_with_its_embeddings_frozen():
    from safetensors.torch import load_file

    default, start = resolve_checkpoint("shipped"), resolve_checkpoint("shipped:diffusion-lm-cpu")
    assert default != start
    a, b = load_file(f"{default}/model.safetensors"), load_file(f"{start}/model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert torch.equal(a["embedding.weight"], b["embedding.weight"])  # the words the classifiers read
    assert not torch.equal(a["pos_emb"], b["pos_emb"])  # and the rest trained on
    manifest = json.loads(open(f"{default}/manifest.json").read())
    optim = manifest["train_config"]["optim"]
    assert optim["freeze_embeddings"] is True and optim["init_from"] == "shipped:diffusion-lm-cpu"
    started = json.loads(open(f"{start}/manifest.json").read())["train_config"]["optim"]["steps"]
    assert manifest["steps_total"] == started + optim["steps"]


def test_shipped_classifiers_fit_the_shipped_model_and_steer_it(tmp_path):
    import json

    from diffusion_lm.cli.main import run

    model, _, _ = from_pretrained(resolve_checkpoint("shipped"))
    from classifiers.io import load_classifier

    for kind in ("pos", "tree", "semantic"):
        load_classifier(resolve_asset("shipped", "classifier", kind), kind=kind).space.check(model, kind)
    out = tmp_path / "pos.jsonl"
    assert run(["generate", "task=pos", "target=DT NNP VBZ DT JJ NN .", "n=2", "sample.steps=10",
                f"output={out}"]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert [len(r["text"].split()) for r in rows] == [7, 7]


def test_shipped_baselines_steer_the_base_lm():
    import torch

    from diffusion_lm.baselines.fudge import FudgeConfig, fudge_generate, load_discriminator
    from diffusion_lm.baselines.labels import states, value_key

    base = ARLM.load(resolve_asset("shipped", "model", "base-lm"))
    teacher = ARLM.load(resolve_asset("shipped", "teacher"))
    assert base.model.config.n_embd != teacher.model.config.n_embd  # the judge is not the contestant
    disc = load_discriminator(resolve_asset("shipped", "model", "fudge-discriminator"), "fudge")
    pplm = load_discriminator(resolve_asset("shipped", "model", "pplm-discriminator"), "pplm")
    assert disc.gpt2["vocab_size"] == len(base.tokenizer) and pplm.hidden == base.model.config.n_embd
    target = disc.target("semantic", "food : Italian")
    out = fudge_generate(base.model, base.tokenizer, disc, [target] * 4, FudgeConfig(strength=3.0, max_words=30),
                         torch.Generator().manual_seed(0))
    assert sum(states(s.split(), value_key("Italian")) for s in out) >= 3


# ---- the image side -----------------------------------------------------------------------------
def test_shipped_image_models_fit_together_and_stay_under_12_mb():
    from diffusion_lm.assets import assets_dir

    models = assets_dir() / "models"  # every CLIP pair counts: the conditioning ones and the rerank judge
    names = ("image-autoencoder", "image-unet-latent", "image-unet-pixel", *(p.name for p in models.glob("image-clip*")))
    sizes = {n: sum(f.stat().st_size for f in (models / n).iterdir()) for n in names}
    assert sum(sizes.values()) <= 12e6, sizes
    from diffusion_lm.pipelines.image import ImagePipeline

    latent = ImagePipeline.from_pretrained()  # refuses parts the UNet was not trained with (fingerprints)
    pixel = ImagePipeline.from_pretrained("shipped:image-unet-pixel")
    assert latent.space == "latent" and pixel.space == "pixel" and pixel.autoencoder is None
    for name in ("image-unet-latent", "image-unet-pixel"):
        manifest = json.loads((assets_dir() / "models" / name / "manifest.json").read_text())
        assert manifest["command"].startswith("diffusion-lm train-unet") and manifest["commit"]


def test_shipped_latent_unet_draws_what_it_is_asked():
    from diffusion_lm.image import oracle
    from diffusion_lm.pipelines.image import ImagePipeline

    torch.set_num_threads(2)
    pipe = ImagePipeline.from_pretrained()
    captions = ["a small red circle at the top left", "a large blue square at the bottom right",
                "a small green triangle at the centre", "a large yellow diamond at the top"]
    images = pipe(captions, 2, guidance=4, steps=20, seed=0)
    assert oracle.accuracy(images, [c for c in captions for _ in range(2)])["caption"] >= 0.5
