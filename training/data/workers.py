"""Where worker processes come from: forked from a fork server, never from the calling process.

The processes that decode for training (DataLoader workers) and the pools that probe, decode or render files are
forked from one small server process started for the purpose (``multiprocessing``'s "forkserver" start method), not
from the process that asks for them. That process is usually running threads: gloo's under torchrun, the queue feeder
of a loader still open, ONNX Runtime's or a web server's in the tests. A child forked beside a thread that holds a
lock can wait on that lock for ever; it happened here (a rank's validation worker forked beside the live training
loader hung at fork), and a stuck rank stalled a whole test run. The server starts once per process, imports
:data:`PRELOAD` once, and forks each worker from that single-threaded state, so a worker starts about as fast as a
plain fork.

What a worker needs travels to it pickled (a loader's dataset, a pool's function and arguments): datasets keep
to picklable state and reopen their files and memory maps where they land. As with every start method but plain
fork, a worker imports the script that started the program: a script of your own that trains, prepares or
decodes with workers must keep its top level to definitions and call its work under ``if __name__ ==
"__main__":`` (``python -m training`` and the scripts in ``benchmarks/`` do; without it Python stops at the
first worker with a RuntimeError that says so).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

# imported once by the fork server (a name that fails to import is skipped by multiprocessing)
PRELOAD = ["numpy", "torch", "av", "training.data.streaming", "training.data.prepare", "training.data.datasets",
           "training.data.synthav", "training.data.synthav_speech", "training.avsync.stream",
           "training.action.noisy.stream", "training.separation.stream"]


def worker_context() -> BaseContext:
    """The start method for DataLoader workers (``multiprocessing_context=``) and process pools (``mp_context=``)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx
