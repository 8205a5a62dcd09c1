"""The ``visionflows`` command: run a question's flow now, with a profile and overrides.

    visionflows run q1-mlp                      # smoke profile, file://./artifacts, CPU
    visionflows run q1-mlp --profile full --set data.mirror=/data/fashion-mnist
    visionflows run q1-mlp --store s3://bucket/prefix --set epochs=2 --set batch_sizes=[32,256]

Without ``PREFECT_API_URL`` Prefect runs the flow against a temporary local server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from tasks.errors import VisionflowsError

FLOWS: dict[str, str] = {
    "q1-mlp": "flows.q1_mlp:q1_mlp",
    "q4-yolo": "flows.q4_yolo:q4_yolo",
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
    run.add_argument("--launcher", default="local", choices=["local", "subprocess"],
                     help="where tasks run (default: in this process)")
    run.add_argument("--run-id", default=None, help="reuse a run id (resumes unfinished steps)")
    run.add_argument("--json", action="store_true", help="also print the flow result as JSON")
    run.set_defaults(func=cmd_run)
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
