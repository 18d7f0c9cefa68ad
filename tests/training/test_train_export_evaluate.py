"""The whole training path on tiny data: train-action learns, export publishes, evaluate scores via ORT."""

import csv
import json

import numpy as np
import pytest
import torch

from model_store.registry import ModelStore
from model_store.runtime import load_model
from training.action.train import zero_modalities
from training.cli import main
from training.utils import load_checkpoint


def test_train_loss_falls(tiny_run):
    out, metrics = tiny_run
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["loss"]) for r in rows if r["loss"]]  # training rows: mean loss over log_every steps
    # one row per epoch; chance is ln 8 = 2.08. Mean of the last three epochs against the first three (seed-to-seed
    # spread of a single epoch's mean on 16 clips is about 0.05)
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    val = [float(r["val_accuracy"]) for r in rows if r["val_accuracy"]]  # one evaluation row per epoch
    assert len(val) == 12
    assert metrics["val_n"] == 16
    assert metrics["val_accuracy"] >= 0.25  # twice chance, on the clips it trained on
    assert (out / "config.yaml").is_file()
    ckpt = load_checkpoint(out / "best.pt")
    assert set(ckpt) >= {"config", "state_dict", "metrics", "versions", "labels", "model", "model_config"}


def test_zero_modalities_never_both():
    gen = torch.Generator().manual_seed(0)
    video, audio = torch.ones(1000, 2), torch.ones(1000, 3)
    zero_modalities(video, audio, 0.3, gen)
    v0, a0 = video.sum(1) == 0, audio.sum(1) == 0
    assert not (v0 & a0).any()
    assert 0.2 < v0.float().mean() < 0.4 and 0.2 < a0.float().mean() < 0.4


def test_export_publish_and_evaluate(tiny_run, action_ds, tmp_path, capsys):
    out, _ = tiny_run
    root = tmp_path / "store"
    assert main(["export", "--checkpoint", str(out / "best.pt"), "--root", str(root),
                 "--eval-data", str(action_ds)]) == 0
    published = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert published["version"] == 1
    manifest = ModelStore(root).manifest("action")
    assert manifest.name == "av_action_tiny" and manifest.clip.frames == 8
    assert set(manifest.metrics) == {"accuracy", "top5", "accuracy_audio_only", "accuracy_video_only"}
    assert str(action_ds) in manifest.metrics_data
    assert manifest.training["config"]["optim"]["epochs"] == 12

    result_path = tmp_path / "eval.json"
    assert main(["evaluate", "action", "--data", str(action_ds), "--root", str(root), "--json",
                 str(result_path), "-q"]) == 0
    result = json.loads(result_path.read_text())
    assert result["n"] == 16 and result["version"] == 1
    # the published number and a fresh evaluation through model_store agree
    assert result["accuracy"] == pytest.approx(manifest.metrics["accuracy"])
    assert result["accuracy"] > 1 / 8  # the tiny run learned something on its own training clips

    # the exported graph gives the PyTorch checkpoint's answer
    from training.models import build_from_config

    ckpt = load_checkpoint(out / "best.pt")
    model = build_from_config(ckpt["model"], ckpt["model_config"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    loaded = load_model(ModelStore(root), "action")
    feeds = loaded.dummy_feeds(3)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in feeds.items()}
    with torch.inference_mode():
        ref = model(torch.from_numpy(feeds["video"]), torch.from_numpy(feeds["audio"])).numpy()
    np.testing.assert_allclose(loaded.run(feeds)["logits"], ref, atol=1e-4, rtol=1e-3)


def test_evaluate_missing_store_fails_clearly(tmp_path):
    from model_store.registry import RegistryError

    with pytest.raises(RegistryError, match="no action model"):
        main(["evaluate", "action", "--data", "synthav:seed=1,n=1", "--root", str(tmp_path), "-q"])
