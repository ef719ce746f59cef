"""Can W&B be reached? Credentials and a quick TCP probe, asked without the network's delays.

    from resnext_lit.wandb_access import has_credentials, reachable
    if not has_credentials(url) or not reachable(url):
        ...  # log offline, or refuse in one line

Imports neither wandb nor Lightning: the W&B logger (`resnext_lit.training.wandb_logger`) and
the tools that read W&B runs or save reports (`resnext_lit.experiments`) both ask here.
"""

from __future__ import annotations

import netrc
import os
import socket
from urllib.parse import urlparse

PROBE_S = 5.0  # a reachable server accepts a TCP connection well within this


def has_credentials(base_url: str) -> bool:
    """True when an API key or identity token is configured, without asking the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def reachable(base_url: str, timeout: float = PROBE_S) -> bool:
    """Whether the W&B server accepts a TCP connection (a blackholed route fails in `timeout`)."""
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
