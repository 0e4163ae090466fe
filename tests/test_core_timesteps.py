import pytest
import torch

from diffusion_lm.core.timesteps import TimestepSampler


def test_uniform_draws_cover_every_timestep_equally():
    torch.manual_seed(0)
    s = TimestepSampler(100, "uniform", buckets=10)
    t = s.sample(20000)
    assert t.min() >= 0 and t.max() <= 99
    counts = torch.bincount(s.bucket(t), minlength=10).float() / len(t)
    torch.testing.assert_close(counts, torch.full((10,), 0.1), atol=0.015, rtol=0)
    torch.testing.assert_close(s.probabilities(), torch.full((10,), 0.1))


def test_warped_density_is_the_slope_of_the_loss_mixed_with_uniform():
    s = TimestepSampler(40, "warped", buckets=4, uniform_mix=0.2, decay=0.0)
    assert torch.allclose(s.probabilities(), torch.full((4,), 0.25))  # nothing seen yet: uniform
    # losses 1, 3, 2 (not monotone: treated as 3), 4 -> rises 1, 2, 0, 1 of 4
    s.update(torch.tensor([5, 15, 25, 35]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
    expect = 0.8 * torch.tensor([1, 2, 0, 1]) / 4 + 0.2 * 0.25
    torch.testing.assert_close(s.probabilities(), expect)
    torch.manual_seed(0)
    t = s.sample(40000)
    freq = torch.bincount(s.bucket(t), minlength=4).float() / len(t)
    torch.testing.assert_close(freq, expect, atol=0.01, rtol=0)
    assert t.min() >= 0 and t.max() <= 39


def test_update_is_an_exponential_moving_average_per_bucket():
    s = TimestepSampler(10, "warped", buckets=2, decay=0.5)
    s.update(torch.tensor([0, 1, 9]), torch.tensor([2.0, 4.0, 10.0]))
    torch.testing.assert_close(s.loss, torch.tensor([3.0, 10.0]))  # first sight: the batch mean
    s.update(torch.tensor([3]), torch.tensor([5.0]))
    torch.testing.assert_close(s.loss, torch.tensor([4.0, 10.0]))


def test_state_round_trip_and_bad_arguments():
    a = TimestepSampler(50, "warped", buckets=5)
    a.update(torch.arange(50), torch.linspace(0, 1, 50))
    b = TimestepSampler(50, "warped", buckets=5)
    b.load_state(a.state())
    torch.testing.assert_close(a.probabilities(), b.probabilities())
    with pytest.raises(ValueError, match="buckets"):
        TimestepSampler(50, "warped", buckets=4).load_state(a.state())
    with pytest.raises(ValueError, match="unknown timestep sampling 'lognormal'"):
        TimestepSampler(50, "lognormal")
    with pytest.raises(ValueError, match="buckets must be"):
        TimestepSampler(5, "warped", buckets=6)



def test_keep_freed_memory_stops_page_faults_on_reallocation():
    import resource
    import sys

    from diffusion_lm.runtime import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("no glibc mallopt here")
    assert keep_freed_memory()  # idempotent
    torch.ones(2 << 20)  # 8 MB: above glibc's default mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(2 << 20)  # allocated, written, freed
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    assert faults < 200, f"{faults:.0f} page faults per 8 MB allocation (2048 if the memory went back)"
    assert sys.platform.startswith("linux")
