import logging
import os
import sys

from training.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, leave without the interpreter's teardown: on CPU (gloo) a rank's exit sometimes aborted in
    # C++ ("terminate called without an active exception") after its work was done and written, failing the job.
    # Everything is on disk by now (checkpoints are renamed into place, metrics.csv is closed); flush and go.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
raise SystemExit(code)
