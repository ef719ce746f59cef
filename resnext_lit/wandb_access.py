"""Can W&B be reached? Credentials and a quick TCP probe, asked without the network's delays;
and closing a run of a command that failed or was stopped, with its exit status.

    from resnext_lit.wandb_access import close_run, has_credentials, reachable
    if not has_credentials(url) or not reachable(url):
        ...  # log offline, or refuse in one line
    close_run(143)   # the open W&B run, if any, ends with exit code 143

Imports neither wandb nor Lightning: the W&B logger (`resnext_lit.training.wandb_logger`) and
the tools that read W&B runs or save reports (`resnext_lit.experiments`) both ask here.
"""

from __future__ import annotations

import netrc
import os
import socket
import sys
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


def close_run(code: int) -> None:
    """Close the open W&B run of a command that ends with `code` (not 0) with that exit status:
    wandb 0.31 no longer hooks sys.exit, so it would record a crashed or preempted run as
    finished (exit code 0). A sweep run stopped by a signal (exit 128 + the signal, last.ckpt
    saved) is marked preempting first: only then does the sweep controller hand it to an agent
    again ("Signal handling and sweep runs" in W&B's docs), which resumes it
    (`resnext_lit.run_identity`, rule 4).

    Under SLURM a SIGTERM (`scontrol requeue`, a preempting job) reaches every process of the
    job step, W&B's service process (wandb-core) too, which then ends at once: what it had not
    yet written is lost (offline, the piece's .wandb file can be empty) and `finish` fails with
    "Connection lost". The run is then reopened (same id, a new piece) and closed there, so W&B
    still says how it ended; the record (results.json, metrics.csv) has all of its history."""
    wandb = sys.modules.get("wandb")  # never imports wandb itself
    run = getattr(wandb, "run", None)
    if run is None or not code:
        return
    preempted = code > 128 and bool(os.environ.get("WANDB_SWEEP_ID"))
    try:
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=code)
        return
    except ConnectionError:  # wandb-core died of the same signal
        pass
    again = dict(id=run.id, project=run.project or None, entity=run.entity or None,
                 dir=run.settings.root_dir, mode=run.settings.mode, resume="allow")
    try:
        wandb.teardown()  # forgets the dead service (and says so by raising)
    except ConnectionError:
        pass
    reopened = wandb.init(**again, settings=wandb.Settings(silent=True))
    if preempted:
        reopened.mark_preempting()
    reopened.finish(exit_code=code)
    print(f"W&B's service process ended with the job step's signal: W&B run {run.id} reopened "
          f"to record exit code {code}", file=sys.stderr, flush=True)
