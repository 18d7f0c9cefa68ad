from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from model_store.manifest import Manifest
from model_store.registry import ModelStore, RegistryError, sha256_file


def _leftovers(task_dir: Path) -> list[str]:
    return sorted(p.name for p in task_dir.iterdir() if p.name.startswith("."))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_publish_numbers_versions_and_sets_production(store, onnx_file, manifest_fields):
    m1 = store.publish(onnx_file, manifest_fields())
    m2 = store.publish(onnx_file, manifest_fields(name="second"))
    assert (m1.version, m2.version) == (1, 2)
    assert store.versions("action") == [1, 2]
    assert store.tasks() == ["action"]
    task_dir = store.root / "action"
    assert json.loads((task_dir / "aliases.json").read_text()) == {"production": 2}
    for m in (m1, m2):
        version_dir = task_dir / str(m.version)
        assert sorted(p.name for p in version_dir.iterdir()) == ["manifest.json", "model.onnx"]
        on_disk = Manifest.model_validate_json((version_dir / "manifest.json").read_text())
        assert on_disk == m
        assert m.sha256 == sha256_file(onnx_file) == sha256_file(version_dir / "model.onnx")
        assert m.file == "model.onnx"
    assert _leftovers(task_dir) == []  # no staging dir, no temp alias file


def test_publish_with_other_alias_or_none(store, onnx_file, manifest_fields):
    store.publish(onnx_file, manifest_fields())
    store.publish(onnx_file, manifest_fields(), alias="staging")
    store.publish(onnx_file, manifest_fields(), alias=None)
    assert store.aliases("action") == {"production": 1, "staging": 2}
    assert store.resolve("action") == 1  # production is the default
    assert store.resolve("action", "staging") == 2
    assert store.resolve("action", "latest") == 3


def test_resolve_forms(store, onnx_file, manifest_fields):
    for _ in range(3):
        store.publish(onnx_file, manifest_fields())
    store.set_alias("action", "production", 2)
    store.set_alias("action", "canary", 3)
    assert store.resolve("action", 1) == 1
    assert store.resolve("action", "3") == 3
    assert store.resolve("action", "production") == 2
    assert store.resolve("action") == 2
    assert store.resolve("action", "canary") == 3
    assert store.resolve("action", "latest") == 3
    assert store.resolve("action", None) == 3
    assert store.manifest("action", "production").version == 2
    manifest, path = store.load("action", "canary")
    assert manifest.version == 3 and path == store.root / "action" / "3" / "model.onnx"


def test_production_without_alias_file_is_newest(store, onnx_file, manifest_fields):
    store.publish(onnx_file, manifest_fields(), alias=None)
    store.publish(onnx_file, manifest_fields(), alias=None)
    assert not (store.root / "action" / "aliases.json").exists()
    assert store.resolve("action") == 2


def test_resolve_errors(store, onnx_file, manifest_fields):
    with pytest.raises(RegistryError, match="no action model is published"):
        store.resolve("action")
    with pytest.raises(RegistryError, match="no avsync model"):
        store.load("avsync", "latest")
    with pytest.raises(RegistryError, match="unknown task 'detection'"):
        store.resolve("detection", 1)
    store.publish(onnx_file, manifest_fields())
    with pytest.raises(RegistryError, match="no version 7"):
        store.resolve("action", 7)
    with pytest.raises(RegistryError, match="no version 0"):
        store.resolve("action", "0")
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        store.resolve("action", "canary")
    with pytest.raises(RegistryError, match="no version 5"):
        store.set_alias("action", "canary", 5)
    with pytest.raises(RegistryError, match="unknown task"):
        store.publish(onnx_file, manifest_fields(task="detection"))


def test_alias_to_a_removed_version_is_an_error(store, onnx_file, manifest_fields):
    store.publish(onnx_file, manifest_fields())
    store.publish(onnx_file, manifest_fields(), alias=None)
    (store.root / "action" / "aliases.json").write_text(json.dumps({"production": 9}))
    with pytest.raises(RegistryError, match="no version 9"):
        store.resolve("action")
    (store.root / "action" / "aliases.json").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        store.resolve("action", "production")


def test_load_verifies_sha256(store, onnx_file, manifest_fields):
    store.publish(onnx_file, manifest_fields())
    manifest, path = store.load("action")
    assert sha256_file(path) == manifest.sha256
    with open(path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(RegistryError, match="refusing a modified or corrupt model") as info:
        store.load("action")
    assert "sha256" in str(info.value) and "v1" in str(info.value)
    path.unlink()
    with pytest.raises(RegistryError, match="missing"):
        store.load("action")


def test_corrupt_manifest_is_a_registry_error(store, onnx_file, manifest_fields):
    store.publish(onnx_file, manifest_fields())
    (store.root / "action" / "1" / "manifest.json").write_text('{"task": "action"}')
    with pytest.raises(RegistryError, match="not a valid manifest"):
        store.load("action", 1)


def test_failed_publish_leaves_nothing_behind(store, onnx_file, manifest_fields, tmp_path):
    good = store.publish(onnx_file, manifest_fields())
    task_dir = store.root / "action"
    before = sorted(p.name for p in task_dir.iterdir())
    aliases_before = (task_dir / "aliases.json").read_bytes()

    with pytest.raises(ValidationError, match="labels"):
        store.publish(onnx_file, manifest_fields(labels=[]))
    with pytest.raises(ValidationError):
        store.publish(onnx_file, manifest_fields(unexpected="field"))
    with pytest.raises(FileNotFoundError):
        store.publish(tmp_path / "missing.onnx", manifest_fields())

    assert sorted(p.name for p in task_dir.iterdir()) == before
    assert _leftovers(task_dir) == []
    assert (task_dir / "aliases.json").read_bytes() == aliases_before
    assert store.versions("action") == [1]
    assert store.load("action")[0] == good
    # and the next good publish takes the next number
    assert store.publish(onnx_file, manifest_fields()).version == 2


def test_partial_version_dir_is_ignored(store, onnx_file, manifest_fields):
    """A directory without a manifest (e.g. copied by hand, half-way) is not a version."""
    store.publish(onnx_file, manifest_fields())
    (store.root / "action" / "2").mkdir()
    assert store.versions("action") == [1]
    with pytest.raises(RegistryError):
        store.resolve("action", 2)


def test_concurrent_publishes_get_distinct_versions(store, onnx_file, manifest_fields):
    n = 8
    results: list[Manifest] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def publish(i: int) -> None:
        try:
            barrier.wait()
            results.append(store.publish(onnx_file, manifest_fields(name=f"m{i}")))
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(m.version for m in results) == list(range(1, n + 1))
    assert store.versions("action") == list(range(1, n + 1))
    task_dir = store.root / "action"
    assert _leftovers(task_dir) == []
    for m in results:  # every directory holds the manifest of the publisher that claimed it
        assert store.manifest("action", m.version).name == m.name
        store.load("action", m.version)
    # alias updates are serialised and never move production back to an older concurrent version
    assert store.aliases("action") == {"production": n}


def test_concurrent_alias_updates_are_not_lost(store, onnx_file, manifest_fields):
    store.publish(onnx_file, manifest_fields())
    names = [f"alias{i}" for i in range(16)]
    barrier = threading.Barrier(len(names))

    def set_alias(name: str) -> None:
        barrier.wait()
        store.set_alias("action", name, 1)

    threads = [threading.Thread(target=set_alias, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.aliases("action") == {"production": 1, **dict.fromkeys(names, 1)}
    assert _leftovers(store.root / "action") == []


def test_set_alias_can_roll_back(store, onnx_file, manifest_fields):
    for _ in range(3):
        store.publish(onnx_file, manifest_fields())
    store.set_alias("action", "production", 1)
    assert store.resolve("action") == 1
    assert store.publish(onnx_file, manifest_fields()).version == 4
    assert store.resolve("action") == 4
