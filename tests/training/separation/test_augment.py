"""Recording conditions for separation training (rooms, noise, band limits) and pooled training sets."""

from __future__ import annotations

import numpy as np

from training.models import clip_spec_for
from training.separation.mixing import AugConfig, MixConfig, augment
from training.separation.train import SourceSet, make_batch

SR = 8000


def _voice(seed: int, n: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.2 * np.sin(2 * np.pi * rng.uniform(120, 240) * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_nothing_drawn_means_nothing_changed() -> None:
    on, off = _voice(0), _voice(1)
    a, b = augment(on, off, AugConfig(), SR, np.random.default_rng(0))
    assert np.array_equal(a, on) and np.array_equal(b, off)


def test_room_spreads_each_voice_in_time_and_noise_counts_off_screen() -> None:
    on, off = _voice(0), _voice(1)
    a, b = augment(on, off, AugConfig(reverb=1.0, rt60_s=(0.5, 0.5)), SR, np.random.default_rng(1))
    gaps = np.abs(on) < 1e-9  # the dry voice's pauses fill with the room's tail
    assert np.abs(a[gaps]).mean() > 10 * np.abs(on[gaps]).mean() + 1e-4
    assert not np.allclose(b, off)
    c, d = augment(on, off, AugConfig(noise=1.0, snr_db=(10.0, 10.0)), SR, np.random.default_rng(2))
    assert np.array_equal(c, on)  # the on-screen voice stays clean
    noise = d - off
    ratio_db = 10 * np.log10(np.mean((on + off).astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(ratio_db - 10.0) < 0.5


def test_band_limit_applies_to_both_voices_alike() -> None:
    rng = np.random.default_rng(3)
    on, off = rng.normal(size=SR).astype(np.float32), rng.normal(size=SR).astype(np.float32)
    aug = AugConfig(band=1.0, low_hz=(300.0, 300.0), high_hz=(3000.0, 3000.0))
    a, b = augment(on, off, aug, SR, np.random.default_rng(4))
    for x, y in ((on, a), (off, b)):
        assert _band_energy(y, 0, 100) < 0.01 * _band_energy(x, 0, 100)
        assert _band_energy(y, 3600, 4000) < 0.01 * _band_energy(x, 3600, 4000)
        assert _band_energy(y, 800, 2000) > 0.7 * _band_energy(x, 800, 2000)


def test_batches_with_and_without_conditions_draw_the_same_mixtures_and_stay_sums() -> None:
    clip = clip_spec_for("separation_tiny", 0.5, stft=True)
    n = 3 * clip.audio_samples
    frames = [np.zeros((3 * clip.frames, 40, 40, 3), np.uint8) + i for i in range(4)]
    src = SourceSet(frames, [_voice(i, n) for i in range(4)], [_voice(10 + i, n) for i in range(4)])
    aug = AugConfig(reverb=0.5, noise=0.5, band=0.5)
    v0, m0, r0 = make_batch(src, clip, MixConfig(), np.random.default_rng(7), 6)
    v1, m1, r1 = make_batch(src, clip, MixConfig(), np.random.default_rng(7), 6, aug=aug)
    assert np.array_equal(v0.numpy(), v1.numpy())  # the same clips and windows
    assert not np.allclose(r0.numpy(), r1.numpy())
    np.testing.assert_allclose(m1.numpy(), r1.numpy().sum(1), atol=1e-6)  # mixture == on + off
    # a rank's share of the batch is exactly those items of the whole batch
    _, m2, r2 = make_batch(src, clip, MixConfig(), np.random.default_rng(7), 6, keep=[1, 4], aug=aug)
    np.testing.assert_array_equal(r2.numpy(), r1.numpy()[[1, 4]])


def test_talking_heads_take_the_off_screen_voice_from_another_speaker() -> None:
    """Mix-and-separate: without clean tracks a clip's own audio is on screen and the other voice always comes
    from a clip of another speaker."""
    clip = clip_spec_for("separation_tiny", 0.5, stft=True)
    n = 2 * clip.audio_samples
    t = np.arange(n) / SR
    freqs = [200.0, 400.0, 600.0, 800.0, 1000.0, 1200.0]  # each clip's audio is a tone that names it
    speakers = ["a", "a", "a", "b", "b", "c"]
    frames = [np.zeros((2 * clip.frames, 40, 40, 3), np.uint8) for _ in freqs]
    src = SourceSet(frames, [(0.1 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in freqs], [None] * 6,
                    speakers)
    _, mix, refs = make_batch(src, clip, MixConfig(own_off=0.9), np.random.default_rng(0), 64)

    def clip_of(x: np.ndarray) -> int:
        f = np.fft.rfftfreq(len(x), 1 / SR)[int(np.argmax(np.abs(np.fft.rfft(x))))]
        return int(np.argmin(np.abs(np.array(freqs) - f)))

    pairs = [(clip_of(r[0]), clip_of(r[1])) for r in refs.numpy()]
    assert all(speakers[i] != speakers[j] for i, j in pairs)  # own_off=0.9 asked for, but there is no own track
    assert {speakers[i] for i, _ in pairs} == {"a", "b", "c"}
    np.testing.assert_allclose(mix.numpy(), refs.numpy().sum(1), atol=1e-6)
