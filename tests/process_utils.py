"""Test helper: run a Python snippet in a child process, as a user for whom permission bits count.

A read-only folder is read-only for everyone but root, who passes every permission check (its
``CAP_DAC_OVERRIDE``). Tests of read-only outputs therefore run their code in a child process
that, when the tests run as root, gives up the two capabilities that bypass permission bits
before it starts Python (``prctl(PR_CAPBSET_DROP)``: a root process's capabilities after
``exec`` are its bounding set).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def _drop_permission_override() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c code args...`` in a child process whose permission checks are a normal
    user's (text output captured)."""
    as_root = os.geteuid() == 0
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_drop_permission_override if as_root else None,
    )


def check_read_only_holds(folder: str) -> None:
    """Fail the calling test unless ``folder`` really is read-only for :func:`run_python`'s
    children (a test that could write there would prove nothing)."""
    probe = "import os, sys; sys.exit(0 if os.access(sys.argv[1], os.W_OK) else 3)"
    proc = run_python(probe, folder)
    assert proc.returncode == 3, f"{folder} is writable in the child: {proc.stderr}"
