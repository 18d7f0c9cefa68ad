"""Fixtures for the data tests: real collections in each layout ``prepare`` reads, with bad files mixed in
(:mod:`layouts`), and their prepared manifests."""

from __future__ import annotations

import pytest
from layouts import build_kinetics, build_talking_heads, build_ucf101
from procs import torchrun

from training.data.prepare import prepare


@pytest.fixture(scope="session")
def ucf_layout(action_ds, tmp_path_factory):
    return build_ucf101(tmp_path_factory.mktemp("ucf"), action_ds)


@pytest.fixture(scope="session")
def kinetics_layout(action_ds, tmp_path_factory):
    return build_kinetics(tmp_path_factory.mktemp("kinetics"), action_ds)


@pytest.fixture(scope="session")
def heads_layout(speech_ds, tmp_path_factory):
    return build_talking_heads(tmp_path_factory.mktemp("heads"), speech_ds)


def _prepared(layout, tmp_path_factory, name: str, **kwargs):
    source, _ = layout
    out = tmp_path_factory.mktemp(f"manifest-{name}") / f"{name}.csv"
    summary = prepare(source, out, workers=1, progress=False, **kwargs)
    return out, summary


@pytest.fixture(scope="session")
def ucf_manifest(ucf_layout, tmp_path_factory):
    return _prepared(ucf_layout, tmp_path_factory, "ucf")


@pytest.fixture(scope="session")
def kinetics_manifest(kinetics_layout, tmp_path_factory):
    return _prepared(kinetics_layout, tmp_path_factory, "kinetics")


@pytest.fixture(scope="session")
def heads_manifest(heads_layout, tmp_path_factory):
    return _prepared(heads_layout, tmp_path_factory, "heads")


@pytest.fixture(scope="session")
def run_torchrun():
    """:func:`procs.torchrun` for tests in sub-folders (which cannot import it by name)."""
    return torchrun
