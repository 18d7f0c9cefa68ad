"""Every registered model: forward + backward, save/reload, ONNX export parity at another batch size."""

import io

import numpy as np
import pytest
import torch

from model_store.runtime import create_session
from training.export import export_onnx
from training.models import create_model, list_models, model_config, register_model
from training.models.action import AVActionNet
from training.models.layers import LogMelFrontend

# classifiers (logits out); avsync_tiny (logit, cam) has its own tests in test_avsync.py
TINY = [n for n in list_models() if n.endswith("_tiny") and hasattr(model_config(n), "num_classes")]


def _example(name: str, batch: int = 2) -> dict[str, torch.Tensor]:
    cfg = model_config(name)
    gen = torch.Generator().manual_seed(batch)
    return {
        "video": torch.randn(batch, 3, cfg.frames, cfg.size, cfg.size, generator=gen),
        "audio": 0.1 * torch.randn(batch, cfg.audio_samples, generator=gen),
    }


def test_tiny_variants_exist():
    assert "av_action_tiny" in TINY and "av_action_small" in list_models()


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("av_action_tiny", AVActionNet, model_config("av_action_tiny"))


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    model = create_model(name)
    out = model(**_example(name))
    assert out.shape == (2, model.cfg.num_classes)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_save_reload_same_output(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = create_model(name).eval()
    clone.load_state_dict(torch.load(buf, weights_only=True))
    ex = _example(name)
    with torch.inference_mode():
        assert torch.equal(model(**ex), clone(**ex))


@pytest.mark.parametrize("name", TINY)
def test_onnx_export_matches_pytorch_at_other_batch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    path = tmp_path / "m.onnx"
    diffs = export_onnx(model, _example(name, 2), ["logits"], path, check_batch=3)
    assert diffs["logits"] < 1e-4
    session = create_session(path, providers=("CPUExecutionProvider",))
    ex = _example(name, 5)
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in ex.items()})
    with torch.inference_mode():
        ref = model(**ex).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_logmel_frontend_finds_a_tone():
    sr = 16000
    front = LogMelFrontend(sr, n_fft=512, hop=160, n_mels=64)
    t = torch.arange(sr) / sr
    low, high = torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 3000 * t)
    spec = front(torch.stack([low, high]))  # (2, 1, 64, frames)
    assert spec.shape == (2, 1, 64, 1 + (sr - 512) // 160)
    peak_low, peak_high = spec[0, 0].mean(1).argmax(), spec[1, 0].mean(1).argmax()
    assert peak_low < peak_high
