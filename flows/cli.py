"""The ``visionflows`` command: run a question's flow now, with a profile and overrides.

    visionflows run q1-mlp                      # smoke profile, file://./artifacts, CPU
    visionflows run q1-mlp --profile full --set data.mirror=/data/fashion-mnist
    visionflows run q1-mlp --store s3://bucket/prefix --set epochs=2 --set batch_sizes=[32,256]
    visionflows run q1-mlp --launcher docker    # one container per task (images/build*.sh)
    visionflows run q1-cnn --task-runner ray    # steps fan out on a local Ray (GPU shares)
    visionflows run q4-yolo --ray-address ray://HEAD:10001 --store s3://bucket/prefix
    visionflows doctor --store s3://bucket/prefix   # what works, what to fix
    visionflows mirror --store s3://bucket/prefix   # every full-profile input, for offline runs
    visionflows run q1-mlp --profile full --offline # no network: store mirror, cache, config

Without ``PREFECT_API_URL`` Prefect runs the flow against a temporary local server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from flows.registry import FLOWS, load_flow
from flows.runners import RUNNERS, choose_runner
from tasks.core.errors import VisionflowsError

LAUNCHER_CHOICES = ("local", "subprocess", "docker")  # flows.launchers.LAUNCHERS, unimported


def prefect_env() -> None:
    """Offline-friendly Prefect defaults (the user's own settings win)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "visionflows")
    os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")


def check_prefect_api() -> None:
    """With ``PREFECT_API_URL`` set, fail fast and clearly when that server is unreachable."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise VisionflowsError(
            f"the Prefect API at {url} is unreachable ({type(exc).__name__}): start it with "
            "`prefect server start`, or unset PREFECT_API_URL to let visionflows start a "
            "temporary local server") from None


def _open_checked_store(uri: str | None):
    from tasks.core.store import open_store

    store = open_store(uri)
    if hasattr(store, "check"):
        store.check()
    return store


def _print_result(name: str, profile: str, result: dict, store) -> None:
    html_key = result["report"]["report.html"]
    local = store.local_path(html_key)
    print(f"\n{name} run {result['run_id']} finished ({profile} profile)")
    for g in result.get("groups", []):
        print(f"  {g['key']}: best {g.get('best')!r} by {g['select_by']} "
              f"({g.get('best_score', float('nan')):.4f})")
    if champ := result.get("champion"):
        print(f"  champion: {champ.get('decision')} ({champ['metric']}={champ['value']:.4f}, "
              f"best cell {champ['best_cell']})")
    for line in result.get("summary", []):
        print(f"  {line}")
    print(f"manifest: {store.url(result['manifest'])}")
    print(f"report:   {local if local is not None else store.url(html_key)}")


def _run_report(store, failures: dict[str, str] | None = None) -> dict:
    return load_flow("report")(store=store.uri, failures=failures)


@contextlib.contextmanager
def _task_runners(kind: str, ray_address: str | None):
    """Yields ``runner_for(flow, cfg)``: the flow object with this run's task runner (a
    thread pool of the config's ``parallel`` workers, or Ray, connected once for the whole
    command)."""
    from flows.runners import ray_session, task_runner

    with contextlib.ExitStack() as stack:
        session = stack.enter_context(ray_session(ray_address)) if kind == "ray" else None

        def runner_for(name: str, cfg):
            runner = task_runner(kind, getattr(cfg, "parallel", 1), session)
            return load_flow(name).with_options(task_runner=runner)

        yield runner_for


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.core.config import parse_sets
    from tasks.plans import resolve_config

    if args.offline:  # read by every resolver, here and in subprocess/docker tasks
        os.environ["VF_OFFLINE"] = "1"
    overrides = parse_sets(args.set)
    if args.flow == "all" and overrides:
        raise VisionflowsError("--set applies to one flow's config; run that flow alone "
                               "(e.g. visionflows run q1-mlp --set epochs=2)")
    names = list(FLOWS) if args.flow == "all" else [args.flow]
    for name in names:  # fail fast, before Prefect starts
        resolve_config(name, args.profile, overrides if args.flow != "all" else {})
    if args.launcher not in LAUNCHER_CHOICES:
        raise VisionflowsError(f"unknown launcher {args.launcher!r} (from VF_LAUNCHER?); use "
                               f"one of: {', '.join(LAUNCHER_CHOICES)}")
    if args.launcher == "docker":
        from flows.launchers.container import preflight

        preflight()  # engine reachable, image for this code built
    runner_kind, ray_address = choose_runner(args.task_runner, args.ray_address)
    if runner_kind == "ray":  # before the store or Prefect: refused setups write nothing
        from flows.runners import check_cluster_setup, configured_api_url, require_ray
        from tasks.core.store import open_store

        check_cluster_setup(ray_address, open_store(args.store).uri,
                            api_url=configured_api_url())
        require_ray()
    prefect_env()
    check_prefect_api()
    with _task_runners(runner_kind, ray_address) as runner_for:
        store = _open_checked_store(args.store)
        logging.getLogger("visionflows").setLevel(logging.INFO)  # Prefect's handlers show it
        kwargs = {"refresh": True} if args.refresh else {}
        if args.flow != "all":
            cfg = resolve_config(args.flow, args.profile, overrides)
            result = runner_for(args.flow, cfg)(
                profile=args.profile, store=store.uri, overrides=overrides,
                launcher=args.launcher, run_id=args.run_id, **kwargs)
            _print_result(args.flow, args.profile, result, store)
            if args.json:
                print(json.dumps(result, indent=2, default=str))
            return 0
        failures: dict[str, str] = {}
        for name in names:
            try:
                cfg = resolve_config(name, args.profile, {})
                result = runner_for(name, cfg)(profile=args.profile, store=store.uri,
                                               launcher=args.launcher, **kwargs)
                _print_result(name, args.profile, result, store)
            except Exception as exc:  # one question failing must not hide the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                print(f"\n{name} FAILED: {failures[name]}", file=sys.stderr)
    final = _run_report(store, failures)
    print(f"\nfinal report: {final['local'] or store.url(final['report']['report.html'])}")
    if failures:
        print(f"{len(failures)} question(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    store = _open_checked_store(args.store)
    prefect_env()
    check_prefect_api()
    logging.getLogger("visionflows").setLevel(logging.INFO)
    final = _run_report(store)
    for q, status in final["questions"].items():
        print(f"  {q}: {status}")
    print(f"final report: {final['local'] or store.url(final['report']['report.html'])}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import DEPLOYMENT, NIGHTLY, build_deployments

    prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        raise VisionflowsError(
            "visionflows serve needs a Prefect server to register its schedules with: start one "
            "with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    names = args.flows or [f for f in [*FLOWS, "report"] if f in NIGHTLY]
    unknown = [f for f in names if f not in NIGHTLY]
    if unknown:
        raise VisionflowsError(f"no deployment for {', '.join(unknown)}; known: "
                               f"{', '.join(NIGHTLY)}")
    params: dict = {"profile": args.profile}
    if args.store:
        params["store"] = args.store
    logging.getLogger("visionflows").setLevel(logging.INFO)
    from prefect import serve

    deployments = build_deployments(names, params, paused=args.paused)
    print("serving " + ", ".join(f"{n}/{DEPLOYMENT} ({NIGHTLY[n].cron} UTC)" for n in names))
    print(f"trigger one now with: prefect deployment run {names[0]}/{DEPLOYMENT}")
    serve(*deployments, limit=args.limit)
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from tasks.catalog import catalog, mirror
    from tasks.core.files import offline
    from tasks.inputs.mirror_index import INDEX_KEY

    if offline():
        raise VisionflowsError("visionflows mirror downloads: it cannot run with VF_OFFLINE=1 "
                               "(run it on a connected machine)")
    entries = catalog(args.questions, args.q4_export)
    store = _open_checked_store(args.store)
    print(f"mirroring {len(entries)} files into {store.url('mirror')}/")
    results = mirror(store, entries=entries, progress=not args.no_progress)
    width = max(len(r.name) for r in results) if results else 10
    for r in results:
        size = f"{r.size / 1e6:9.1f} MB" if r.size is not None else " " * 12
        sha = (r.sha256 or "")[:12]
        print(f"  {r.status:10s} {r.name:{width}s} {size}  {sha}  {r.detail}".rstrip())
    failed = [r for r in results if r.status == "failed"]
    print(f"index: {store.url(INDEX_KEY)}")
    if failed:
        print(f"{len(failed)} of {len(results)} failed; rerun to retry them (finished ones are "
              "skipped)", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from flows.doctor import run_doctor

    prefect_env()
    return run_doctor(args.store, docker=not args.no_docker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionflows", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one question's flow now")
    run.add_argument("flow", choices=[*sorted(FLOWS), "all"],
                     help="which question ('all': every question, then the final report)")
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
    run.add_argument("--task-runner", default=None, choices=RUNNERS,
                     help="how steps fan out: thread (default: Prefect's thread pool, "
                          "`parallel` at once) or ray (RayTaskRunner: a local Ray, or the "
                          "cluster at --ray-address; needs pip install -e '.[ray]'); default "
                          "$VF_TASK_RUNNER, or ray when $VF_RAY_ADDRESS is set")
    run.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="an existing Ray cluster: ray://HOST:10001 (e.g. KubeRay), "
                          "HOST:6379 or auto (default $VF_RAY_ADDRESS; none: a local Ray "
                          "started for this run); needs an s3:// store")
    run.add_argument("--run-id", default=None, help="reuse a run id (resumes unfinished steps)")
    run.add_argument("--refresh", action="store_true",
                     help="recompute cached steps (training, evaluation) instead of reusing them")
    run.add_argument("--json", action="store_true", help="also print the flow result as JSON")
    run.add_argument("--offline", action="store_true",
                     help="no downloads (VF_OFFLINE=1): inputs come from the config, the "
                          "store's mirror (visionflows mirror) or the local cache")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="build the final comparison report from the store")
    rep.add_argument("--store", default=None, help="store URI (default $VF_STORE or ./artifacts)")
    rep.set_defaults(func=cmd_report)
    srv = sub.add_parser("serve", help="serve every flow's nightly deployment (needs a server)")
    srv.add_argument("--flows", nargs="*", help="which flows (default: all)")
    srv.add_argument("--profile", default="full", help="default profile of scheduled runs")
    srv.add_argument("--store", default=None, help="default store of scheduled runs")
    srv.add_argument("--limit", type=int, default=1, help="flow runs at once (default 1)")
    srv.add_argument("--paused", action="store_true", help="register schedules paused")
    srv.set_defaults(func=cmd_serve)
    mir = sub.add_parser("mirror", help="download every input the full profiles need into "
                                        "the store (for air-gapped runs)")
    mir.add_argument("--store", default=None,
                     help="store to fill (default $VF_STORE or file://./artifacts)")
    mir.add_argument("--questions", nargs="+", default=None, metavar="Q",
                     help="which questions (comma-separated or listed; default all): "
                          "q1-mlp, q1-cnn, q2-transfer, q3-segmentation, q4-yolo")
    mir.add_argument("--q4-export", default=None, metavar="URL",
                     help="also mirror the Q4 Roboflow export from this URL (${VAR} is read "
                          "from the environment; the query string is never recorded)")
    mir.add_argument("--no-progress", action="store_true", help="no progress bars")
    mir.set_defaults(func=cmd_mirror)
    doctor = sub.add_parser("doctor", help="check Prefect API, store, Docker and GPUs; say "
                                           "what to fix")
    doctor.add_argument("--store", default=None,
                        help="store to check (default $VF_STORE or file://./artifacts)")
    doctor.add_argument("--no-docker", action="store_true", help="skip the Docker checks")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tasks.core.log import redact, setup_cli_logging

    args = build_parser().parse_args(argv)
    if args.command != "run":  # under a flow, Prefect's handlers show our logger
        setup_cli_logging()
    try:
        return args.func(args)
    except VisionflowsError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
