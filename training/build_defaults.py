"""Regenerate the shipped default models from scratch, deterministically: ``python -m training build-defaults``.

Each task is trained from its config in ``training/configs``, exported, scored on SynthAV clips of a seed
that training never saw (the score goes into the manifest), and published as version 1 of a fresh store
that then replaces ``<root>/<task>``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from model_store.registry import ModelStore

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"
VOICES = "data/voices"  # the speech library (python -m training voices), as the separation configs name it
RECORDED = "data/voices_recorded"  # the recorded readers (python -m training voices --engines klettres)
DRASCULA = "data/voices_drascula"  # the acted dialogue held out (python -m training voices --engines drascula)
# The games' acted dialogue, each a library of its own: manifest key -> (library, `voices --engines` engine, the
# Debian package whose version voices.json records under that name).
ACTED = {"acted": ("data/voices_talkie", "fotaq", "flight-of-the-amazon-queen"),
         "acted_held_out": (DRASCULA, "drascula", "drascula"),
         "acted_more": ("data/voices_bass", "bass", "beneath-a-steel-sky")}
EVAL_DATA = {"action": "synthav:seed=1000,n=200", "avsync": "synthav:seed=1000,n=200",
             # synthetic voices, then faces voiced by the held-out *test* speakers of each library (acted: the
             # Drascula English cast, continuous real speech)
             "separation": f"synthav:seed=1000,n=100,kind=speech|voices=synthav:seed=3,n=100,kind=speech,"
                           f"voices={VOICES}/test|recorded=synthav:seed=3,n=100,kind=speech,voices={RECORDED}/test"
                           f"|acted=synthav:seed=3,n=100,kind=speech,voices={DRASCULA}/test"}


def fresh(cache_dir: str) -> list[str]:
    """Overrides of every build run: the data cache, and a fresh run directory (a rebuild starts from scratch;
    ``overwrite=true`` replaces what an earlier build left in ``runs/defaults``)."""
    return [f"data.cache_dir={cache_dir}", "overwrite=true"]


def ensure_voices(out: str | Path = VOICES, **options: Any) -> dict[str, Any]:
    """The speech library at ``out`` (rendered if missing, by ``build_library(out, **options)``: the default one
    needs festival, festvox-*, flite and espeak-ng, the recorded one klettres-data, the acted ones
    flight-of-the-amazon-queen, beneath-a-steel-sky and drascula, drascula-spanish); returns its summary
    (voices.json)."""
    import json

    from training.data.voices import build_library

    summary = Path(out) / "voices.json"
    if not summary.is_file():
        log.info("rendering the speech library into %s", out)
        build_library(out, progress=True, **options)
    return json.loads(summary.read_text())


RECORDED_OPTIONS = {"engines": ("klettres",), "n_utts": 40}  # as `voices --engines klettres --utterances 40`


# The separation model's stages after the SynthAV ones (separation_audio_only.yaml, then separation_default.yaml),
# each warm-started from the one before: the synthesised speech library, the recorded readers added, trained on
# with the SI-SDR loss and a wider range of levels, with one game's acted dialogue added, then on at half the rate
# with a second game's too, its best step picked on held-out acted speech, then on with twice as many acted clips,
# then on with a third batch of them in place of the first, and a fourth in place of the second. The last is shipped.
SEPARATION_SPEECH_STAGES = (("speech", "separation_speech.yaml"), ("recorded", "separation_speech_recorded.yaml"),
                            ("sisdr", "separation_speech_sisdr.yaml"), ("talkie", "separation_speech_talkie.yaml"),
                            ("acted2", "separation_speech_acted2.yaml"), ("acted3", "separation_speech_acted3.yaml"),
                            ("acted4", "separation_speech_acted4.yaml"), ("acted5", "separation_speech_acted5.yaml"))


def build_separation(root: Path, cache_dir: str, checkpoint: str | Path | None = None) -> None:
    """Train ``configs/separation_audio_only.yaml``, then ``configs/separation_default.yaml`` warm-started from it,
    then each of :data:`SEPARATION_SPEECH_STAGES` from the one before (or take ``checkpoint``, a finished run of the
    last stage); export, score on synthetic-voice speech clips of seed 1000 and on faces voiced by each library's
    held-out test speakers (none used in training) and publish as ``<root>/separation`` v1."""
    from training.config import load_config
    from training.separation.train import SeparationTrainConfig, train_separation

    voices = ensure_voices()
    recorded = ensure_voices(RECORDED, **RECORDED_OPTIONS)
    acted: dict[str, Any] = {}
    for key, (library, engine, package) in ACTED.items():
        summary = ensure_voices(library, engines=(engine,))
        acted |= {key: library, f"{key}_splits": summary.get("splits"),
                  f"{key}_source": summary.get("versions", {}).get(package)}
    last_stage, config = SEPARATION_SPEECH_STAGES[-1]
    cfg = load_config(SeparationTrainConfig, CONFIGS / config, fresh(cache_dir))
    metrics: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    if checkpoint is None:
        # the audio-only PIT run first: its U-Net warm-starts the audio-visual model (cfg.init_unet)
        pit = load_config(SeparationTrainConfig, CONFIGS / "separation_audio_only.yaml", fresh(cache_dir))
        metrics["audio_only"] = train_separation(pit)
        synthetic = load_config(SeparationTrainConfig, CONFIGS / "separation_default.yaml",
                                [*fresh(cache_dir), f"init_unet={Path(pit.out) / 'best.pt'}"])
        metrics["audio_visual"] = train_separation(synthetic)
        stages = [("audio_only", pit), ("audio_visual", synthetic)]
        start = Path(synthetic.out) / "best.pt"
        for stage, name in SEPARATION_SPEECH_STAGES:
            cfg = load_config(SeparationTrainConfig, CONFIGS / name,
                              [*fresh(cache_dir), f"init_unet={start}", f"init_avsync={start}"])
            metrics[stage] = train_separation(cfg)
            stages.append((stage, cfg))
            start = Path(cfg.out) / "best.pt"
        checkpoint = start
        steps = {name: {"steps": c.optim.steps, "best_step": metrics[name].get("step")} for name, c in stages}
    if not steps:  # a finished run of the last config: its own steps (the earlier stages' are in their configs)
        from training.utils import load_checkpoint

        best_step = (load_checkpoint(checkpoint).get("metrics") or {}).get("step")  # where its best.pt was saved
        steps = {last_stage: {"steps": cfg.optim.steps, "best_step": best_step}}
    chain = ", ".join(name for _, name in SEPARATION_SPEECH_STAGES)
    extra = {"build": "python -m training build-defaults --tasks separation (configs separation_audio_only.yaml, "
                      f"separation_default.yaml, then {chain})",
             "backbone": "AVSyncNet trained jointly from scratch" if not cfg.init_avsync
             else f"AVSyncNet trained jointly from scratch (separation_default.yaml), fine-tuned in {chain}",
             "voices": {"library": VOICES, "recorded": RECORDED, "train": cfg.data.train, "val": cfg.data.val,
                        "splits": voices.get("splits"), "synthesisers": voices.get("versions"),
                        "recorded_splits": recorded.get("splits"),
                        "recorded_source": recorded.get("versions", {}).get("klettres-data"),
                        **acted,
                        "augmentation": dataclasses.asdict(cfg.aug), "mix": dataclasses.asdict(cfg.mix),
                        "loss": dataclasses.asdict(cfg.loss)},
             "steps": steps,
             "train_metrics": metrics}
    _publish_fresh(root, "separation", Path(checkpoint), EVAL_DATA["separation"], cache_dir, extra)


# The action recipe is trained with each of these seeds and the run with the best noisy-validation accuracy is
# shipped (no clean label is used; ties go to the lower seed). At 12 epochs one seed in three folded a class into
# another; at 20 epochs seeds 0-3 scored 0.912-0.998 on unseen clips, and the noisy validation ranked the best first.
ACTION_SEEDS = (0, 1, 2, 3)


def build_action(root: Path, cache_dir: str) -> None:
    """The action model is trained with noise-tolerant learning on deliberately noisy SynthAV labels and
    audio (``action_ntl.yaml``: 40 % symmetric label noise, 20 % correspondence noise), once per seed of
    :data:`ACTION_SEEDS`; the run whose checkpoint scores best on the (equally noisy) validation split is published
    and scored clean."""
    from training.action.noisy.train import NoisyActionConfig, train_action_noisy
    from training.config import load_config

    config = CONFIGS / "action_ntl.yaml"
    out = load_config(NoisyActionConfig, config, fresh(cache_dir)).out  # each seed's run beside it, _seedS
    runs = []
    for seed in ACTION_SEEDS:
        cfg = load_config(NoisyActionConfig, config, [*fresh(cache_dir), f"seed={seed}", f"out={out}_seed{seed}"])
        runs.append((cfg, train_action_noisy(cfg)))
    cfg, metrics = max(runs, key=lambda run: run[1]["val_noisy_accuracy"])  # the first of equals: the lower seed
    extra = {"build": f"python -m training build-defaults --tasks action (config {config.name}, seeds "
                      f"{list(ACTION_SEEDS)}, the best on noisy validation kept)",
             "method": cfg.method,
             "seed": cfg.seed,
             "seeds_val_noisy_accuracy": {str(c.seed): m["val_noisy_accuracy"] for c, m in runs},
             "noise": {"train": metrics["noise"], "val": metrics["val_noise"],
                       "note": "noise injected into the training and validation splits only; the checkpoint and the "
                               "seed are selected on noisy validation labels; metrics are on clean, unseen clips"},
             "train_metrics": metrics}
    log.info("action: noisy-validation accuracy by seed %s; seed %d kept", extra["seeds_val_noisy_accuracy"], cfg.seed)
    _publish_fresh(root, "action", Path(cfg.out) / "best.pt", EVAL_DATA["action"], cache_dir, extra)


def _publish_fresh(root: Path, task: str, checkpoint: Path, eval_data: str, cache_dir: str, extra: dict) -> None:
    from training.publish import export_checkpoint

    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.exists() else None) as tmp:
        manifest = export_checkpoint(checkpoint, ModelStore(tmp), eval_data=eval_data, cache_dir=cache_dir,
                                     extra_training=extra)
        target = root / task
        old = root / f".{task}.old"
        shutil.rmtree(old, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.rename(old)
        shutil.move(str(Path(tmp) / task), target)
        shutil.rmtree(old, ignore_errors=True)
    log.info("default %s model: v%d, metrics %s", task, manifest.version, manifest.metrics)


def build_avsync(root: Path, cache_dir: str, pretext_checkpoint: str | Path | None = None) -> None:
    """The sync network, without labels, in three stages: the pretext (``avsync_default.yaml``); the same network
    with the region contrast on its CAM (``avsync_region.yaml``, from stage 1); then with the preservation term
    judged by the frozen stage-2 network (``avsync_keep.yaml``, from stage 2); scored on unseen clips.
    ``pretext_checkpoint``: a finished stage-1 run to start stage 2 from instead of training stage 1."""
    from training.avsync.train import PretrainConfig, pretrain
    from training.config import load_config

    metrics = {}
    if pretext_checkpoint is None:
        stage1 = load_config(PretrainConfig, CONFIGS / "avsync_default.yaml", fresh(cache_dir))
        metrics["pretext"] = pretrain(stage1)
        pretext_checkpoint = Path(stage1.out) / "best.pt"
    checkpoint = Path(pretext_checkpoint)
    for stage, name in (("region", "avsync_region.yaml"), ("keep", "avsync_keep.yaml")):
        cfg = load_config(PretrainConfig, CONFIGS / name, [*fresh(cache_dir), f"init={checkpoint}"])
        metrics[stage] = pretrain(cfg)
        checkpoint = Path(cfg.out) / "best.pt"
    extra = {"build": "python -m training build-defaults --tasks avsync (configs avsync_default.yaml, then "
                      "avsync_region.yaml, then avsync_keep.yaml)",
             "train_metrics": metrics}
    _publish_fresh(root, "avsync", checkpoint, EVAL_DATA["avsync"], cache_dir, extra)


# in dependency order: separation can start from the avsync checkpoint
BUILDERS = {"action": build_action, "avsync": build_avsync, "separation": build_separation}


def build_defaults(root: Path, tasks: list[str], cache_dir: str = "data/synthav") -> None:
    for task in tasks:
        if task not in BUILDERS:
            raise SystemExit(f"build-defaults: no builder for task {task!r} ({', '.join(BUILDERS)})")
        BUILDERS[task](root, cache_dir)
