"""A test hook: kill this process at a named point, as a crash would.

`UIB_FAULT_AT=<point>` makes `fault_point(<point>)` send SIGKILL to its own process: no
`finally`, no `atexit`, no flushed buffers, exactly what a power cut or the OOM killer leaves.
The fault tests (`tests/integration/test_faults.py`) run the real CLI with it and then run the
same request again. Unset (always, outside those tests) it does nothing. Points:

    after-resolve         the request resolved on the current data version, nothing versioned
    versioning-written    the next data tree built beside `data/`, not yet switched in
    versioning-switched   the next tree switched in as `data/`, not yet added to DVC or committed
    versioning-committed  the data commit made, the switch's leftovers not yet removed
    after-versioning      the data version task returned, no model step yet
    registered            the candidate registered, inside its MLflow run, the alias not moved
    after-attempts        every attempt registered (and the alias moved if one passed)
    erasing               the DVC cache and remote purged, the audit record not yet written
    after-erasure         the audit record written, the ledger not yet `approved`
"""

from __future__ import annotations

import os
import signal

ENV = "UIB_FAULT_AT"


def fault_point(name: str) -> None:
    """SIGKILL this process when `UIB_FAULT_AT` names this point; otherwise nothing."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
