"""The run's janitor: cleans up after a ``visionflows`` CLI however it ends, a SIGKILL too.

Started by the CLI in a session of its own with a pipe on its stdin; it waits for that pipe
to close, which happens when the CLI exits by any means. It then ends every process group
and container the run's ledger still lists (``$VF_WORK_ROOT/children``, see
:mod:`flows.launchers.tracking`), the temporary Prefect server among them, and removes the
run's work folder. After a normal exit the CLI has done all that already and the janitor
finds nothing left.

    python -m flows.janitor WORK_ROOT
"""

from __future__ import annotations

import shutil
import sys

from flows.launchers.tracking import kill_containers, kill_groups, read_ledger


def clean(root: str) -> None:
    left = read_ledger(root)
    kill_containers(left["container"])
    kill_groups(left["pgid"], grace_s=2.0)
    kill_groups(left["server"], grace_s=2.0)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flows.janitor WORK_ROOT", file=sys.stderr)
        return 2
    try:
        while sys.stdin.buffer.read(1 << 16):  # until the CLI is gone
            pass
    except KeyboardInterrupt:  # pragma: no cover - only a direct Ctrl-C on the janitor
        pass
    clean(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
