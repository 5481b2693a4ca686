"""An HSM outage on demand, for the soak test (scripts/soak.py), as KMS_CRASH_AT is a crash.

SoftHSM runs inside the process and has no network to cut. Moving its token directory away is
not an outage either: SoftHSM then answers that the token holds no objects, and the service
rightly raises an alarm that needs an operator (the pinned audit seal key is gone). A network
HSM that stops answering shows as a device fault and then as failed reconnections until it
answers again, and that is what the session pool does while the file named by
KMS_HSM_OUTAGE_FILE exists: its health check reports a device fault, the real module is
finalized once every call inside it has left, and reconnecting fails until the file is gone;
then the module is initialized again, logged in to, and keys are found and unwrapped again, as
after a real outage. Unset, it costs one comparison per health check.
"""

from __future__ import annotations

import os

_PATH = os.environ.get("KMS_HSM_OUTAGE_FILE") or None


def injected() -> bool:
    return _PATH is not None and os.path.exists(_PATH)
