"""Evaluation sees what serving serves: ``evaluate action``'s scorer and ``POST /v1/actions`` give the same
probabilities for the same files, because both call ``model_store.pipelines.action``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from model_store.pipelines.action import top_classes
from model_store.registry import ModelStore
from model_store.runtime import load_model
from training.action.score import action_probabilities, decode_eval_set, score_action
from training.data.datasets import Record


def test_action_scorer_and_route_agree(client: TestClient, store_root: Path, media_dir: Path) -> None:
    model = load_model(ModelStore(store_root), "action", providers=["CPUExecutionProvider"])
    labels = model.manifest.labels
    files = [media_dir / "av.mp4", media_dir / "silent.mp4"]
    clips = decode_eval_set([Record(video=f, label=labels[0]) for f in files], model.manifest.clip, labels)
    assert [len(c.windows) for c in clips] == [3, 3]
    scored = action_probabilities(model, clips, batch=4)  # (2, K); the two clips' windows share a batch

    for path, probs in zip(files, scored, strict=True):
        r = client.post("/v1/actions", params={"top_k": len(labels)},
                        files={"file": (path.name, path.read_bytes(), "video/mp4")})
        assert r.status_code == 200, r.text
        served = {item["label"]: item["score"] for item in r.json()["top_k"]}
        np.testing.assert_allclose([served[name] for name in labels], probs, rtol=1e-6, atol=1e-9)
        assert [item["label"] for item in r.json()["top_k"]] == [labels[i] for i in top_classes(probs, len(labels))]
        # the overall answer is the mean of the served segments' probabilities, as the scorer averages windows
        segments = r.json()["segments"]
        assert len(segments) == 3
        per_window = [{item["label"]: item["score"] for item in seg["top_k"]} for seg in segments]
        np.testing.assert_allclose([np.mean([w[name] for w in per_window]) for name in labels], probs, rtol=1e-6)

    expected = float(np.argmax(scored[0]) == 0) / 2 + float(np.argmax(scored[1]) == 0) / 2
    assert score_action(model, clips)["accuracy"] == expected
