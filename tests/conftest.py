import pytest
import torch


def kill_at(monkeypatch, k):
    """Simulate a kill during step k (the loop asks for step k's lr and gets KeyboardInterrupt); returns a
    function that undoes it."""
    from diffusion_lm import training

    real = training.lr_at

    def lr_at(step, *a, **kw):
        if step == k:
            raise KeyboardInterrupt
        return real(step, *a, **kw)

    monkeypatch.setattr(training, "lr_at", lr_at)
    return lambda: monkeypatch.setattr(training, "lr_at", real)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A Diffusion-LM trained for 10 steps on the tiny preset (shared by the control tests)."""
    from diffusion_lm.cli.main import run

    out = tmp_path_factory.mktemp("tiny")
    assert run(["train", "preset=tiny", "optim.steps=10", "run.final_samples=0", f"run.out_dir={out}"]) == 0
    return out
