"""Named points where fault-injection tests kill the process, as kill -9 would.

Set KMS_CRASH_AT to a point's name (for example "rotate_key.after_hsm_create") and the process
sends itself SIGKILL on reaching it: no cleanup, no flush, no exception handler runs. Unset,
a crash point costs one comparison.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("KMS_CRASH_AT") or None


def crash_point(name: str) -> None:
    if _TARGET is not None and name == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
