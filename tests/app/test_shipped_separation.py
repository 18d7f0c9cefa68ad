"""The shipped default separation model behind the real server (uvicorn over TCP): a 30-second SynthAV speech
video goes in, both tracks come back whole over HTTP, and the on-screen track is the visible speaker's voice."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from test_server import REPO, uvicorn_server

from training.data.synthav_speech import SpeechConfig, load_audio, write_speech_dataset
from training.separation.score import si_sdr_np

SHIPPED = REPO / "model_store" / "models"


def test_shipped_model_separates_a_thirty_second_video_over_http(tmp_path: Path) -> None:
    write_speech_dataset(tmp_path / "speech", n=1, seed=4242, kind="speech_plain",
                         config=SpeechConfig(duration_s=30.0))
    with open(tmp_path / "speech" / "index.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    video = tmp_path / "speech" / row["video"]
    with uvicorn_server(tmp_path, AVSCENE_MODEL_ROOT=str(SHIPPED), AVSCENE_TASKS="separation",
                        AVSCENE_RESULTS_DIR=str(tmp_path / "results")) as base:
        with httpx.Client(base_url=base, timeout=120.0) as client:
            with open(video, "rb") as fh:
                r = client.post("/v1/separations", files={"file": (video.name, fh, "video/mp4")})
            assert r.status_code == 201, r.text
            job = r.json()
            assert job["model"]["name"] == "separation_small_assign"
            assert abs(job["duration_s"] - 30.0) < 0.05
            tracks = {}
            for name in ("on_screen", "off_screen"):
                got = client.get(job["tracks"][name])
                assert got.status_code == 200 and got.headers["content-type"] == "audio/wav"
                tracks[name], sr = sf.read(io.BytesIO(got.content), dtype="float32")
                assert sr == job["sample_rate"] and len(tracks[name]) == job["samples"]
            assert job["samples"] == round(job["duration_s"] * sr)
    root = tmp_path / "speech"
    n = job["samples"]
    refs = {k: np.pad(load_audio(root / row[k], sr), (0, n))[:n] for k in ("on_screen", "off_screen")}
    mix = refs["on_screen"] + refs["off_screen"]
    for k in refs:  # each track is nearer its own clean voice than the mixture is: separated, not swapped
        assert si_sdr_np(tracks[k], refs[k]) > si_sdr_np(mix, refs[k]) + 3.0, k
