"""Session fixtures shared by the training tests and the end-to-end test: real SynthAV clips, a tiny run."""

import pytest

from training.data import synthav


@pytest.fixture(scope="session")
def action_ds(tmp_path_factory):
    """16 SynthAV action clips (2 of each class), as real mp4 files with index.csv."""
    root = tmp_path_factory.mktemp("synth") / "ds"
    synthav.write_action_dataset(root, n=16, seed=7, workers=2)
    return root


@pytest.fixture(scope="session")
def tiny_run(action_ds, tmp_path_factory):
    """A short train-action run of the tiny model through the CLI; returns (run dir, printed metrics)."""
    import json

    from training.cli import main

    out = tmp_path_factory.mktemp("run")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([
            "train-action", "model=av_action_tiny", f"data.train={action_ds}", f"data.val={action_ds}",
            "optim.epochs=12", "optim.batch_size=4", "optim.lr=0.005", "modality_dropout=0.0",
            f"out={out}", "progress=false", "data.workers=1", "threads=2", "log_every=4",  # a row per epoch
        ])
    assert code == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="session")
def speech_ds(tmp_path_factory):
    """6 SynthAV talking-face clips with their clean on- and off-screen tracks."""
    from training.data.synthav_speech import write_speech_dataset

    root = tmp_path_factory.mktemp("speech") / "ds"
    write_speech_dataset(root, n=6, seed=11, kind="speech", workers=2)
    return root
