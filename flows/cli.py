"""The ``visionflows`` command: run a question's flow now, with a profile and overrides.

    visionflows run q1-mlp                      # smoke profile, file://./artifacts, CPU
    visionflows run q1-mlp --profile full --set data.mirror=/data/fashion-mnist
    visionflows run q1-mlp --store s3://bucket/prefix --set epochs=2 --set batch_sizes=[32,256]
    visionflows run q1-mlp --launcher docker    # one container per task (images/build*.sh)
    visionflows doctor --store s3://bucket/prefix   # what works, what to fix

Without ``PREFECT_API_URL`` Prefect runs the flow against a temporary local server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from tasks.errors import VisionflowsError

LAUNCHER_CHOICES = ("local", "subprocess", "docker")  # flows.launcher.LAUNCHERS, unimported

FLOWS: dict[str, str] = {
    "q1-mlp": "flows.q1_mlp:q1_mlp",
}


def prefect_env() -> None:
    """Offline-friendly Prefect defaults (the user's own settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "visionflows")
    os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")


def load_flow(name: str):
    if name not in FLOWS:
        raise VisionflowsError(f"unknown flow {name!r}; known flows: {', '.join(FLOWS)}")
    module, attr = FLOWS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.config import parse_sets
    from tasks.experiments import resolve_config
    from tasks.store import open_store

    overrides = parse_sets(args.set)
    resolve_config(args.flow, args.profile, overrides)  # fail fast, before Prefect starts
    if args.launcher not in LAUNCHER_CHOICES:
        raise VisionflowsError(f"unknown launcher {args.launcher!r} (from VF_LAUNCHER?); use "
                               f"one of: {', '.join(LAUNCHER_CHOICES)}")
    if args.launcher == "docker":
        from flows.docker_launcher import preflight

        preflight()  # engine reachable, image for this code built
    store = open_store(args.store)
    if hasattr(store, "check"):
        store.check()
    prefect_env()
    flow = load_flow(args.flow)
    result = flow(profile=args.profile, store=store.uri, overrides=overrides,
                  launcher=args.launcher, run_id=args.run_id)
    html_key = result["report"]["report.html"]
    local = store.local_path(html_key)
    print(f"\n{args.flow} run {result['run_id']} finished ({args.profile} profile)")
    for g in result.get("groups", []):
        print(f"  {g['key']}: best {g.get('best')!r} by {g['select_by']} "
              f"({g.get('best_score', float('nan')):.4f})")
    print(f"manifest: {store.url(result['manifest'])}")
    print(f"report:   {local if local is not None else store.url(html_key)}")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from flows.doctor import run_doctor

    prefect_env()
    return run_doctor(args.store, docker=not args.no_docker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionflows", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one question's flow now")
    run.add_argument("flow", choices=sorted(FLOWS), help="which question")
    run.add_argument("--profile", default="smoke", help="smoke (default) or full")
    run.add_argument("--store", default=None,
                     help="file://DIR or s3://bucket/prefix (default $VF_STORE or "
                          "file://./artifacts)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key (dotted for nested; JSON values), repeatable")
    run.add_argument("--launcher", default=os.environ.get("VF_LAUNCHER") or "local",
                     choices=LAUNCHER_CHOICES,
                     help="where tasks run: in this process (default, or $VF_LAUNCHER), a "
                          "child process, or one container per task (docker; settings "
                          "VF_IMAGE, VF_DOCKER_*)")
    run.add_argument("--run-id", default=None, help="reuse a run id (resumes unfinished steps)")
    run.add_argument("--json", action="store_true", help="also print the flow result as JSON")
    run.set_defaults(func=cmd_run)
    doctor = sub.add_parser("doctor", help="check Prefect API, store, Docker and GPUs; say "
                                           "what to fix")
    doctor.add_argument("--store", default=None,
                        help="store to check (default $VF_STORE or file://./artifacts)")
    doctor.add_argument("--no-docker", action="store_true", help="skip the Docker checks")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tasks.log import redact, setup_cli_logging

    args = build_parser().parse_args(argv)
    if args.command != "run":  # under a flow, Prefect's handlers show our logger
        setup_cli_logging()
    try:
        return args.func(args)
    except VisionflowsError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
