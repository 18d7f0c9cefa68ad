"""Triton-like on-disk registry: ``<root>/<task>/<version>/{model.onnx, manifest.json}`` + ``aliases.json``.

Publishing writes a version aside, fsyncs it and renames it into place, so a reader never sees half a
model. Loading verifies the sha256 recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model_store import DEFAULT_ROOT
from model_store.manifest import TASKS, Manifest

log = logging.getLogger(__name__)

ALIASES = "aliases.json"
DEFAULT_ALIAS = "production"


class RegistryError(Exception):
    """A model cannot be found, resolved or trusted."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on a directory (no lock file left behind); serialises alias updates."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ModelStore:
    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def _task_dir(self, task: str) -> Path:
        if task not in TASKS:
            raise RegistryError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
        return self.root / task

    def tasks(self) -> list[str]:
        return [t for t in TASKS if self.versions(t)]

    def versions(self, task: str) -> list[int]:
        d = self._task_dir(task)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "manifest.json").is_file())

    def aliases(self, task: str) -> dict[str, int]:
        path = self._task_dir(task) / ALIASES
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path} is unreadable: {exc}") from exc
        return {str(k): int(v) for k, v in data.items()}

    def resolve(self, task: str, version: int | str | None = DEFAULT_ALIAS) -> int:
        """A version number from a number, a numeric string, an alias, or None/"latest" for the newest."""
        available = self.versions(task)
        if not available:
            raise RegistryError(f"no {task} model is published under {self.root}")
        if version is None or version == "latest":
            return available[-1]
        if isinstance(version, str) and not version.isdigit():
            aliases = self.aliases(task)
            if version not in aliases:
                if version == DEFAULT_ALIAS:  # no alias file: the newest version serves
                    return available[-1]
                raise RegistryError(f"{task} has no alias {version!r} (aliases: {sorted(aliases)})")
            version = aliases[version]
        number = int(version)
        if number not in available:
            raise RegistryError(f"{task} has no version {number} (versions: {available})")
        return number

    def manifest(self, task: str, version: int | str | None = DEFAULT_ALIAS) -> Manifest:
        number = self.resolve(task, version)
        path = self._task_dir(task) / str(number) / "manifest.json"
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path} is not a valid manifest: {exc}") from exc

    def load(self, task: str, version: int | str | None = DEFAULT_ALIAS) -> tuple[Manifest, Path]:
        """The manifest and the verified model path; refuses a file whose sha256 differs from the manifest's."""
        manifest = self.manifest(task, version)
        path = self._task_dir(task) / str(manifest.version) / manifest.file
        if not path.is_file():
            raise RegistryError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != manifest.sha256:
            raise RegistryError(
                f"{task} v{manifest.version}: {path.name} has sha256 {actual[:12]}..., "
                f"the manifest says {manifest.sha256[:12]}...; refusing a modified or corrupt model"
            )
        return manifest, path

    def publish(
        self, onnx_path: str | Path, manifest_fields: dict[str, Any], alias: str | None = DEFAULT_ALIAS
    ) -> Manifest:
        """Copy ``onnx_path`` in as the next version of ``manifest_fields['task']``; returns its manifest."""
        task = manifest_fields["task"]
        task_dir = self._task_dir(task)
        task_dir.mkdir(parents=True, exist_ok=True)
        staging = task_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            target = staging / "model.onnx"
            shutil.copyfile(onnx_path, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            fields = {**manifest_fields, "sha256": sha256_file(target), "file": "model.onnx"}
            for _ in range(100):  # another publisher may take the number first; then take the next one
                number = (self.versions(task) or [0])[-1] + 1
                manifest = Manifest.model_validate({**fields, "version": number})
                _write_atomic(staging / "manifest.json", manifest.model_dump_json(indent=2).encode())
                _fsync_dir(staging)
                try:
                    os.rename(staging, task_dir / str(number))
                except OSError:
                    if (task_dir / str(number)).exists():
                        continue
                    raise
                break
            else:
                raise RegistryError(f"could not claim a version number for {task}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(task_dir)
        if alias:  # a concurrent publisher may have set a newer version already: keep that one
            self._set_alias(task, alias, manifest.version, newer_only=True)
        log.info("published %s v%d to %s", task, manifest.version, task_dir)
        return manifest

    def set_alias(self, task: str, alias: str, version: int) -> None:
        self._set_alias(task, alias, version, newer_only=False)

    def _set_alias(self, task: str, alias: str, version: int, newer_only: bool) -> None:
        if version not in self.versions(task):
            raise RegistryError(f"{task} has no version {version}")
        task_dir = self._task_dir(task)
        with _dir_lock(task_dir):  # read-modify-write: concurrent updates must not lose each other
            aliases = self.aliases(task)
            if newer_only and aliases.get(alias, 0) > version:
                return
            aliases[alias] = version
            _write_atomic(task_dir / ALIASES, json.dumps(aliases, indent=2, sort_keys=True).encode())
