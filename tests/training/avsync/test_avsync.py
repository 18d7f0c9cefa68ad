"""The avsync network: shapes, the CAM/logit identity, gradients, ONNX parity of both outputs, the pretext sampler,
the pretrained backbone in train-action, and a pretext run that learns above chance in seconds."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from model_store.manifest import ClipSpec
from model_store.runtime import create_session
from training.avsync.pairs import PAPER_SHIFT, Pair, draw_pair, heldout_pairs, pair_batch
from training.avsync.train import PretrainConfig, PretrainData, PretrainOptim, pretrain
from training.data.datasets import ClipData
from training.export import export_onnx
from training.models import create_model, model_config


def _inputs(name: str, batch: int = 2, seed: int = 0, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model_config(name, **overrides)
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, cfg.frames, cfg.size, cfg.size, generator=gen),
            0.1 * torch.randn(batch, cfg.audio_samples, generator=gen))


def test_small_config_shapes_and_cam_is_the_logit():
    torch.manual_seed(0)
    model = create_model("avsync_small").eval()
    video, audio = _inputs("avsync_small")
    with torch.inference_mode():
        feats = model.forward_features(video, audio)
        logit, cam = model(video, audio)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 12, 16, 16), (2, 32, 6, 8, 8), (2, 48, 6, 8, 8)]
    assert logit.shape == (2,) and cam.shape == (2, 6, 8, 8)
    torch.testing.assert_close(logit, cam.mean(dim=(1, 2, 3)))
    assert model.cfg.audio_samples == 24000 and model.cfg.feature_dim == 48


def test_local_config_keeps_the_map_at_stride_4_and_lse_pools_it():
    torch.manual_seed(0)
    model = create_model("avsync_local").eval()
    video, audio = _inputs("avsync_local")
    with torch.inference_mode():
        logit, cam = model(video, audio)
    assert cam.shape == (2, 6, 16, 16)
    torch.testing.assert_close(logit, cam.mean(dim=(1, 2, 3)))
    # no spatial mixing after fusion: a change in one corner of the frames leaves the far side of the map alone
    moved = video.clone()
    moved[..., :8, :8] += 1.0
    with torch.inference_mode():
        _, cam2 = model(moved, audio)
    assert (cam2 - cam)[..., :2, :2].abs().max() > 1e-3
    torch.testing.assert_close(cam2[..., 8:, 8:], cam[..., 8:, 8:])
    lse = create_model("avsync_local_lse").eval()
    lse.load_state_dict(model.state_dict())
    with torch.inference_mode():
        logit_lse, cam_lse = lse(video, audio)
    torch.testing.assert_close(cam_lse, cam)
    torch.testing.assert_close(logit_lse, torch.logsumexp(cam.flatten(1), 1) - math.log(cam[0].numel()))
    assert (logit_lse >= logit - 1e-6).all()  # a smooth max is at least the mean
    with pytest.raises(ValueError, match="cam_pool"):
        create_model("avsync_tiny", cam_pool="max")


def test_owens2018_has_the_papers_sizes():
    cfg = model_config("owens2018")
    assert (cfg.fps, cfg.frames, cfg.size, cfg.sample_rate) == (29.97, 125, 224, 21000)
    assert abs(cfg.frames / cfg.fps - 4.2) < 0.05 and cfg.audio_samples == round(125 / 29.97 * 21000)
    with torch.device("meta"):  # shapes at full size without the compute
        model = create_model("owens2018")
        video = torch.empty(1, 3, cfg.frames, cfg.size, cfg.size)
        feats = model.forward_features(video, torch.empty(1, cfg.audio_samples))
        logit, cam = model.forward_head(feats[-1])
    assert feats[0].shape == (1, 128, 32, 28, 28)  # fused at 32 time steps, as in the paper
    assert logit.shape == (1,) and cam.shape == (1, 8, 7, 7)
    # and it really runs (a short, small input through the same fully convolutional layers)
    small = create_model("owens2018", frames=16, size=64).eval()
    with torch.inference_mode():
        logit, cam = small(*_inputs("owens2018", 1, frames=16, size=64))
    assert torch.isfinite(logit).all() and cam.shape[0] == 1


@pytest.mark.parametrize("name", ["avsync_tiny", "avsync_action_tiny"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name)
    out = model(*_inputs(name))
    loss = out[0].sum() + out[1].square().mean() if isinstance(out, tuple) else out.logsumexp(1).sum()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("overrides", [{}, {"cam_pool": "lse", "fusion_spatial_kernel": 1}])
def test_onnx_parity_of_both_outputs_at_another_batch(tmp_path, overrides):
    torch.manual_seed(0)
    model = create_model("avsync_tiny", **overrides).eval()
    path = tmp_path / "m.onnx"
    video, audio = _inputs("avsync_tiny", 2)
    diffs = export_onnx(model, {"video": video, "audio": audio}, ["sync_logit", "cam"], path, check_batch=3)
    assert set(diffs) == {"sync_logit", "cam"} and max(diffs.values()) < 1e-4
    session = create_session(path, providers=("CPUExecutionProvider",))
    video, audio = _inputs("avsync_tiny", 5, seed=1)
    logit, cam = session.run(["sync_logit", "cam"], {"video": video.numpy(), "audio": audio.numpy()})
    with torch.inference_mode():
        ref_logit, ref_cam = model(video, audio)
    np.testing.assert_allclose(logit, ref_logit.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(cam, ref_cam.numpy(), atol=1e-4, rtol=1e-3)


def test_action_head_loads_a_pretrained_backbone():
    sync = create_model("avsync_tiny")
    action = create_model("avsync_action_tiny", num_classes=5)
    action.load_backbone(sync.state_dict())
    for name, tensor in action.backbone.state_dict().items():
        torch.testing.assert_close(tensor, sync.state_dict()[name])
    assert action(*_inputs("avsync_action_tiny", 3)).shape == (3, 5)
    with pytest.raises(ValueError, match="not an AVSyncNet"):
        create_model("avsync_action_small").load_backbone(sync.state_dict())


# ------------------------------------------------------------------------------------------ pretext data

CLIP = ClipSpec(fps=8, frames=8, height=8, width=8, sample_rate=800, audio_samples=800)


def _ramp_clip(duration_s: float = 4.0) -> ClipData:
    n = round(duration_s * CLIP.fps)
    frames = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 8, 8, 3)).copy()
    audio = (np.arange(round(duration_s * CLIP.sample_rate)) / CLIP.sample_rate).astype(np.float32)
    return ClipData(frames, audio, duration_s, -1)


def test_pairs_stay_inside_the_clip_with_the_configured_shift():
    rng = np.random.default_rng(0)
    shifts = (0.5, 1.5)
    seen = []
    for _ in range(500):
        p = draw_pair(rng, 0, 4.0, CLIP, shifts)
        shift = abs(p.audio_s - p.video_s)
        assert 0.5 - 1e-9 <= shift <= 1.5 + 1e-9
        for start in (p.video_s, p.audio_s):
            assert 0 <= start <= 4.0 - CLIP.window_s + 1e-9
            assert math.isclose(start * CLIP.fps, round(start * CLIP.fps), abs_tol=1e-6)  # on the frame grid
        seen.append(p.audio_s > p.video_s)
    assert 0.3 < np.mean(seen) < 0.7  # audio shifted both ways
    assert draw_pair(rng, 0, 1.2, CLIP, shifts) is None  # too short for any shift


def test_pair_batch_is_balanced_and_shifts_only_the_negative_audio():
    clips = [_ramp_clip()]
    pairs = heldout_pairs(clips, CLIP, (0.5, 1.5))
    assert heldout_pairs(clips, CLIP, (0.5, 1.5)) == pairs  # fixed
    video, audio, label = pair_batch(clips, CLIP, pairs)
    p = pairs[0]
    assert video.shape == (1, 3, 8, 8, 8) and audio.shape == (2, 800) and label.tolist() == [1.0, 0.0]
    assert video[0, 0, 0, 0, 0] == pytest.approx((p.video_s * CLIP.fps / 255 - 0.5) / 0.25)  # frames from video_s
    assert audio[0, 0] == pytest.approx(p.video_s) and audio[1, 0] == pytest.approx(p.audio_s)


def test_paper_shift_range_scales_with_the_window():
    assert PAPER_SHIFT[0] * 4.2 == pytest.approx(2.0) and PAPER_SHIFT[1] * 4.2 == pytest.approx(5.8)


# ------------------------------------------------------------------------------------- a run that learns

FLASH = ClipSpec(fps=8, frames=8, height=16, width=16, sample_rate=2000, audio_samples=2000)


def _flash_clips(n: int, seed: int) -> list[ClipData]:
    """4 s clips: a square that lights up at irregular times, a click at each flash, a silent wandering dot."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        frames = np.full((32, 16, 16, 3), 60, np.uint8)
        audio = rng.normal(0, 0.02, 8000).astype(np.float32)
        y, x = rng.integers(1, 11, size=2)
        t = rng.uniform(0, 0.5)
        while t < 4.0:
            f = int(t * 8)
            frames[f, y:y + 4, x:x + 4] = 230
            a = int(f / 8 * 2000)
            audio[a:a + 60] += rng.normal(0, 0.5, len(audio[a:a + 60]))
            t += rng.uniform(0.25, 0.9)
        for f in range(32):  # distractor
            dy, dx = (np.array([f, 2 * f]) % 14)
            frames[f, dy:dy + 2, dx:dx + 2] = 200
        clips.append(ClipData(frames, audio, 4.0, -1))
    return clips


def test_pretext_learns_above_chance_in_seconds():
    from training.avsync.train import evaluate, train_steps

    torch.manual_seed(0)
    model = create_model("avsync_tiny", fps=8.0, frames=8, size=16, sample_rate=2000)
    train, val = _flash_clips(16, 0), _flash_clips(16, 1)
    shifts = (0.5, 1.5)
    pairs = heldout_pairs(val, FLASH, shifts)
    before = evaluate(model, val, FLASH, pairs, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    rng = np.random.default_rng(0)
    tr = train_steps(model, train, FLASH, shifts, optimizer, scheduler, torch.device("cpu"), rng, 80, 8, True, 1.0)
    after = evaluate(model, val, FLASH, pairs, torch.device("cpu"))
    assert after["n"] == 32
    assert after["accuracy"] >= 0.7 and after["accuracy"] > before["accuracy"] + 0.15, (before, after, tr)
    assert after["loss"] < before["loss"]


@pytest.fixture(scope="module")
def sync_run(action_ds, tmp_path_factory):
    """The real CLI path (SynthAV mp4 files, decoded cache, checkpoint), a few steps."""
    out = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig(
        model="avsync_tiny",
        data=PretrainData(train=str(action_ds), val=str(action_ds), decoded_cache=str(out / "decoded"), workers=1),
        optim=PretrainOptim(steps=4, batch_size=4, lr=0.01),
        eval_every=2, threads=2, out=str(out), progress=False,
    )
    return out, cfg, pretrain(cfg)


def test_pretrain_writes_a_checkpoint_with_its_shift_range(sync_run):
    out, cfg, metrics = sync_run
    assert metrics["val_n"] == 32  # 16 clips, a positive and a negative each
    assert metrics["step"] in (2, 4) and 0 <= metrics["val_accuracy"] <= 1
    assert (out / "best.pt").is_file() and (out / "config.yaml").is_file()
    from training.utils import load_checkpoint

    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["kind"] == "avsync" and ckpt["shift_s"] == pytest.approx([PAPER_SHIFT[0], PAPER_SHIFT[1]])  # 1 s


def test_decoded_cache_is_reused(sync_run, action_ds):
    out, cfg, _ = sync_run
    from training.avsync.train import load_decoded
    from training.models import clip_spec_for

    assert len(list((out / "decoded").glob("*.npz"))) == 1
    clips = load_decoded(str(action_ds), clip_spec_for("avsync_tiny"), dataclasses.replace(cfg.data))
    assert len(clips) == 16 and clips[0].frames.shape[1:] == (32, 32, 3)


def test_pretrain_init_starts_from_a_checkpoint(sync_run, tmp_path):
    """``init`` loads every tensor whose name and shape match: with a zero learning rate the weights come out
    as they went in."""
    from training.utils import load_checkpoint

    out, cfg, _ = sync_run
    again = dataclasses.replace(cfg, init=str(out / "best.pt"), out=str(tmp_path / "again"),
                                optim=dataclasses.replace(cfg.optim, steps=2, lr=0.0))
    pretrain(again)
    before = load_checkpoint(out / "best.pt")["state_dict"]
    after = load_checkpoint(tmp_path / "again" / "best.pt")["state_dict"]
    fresh = create_model("avsync_tiny").state_dict()
    conv = [k for k in before if k.endswith("weight") and before[k].ndim > 1]
    assert conv and all(torch.equal(before[k], after[k]) for k in conv)
    assert not all(torch.equal(fresh[k], after[k]) for k in conv)


def test_region_loss_rewards_a_foreground_that_only_the_in_sync_audio_lights():
    from training.avsync.train import region_loss

    torch.manual_seed(0)
    base = 0.1 * torch.randn(4, 3, 8, 8)
    blob = torch.zeros(4, 3, 8, 8)
    blob[..., 2:4, 5:7] = 3.0  # a compact foreground
    localised = torch.cat([base + blob, base])  # in-sync windows first: the blob goes with the audio
    everywhere = torch.cat([base + blob, base + blob])  # the blob lights whatever the audio
    flat = torch.cat([base + 0.2, base])  # no foreground to speak of
    assert region_loss(localised) < region_loss(everywhere)
    assert region_loss(localised) < region_loss(flat)
    cam = localised.clone().requires_grad_(True)
    region_loss(cam).backward()
    g_pos, g_neg = cam.grad.view(2, 4, 3, 8, 8)
    assert (g_pos[..., 2:4, 5:7] < 0).all()  # descent raises the in-sync foreground ...
    assert (g_neg[..., 2:4, 5:7] > 0).all()  # ... and lowers it under the shifted audio
    assert g_neg[..., 0, 0].abs().max() < 1e-6  # the shifted map counts only inside the (soft) foreground


def test_other_clip_track_is_the_next_windows_own_audio_and_a_negative():
    clips = [_ramp_clip(), ClipData(*(lambda c: (255 - c.frames, c.audio + 10.0))(_ramp_clip()), 4.0, -1)]
    pairs = [heldout_pairs(clips[:1], CLIP, (0.5, 1.5))[0], Pair(1, 1.0, 2.5)]
    video, audio, label = pair_batch(clips, CLIP, pairs, other=True)
    assert video.shape[0] == 2 and audio.shape == (6, 800) and label.tolist() == [1, 1, 0, 0, 0, 0]
    own = audio[:2, 0].tolist()
    assert own == pytest.approx([pairs[0].video_s, 1.0 + 10.0])
    assert audio[4:, 0].tolist() == pytest.approx(own[::-1])  # window 0 hears window 1's audio and back


def test_region_loss_takes_the_other_clip_foreground_as_a_further_negative():
    from training.avsync.train import region_loss, step

    torch.manual_seed(0)
    base = 0.1 * torch.randn(4, 3, 8, 8)
    blob = torch.zeros(4, 3, 8, 8)
    blob[..., 2:4, 5:7] = 3.0
    matched = torch.cat([base + blob, base, base])  # only the window's own audio lights the blob
    by_look = torch.cat([base + blob, base, base + blob])  # any clip's audio lights it: not about this sound
    assert region_loss(matched, tracks=3) < region_loss(by_look, tracks=3)
    cam = matched.clone().requires_grad_(True)
    region_loss(cam, tracks=3).backward()
    assert (cam.grad.view(3, 4, 3, 8, 8)[2][..., 2:4, 5:7] > 0).all()  # descent lowers it under the other audio
    # the BCE of step() weighs the other-clip track by other_weight and keeps the two-track loss as it was
    model = create_model("avsync_tiny").eval()
    video, audio = _inputs("avsync_tiny", batch=2)
    audio3 = torch.cat([audio, audio.flip(0), 0.5 * audio])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    with torch.inference_mode():
        two, _ = step(model, video, audio3[:4], y[:4])
        none, _ = step(model, video, audio3, y, other_weight=0.0)
        some, _ = step(model, video, audio3, y, other_weight=1.0)
    assert none == pytest.approx(two.item()) and some > none


def test_keep_loss_masks_with_the_binarised_map_and_never_trains_its_judge():
    from model_store.heatmaps import upsample
    from training.avsync.score import binarise
    from training.avsync.train import KeepLoss, step

    torch.manual_seed(0)
    model = create_model("avsync_tiny")  # frames 8, size 32: CAM (4, 4, 4), stride 8
    keep = KeepLoss(model, weight=1.0, area=1.0)
    cam = torch.zeros(1, 4, 4, 4)
    cam[0, 1, 2, 3] = 5.0  # step 1 (frames 2-3): one bright cell, rows 16-23, columns 24-31
    mask = keep.mask(cam, (8, 32, 32))
    assert mask.shape == (1, 1, 8, 32, 32)
    up = upsample(cam[0, 1].numpy() / 5.0, 32, 32)
    scored = binarise(up)  # (32, 32): what evaluate localization keeps
    decided = np.abs(up - 0.5) > 1e-3  # pixels exactly at half the range may fall either way
    assert np.array_equal((mask[0, 0, 2] >= 0.5).numpy()[decided], scored[decided]) and 40 < scored.sum() <= 64
    assert scored[16:24, 24:32].sum() == scored.sum()
    assert (mask[0, 0, [0, 1, 4, 5, 6, 7]] < 0.01).all()  # flat steps keep nothing
    assert torch.equal(mask[0, 0, 2], mask[0, 0, 3])  # a step's map covers its frames
    video, audio = _inputs("avsync_tiny", batch=2)
    audio = torch.cat([audio, audio.flip(0)])
    loss, _ = step(model, video, audio, torch.tensor([1.0, 1.0, 0.0, 0.0]), keep=keep)
    loss.backward()
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in keep.judge.parameters())  # frozen
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert not torch.equal(model.head.weight, keep.judge.head.weight)  # a copy as it was, not the live network


@pytest.mark.parametrize("mode", ["space", "space_time"])
def test_dense_fusion_is_the_strided_network_sampled_finer(mode):
    from training.models.avsync import AVSyncNet

    torch.manual_seed(0)
    strided = create_model("avsync_small").eval()
    dense = AVSyncNet(dataclasses.replace(model_config("avsync_small"), fusion_dense=mode)).eval()
    dense.load_state_dict(strided.state_dict())  # same weights, same names
    video, audio = _inputs("avsync_small")
    with torch.inference_mode():
        _, cam = strided(video, audio)
        _, fine = dense(video, audio)
    assert fine.shape == ((2, 6, 16, 16) if mode == "space" else (2, 12, 16, 16))
    every_other = fine[:, :, ::2, ::2] if mode == "space" else fine[:, ::2, ::2, ::2]
    torch.testing.assert_close(every_other, cam, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fine[..., 1::2, 1::2], fine[..., ::2, ::2])  # the new cells are new positions
