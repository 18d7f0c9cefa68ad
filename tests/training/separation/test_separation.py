"""Separation U-Net: STFT/iSTFT exactness, shapes and gradients of every tiny variant, the PIT loss, a loop that
learns, ONNX parity on waveforms, and whole tracks for a video longer than one window."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from model_store.dsp import overlap_add
from model_store.manifest import ClipSpec
from model_store.media import load_windows
from model_store.registry import ModelStore
from model_store.runtime import load_model
from training.data.synthav_speech import SpeechConfig, write_speech_dataset
from training.models import clip_spec_for, create_model
from training.models.separation import InverseStft, Stft
from training.separation.train import LossConfig, pit_order, separation_loss, si_sdr
from training.utils import save_checkpoint

TINY = ("separation_tiny", "separation_tiny_still", "separation_tiny_audio_only", "separation_tiny_assign")


def _inputs(model, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = model.cfg
    return (torch.randn(batch, 3, c.frames, c.size, c.size, generator=g),
            torch.randn(batch, c.audio_samples, generator=g) * 0.1)


def test_stft_matches_torch_and_inverse_is_exact() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8000)
    stft, istft = Stft(256, 64), InverseStft(256, 64, 8000)
    re, im = stft(x)
    ref = torch.stft(x, 256, 64, window=torch.hann_window(256), center=True, pad_mode="constant",
                     return_complex=True)
    assert re.shape == ref.real.shape == (3, 129, 126)
    torch.testing.assert_close(re, ref.real, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(im, ref.imag, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(istft(re, im), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_shapes_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    video, audio = _inputs(model, batch=3)
    on, off = model(video, audio)
    assert on.shape == off.shape == audio.shape
    masks, re, im = model.forward_masks(video, audio)
    assert masks.shape == (3, 2, *re.shape[1:]) and masks.min() >= 0 and masks.max() <= 1
    (on.square().mean() + off.abs().mean()).backward()
    for pname, p in model.named_parameters():
        if pname.startswith("backbone.head."):  # the sync logit's head: unused here, kept so checkpoints load
            continue
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert (model.backbone is None) == ("audio_only" in name)


def test_still_frame_ignores_motion_and_moving_model_does_not() -> None:
    torch.manual_seed(0)
    still, moving = create_model("separation_tiny_still").eval(), create_model("separation_tiny").eval()
    moving.load_state_dict(still.state_dict())
    video, audio = _inputs(still, batch=1)
    shuffled = video.clone()
    mid = video.shape[2] // 2
    others = [i for i in range(video.shape[2]) if i != mid]
    shuffled[:, :, others] = video[:, :, others[::-1]]  # every frame but the middle one changes place
    with torch.no_grad():
        torch.testing.assert_close(still(video, audio)[0], still(shuffled, audio)[0])
        for a, b in zip(still.av_features(video, audio), still.av_features(shuffled, audio), strict=True):
            torch.testing.assert_close(a, b)
        moved = [(a - b).abs().max().item() for a, b in
                 zip(moving.av_features(video, audio), moving.av_features(shuffled, audio), strict=True)]
        assert min(moved) > 1e-4


def test_pit_loss_ignores_output_order() -> None:
    torch.manual_seed(0)
    model = create_model("separation_tiny_audio_only").eval()
    video, audio = _inputs(model)
    refs = torch.stack([audio * 0.3, audio * 0.7], dim=1)
    cfg = LossConfig()
    with torch.no_grad():
        a, _ = separation_loss(model, video, audio, refs, cfg, pit=True)
        b, _ = separation_loss(model, video, audio, refs.flip(1), cfg, pit=True)
        c, _ = separation_loss(model, video, audio, refs.flip(1), cfg, pit=False)
        d, _ = separation_loss(model, video, audio, refs, cfg, pit=False)
    torch.testing.assert_close(a, b)
    assert a <= min(c, d) + 1e-6


def test_assign_puts_the_output_the_sync_head_prefers_on_screen() -> None:
    torch.manual_seed(0)
    model = create_model("separation_tiny_assign").eval()
    video, audio = _inputs(model, batch=6, seed=3)
    first, second = audio, torch.roll(audio, 1, dims=0)  # each video gets its own track and another one
    with torch.no_grad():
        model.backbone.head.bias.fill_(0.0)
        on, off = model.assign(video, first, second)
        s1, s2 = model.sync_logit(video, first), model.sync_logit(video, second)
        on_rev, off_rev = model.assign(video, second, first)
    prefer_second = s2 > s1
    assert 0 < int(prefer_second.sum()) < 6, "random weights should prefer each input somewhere"
    torch.testing.assert_close(on, torch.where(prefer_second[:, None], second, first))
    torch.testing.assert_close(off, torch.where(prefer_second[:, None], first, second))
    torch.testing.assert_close(on_rev, on)  # the input order does not matter
    torch.testing.assert_close(off_rev, off)
    # and the forward pass orders the U-Net's outputs the same way
    with torch.no_grad():
        masks, re, im = model.forward_masks(video, audio)
        raw = [model.istft(masks[:, k] * re, masks[:, k] * im) for k in (0, 1)]
        expected = model.assign(video, *raw)
        got = model(video, audio)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_pit_order_and_the_sync_losses_train_the_head() -> None:
    torch.manual_seed(0)
    model = create_model("separation_tiny_assign")
    video, audio = _inputs(model, batch=3)
    refs = torch.stack([audio * 0.3, torch.roll(audio, 1, dims=0) * 0.7], dim=1)
    noisy = refs + 0.01 * torch.randn_like(refs)
    torch.testing.assert_close(pit_order(noisy.flip(1), refs), noisy)
    torch.testing.assert_close(pit_order(noisy, refs), noisy)
    base, _ = separation_loss(model, video, audio, refs, LossConfig(), pit=True)
    for cfg in (LossConfig(sync=1.0), LossConfig(sync_est=1.0)):
        model.zero_grad()
        loss, _ = separation_loss(model, video, audio, refs, cfg, pit=True)
        assert loss > base  # a positive BCE term is added
        loss.backward()
        assert model.backbone.head.weight.grad.abs().sum() > 0


def test_si_sdr_is_scale_invariant_and_zero_mean() -> None:
    torch.manual_seed(0)
    ref = torch.randn(2, 4000)
    est = ref + 0.1 * torch.randn(2, 4000)
    torch.testing.assert_close(si_sdr(est, ref), si_sdr(3.0 * est + 0.5, ref), atol=1e-3, rtol=0)
    assert (si_sdr(est, ref) > 15).all() and (si_sdr(ref, ref) > 60).all()


def test_a_few_steps_learn_to_separate_two_tones() -> None:
    """On one fixed batch (a low and a high tone), the loss falls and the on-screen SI-SDR rises."""
    torch.manual_seed(0)
    model = create_model("separation_tiny_audio_only")  # the loop is what is tested; no video keeps it fast
    video, _ = _inputs(model, batch=4)
    t = torch.arange(model.cfg.audio_samples) / model.cfg.sample_rate
    f = torch.tensor([[300.0], [330.0], [360.0], [390.0]])
    low, high = 0.3 * torch.sin(2 * torch.pi * f * t), 0.3 * torch.sin(2 * torch.pi * 5 * f * t)
    refs = torch.stack([low, high], dim=1)
    mix = low + high
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, sdrs = [], []
    for _ in range(25):
        loss, est = separation_loss(model, video, mix, refs, LossConfig(), pit=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        sdrs.append(si_sdr(est[:, 0], low).mean().item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert sdrs[-1] > sdrs[0] + 3.0


def test_a_wider_unet_warm_started_from_a_narrower_one_computes_the_same(tmp_path) -> None:
    """init_unet widens a trained U-Net into one with more channels per level: the outputs are the checkpoint's
    (BatchNorm statistics included), and the weights that join the new channels to the old get gradients."""
    from training.models.separation import AVUNetSeparator
    from training.separation.train import init_backbone, init_unet

    torch.manual_seed(3)
    old = create_model("separation_tiny_assign")
    old.train()
    with torch.no_grad():
        for seed in range(3):  # BatchNorm statistics away from their initial values
            old(*_inputs(old, batch=4, seed=seed))
    save_checkpoint(tmp_path / "old.pt", {"model_config": dataclasses.asdict(old.cfg), "state_dict": old.state_dict()})
    new = AVUNetSeparator(dataclasses.replace(old.cfg, widths=tuple(2 * w for w in old.cfg.widths)))
    info = init_unet(new, str(tmp_path / "old.pt"))
    assert info["wider"] > 0 and info["loaded"] == 5  # in_norm alone keeps its shape
    init_backbone(new, str(tmp_path / "old.pt"))
    old.eval(), new.eval()
    video, audio = _inputs(old, batch=3, seed=7)
    with torch.no_grad():
        for a, b in zip(old(video, audio), new(video, audio), strict=True):
            assert (a - b).abs().max() < 1e-5
    new.train()
    on, off = new(video, audio)
    (on.square().mean() + off.abs().mean()).backward()
    joined = new.decoder[0].conv[0].weight  # (out, in = [upsampled, skip]): old outputs from new inputs start at 0
    w_old = old.cfg.widths[-2]
    assert not joined[:w_old, w_old : 2 * w_old].any() and joined.grad[:w_old, w_old : 2 * w_old].abs().sum() > 0
    with pytest.raises(ValueError, match="cannot widen"):
        old.channel_maps(new.cfg.widths)


def test_an_audio_only_unet_warm_started_from_an_audio_visual_one_keeps_its_audio_weights(tmp_path) -> None:
    """init_unet into an audio-only model (the PIT ablation of a stage) from an audio-visual checkpoint: every U-Net
    tensor is the checkpoint's, the encoder's first layer without its audio-visual input channels; with those
    channels' weights at zero in the checkpoint, both compute the same masks."""
    from training.separation.train import init_unet

    torch.manual_seed(4)
    old = create_model("separation_tiny_assign")
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    new = create_model("separation_tiny_audio_only")
    own = new.state_dict()
    sliced = [k for k, v in old.state_dict().items()
              if k in own and v.ndim == 4 and v.shape[0] == own[k].shape[0] and v.shape[1] > own[k].shape[1]]
    assert sliced
    with torch.no_grad():
        for name in sliced:
            old.state_dict()[name][:, own[name].shape[1] :] = 0.0  # its audio-visual input weights off
    save_checkpoint(tmp_path / "old.pt", {"model_config": dataclasses.asdict(old.cfg), "state_dict": old.state_dict()})
    info = init_unet(new, str(tmp_path / "old.pt"))
    assert info["narrowed"] == len(sliced) and info["widened"] == 0 and info["wider"] == 0
    old_state = old.state_dict()
    for name, value in new.state_dict().items():
        assert torch.equal(value, old_state[name][:, : value.shape[1]] if name in sliced else old_state[name]), name
    old.eval(), new.eval()
    video, audio = _inputs(old, batch=2, seed=5)
    with torch.no_grad():
        masks_old, masks_new = old.forward_masks(video, audio)[0], new.forward_masks(video, audio)[0]
    assert (masks_old - masks_new).abs().max() < 1e-5


@pytest.fixture(scope="module", params=["separation_tiny", "separation_tiny_assign"])
def exported(request, tmp_path_factory) -> tuple[ModelStore, torch.nn.Module]:
    """A tiny model with random weights (BN statistics nudged), exported and published to a temp store; the
    ``assign`` variant has the sync head's ordering inside the graph."""
    from training.publish import export_checkpoint

    name = request.param
    torch.manual_seed(1)
    model = create_model(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*_inputs(model, batch=4, seed=5))
    model.eval()
    d = tmp_path_factory.mktemp("sepexport")
    clip = clip_spec_for(name, hop_s=0.5, stft=True)
    save_checkpoint(d / "best.pt", {
        "kind": "separation", "model": name, "model_config": dataclasses.asdict(model.cfg),
        "config": {}, "clip": clip.model_dump(), "pit": False, "state_dict": model.state_dict(), "metrics": {},
    })
    store = ModelStore(d / "store")
    export_checkpoint(d / "best.pt", store)
    return store, model


def test_exported_graph_matches_pytorch_on_waveforms(exported) -> None:
    store, model = exported
    manifest = store.manifest("separation")
    assert [o.name for o in manifest.outputs] == ["on_screen", "off_screen"]
    assert manifest.clip.stft is not None and manifest.clip.stft.n_fft == 128
    assert max(manifest.training["export_parity_max_abs"].values()) < 1e-4
    loaded = load_model(store, "separation", providers=("CPUExecutionProvider",))
    video, audio = _inputs(model, batch=5, seed=9)  # another batch size than the exported one
    got = loaded.run({"video": video.numpy(), "audio": audio.numpy()})
    with torch.no_grad():
        on, off = model(video, audio)
    np.testing.assert_allclose(got["on_screen"], on.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["off_screen"], off.numpy(), atol=1e-5)
    if model.cfg.assign:  # the graph orders the outputs per sample, as PyTorch does
        with torch.no_grad():
            masks, re, im = model.forward_masks(video, audio)
            first = model.istft(masks[:, 0] * re, masks[:, 0] * im)
        swapped = ~np.isclose(got["on_screen"], first.numpy(), atol=1e-5).all(axis=1)
        assert 0 < swapped.sum() < len(swapped), "random weights should swap some samples and not others"


def test_whole_track_for_a_video_longer_than_one_window(exported, tmp_path) -> None:
    from training.separation.score import read_variants, score_separation, separate_file

    store, _ = exported
    loaded = load_model(store, "separation", providers=("CPUExecutionProvider",))
    spec: ClipSpec = loaded.manifest.clip
    root = tmp_path / "speech"
    write_speech_dataset(root, n=2, seed=3, config=SpeechConfig(width=64, height=64, fps=16.0, duration_s=3.3))
    video = root / "clips" / "000000.mp4"
    mix, on, off = separate_file(loaded, video, batch=2)
    windows = load_windows(video, spec)
    assert len(windows) > 3 and spec.window_s < 1.1
    n = round(windows.duration_s * spec.sample_rate)
    assert len(mix) == len(on) == len(off) == n
    assert abs(windows.duration_s - 3.3) < 0.07
    # overlap-add of windows cut from one signal gives that signal back exactly: no seams
    np.testing.assert_allclose(overlap_add(windows.audio, windows.starts_s, spec, windows.duration_s),
                               np.pad(windows.audio[0], (0, n))[:n] if len(windows) == 1 else mix, atol=0)
    decoded = np.concatenate([windows.audio[0], np.zeros(n)])[:n]
    hop = int(round(windows.starts_s[1] * spec.sample_rate))
    np.testing.assert_allclose(mix[:hop], decoded[:hop], atol=1e-6)
    result = score_separation(loaded, [r for r in _records(root)], read_variants(root), workers=1)
    assert result["n"] == 2 and np.isfinite([result[k] for k in ("si_sdri_on", "sdr_on", "sdr_off")]).all()
    assert set(result["by_variant"]) == {"plain", "same_pitch"}
    json.dumps(result)


def _records(root):
    from training.data.datasets import read_records

    return read_records(root)


def test_scores_per_clip_shares_and_several_named_sets(exported, tmp_path) -> None:
    """The scorer reports the on/off order's accuracy and the share of clips that beat the mixture on both tracks;
    the publish-time scorer takes several sets (``SPEC|NAME=SPEC``), the later ones' metrics prefixed."""
    from training.separation.export import score_separation_candidate
    from training.separation.score import read_variants, score_separation

    store, _ = exported
    loaded = load_model(store, "separation", providers=("CPUExecutionProvider",))
    root = tmp_path / "speech"
    write_speech_dataset(root, n=3, seed=4, config=SpeechConfig(width=64, height=64, fps=16.0, duration_s=2.0))
    result = score_separation(loaded, _records(root), read_variants(root), workers=1)
    for key in ("assign_acc", "beats_mix_both"):
        assert result[key] in {0.0, 1 / 3, 2 / 3, 1.0}
        assert all(key in v for v in result["by_variant"].values())
    manifest, path = store.load("separation")
    fields = manifest.model_dump(exclude={"version", "sha256"})
    metrics, described = score_separation_candidate(path, fields, f"{root}|again={root}", "unused")
    assert metrics["si_sdri_on"] == pytest.approx(result["si_sdri_on"])
    assert metrics["again_si_sdri_on"] == pytest.approx(metrics["si_sdri_on"])
    assert metrics["again_plain_si_sdri_off"] == pytest.approx(metrics["plain_si_sdri_off"])
    assert described.count("3 clips") == 2 and "again_*" in described
