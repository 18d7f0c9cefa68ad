from dataclasses import dataclass, field

import pytest

from training.action.train import ActionTrainConfig
from training.config import ConfigError, load_config, save_config


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 3


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  lr: 1\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "tags=[a, b]", "limit=4"])
    assert cfg == Outer(name="y", inner=Inner(lr=1.0, steps=7), tags=["a", "b"], limit=4)
    assert isinstance(cfg.inner.lr, float)


@pytest.mark.parametrize("override", ["inner.nope=1", "nope=1"])
def test_unknown_keys_rejected(override):
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(Outer, None, [override])


def test_wrong_type_and_bad_override_rejected():
    with pytest.raises(ConfigError):
        load_config(Outer, None, ["inner.steps=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["inner.steps"])


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(ActionTrainConfig, None, ["optim.epochs=2", "data.train=synthav:seed=5,n=8"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(ActionTrainConfig, tmp_path / "c.yaml") == cfg


def test_every_shipped_config_loads_and_names_a_registered_model():
    """The YAML files build-defaults and the README use: each loads into its config class (an unknown key or a
    wrong type fails) and names a model the registry knows."""
    from pathlib import Path

    from training.action.noisy.train import NoisyActionConfig
    from training.action.train import ActionTrainConfig
    from training.avsync.train import PretrainConfig
    from training.config import load_config
    from training.models import model_config
    from training.separation.train import SeparationTrainConfig

    classes = {"avsync": PretrainConfig, "separation": SeparationTrainConfig, "action_ntl": NoisyActionConfig,
               "action": ActionTrainConfig}
    paths = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        cls = next(c for prefix, c in classes.items() if path.stem.startswith(prefix))
        cfg = load_config(cls, path)
        model_config(cfg.model)  # raises for an unknown name
    region = load_config(PretrainConfig, paths[0].parent / "avsync_region.yaml")
    assert region.region_weight > 0 and region.init.endswith("avsync/best.pt")
    keep = load_config(PretrainConfig, paths[0].parent / "avsync_keep.yaml")
    assert keep.keep_weight > 0 and keep.init == f"{region.out}/best.pt"  # stage 3 starts from stage 2


def test_overrides_may_follow_an_option_on_the_command_line() -> None:
    from training.cli import parse_args

    args = parse_args(["train-action", "cfg.yaml", "optim.epochs=2", "--method", "ntl", "seed=1", "threads=1"])
    assert args.config == "cfg.yaml" and args.method == "ntl"
    assert args.overrides == ["optim.epochs=2", "seed=1", "threads=1"]
    with pytest.raises(SystemExit):
        parse_args(["train-action", "cfg.yaml", "--method", "ntl", "--no-such-option"])
    with pytest.raises(SystemExit):
        parse_args(["export", "--checkpoint", "x.pt", "seed=1"])  # export takes no overrides
