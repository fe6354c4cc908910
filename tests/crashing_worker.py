"""A fault for the worker tests, loaded only into their workers (`celery worker --include
tests.crashing_worker`): the worker process is SIGKILLed, as the OOM killer or a segfault would
end it, whenever it applies a request for the model named in CRASH_APPLYING_MODEL.

The crash comes inside the apply, at its first MLflow read: after the claim, before any write,
where a crash in a real apply (a huge answer, a native library) would come. Nothing here is in
the product; without CRASH_APPLYING_MODEL this module changes nothing.
"""

from __future__ import annotations

import os
import signal

from registry_sync import gateway

MODEL = os.environ.get("CRASH_APPLYING_MODEL", "")


def _crashing(read):
    def read_or_crash(*args, **kwargs):
        name = kwargs.get("name", args[0] if args else None)
        if name == MODEL:
            os.kill(os.getpid(), signal.SIGKILL)
        return read(*args, **kwargs)

    return read_or_crash


if MODEL:
    # applying.py calls these through the module (`gateway.get_model_version(...)`).
    gateway.iter_model_version_pages = _crashing(gateway.iter_model_version_pages)
    gateway.get_model_version = _crashing(gateway.get_model_version)
