"""A node whose checkpoint is slow: after SIGTERM it takes SLOW_STOP seconds to save, then exits 75.

Like torchrun, it has a child in a session of its own (a worker). It writes
``$SLOW_STOP_DIR/node<NODE_RANK>.json`` (its pid and the child's) once its handler is set, and
``saved<NODE_RANK>`` once its checkpoint is saved.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

out = Path(os.environ["SLOW_STOP_DIR"])
rank = os.environ.get("NODE_RANK", "0")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def stop(signum: int, _frame: object) -> None:
    seconds = float(os.environ["SLOW_STOP"])
    print(f"node {rank}: got {signal.Signals(signum).name}, saving a checkpoint ({seconds:g}s)", flush=True)
    time.sleep(seconds)
    (out / f"saved{rank}").write_text("ok\n")
    print(f"node {rank}: checkpoint saved", flush=True)
    child.kill()
    sys.exit(75)


signal.signal(signal.SIGTERM, stop)
(out / f"node{rank}.json").write_text(json.dumps({"pid": os.getpid(), "child": child.pid}))
while True:
    time.sleep(0.1)
