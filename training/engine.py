"""The training engine every trainer runs on: one process or many under torchrun, checkpoints and resume, metrics.

The same command runs on one CPU, one GPU, or N processes::

    python -m training pretrain CONFIG key=value ...
    torchrun --standalone --nproc_per_node=N -m training pretrain CONFIG key=value ...

Under torchrun (``WORLD_SIZE`` > 1) each process joins the default process group (NCCL on CUDA, gloo on CPU) and
its model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`. Every trainer draws its *global*
batch from one stream seeded by the run's seed, the same on every rank, and each rank takes its own slice
(:meth:`Run.shard`), as :class:`~torch.utils.data.DistributedSampler` does: N processes see the batches that one
process would see. Per-rank randomness (dropout, torch's global generator) is seeded with ``seed + rank``.
Only rank 0 writes files.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.csv`` (one row per logged step and per
evaluation, written as training goes), ``last.pt`` (the full training state, written atomically every
``checkpoint_every`` steps, at every evaluation, on SIGTERM and at the end) and ``best.pt`` (the weights with the
best validation score). ``resume=auto`` continues from ``last.pt``; a directory that holds another run is never
overwritten unless ``overwrite=true``. The weights are always under the key ``state_dict`` and checkpoints load
with ``torch.load(..., weights_only=True)``.

Precision: on CUDA the models' forward runs under bf16 autocast (``precision=auto``), TF32 matmuls are allowed,
and trainers keep losses, STFTs and SI-SDR in fp32 (outside the autocast region, or with autocast disabled in the
module). On CPU everything is fp32.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training.utils import load_checkpoint, save_checkpoint, seed_everything

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# config fields that may differ between a run and its resumption
RESUME_FREE = ("resume", "overwrite", "progress", "threads", "device", "checkpoint_every", "log_every", "stop_after")



def _defaults(cls: type) -> dict[str, Any]:
    """A config class's defaults, as ``dataclasses.asdict`` gives them ({} when a field has none)."""
    try:
        return dataclasses.asdict(cls())
    except TypeError:
        return {}

class RunError(RuntimeError):
    """A run cannot start as configured (its directory holds another run, a resume does not fit, ...)."""


@dataclass
class RunOptions:
    """Fields every trainer's config shares (they stay top-level keys of its YAML)."""

    seed: int = 0
    deterministic: bool = False  # deterministic kernels where they exist (a warning where they do not)
    threads: int = 1  # torch CPU threads per process (0: torch's default)
    out: str = "runs/run"
    progress: bool = True
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is present, else cpu; or e.g. cpu, cuda:1
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; fp32 | bf16 | fp16
    checkpoint_every: int = 100  # steps between last.pt writes (also written at every evaluation and at the end)
    log_every: int = 10  # steps per metrics.csv row
    resume: str = ""  # '' (fresh run) | auto (continue from out/last.pt if it exists) | a last.pt path
    overwrite: bool = False  # replace a run directory that holds another run
    stop_after: int = 0  # stop as on SIGTERM (last.pt written) once this many steps are done; 0: run to the end


# ------------------------------------------------------------------------------------------------ the run


class Run:
    """One training run's context: process group, device, precision, run directory, checkpoints, metrics log.

    ``kind`` names the trainer (written into every checkpoint)."""

    def __init__(self, cfg: Any, kind: str) -> None:
        if cfg.precision not in PRECISIONS:
            raise RunError(f"precision={cfg.precision!r}: one of {', '.join(PRECISIONS)}")
        self.cfg, self.kind = cfg, kind
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = self._pick_device(cfg.device)
        self._own_group = False
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)
            self._own_group = True
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, self.rank, deterministic=cfg.deterministic)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype = self._amp_dtype(cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.out = Path(cfg.out)
        self.resume_from = self._prepare_dir()
        self.stop_requested = False
        self._old_sigterm = None
        self.metrics = MetricsLog(self.out / "metrics.csv") if self.is_main else None

    @classmethod
    def local(cls, device: torch.device | str = "cpu", kind: str = "local") -> Run:
        """A run without a directory, checkpoints or process group: one process training in memory (e.g. the
        many short runs of a benchmark). ``save`` does nothing; nothing is seeded here."""
        run = cls.__new__(cls)
        run.cfg = RunOptions(progress=False, log_every=1 << 30, checkpoint_every=1 << 30)
        run.kind, run.world_size, run.rank, run.local_rank = kind, 1, 0, 0
        run.device = torch.device(device)
        run._own_group = False
        run.amp_dtype = None
        run.scaler = torch.amp.GradScaler(run.device.type, enabled=False)
        run.out = None
        run.resume_from = None
        run.stop_requested = False
        run._old_sigterm = None
        run.metrics = None
        return run

    # -- setup

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{self.local_rank}")
        return device

    def _amp_dtype(self, precision: str) -> torch.dtype | None:
        if precision == "fp32" or (precision == "auto" and self.device.type != "cuda"):
            return None
        if precision == "fp16" and self.device.type != "cuda":
            raise RunError("precision=fp16 needs CUDA")
        return torch.float16 if precision == "fp16" else torch.bfloat16

    def _prepare_dir(self) -> Path | None:
        """The checkpoint to resume from, if any; refuses to write over another run. Rank 0 decides, writes the
        config, and tells the other ranks."""
        decision: tuple[str | None, str | None] = (None, None)  # (resume path, error)
        if self.is_main:
            try:
                resume = self._check_dir()
                decision = (str(resume) if resume else None, None)
            except RunError as exc:
                decision = (None, str(exc))
        decision = self.broadcast(decision)
        if decision[1] is not None:
            raise RunError(decision[1])
        self.barrier()
        return Path(decision[0]) if decision[0] else None

    def _check_dir(self) -> Path | None:
        from training.config import save_config

        cfg, out = self.cfg, self.out
        last = out / "last.pt"
        resume: Path | None = None
        if cfg.resume == "auto":
            resume = last if last.is_file() else None
        elif cfg.resume:
            resume = Path(cfg.resume)
            if not resume.is_file():
                raise RunError(f"resume={cfg.resume}: no such checkpoint")
        if resume is None and not cfg.overwrite and any((out / n).exists() for n in ("config.yaml", "last.pt",
                                                                                      "best.pt")):
            raise RunError(f"out={out} holds another run; pass resume=auto to continue it, overwrite=true to "
                           "replace it, or another out=")
        if resume is not None:
            saved = load_checkpoint(resume).get("config", {})
            now = dataclasses.asdict(cfg)
            defaults = _defaults(type(cfg))
            # a setting added after the run began (absent from its checkpoint) is no difference at its default
            diff = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k)
                          and not (k not in saved and k in defaults and now.get(k) == defaults[k]))
            if diff:
                raise RunError(f"resume from {resume}: the config differs in {', '.join(diff)}")
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            for name in ("metrics.csv", "last.pt", "best.pt"):
                (out / name).unlink(missing_ok=True)
        save_config(cfg, out / "config.yaml")
        return resume

    # -- collectives (no-ops in one process)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (rendering, decoding and caching data), the other ranks after it, so that
        they read its caches instead of writing the same files at once."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's contiguous slice of a global batch (len(items) must divide by the world size)."""
        n = len(items)
        if n % self.world_size:
            raise RunError(f"a global batch of {n} does not split over {self.world_size} processes")
        per = n // self.world_size
        return list(items[self.rank * per:(self.rank + 1) * per])

    def reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Sums over ranks of each value (float64)."""
        if not self.distributed:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. a statistic over the whole training set, computed once)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x`` concatenated along dim 0 in rank order: the global batch, differentiable. A loss over
        the whole global batch (a contrastive loss whose negatives are the other clips) computed from it on every
        rank gets the gradient of one process: the backward sums each rank's gradient for the piece it owns, and
        DDP's averaging over ranks undoes the sum's factor."""
        if not self.distributed:
            return x
        return _GatherBatch.apply(x, self.rank, self.world_size)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 only (None elsewhere): a whole-set statistic that only rank
        0 goes on with, without a copy of the whole on every rank. Tensors travel on the CPU."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so that evaluation agrees."""
        if self.distributed:
            for b in unwrap(model).buffers():
                dist.broadcast(b.data, src=0)

    # -- models and precision

    def wrap(self, fn: Callable[..., Any], *models: nn.Module) -> Callable[..., Any]:
        """``fn(*models, *args)`` as one callable per training step. Under torchrun it runs as the forward of a
        :class:`~torch.nn.parallel.DistributedDataParallel` module that holds ``models`` (BatchNorm synchronised
        on CUDA), so a step may call any of the models' methods, any number of times, and gradients are still
        averaged over the ranks; in one process it is ``fn`` itself. Move the models to ``run.device`` first."""
        if not self.distributed:
            return lambda *args: fn(*models, *args)
        holder = _StepModule(fn, models)
        if self.device.type == "cuda":
            holder = nn.SyncBatchNorm.convert_sync_batchnorm(holder)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(holder, device_ids=ids, find_unused_parameters=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 (or fp16) autocast on CUDA for the models' forward; a no-op in fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- checkpoints

    def checkpoint_payload(self, net: nn.Module, /, **fields: Any) -> dict[str, Any]:
        """``{"kind", **fields, "config", "state_dict", "world_size"}`` for ``net``'s weights."""
        return {"kind": self.kind, **fields, "config": dataclasses.asdict(self.cfg),
                "state_dict": unwrap(net).state_dict(), "world_size": self.world_size}

    def save(self, name: str, payload: dict[str, Any]) -> None:
        """Rank 0 writes ``out/name`` atomically (aside, then renamed); a local run writes nothing."""
        if self.is_main and self.out is not None:
            save_checkpoint(self.out / name, payload)

    # -- signals

    @contextlib.contextmanager
    def sigterm_guard(self) -> Iterator[None]:
        """While inside, SIGTERM only sets ``stop_requested``: the loop then writes last.pt and returns."""
        def handler(signum, frame):  # noqa: ARG001
            log.warning("SIGTERM: writing last.pt and stopping")
            self.stop_requested = True

        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self._old_sigterm = None
        try:
            yield
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)

    def close(self) -> None:
        """Leave the process group, all ranks together (a rank that tears its connections down while another
        still has work in flight aborts gloo's transport)."""
        if self._own_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class _GatherBatch(torch.autograd.Function):
    """all_gather along dim 0 whose backward all-reduces the gradient and keeps this rank's slice (gloo has no
    reduce_scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:  # noqa: ANN001
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


class _StepModule(nn.Module):
    """Holds a step's models so that DDP sees one forward per step: ``forward(*args) = fn(*models, *args)``."""

    def __init__(self, fn: Callable[..., Any], models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.fn = fn
        self.models = nn.ModuleList(models)

    def forward(self, *args: Any) -> Any:
        return self.fn(*self.models, *args)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------ metrics


class MetricsLog:
    """``metrics.csv``: one row per logged step or evaluation; columns grow as new metrics appear (the file is
    rewritten atomically when they do, and appended to otherwise)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["step"]
        if path.is_file():
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or ["step"])
                self.rows = [{k: v for k, v in row.items() if v != ""} for row in reader]

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (a resumed run redoes them)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self._rewrite()

    def add(self, row: dict[str, Any]) -> None:
        row = {k: _fmt(v) for k, v in row.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not self.path.is_file():
            self.columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as fh:
                csv.DictWriter(fh, self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, self.columns)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


# ------------------------------------------------------------------------------------------------ RNG state


def rng_state(generators: dict[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """Every generator's state (python, numpy's global, torch CPU and CUDA, and the trainer's numpy
    ``generators``), as types ``torch.load(weights_only=True)`` accepts."""
    legacy = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (legacy[0], torch.from_numpy(legacy[1].astype(np.int64)), *legacy[2:]),
        "torch": torch.get_rng_state(),
        "generators": {k: g.bit_generator.state for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, np.random.Generator] | None = None) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (generators or {}).items():
        g.bit_generator.state = state["generators"][k]


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class Loop:
    """What a trainer hands to :func:`fit`.

    - ``step(i)`` runs the forward for optimisation step ``i`` (0-based) and returns ``(loss, logs, windows)``: the
      loss to back-propagate, per-step scalars to log (means over this rank's batch) and the number of windows this
      rank processed; the engine does zero_grad, backward (scaled in fp16), gradient clipping, the optimizer and
      scheduler steps.
    - ``round_end(r, i)`` is called after every ``round_steps`` steps (an epoch, or ``eval_every``) with the round
      index and the steps done: it evaluates, saves ``best.pt`` through the run and returns metrics to log.
    - ``state()`` / ``load_state(d)``: the trainer's own state for ``last.pt`` (its history, best score, data
      generators, ...), beside the models, optimizers, schedulers and global RNGs the engine saves itself.

    A trainer with phases that change optimizers (NTL) runs one loop per phase: ``offset`` is the run's step at
    which this loop starts and ``total`` the run's steps over all phases. Checkpoints count the run's steps; a
    resumed run skips the phases its checkpoint is past (restoring the models and the trainer's state only).
    """

    models: list[nn.Module]
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    steps: int
    round_steps: int
    step: Callable[[int], tuple[torch.Tensor, dict[str, float], int]]
    round_end: Callable[[int, int], dict[str, float]]
    state: Callable[[], dict[str, Any]] = dict
    load_state: Callable[[dict[str, Any]], None] = lambda _d: None
    generators: dict[str, np.random.Generator] = dataclasses.field(default_factory=dict)
    clip_grad: float | None = None
    payload: Callable[[], dict[str, Any]] = dict  # extra checkpoint fields (kind-specific provenance)
    offset: int = 0
    total: int | None = None  # the run's steps over all its loops (default: ``steps``)

    @property
    def end(self) -> int:
        return self.offset + self.steps


def fit(run: Run, loop: Loop) -> int:
    """Run ``loop`` from its first step, or from ``last.pt`` when resuming, to its last; returns the loop's steps
    done (fewer than ``loop.steps`` only after SIGTERM or ``stop_after``)."""
    done = 0
    if run.resume_from is not None:
        ckpt = load_checkpoint(run.resume_from)
        at, same = int(ckpt["step"]), int(ckpt.get("loop_offset", 0)) == loop.offset
        if not same and at >= loop.end:  # a later phase's checkpoint: this phase is done
            _restore_models(loop, ckpt)
            log.info("resume: %s is past steps %d-%d; skipped", run.resume_from, loop.offset, loop.end)
            return loop.steps
        if same:
            done = _restore(run, loop, ckpt) - loop.offset
        elif at == loop.offset:  # the previous phase has just finished: this one starts afresh from its weights
            _restore_models(loop, ckpt)
            if ckpt.get("world_size", 1) == run.world_size:
                set_rng_state(ckpt["rng"][run.rank], loop.generators)
        else:
            raise RunError(f"resume: {run.resume_from} (step {at}) fits no phase of this run")
        log.info("resumed from %s at step %d", run.resume_from, loop.offset + done)
        if run.metrics is not None:
            run.metrics.truncate(loop.offset + done)
        run.resume_from = None
    params = [p for m in loop.models for p in m.parameters() if p.requires_grad]
    bar = _progress(run, loop.total or loop.end, loop.offset + done)
    window = {"t": time.perf_counter(), "windows": 0.0, "n": 0, "sums": {}}
    with run.sigterm_guard():
        while done < loop.steps and not run.stop_requested:
            if run.cfg.stop_after and loop.offset + done >= run.cfg.stop_after:
                log.info("stop_after=%d: writing last.pt and stopping", run.cfg.stop_after)
                run.stop_requested = True
                _save_last(run, loop, done)
                break
            for m in loop.models:
                m.train()
            loss, logs, windows = loop.step(done)
            for opt in loop.optimizers:
                opt.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            if loop.clip_grad is not None:
                for opt in loop.optimizers:
                    run.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, loop.clip_grad)
            for opt in loop.optimizers:
                run.scaler.step(opt)
            run.scaler.update()
            for sched in loop.schedulers:
                sched.step()
            done += 1
            window["windows"] += windows
            window["n"] += 1
            for k, v in logs.items():
                window["sums"][k] = window["sums"].get(k, 0.0) + float(v)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()}, refresh=False)
            if (loop.offset + done) % run.cfg.log_every == 0 or done == loop.steps:
                _log_window(run, loop, loop.offset + done, window)
            end_of_round = done % loop.round_steps == 0 or done == loop.steps
            if end_of_round:
                for m in loop.models:
                    run.sync_buffers(m)
                metrics = loop.round_end(math.ceil(done / loop.round_steps) - 1, done)
                if run.metrics is not None and metrics:
                    run.metrics.add({"step": loop.offset + done, **metrics})
            if end_of_round or done % run.cfg.checkpoint_every == 0 or run.stop_requested or done == loop.steps:
                _save_last(run, loop, done)
    if bar is not None:
        bar.close()
    return done


def fit_to_best(run: Run, loop: Loop, st: dict[str, Any], at: str = "step") -> dict[str, Any]:
    """:func:`fit`, then what a trainer answers: the best evaluation's ``val_*`` metrics, where it was (``at``:
    step or epoch) and the training seconds, from the trainer's state ``st`` (``best`` with ``val`` and ``at``,
    ``seconds``); or where the run stopped early."""
    try:
        done = fit(run, loop)
    finally:
        run.close()
    if run.stop_requested:
        return stopped(run, done)
    best = st["best"]
    return {**val_metrics(best["val"]), at: best[at], "train_seconds": st["seconds"]}


def val_metrics(va: dict[str, float]) -> dict[str, float]:
    """Validation metrics as checkpoints and answers name them: ``val_<name>``."""
    return {f"val_{k}": float(v) for k, v in va.items()}


def stopped(run: Run, done: int) -> dict[str, Any]:
    """What a trainer returns when its run stopped early (SIGTERM, ``stop_after``): where, and how to go on."""
    return {"stopped": True, "step": done, "last": str(run.out / "last.pt") if run.out else None,
            "resume": "resume=auto"}


def _log_window(run: Run, loop: Loop, done: int, window: dict) -> None:
    n = window["n"]
    if n == 0:
        return
    sums = run.reduce_sums({**window["sums"], "_windows": window["windows"], "_n": float(n)})
    seconds = time.perf_counter() - window["t"]
    row: dict[str, Any] = {"step": done}
    ranks_n = sums.pop("_n")
    windows = sums.pop("_windows")
    row.update({k: sums[k] / ranks_n for k in window["sums"]})  # the trainer's order
    row["lr"] = loop.optimizers[0].param_groups[0]["lr"]
    row["windows_per_s"] = windows / max(seconds, 1e-9)
    if run.metrics is not None:
        run.metrics.add(row)
    window.update(t=time.perf_counter(), windows=0.0, n=0, sums={})


def _save_last(run: Run, loop: Loop, done: int) -> None:
    if run.out is None:  # a local run keeps nothing
        return
    payload = {
        **loop.payload(),
        **run.checkpoint_payload(loop.models[0]),
        "models": [unwrap(m).state_dict() for m in loop.models],
        "optimizers": [o.state_dict() for o in loop.optimizers],
        "schedulers": [s.state_dict() for s in loop.schedulers],
        "scaler": run.scaler.state_dict(),
        "step": loop.offset + done,
        "loop_offset": loop.offset,
        "finished": loop.offset + done >= (loop.total or loop.end),
        "trainer": loop.state(),
        "rng": run.gather(rng_state(loop.generators)),  # one entry per rank
    }
    run.save("last.pt", payload)


def _restore_models(loop: Loop, ckpt: dict[str, Any]) -> None:
    for m, sd in zip(loop.models, ckpt["models"], strict=False):
        unwrap(m).load_state_dict(sd)
    loop.load_state(ckpt["trainer"])


def _restore(run: Run, loop: Loop, ckpt: dict[str, Any]) -> int:
    if ckpt.get("world_size", 1) != run.world_size:
        log.warning("resuming a run of %s processes on %s: data order and RNG streams differ from an "
                    "uninterrupted run", ckpt.get("world_size"), run.world_size)
    for m, sd in zip(loop.models, ckpt["models"], strict=True):
        unwrap(m).load_state_dict(sd)
    for o, sd in zip(loop.optimizers, ckpt["optimizers"], strict=True):
        o.load_state_dict(sd)
    for s, sd in zip(loop.schedulers, ckpt["schedulers"], strict=True):
        s.load_state_dict(sd)
    run.scaler.load_state_dict(ckpt["scaler"])
    loop.load_state(ckpt["trainer"])
    if ckpt.get("world_size", 1) == run.world_size:
        set_rng_state(ckpt["rng"][run.rank], loop.generators)
    return int(ckpt["step"])


def _progress(run: Run, total: int, initial: int):
    if not (run.cfg.progress and run.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=run.kind, unit="step", dynamic_ncols=True)
