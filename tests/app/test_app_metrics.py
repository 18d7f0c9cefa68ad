"""``/metrics``: Prometheus text with per-route counts (by template), model info and batcher counters."""

import re


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


def test_metrics_count_requests_models_and_batches(client, media_dir):
    client.get("/healthz")
    client.get("/no/such/path")
    with open(media_dir / "av.mp4", "rb") as fh:
        assert client.post("/v1/actions", files={"file": ("a.mp4", fh, "video/mp4")}).status_code == 200
    with open(media_dir / "random.bin", "rb") as fh:
        assert client.post("/v1/actions", files={"file": ("r.bin", fh)}).status_code == 415
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert _value(text, "avscene_requests_total", method="POST", route="/v1/actions", status="200") >= 1
    assert _value(text, "avscene_requests_total", method="POST", route="/v1/actions", status="415") >= 1
    assert _value(text, "avscene_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert "/no/such/path" not in text
    assert _value(text, "avscene_ready") == 1
    assert _value(text, "avscene_model_info", task="action", provider="CPUExecutionProvider") == 1
    assert _value(text, "avscene_batches_total", task="action") >= 1
    assert _value(text, "avscene_batch_windows_total", task="action") >= 2  # 2.5 s video: 2+ windows
    assert re.search(r'^avscene_request_seconds_count\{method="POST",route="/v1/actions"\} \d+$', text, re.M)
