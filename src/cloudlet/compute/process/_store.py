"""On-disk layout of the process driver (records: :mod:`cloudlet.compute._records`).

Layout of ``state_dir/<workload_id>/``::

    spec.json      the WorkloadSpec, written once by create()
    state.json     runtime record (state, pid, create time, restarts, ...), rewritten on change
    console.log    the child's stdout and stderr, plus driver marker lines
    work/          the child's working directory
"""

from __future__ import annotations

LOG_FILE = "console.log"
WORK_DIR = "work"
