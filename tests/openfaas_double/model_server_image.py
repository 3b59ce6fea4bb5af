"""The model-server image's container, for the OpenFaaS gateway double's replicas.

What a container would do for ``python -m modelhall.showcase.bootstrap`` (the image's entry), on this
machine: the function's secrets are at ``MODELHALL_SECRETS_DIR`` rather than ``/var/openfaas/secrets``,
and the replica listens on the port the double gave it (``port``) on the loopback address, not on
8080 of a pod of its own. Everything else is the function's environment, as the gateway received it.
"""

from __future__ import annotations

import os
import sys

SECRETS_IN_CONTAINER = "/var/openfaas/secrets/"

if __name__ == "__main__":
    environment = dict(os.environ)
    token_file = environment["MODELHALL_PULL_TOKEN_FILE"]
    if not token_file.startswith(SECRETS_IN_CONTAINER):
        raise SystemExit("the pull token is not in the function's secrets")
    environment["MODELHALL_PULL_TOKEN_FILE"] = os.path.join(environment.pop("MODELHALL_SECRETS_DIR"),
                                                            token_file.removeprefix(SECRETS_IN_CONTAINER))
    environment |= {"MODELHALL_PORT": environment.pop("port"), "MODELHALL_POD_IP": "127.0.0.1"}
    os.execve(sys.executable, [sys.executable, "-m", "modelhall.showcase.bootstrap"], environment)
