"""``python -m tasks <task-name> --config cfg.json [--store URI]``: run one task.

The same entrypoint serves the in-process launcher's subprocess mode, containers and cluster
nodes. Prints the manifest as JSON on stdout; exits 2 on a user error, 3 when the task ran
out of memory, 1 on any other crash. With ``--error-out FILE`` a failure is also written
there as a record (class, message, fields such as ``transient``: see
:mod:`tasks.core.errors`), from which the launcher raises the same error. With
``VF_PARENT_PID`` (set by the ``subprocess`` launcher) it dies with that process, so a
killed launcher leaves no task behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from tasks.core.errors import VisionflowsError, error_record
from tasks.core.limits import EXIT_OUT_OF_MEMORY, die_with_parent, is_out_of_memory
from tasks.core.log import get_logger, redact, setup_cli_logging
from tasks.core.runtime import STOP, StopRequested
from tasks.registry import TASKS, run_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__.splitlines()[0])
    parser.add_argument("task", help=f"one of: {', '.join(sorted(TASKS))}")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="path to the task's JSON config ('-' for stdin)")
    src.add_argument("--config-json", help="the task's config as a JSON string")
    parser.add_argument("--store", default=None,
                        help="store URI (file://DIR or s3://bucket/prefix); default $VF_STORE "
                             "or file://./artifacts")
    parser.add_argument("--manifest-out", default=None, metavar="PATH",
                        help="write the manifest JSON to PATH instead of stdout (containers: "
                             "the launcher reads it back, stdout stays a plain log)")
    parser.add_argument("--error-out", default=None, metavar="PATH",
                        help="on failure, write the error's class, message and fields as JSON "
                             "to PATH (launchers raise the same error from it)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)  # a stop: clean up (finally blocks), exit 143
    die_with_parent()
    os.environ.pop("VF_PARENT_PID", None)  # not inherited by the task's own children
    setup_cli_logging()
    oom: str | None = None
    try:
        if args.config_json is not None:
            text = args.config_json
        elif args.config == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(args.config).read_text()
            except OSError as exc:
                raise VisionflowsError(f"cannot read config file {args.config}: "
                                       f"{exc.strerror}") from None
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VisionflowsError(f"config is not valid JSON: {exc}") from None
        manifest = run_task(args.task, cfg, args.store)
    except VisionflowsError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        _write_error(args.error_out, exc)
        return 2
    except StopRequested:
        print(f"task {args.task} stopped (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_out_of_memory(exc):  # a crash: report it, redacted, and fail
            get_logger().exception("task %s crashed", args.task)
            print(f"error: task {args.task} crashed: {redact(repr(exc))}", file=sys.stderr)
            _write_error(args.error_out, exc, f"task {args.task} crashed: {redact(repr(exc))}")
            return 1
        oom = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
               ).splitlines()[0][:300]
    if oom is not None:  # reported outside the handler: the traceback's memory is freed
        print(f"error: task {args.task} ran out of memory ({redact(oom)}); give it more "
              "memory (VF_TASK_MEMORY / VF_DOCKER_MEMORY) or make it smaller (batch size, "
              "workers)", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    text = json.dumps(manifest.model_dump(mode="json"), indent=2)
    if args.manifest_out:
        Path(args.manifest_out).write_text(text)
        get_logger().info("%s finished in %.1fs: %s/%s", args.task, manifest.duration_s,
                          manifest.store, manifest.prefix)
    else:
        print(text)
    return 0


def _on_sigterm(_signum, _frame) -> None:
    STOP.set()
    raise StopRequested("SIGTERM")


def _write_error(path: str | None, exc: BaseException, message: str | None = None) -> None:
    if path:
        record = error_record(exc, redact(str(exc) if message is None else message))
        Path(path).write_text(json.dumps(record))


if __name__ == "__main__":
    sys.exit(main())
