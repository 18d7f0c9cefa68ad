"""What cannot be built here (no Docker engine) is at least parsed and checked against the Makefile."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = compose["services"]["avscene"]
    assert gpu["build"]["target"] == "gpu" and "8000:8000" in gpu["ports"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert compose["services"]["avscene-cpu"]["build"]["target"] == "cpu"


def test_dockerfile_stages_install_the_serve_extra_and_run_the_app():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, flags=re.M)
    assert [name for _, name in stages] == ["cpu", "gpu"]
    assert "cudnn" in stages[1][0] and "python3.11" in text
    assert len(re.findall(r"pip install (?:--upgrade pip && pip install )?'\.\[serve\]'", text)) == 2
    assert text.count('CMD ["uvicorn", "app.main:app"') == 2
    assert not re.search(r"pip install [^\n]*torch", text)  # the serving image carries no torch
    for path in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (ROOT / path).exists(), path


def test_makefile_readme_and_ci_agree():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH \?= torch==2\.13\.0$", makefile, flags=re.M)
    assert "uvicorn app.main:app" in makefile and "pytest" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_pyproject_extras_and_torch_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) >= {"serve", "train", "dev"}
    (torch_req,) = [Requirement(r) for r in extras["train"] if r.startswith("torch")]
    assert torch_req.specifier.contains(Version("2.13.0"))
    assert not any(r.startswith("torch") for r in extras["serve"] + project["dependencies"])
    assert not any(Requirement(r).name == "onnxruntime" for r in project["dependencies"])
