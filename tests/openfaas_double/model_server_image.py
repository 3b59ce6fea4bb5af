"""The model-server image's container, for the OpenFaaS gateway double's functions.

What a container would do for ``python -m modelhall.showcase.bootstrap`` (the image's entry), as the
Kubernetes double's kubelet runs it: with no network namespace of its own, it listens on its pod's
address (``DOUBLE_POD_IP``) rather than on every address of its own, on 8080 as of-watchdog does.
Everything else is the function's environment, as faas-netes set it (the secrets' mount point
already names the pod's folder for that volume).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    environment = dict(os.environ)
    environment |= {"MODELHALL_PORT": "8080", "MODELHALL_POD_IP": environment["DOUBLE_POD_IP"]}
    os.execve(sys.executable, [sys.executable, "-m", "modelhall.showcase.bootstrap"], environment)
