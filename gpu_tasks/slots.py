"""Which device this worker process works on: one slot of a declared device, held for the
process's life, so two jobs never share a GPU unless KEEL_JOBS_PER_DEVICE says so.

A host declares its devices in KEEL_WORKER_DEVICES ("cuda:0,cuda:1", "cpu"); the worker
command starts len(devices) x KEEL_JOBS_PER_DEVICE processes. Each process takes the first
free slot by locking a file named after the host, device and slot; the lock dies with the
process (a killed one frees its slot at once), and a process that finds every slot taken
waits rather than doubling up. With nothing declared, the best device found is used.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import re
import socket
import time

from django.conf import settings

log = logging.getLogger(__name__)
DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]+)?")
_held: list = []  # the open lock file: closing it would free the slot


def declared_devices() -> list[str]:
    return list(settings.KEEL_WORKER_DEVICES)


def parse_devices(names: list[str]) -> list[str]:
    """Device names checked without importing torch (the worker command checks them before
    Celery starts): cpu, mps, cuda or cuda:N."""
    for name in names:
        if not DEVICE.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a device: use cpu, cuda, cuda:N or mps, comma-separated"
            )
    return list(names)


@functools.cache
def process_device():
    """This process's device slot (a torch.device), taken on first use; None when no devices
    are declared."""
    import torch

    names = declared_devices()
    if not names:
        return None
    devices = [torch.device(name) for name in parse_devices(names)]
    folder = settings.KEEL_DATA_DIR / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    slots = [(d, k) for d in devices for k in range(settings.KEEL_JOBS_PER_DEVICE)]
    waited = 0.0
    while True:
        for device, k in slots:
            handle = (folder / f"{host}-{str(device).replace(':', '')}-{k}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held.append(handle)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            log.info("this process works on %s (slot %d)", device, k)
            return device
        if waited % 60 == 0:
            log.warning("every slot of %s is taken; waiting for one", ", ".join(names))
        time.sleep(1.0)
        waited += 1.0
