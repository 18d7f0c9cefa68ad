"""build-defaults' action stage (the recipe is trained once per seed and the run with the best noisy-validation
accuracy is published, ties to the lower seed, with every seed's figure in the manifest) and its separation chain
(each stage warm-started from the one before). The training and the publishing are replaced by recorders here; the
recipes themselves are tested through train-action and train-separation."""

from __future__ import annotations

from pathlib import Path

import pytest

import training.action.noisy.train as noisy_train
import training.build_defaults as bd


def test_action_stage_trains_every_seed_and_publishes_the_best_on_noisy_validation(monkeypatch, tmp_path) -> None:
    val = {0: 0.50625, 1: 0.50625, 2: 0.49375, 3: 0.51875, 4: 0.51875}
    trained, published = [], {}

    def fake_train(cfg):
        trained.append((cfg.seed, cfg.out, cfg.optim.epochs, cfg.overwrite))
        return {"val_noisy_accuracy": val[cfg.seed], "noise": {"n": 1600}, "val_noise": {"n": 160}}

    def fake_publish(root, task, checkpoint, eval_data, cache_dir, extra):
        published.update(root=root, task=task, checkpoint=checkpoint, extra=extra)

    monkeypatch.setattr(noisy_train, "train_action_noisy", fake_train)
    monkeypatch.setattr(bd, "_publish_fresh", fake_publish)
    monkeypatch.setattr(bd, "ACTION_SEEDS", (0, 1, 2, 3, 4))
    bd.build_action(tmp_path / "store", "data/synthav")
    assert [t[0] for t in trained] == [0, 1, 2, 3, 4]
    assert len({t[1] for t in trained}) == 5 and all(t[1].endswith(f"_seed{t[0]}") for t in trained)
    assert all(t[2] == 20 and t[3] for t in trained)  # the config's epochs; every run starts afresh
    assert published["task"] == "action"
    assert published["checkpoint"] == Path(trained[3][1]) / "best.pt"  # 3 and 4 tie at the top: the lower seed
    extra = published["extra"]
    assert extra["seed"] == 3 and extra["seeds_val_noisy_accuracy"] == {str(k): v for k, v in val.items()}


def test_separation_stages_run_in_order_each_from_the_one_before(monkeypatch, tmp_path) -> None:
    """build-defaults' separation chain: the two SynthAV stages, then every speech stage, each warm-started (U-Net and
    backbone) from the previous run's best checkpoint; the last is published with every stage's steps. Each
    config's own init (for running it by hand) names the previous stage's run directory too."""
    import training.separation.train as sep_train
    from training.config import load_config
    from training.separation.train import SeparationTrainConfig

    trained, published = [], {}

    def fake_train(cfg):
        trained.append(cfg)
        return {"step": 7, "si_sdri_on": 1.0}

    def fake_publish(root, task, checkpoint, eval_data, cache_dir, extra):
        published.update(task=task, checkpoint=checkpoint, extra=extra)

    monkeypatch.setattr(sep_train, "train_separation", fake_train)
    monkeypatch.setattr(bd, "_publish_fresh", fake_publish)
    monkeypatch.setattr(bd, "ensure_voices", lambda *a, **k: {})
    bd.build_separation(tmp_path / "store", "data/synthav")
    names = ["audio_only", "audio_visual", *(stage for stage, _ in bd.SEPARATION_SPEECH_STAGES)]
    assert len(trained) == len(names) and all(c.overwrite for c in trained)
    for before, after in zip(trained[1:], trained[2:], strict=False):
        start = str(Path(before.out) / "best.pt")
        assert after.init_unet == start and after.init_avsync == start
    assert trained[1].init_unet == str(Path(trained[0].out) / "best.pt")
    assert published["task"] == "separation" and published["checkpoint"] == Path(trained[-1].out) / "best.pt"
    assert list(published["extra"]["steps"]) == names
    configs = [load_config(SeparationTrainConfig, bd.CONFIGS / name, []) for _, name in bd.SEPARATION_SPEECH_STAGES]
    for before, after in zip(configs, configs[1:], strict=False):
        assert after.init_unet == str(Path(before.out) / "best.pt")


def test_separation_from_a_finished_run_records_where_its_best_checkpoint_was(monkeypatch, tmp_path) -> None:
    """Given a finished run of the last stage, nothing is trained, and the manifest's steps say at which step its
    best.pt was saved (the checkpoint keeps it among its metrics)."""
    import training.separation.train as sep_train
    from training.utils import save_checkpoint

    published = {}
    monkeypatch.setattr(sep_train, "train_separation", lambda cfg: pytest.fail("trained a stage"))
    monkeypatch.setattr(bd, "_publish_fresh", lambda root, task, checkpoint, eval_data, cache_dir, extra:
                        published.update(checkpoint=checkpoint, extra=extra))
    monkeypatch.setattr(bd, "ensure_voices", lambda *a, **k: {})
    save_checkpoint(tmp_path / "best.pt", {"metrics": {"step": 13500, "val_si_sdri_on": 5.0}, "state_dict": {}})
    bd.build_separation(tmp_path / "store", "data/synthav", checkpoint=tmp_path / "best.pt")
    last, _ = bd.SEPARATION_SPEECH_STAGES[-1]
    assert published["checkpoint"] == tmp_path / "best.pt"
    assert published["extra"]["steps"][last]["best_step"] == 13500 and published["extra"]["steps"][last]["steps"] > 0
