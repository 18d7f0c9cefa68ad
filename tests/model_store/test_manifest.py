from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from model_store.manifest import ClipSpec, Manifest

SHA = "ab" * 32


def _manifest(manifest_fields, **extra) -> Manifest:
    return Manifest.model_validate({**manifest_fields(), "version": 1, "sha256": SHA, **extra})


def test_clip_spec_accepts_matching_audio_and_reports_window():
    spec = ClipSpec(fps=8, frames=16, height=112, width=112, sample_rate=16000, audio_samples=32000)
    assert spec.window_s == pytest.approx(2.0)
    assert spec.window_hop_s == pytest.approx(2.0)  # hop defaults to the window length
    assert spec.pixel_mean == (0.5, 0.5, 0.5)
    hopped = spec.model_copy(update={"hop_s": 0.5})
    assert hopped.window_hop_s == 0.5
    assert hopped.window_s == pytest.approx(2.0)


def test_clip_spec_tolerates_one_sample_of_rounding():
    # 16 frames at 29.97 fps = 8542.5 samples at 16 kHz: either neighbour is fine
    for samples in (8542, 8543):
        spec = ClipSpec(fps=29.97, frames=16, height=8, width=8, sample_rate=16000, audio_samples=samples)
        assert spec.window_s == pytest.approx(16 / 29.97)


@pytest.mark.parametrize("samples", [31998, 32002, 16000, 64000])
def test_clip_spec_rejects_audio_that_does_not_span_the_window(samples):
    with pytest.raises(ValidationError, match="does not span the video window"):
        ClipSpec(fps=8, frames=16, height=112, width=112, sample_rate=16000, audio_samples=samples)


@pytest.mark.parametrize(
    "bad",
    [{"fps": 0}, {"frames": 0}, {"height": -1}, {"width": 0}, {"sample_rate": 0}, {"hop_s": 0}, {"extra": 1}],
)
def test_clip_spec_rejects_bad_fields(bad):
    fields = {"fps": 8, "frames": 16, "height": 8, "width": 8, "sample_rate": 16000, "audio_samples": 32000}
    with pytest.raises(ValidationError):
        ClipSpec.model_validate({**fields, **bad})


def test_clip_spec_is_frozen():
    spec = ClipSpec(fps=8, frames=16, height=8, width=8, sample_rate=16000, audio_samples=32000)
    with pytest.raises(ValidationError):
        spec.fps = 10  # type: ignore[misc]


def test_manifest_rejects_unknown_fields(manifest_fields):
    with pytest.raises(ValidationError, match="surprise"):
        _manifest(manifest_fields, surprise=True)
    fields = manifest_fields()
    fields["inputs"][0]["layout"] = "NCTHW"
    with pytest.raises(ValidationError):
        Manifest.model_validate({**fields, "version": 1, "sha256": SHA})


def test_manifest_action_needs_labels(manifest_fields):
    with pytest.raises(ValidationError, match="labels"):
        _manifest(manifest_fields, labels=[])
    # other tasks do not
    manifest = Manifest.model_validate({**manifest_fields(task="avsync"), "version": 1, "sha256": SHA})
    assert manifest.labels == []


@pytest.mark.parametrize(
    "bad",
    [{"task": "detection"}, {"version": 0}, {"sha256": "xyz"}, {"sha256": SHA.upper()}, {"clip": {"fps": 8}}],
)
def test_manifest_rejects_bad_values(manifest_fields, bad):
    with pytest.raises(ValidationError):
        _manifest(manifest_fields, **bad)


def test_manifest_json_round_trip(manifest_fields):
    stft = {"n_fft": 512, "hop_length": 128, "win_length": 512}
    fields = manifest_fields(training={"lr": 0.001, "noise": {"snr_db": [0, 20]}}, versions={"torch": "2.4"})
    fields["clip"] = {**fields["clip"], "stft": stft, "hop_s": 0.5}
    manifest = Manifest.model_validate({**fields, "version": 3, "sha256": SHA})
    text = manifest.model_dump_json(indent=2)
    again = Manifest.model_validate_json(text)
    assert again == manifest
    assert again.created == manifest.created and again.created.tzinfo is not None
    assert again.clip.stft is not None and again.clip.stft.hop_length == 128
    assert again.clip.window_hop_s == 0.5
    # symbolic dims stay strings, fixed dims stay ints
    assert again.inputs[0].shape == ["batch", 3, 8, 24, 40]
    assert json.loads(text)["inputs"][0]["shape"][0] == "batch"
    assert again.input("audio").shape == ["batch", 16000]
    with pytest.raises(KeyError, match="no input 'depth'"):
        again.input("depth")


def test_manifest_heatmap_reading_is_optional_and_its_pool_must_divide_the_frames(manifest_fields):
    fields = manifest_fields(task="avsync")
    assert Manifest.model_validate({**fields, "version": 1, "sha256": SHA}).heatmap is None  # the CAM as it is
    spec = {"refine": "guided", "radius": 8, "eps": 1e-3, "blur": 1, "pool": 2}
    manifest = Manifest.model_validate({**fields, "heatmap": spec, "version": 1, "sha256": SHA})
    assert manifest.heatmap.pool == 2 and Manifest.model_validate_json(manifest.model_dump_json()) == manifest
    with pytest.raises(ValidationError, match="pool 3 must divide"):  # frames of 24 x 40
        Manifest.model_validate({**fields, "heatmap": {**spec, "pool": 3}, "version": 1, "sha256": SHA})
    with pytest.raises(ValidationError):
        Manifest.model_validate({**fields, "heatmap": {**spec, "refine": "crf"}, "version": 1, "sha256": SHA})


def test_manifest_multi_label_is_an_action_setting_that_old_manifests_lack(manifest_fields):
    old = json.loads(_manifest(manifest_fields).model_dump_json())
    del old["multi_label"]  # a manifest written before the field existed
    assert Manifest.model_validate(old).multi_label is False
    assert _manifest(manifest_fields, multi_label=True).multi_label is True
    with pytest.raises(ValidationError, match="multi_label is an action model's setting"):
        _manifest(lambda: manifest_fields(task="separation"), multi_label=True)
