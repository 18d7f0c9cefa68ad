"""Long requests as jobs (202 + Location, status with progress, cancel, restart) and ``POST /v1/analyze`` (every
analysis from one upload, one decode per distinct clip spec), on the shipped models and the tiny test model."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from media_files import write_encoded, write_video
from service_fixtures import test_settings
from test_admission import assert_503, held_inference
from test_server import REPO

import app.service
from app.main import create_app

SHIPPED = REPO / "model_store" / "models"
PROBLEM = "application/problem+json"


def post(client: TestClient, route: str, path: Path, prefer: str | None = None, **params) -> httpx.Response:
    headers = {"Prefer": prefer} if prefer else {}
    with open(path, "rb") as fh:
        return client.post(route, params=params, headers=headers, files={"file": (path.name, fh, "video/mp4")})


def poll(client: TestClient, location: str, until: tuple[str, ...] = ("done", "failed", "cancelled"),
         timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get(location).json()
        if status["status"] in until:
            return status
        time.sleep(0.02)
    raise AssertionError(f"{location} did not reach {until}: {status}")


def accepted(r: httpx.Response, kind: str) -> dict:
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == body["location"] and body["location"].endswith(f"/v1/jobs/{body['id']}")
    assert body["kind"] == kind and body["status"] in ("queued", "running") and body["result"] is None
    assert int(r.headers["retry-after"]) >= 1
    return body


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("jobs") / "av.mp4", seconds=2.5, width=96, height=64)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    results = tmp_path_factory.mktemp("shipped-results")
    with TestClient(create_app(test_settings(SHIPPED, results_dir=results))) as c:
        yield c


def test_analyze_runs_every_analysis_from_one_decode_per_clip_spec(shipped: TestClient, video: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[tuple[float, int, int, int]] = []
    decode = app.service.ServiceState.decode_clip  # every decode, in a worker process or thread

    async def counted(self, path, clip, *args):
        decodes.append((clip.fps, clip.height, clip.width, clip.sample_rate))
        return await decode(self, path, clip, *args)

    monkeypatch.setattr(app.service.ServiceState, "decode_clip", counted)
    r = post(shipped, "/v1/analyze", video, top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    specs = {t: shipped.get(f"/v1/models/{t}").json()["clip"] for t in ("action", "avsync", "separation")}
    distinct = {(c["fps"], c["height"], c["width"], c["sample_rate"]) for c in specs.values()}
    assert len(distinct) == 2 and sorted(decodes) == sorted(distinct)  # action and avsync share one decode
    assert body["duration_s"] == pytest.approx(2.5, abs=0.05) and body["has_audio"] is True
    monkeypatch.setattr(app.service.ServiceState, "decode_clip", decode)
    # each part is what its own route answers
    alone = post(shipped, "/v1/actions", video, top_k=3).json()
    assert body["actions"]["top_k"] == alone["top_k"] and body["actions"]["segments"] == alone["segments"]
    heat = post(shipped, "/v1/localization", video).json()
    assert body["localization"]["frames"] == heat["frames"] and body["localization"]["grid"] == heat["grid"]
    sep = body["separation"]
    assert sep["model"]["task"] == "separation" and sep["samples"] == round(sep["duration_s"] * sep["sample_rate"])
    assert shipped.get(sep["tracks"]["on_screen"]).status_code == 200


def test_analyze_refuses_bad_input_before_any_job(shipped: TestClient, tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    from media_files import write_image

    write_image(png, "PNG")
    r = post(shipped, "/v1/analyze", png, prefer="respond-async")
    assert r.status_code == 415 and r.headers["content-type"] == PROBLEM
    assert r.json()["detail"].startswith("not a video")
    assert post(shipped, "/v1/analyze", tmp_path / "x.png", hide="0.5,0.5,0.2,0.2").status_code == 422


def test_analyze_as_a_job(shipped: TestClient, video: Path) -> None:
    r = post(shipped, "/v1/analyze", video, prefer="respond-async", top_k=3)
    job = accepted(r, "analyze")
    assert r.headers["preference-applied"] == "respond-async"
    done = poll(shipped, job["location"])
    assert done["status"] == "done" and done["progress"] == 1.0 and done["detail"] is None
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    direct = post(shipped, "/v1/analyze", video, top_k=3).json()
    assert done["result"]["actions"] == direct["actions"]
    assert done["result"]["localization"]["frames"] == direct["localization"]["frames"]
    tracks = done["result"]["separation"]["tracks"]
    assert shipped.get(tracks["off_screen"]).headers["content-type"] == "audio/wav"
    assert shipped.delete(job["location"]).status_code == 204  # a finished job is removed
    assert shipped.get(job["location"]).status_code == 404


def test_long_videos_become_jobs_without_asking(store_root: Path, video: Path, tmp_path: Path) -> None:
    settings = test_settings(store_root, async_threshold_s=2.0, results_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        job = accepted(post(c, "/v1/analyze", video), "analyze")  # 2.5 s > 2 s
        assert "preference-applied" not in {k.lower() for k in c.headers}
        assert poll(c, job["location"])["result"]["actions"]["model"]["name"] == "tiny-action"
        short = write_video(tmp_path / "short.mp4", seconds=1.5)
        assert post(c, "/v1/analyze", short).status_code == 200  # short enough: answered at once


def test_job_life_cycle_running_with_progress_then_cancelled(store_root: Path, video: Path, tmp_path: Path) -> None:
    with TestClient(create_app(test_settings(store_root, results_dir=tmp_path))) as c, \
            held_inference(c) as (release, entered):
        job = accepted(post(c, "/v1/analyze", video, prefer="respond-async"), "analyze")
        assert entered.wait(10)
        running = c.get(job["location"]).json()
        assert running["status"] == "running" and 0 < running["progress"] < 1  # decoded, not yet inferred
        assert running["started_at"] is not None and running["finished_at"] is None
        budget = c.app.state.service.budgets["action"]
        assert (budget.requests, budget.windows) == (1, 3)  # the job holds its admission while it runs
        r = c.delete(job["location"])
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert r.json()["detail"] == "cancelled by the client"
        assert c.get(job["location"]).json()["status"] == "cancelled"
        assert (budget.requests, budget.windows) == (0, 0)
        release.set()
        assert c.delete(job["location"]).status_code == 204


def test_failed_job_says_why(store_root: Path, tmp_path: Path) -> None:
    one = write_encoded(tmp_path / "one.mp4", "libx264", frames=1)  # probes as a video, decodes to one picture
    with TestClient(create_app(test_settings(store_root, results_dir=tmp_path / "results"))) as c:
        job = accepted(post(c, "/v1/analyze", one, prefer="respond-async"), "analyze")
        failed = poll(c, job["location"])
        assert failed["status"] == "failed" and failed["result"] is None
        assert failed["detail"] == "not a video: the video stream holds a single picture"


def test_full_job_queue_is_503(store_root: Path, video: Path, tmp_path: Path) -> None:
    with TestClient(create_app(test_settings(store_root, results_dir=tmp_path, max_jobs=1))) as c, \
            held_inference(c) as (release, entered):
        first = accepted(post(c, "/v1/analyze", video, prefer="respond-async"), "analyze")
        body = assert_503(post(c, "/v1/analyze", video, prefer="respond-async"), "jobs-full")
        assert "1 jobs are queued or running (at most 1)" in body["detail"]
        release.set()
        assert poll(c, first["location"])["status"] == "done"
        assert post(c, "/v1/analyze", video, prefer="respond-async").status_code == 202


def test_stopping_the_service_fails_its_running_jobs(store_root: Path, video: Path, tmp_path: Path) -> None:
    """The service stops while a job waits for inference: the job ends failed, with no result, and stays so."""
    client = TestClient(create_app(test_settings(store_root, results_dir=tmp_path)))
    with client as c, held_inference(c) as (release, entered):
        job = accepted(post(c, "/v1/analyze", video, prefer="respond-async"), "analyze")
        assert entered.wait(10)
        threading.Timer(1.0, release.set).start()  # lets the held batch end once shutdown has begun
        c.__exit__(None, None, None)  # stop the service now, job unfinished
        record = json.loads((tmp_path / "jobs" / f"{job['id']}.json").read_text())
        assert record["status"] == "failed" and record["result"] is None
        assert record["detail"] == "the service stopped while the job was running"
    with TestClient(create_app(test_settings(store_root, results_dir=tmp_path))) as c:
        after = c.get(job["location"]).json()
        assert after["status"] == "failed" and after["detail"] == "the service stopped while the job was running"


def test_restart_marks_jobs_left_running_failed(store_root: Path, tmp_path: Path) -> None:
    """A process that died mid-job leaves its record 'running' and its upload behind: the next start marks it
    failed (its work died with the process), shows no partial result, and removes the upload."""
    jobs = tmp_path / "jobs"
    jobs.mkdir(parents=True)
    ids = {state: uuid.uuid4().hex for state in ("running", "queued", "done")}
    for state, job_id in ids.items():
        record = {"id": job_id, "kind": "analyze", "status": state, "created_at": time.time() - 60,
                  "progress": 0.5 if state == "running" else 0.0, "started_at": None, "finished_at": None,
                  "detail": None, "result": {"duration_s": 1.0} if state == "done" else None}
        (jobs / f"{job_id}.json").write_text(json.dumps(record))
        (jobs / f"{job_id}.upload").write_bytes(b"the upload")
    (jobs / f"{ids['running']}.tmp-1234abcd").write_text("{half a rec")
    with TestClient(create_app(test_settings(store_root, results_dir=tmp_path))) as c:
        for state in ("running", "queued"):
            r = c.get(f"/v1/jobs/{ids[state]}")
            assert r.status_code == 200
            body = r.json()
            assert body["status"] == "failed" and body["result"] is None
            assert body["detail"] == f"the service restarted while the job was {state}; submit it again"
        assert c.get(f"/v1/jobs/{ids['done']}").json()["result"] == {"duration_s": 1.0}
        assert sorted(p.name for p in jobs.iterdir()) == sorted(f"{i}.json" for i in ids.values())
        assert c.get(f"/v1/jobs/{uuid.uuid4().hex}").status_code == 404
        assert c.get("/v1/jobs/not-an-id").status_code == 404


def test_separation_as_a_job(tmp_path: Path, video: Path) -> None:
    """``POST /v1/separations`` with ``Prefer: respond-async``: the job's result is the separation, tracks and all."""
    with TestClient(create_app(test_settings(SHIPPED, tasks=["separation"], results_dir=tmp_path))) as c:
        job = accepted(post(c, "/v1/separations", video, prefer="respond-async"), "separation")
        done = poll(c, job["location"])
        assert done["status"] == "done", done
        sep = done["result"]
        assert sep["model"]["task"] == "separation" and sep["duration_s"] == pytest.approx(2.5, abs=0.05)
        assert c.get(sep["tracks"]["on_screen"]).status_code == 200
        assert c.get(f"/v1/separations/{sep['id']}").json()["id"] == sep["id"]
        assert post(c, "/v1/separations", video).status_code == 201  # short, not asked: answered at once


def test_stopping_just_as_a_job_finishes_stops_its_worker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The service stops in the instant between a job's end and its worker taking the result: the worker must end
    with the service (it once took the cancellation meant for it as the job's and waited for the next job for ever,
    so shutdown hung until the grace ran out)."""
    import asyncio

    from app.jobs import JobRecord, JobRunner

    async def scenario() -> tuple[list[asyncio.Task], JobRecord]:
        runner = JobRunner(tmp_path / "jobs", max_jobs=4, workers=1, ttl_s=60.0)
        await runner.start()
        workers = list(runner._workers)
        stopping: list[asyncio.Task] = []

        async def job(work, upload):
            # stop() starts before this task's end reaches the worker: its first step runs ahead of the callback
            # that hands this result to the worker (both are queued on the loop, in this order)
            stopping.append(asyncio.get_running_loop().create_task(runner.stop()))
            return {"answer": 42}

        record = runner.submit("analyze", job)
        while not stopping:
            await asyncio.sleep(0)
        await asyncio.wait_for(stopping[0], timeout=30)
        return workers, runner.get(record.id)

    with caplog.at_level("WARNING", logger="app.jobs"):
        workers, record = asyncio.run(scenario())
    assert all(task.done() for task in workers)
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()], caplog.text
    assert record.status == "done" and record.result == {"answer": 42}  # the finished job's result is kept
