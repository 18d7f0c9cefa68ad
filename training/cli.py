"""``python -m training <command>``: synth, prepare, pretrain, train-action, train-separation, export, evaluate,
build-defaults, noise-benchmark, voices."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model_store import DEFAULT_ROOT

log = logging.getLogger("training")

EVAL_TASKS = ("action", "alignment", "localization", "separation")
AVSYNC_EVALS = ("alignment", "localization")  # both score the published avsync model


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.data import synthav

    if args.kind.startswith("speech"):
        from training.data.synthav_speech import write_speech_dataset

        print(write_speech_dataset(args.out, n=args.n, seed=args.seed, kind=args.kind, voices=args.voices,
                                   workers=args.workers, progress=True))
        return 0
    if args.kind != "actions":
        print(f"synth: kind {args.kind!r} is not available yet (actions)", file=sys.stderr)
        return 2
    index = synthav.write_action_dataset(args.out, n=args.n, seed=args.seed, progress=True, workers=args.workers)
    print(index)
    return 0


def _train(cls, train_fn, config: str | None, overrides: list[str]) -> int:
    """Load a run config (YAML + ``key=value`` overrides), train, print the checkpoint and metrics as JSON."""
    import os

    from training.config import load_config
    from training.data.collection import ManifestError
    from training.data.streaming import DataFailure

    cfg = load_config(cls, config, overrides)
    try:
        metrics = train_fn(cfg)
    except (DataFailure, ManifestError) as exc:  # bad data: a message, not a traceback (on every rank)
        log.error("%s", exc)
        print(f"training stopped: {exc}", file=sys.stderr)
        return 3
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one answer
        print(json.dumps({"checkpoint": str(Path(cfg.out) / "best.pt"), **metrics}))
    return 0


def _cmd_train_action(args: argparse.Namespace) -> int:
    config, overrides = _split_config_args(args.config, args.overrides)
    if args.method:  # noise-robust training on noisily labelled / paired data (training/action/noisy)
        from training.action.noisy.train import NoisyActionConfig, train_action_noisy

        return _train(NoisyActionConfig, train_action_noisy, config, [*overrides, f"method={args.method}"])
    from training.action.train import ActionTrainConfig, train_action

    return _train(ActionTrainConfig, train_action, config, overrides)


def _cmd_train_separation(args: argparse.Namespace) -> int:
    from training.separation.train import SeparationTrainConfig, train_separation

    return _train(SeparationTrainConfig, train_separation, *_split_config_args(args.config, args.overrides))


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from training.avsync.train import PretrainConfig, pretrain

    return _train(PretrainConfig, pretrain, *_split_config_args(args.config, args.overrides))


def _split_config_args(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: a first argument with '=' is an override, not a file."""
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, list(overrides)


def _cmd_export(args: argparse.Namespace) -> int:
    from model_store.registry import ModelStore
    from training.publish import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, ModelStore(args.root), eval_data=args.eval_data,
                                 alias=args.alias or None)
    print(json.dumps({"task": manifest.task, "version": manifest.version, "metrics": manifest.metrics}))
    return 0


def _cmd_evaluate_avsync(args: argparse.Namespace) -> int:
    from model_store.registry import ModelStore
    from model_store.runtime import load_model
    from training.data.datasets import read_records, resolve_data

    version = int(args.version) if args.version and args.version.isdigit() else args.version
    model = load_model(ModelStore(args.root), "avsync", version)
    records = read_records(resolve_data(args.data, args.cache_dir))
    result = {"task": args.task, "model": model.manifest.name, "version": model.manifest.version, "data": args.data}
    if args.task == "alignment":
        from training.avsync.train import eval_shifts, load_eval_clips, score_alignment

        clips = load_eval_clips(records, model.manifest.clip, progress=not args.quiet)
        shifts = eval_shifts(model.manifest)
        result.update(score_alignment(model, clips, shifts), shift_s=list(shifts))
    else:
        from training.avsync.score import score_localization

        result.update(score_localization(model, records, progress=not args.quiet))
    text = json.dumps(result)
    if args.json and args.json != "-":
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.task in AVSYNC_EVALS:
        return _cmd_evaluate_avsync(args)
    if args.task == "separation":
        from training.separation.score import cli_evaluate

        return cli_evaluate(args)
    from model_store.registry import ModelStore
    from model_store.runtime import load_model
    from training.action.score import decode_eval_set, score_action
    from training.data.datasets import read_records, resolve_data

    store = ModelStore(args.root)
    version = int(args.version) if args.version and args.version.isdigit() else args.version
    model = load_model(store, args.task, version)
    records = read_records(resolve_data(args.data, args.cache_dir))
    clips = decode_eval_set(records, model.manifest.clip, model.manifest.labels, progress=not args.quiet,
                            multi_label=model.manifest.multi_label)
    result = {"task": args.task, "version": model.manifest.version, "data": args.data,
              **score_action(model, clips, zero=args.zero)}
    if args.zero:
        result["zeroed"] = args.zero
    text = json.dumps(result)
    if args.json and args.json != "-":
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def _cmd_build_defaults(args: argparse.Namespace) -> int:
    from training.build_defaults import build_defaults

    build_defaults(Path(args.root), tasks=args.tasks.split(","), cache_dir=args.cache_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render a SynthAV dataset directory")
    s.add_argument("--kind", default="actions",
                   choices=["actions", "speech", "speech_plain", "speech_same_pitch", "speech_two_faces"])
    s.add_argument("--voices", help="speech: a folder of voice recordings (any sample rate) instead of synthetic")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=2, help="rendering processes")
    s.set_defaults(func=_cmd_synth)

    t = sub.add_parser("train-action", help="train the audio-visual action classifier")
    t.add_argument("config", nargs="?", help="YAML config (optional)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.epochs=3")
    t.add_argument("--method", choices=["ce", "gce", "sce", "coteaching", "ntl"],
                   help="train on noise-injected data with this method (config: training/configs/action_ntl.yaml)")
    t.set_defaults(func=_cmd_train_action)

    ts = sub.add_parser("train-separation", help="train the on/off-screen separation U-Net")
    ts.add_argument("config", nargs="?", help="YAML config (optional)")
    ts.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.steps=100")
    ts.set_defaults(func=_cmd_train_separation)

    pt = sub.add_parser("pretrain", help="self-supervised audio-visual sync pretext (avsync)")
    pt.add_argument("config", nargs="?", help="YAML config (optional)")
    pt.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.steps=100")
    pt.set_defaults(func=_cmd_pretrain)

    e = sub.add_parser("export", help="ONNX export, checks, publish to the store (new version)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--root", default=str(DEFAULT_ROOT), help="model store root")
    e.add_argument("--eval-data", help="score before publishing, e.g. synthav:seed=1000,n=200")
    e.add_argument("--alias", default="production", help="alias to point at the new version ('' for none)")
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("evaluate", help="score a published ONNX model through model_store")
    v.add_argument("task", choices=EVAL_TASKS)
    v.add_argument("--data", required=True, help="synthav:seed=S,n=N or a dataset directory/CSV")
    v.add_argument("--version", default="production", help="version number, alias or 'latest'")
    v.add_argument("--root", default=str(DEFAULT_ROOT))
    v.add_argument("--json", help="write the result here too ('-' for stdout only)")
    v.add_argument("--zero", choices=["video", "audio"], help="feed zeros for one modality")
    v.add_argument("--cache-dir", default="data/synthav")
    v.add_argument("-q", "--quiet", action="store_true")
    v.set_defaults(func=_cmd_evaluate)

    b = sub.add_parser("build-defaults", help="regenerate the shipped default models from scratch")
    b.add_argument("--root", default=str(DEFAULT_ROOT))
    b.add_argument("--tasks", default="action,avsync,separation", help="comma-separated (default: all)")
    b.add_argument("--cache-dir", default="data/synthav")
    b.set_defaults(func=_cmd_build_defaults)

    from training.action.noise_benchmark import add_parser as add_noise_benchmark
    from training.data.prepare import add_parser as add_prepare
    from training.data.voices import add_parser as add_voices

    add_prepare(sub)
    add_voices(sub)
    add_noise_benchmark(sub)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``key=value`` overrides may also follow an option (``train-action CONFIG --method ntl
    seed=1``), where argparse alone would refuse them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.func(args)
