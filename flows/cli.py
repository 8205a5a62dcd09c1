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
    visionflows compare champion latest --question q1-mlp   # what changed between two runs
    visionflows compare --trend q1-mlp              # the primary metric of the last runs
    visionflows verify q1-mlp latest                # recompute a run's steps, compare

Without ``PREFECT_API_URL`` Prefect runs the flow against a temporary local server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.registry import flows, load_flow, new_run_id
from flows.runners import RUNNERS, choose_runner
from flows.session import Interrupted, Session
from tasks.core.config import did_you_mean
from tasks.core.errors import VisionflowsError
from tasks.core.settings import raw, setting

LAUNCHER_CHOICES = ("local", "subprocess", "docker")  # flows.launchers.LAUNCHERS, unimported
LINK_HELP = ("how long the presigned report links of an S3 store stay valid: 3600, 90m, 12h, "
             "7d (default $VF_LINK_EXPIRY or 7d, the most S3 allows)")


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
    """The store, checked before any work: writable with free space (``file://``), the
    bucket reachable (``s3://``, within the retry budget)."""
    from tasks.core.store import open_store

    store = open_store(uri)
    store.check()
    return store


def kept(store, flow: str, run_id: str) -> str:
    """What an interrupted run left: finished steps and checkpoints of unfinished ones."""
    from tasks.core.layout import run_prefix

    keys = store.list(run_prefix(flow, run_id))
    done = {k.rsplit("/", 1)[0] for k in keys if k.endswith("/manifest.json")}
    ckpts = [k for k in keys if k.endswith("/last.pt") and k.rsplit("/", 1)[0] not in done]
    parts = [f"{len(done)} finished step{'s' if len(done) != 1 else ''}"]
    if ckpts:
        parts.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) != 1 else ''} of unfinished "
                     f"training ({', '.join(k.rsplit('/', 2)[-2] for k in ckpts[:3])}"
                     f"{', ...' if len(ckpts) > 3 else ''})")
    return " and ".join(parts) + f" under {store.url(run_prefix(flow, run_id))}"


def resume_command(argv: list[str], run_id: str) -> str:
    """The command line that resumes: the same arguments, with ``--run-id RUN_ID``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--run-id":
            skip = True
            continue
        if arg.startswith("--run-id="):
            continue
        out.append(arg)
    return shlex.join(["visionflows", *out, "--run-id", run_id])


def _link_lines(store, key: str, label: str) -> list[str]:
    """``label`` and a clickable address of ``key``: its ``file://`` URI for a local store;
    for S3 the ``s3://`` URI and, under it, a presigned HTTPS link and its expiry."""
    from tasks.core.store import link_expiry_seconds
    from tasks.reporting.render import fmt

    pad = " " * len(label)
    expires = link_expiry_seconds()
    link = store.presign(key, expires)
    if link is not None and link.startswith("file://"):
        return [f"{label}{link}"]
    lines = [f"{label}{store.url(key)}"]
    if link is not None:
        until = (datetime.now(UTC) + timedelta(seconds=expires)).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"{pad}{link}")
        lines.append(f"{pad}(presigned link, valid {fmt(expires, 'time')}, until {until}; "
                     "--link-expiry to change)")
    else:
        lines.append(f"{pad}(no presigned link: no S3 credentials to sign with)")
    return lines


def _print_result(name: str, profile: str, result: dict, store) -> None:
    html_key = result["report"]["report.html"]
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
    print("\n".join(_link_lines(store, html_key, "report:   ")))


def _print_final(final: dict, store) -> None:
    """The final report's lines; the last one is always ``final report: <file:// URI>``
    (the local copy) or the report's store URI."""
    key = final["report"]["report.html"]
    if final.get("local"):
        if not store.uri.startswith("file://"):
            print("\n".join(_link_lines(store, key, "in the store: ")))
        print(f"final report: {Path(final['local']).as_uri()}")
    else:
        print("\n".join(_link_lines(store, key, "final report: ")))


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
            if session is not None:
                session.check_fit(name, cfg)  # a step no node holds: refused now
            runner = task_runner(kind, getattr(cfg, "parallel", 1), session)
            return load_flow(name).with_options(task_runner=runner)

        yield runner_for


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.core.config import parse_sets
    from tasks.plans import resolve_config

    known = list(flows())
    if args.flow not in (*known, "all"):
        raise VisionflowsError(f"unknown flow {args.flow!r}"
                               f"{did_you_mean(args.flow, [*known, 'all'])}; use one of: "
                               f"{', '.join(sorted(known))}, all")
    _apply_link_expiry(args)
    if args.offline:  # read by every resolver, here and in subprocess/docker tasks
        os.environ["VF_OFFLINE"] = "1"
    if args.no_progress:
        os.environ["VF_NO_PROGRESS"] = "1"
    overrides = parse_sets(args.set)
    if args.flow == "all" and overrides:
        raise VisionflowsError("--set applies to one flow's config; run that flow alone "
                               "(e.g. visionflows run FLOW --set epochs=2)")
    names = known if args.flow == "all" else [args.flow]
    for name in names:  # fail fast, before Prefect starts
        resolve_config(name, args.profile, overrides if args.flow != "all" else {})
    if args.launcher not in LAUNCHER_CHOICES:
        raise VisionflowsError(f"unknown launcher {args.launcher!r} (from VF_LAUNCHER?)"
                               f"{did_you_mean(args.launcher, LAUNCHER_CHOICES)}; use "
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
    store = _open_checked_store(args.store)
    prefect_env()
    check_prefect_api()
    logging.getLogger("visionflows").setLevel(logging.INFO)  # Prefect's handlers show it
    kwargs = {"refresh": True} if args.refresh else {}
    current = {"flow": names[0], "run_id": args.run_id or new_run_id()}
    try:
        with Session(), _task_runners(runner_kind, ray_address) as runner_for:
            if args.flow != "all":
                cfg = resolve_config(args.flow, args.profile, overrides)
                result = runner_for(args.flow, cfg)(
                    profile=args.profile, store=store.uri, overrides=overrides,
                    launcher=args.launcher, run_id=current["run_id"], **kwargs)
                _print_result(args.flow, args.profile, result, store)
                if args.json:
                    print(json.dumps(result, indent=2, default=str))
                return 0
            failures: dict[str, str] = {}
            for name in names:
                current.update(flow=name, run_id=new_run_id())
                try:
                    cfg = resolve_config(name, args.profile, {})
                    result = runner_for(name, cfg)(profile=args.profile, store=store.uri,
                                                   launcher=args.launcher,
                                                   run_id=current["run_id"], **kwargs)
                    _print_result(name, args.profile, result, store)
                except Exception as exc:  # one question failing must not hide the others
                    failures[name] = f"{type(exc).__name__}: {exc}"
                    print(f"\n{name} FAILED: {failures[name]}", file=sys.stderr)
            final = _run_report(store, failures)
            print()
            _print_final(final, store)
    except Interrupted as exc:
        argv = [a for a in sys.argv[1:]] if args.flow != "all" else [
            "run", current["flow"], *sys.argv[3:]]
        print(f"\n{current['flow']} stopped by {signal.Signals(exc.signum).name}: kept "
              f"{kept(store, current['flow'], current['run_id'])}; the flow run is marked "
              f"Cancelled. Resume with: {resume_command(argv, current['run_id'])}",
              file=sys.stderr)
        return exc.exit_code
    if failures:
        print(f"{len(failures)} question(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def _apply_link_expiry(args: argparse.Namespace) -> None:
    """Check ``--link-expiry`` (or ``VF_LINK_EXPIRY``) before anything runs, and hand it to
    the flows through ``VF_LINK_EXPIRY``."""
    from tasks.core.store import link_expiry_seconds

    seconds = link_expiry_seconds(getattr(args, "link_expiry", None))
    if getattr(args, "link_expiry", None):
        os.environ["VF_LINK_EXPIRY"] = str(seconds)


def cmd_report(args: argparse.Namespace) -> int:
    _apply_link_expiry(args)
    store = _open_checked_store(args.store)
    prefect_env()
    check_prefect_api()
    logging.getLogger("visionflows").setLevel(logging.INFO)
    try:
        with Session():
            final = _run_report(store)
    except Interrupted as exc:
        print(f"\nreport stopped by {signal.Signals(exc.signum).name}; nothing to resume: run "
              "`visionflows report` again", file=sys.stderr)
        return exc.exit_code
    for q, status in final["questions"].items():
        print(f"  {q}: {status}")
    _print_final(final, store)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deployments import DEPLOYMENT, build_deployments, nightly

    table = nightly()
    if args.list:  # what would be served: no server needed
        for name, spec in table.items():
            print(f"{name}/{DEPLOYMENT}  {spec.cron} UTC  {spec.description}"
                  + (f"  overrides {json.dumps(spec.overrides)}" if spec.overrides else ""))
        return 0
    prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        raise VisionflowsError(
            "visionflows serve needs a Prefect server to register its schedules with: start one "
            "with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    names = args.flows or list(table)
    unknown = [f for f in names if f not in table]
    if unknown:
        hints = "".join(did_you_mean(f, table) for f in unknown)
        raise VisionflowsError(f"no deployment for {', '.join(unknown)}{hints}; known: "
                               f"{', '.join(table)}")
    params: dict = {"profile": args.profile}
    if args.store:
        params["store"] = args.store
    logging.getLogger("visionflows").setLevel(logging.INFO)
    from prefect import serve

    deployments = build_deployments(names, params, paused=args.paused,
                                    ray_address=args.ray_address)
    print("serving " + ", ".join(f"{n}/{DEPLOYMENT} ({table[n].cron} UTC)" for n in names))
    print(f"trigger one now with: prefect deployment run {names[0]}/{DEPLOYMENT}")
    serve(*deployments, limit=args.limit)
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from tasks.catalog import catalog, mirror
    from tasks.core.files import offline
    from tasks.inputs.mirror_index import INDEX_KEY

    if args.list:  # what would be mirrored: no store, no network
        from tasks.inputs.download import public_url

        for e in catalog(args.questions, args.q4_export):
            print(f"{e.name}  ({', '.join(e.questions)})  {public_url(e.url)}  "
                  f"{e.what}".rstrip())
        return 0
    if offline():
        raise VisionflowsError("visionflows mirror downloads: it cannot run with VF_OFFLINE=1 "
                               "(run it on a connected machine)")
    entries = catalog(args.questions, args.q4_export)
    store = _open_checked_store(args.store)
    print(f"mirroring {len(entries)} files into {store.url('mirror')}/")
    done: list = []
    try:
        with Session(server=False):
            results = mirror(store, entries=entries, progress=not args.no_progress,
                             results=done)
    except Interrupted as exc:
        left = len(entries) - sum(r.status != "failed" for r in done)
        print(f"\nmirror stopped by {signal.Signals(exc.signum).name}: {len(done)} of "
              f"{len(entries)} files handled, {left} left (a partial download is kept in "
              f"the cache and resumes). Resume with: {shlex.join(['visionflows', *sys.argv[1:]])}",
              file=sys.stderr)
        return exc.exit_code
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


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two runs of one question (or show a question's trend); no Prefect needed."""
    from tasks.comparers import comparer, resolve
    from tasks.core.layout import compare_prefix, trend_prefix
    from tasks.questions import question_flows
    from tasks.registry import run_task
    from tasks.reporting.compare import summary_lines

    refs = args.refs or []
    if args.trend:
        if refs or args.question:
            raise VisionflowsError("give either two runs to compare or --trend Q, not both "
                                   "(e.g. visionflows compare --trend FLOW)")
        from tasks.reporting.trend import latest_profile

        if args.trend not in question_flows():
            raise VisionflowsError(f"--trend {args.trend!r}: unknown question; use one of: "
                                   f"{', '.join(question_flows())}")
        store = _open_checked_store(args.store)
        profile = args.profile or latest_profile(store, args.trend)
        if profile is None:
            raise VisionflowsError(f"no finished {args.trend} run in {store.uri}: nothing to "
                                   f"trend (run `visionflows run {args.trend}` first)")
        m = run_task("report.trend", {
            "question": args.trend, "profile": profile, "last": args.last,
            "out": trend_prefix(args.trend, profile)}, store)
        print(f"{args.trend} trend ({profile} profile, last {len(m.metrics['runs'])} runs)")
        for r in m.metrics["runs"]:
            if r.get("metric"):
                flags = ("  NEW CHAMPION" if r["promoted"] else "") + (
                    "  REGRESSION" if r["regression"] else "")
                check = r.get("interval")
                if check and check.get("interval"):
                    flags += (f"  {check['short']} (champion {check['reference_run']}, "
                              f"{check['cell']}, mean of {check['n']})")
                print(f"  {r['run_id']}  {r['metric']}={r['value']:.4f}{flags}")
            else:
                print(f"  {r['run_id']}  {r['status']} (ok {r['ok']}, rejected {r['rejected']})")
        _print_report(store, m.outputs["report.html"])
        return 0
    if len(refs) != 2:
        raise VisionflowsError(f"compare needs two runs, A and B (got {len(refs)}): run ids, "
                               "champion, latest or latest~N, e.g. `visionflows compare "
                               "champion latest --question FLOW`; or --trend Q")
    store = _open_checked_store(args.store)
    a, b = resolve(store, refs[0], refs[1], question=args.question, profile=args.profile)
    tolerance = args.tolerance
    if tolerance is None:
        tolerance = float((b.manifest.get("config") or {}).get("regression_tolerance") or 0.0)
    m = run_task("report.compare", {
        "question": a.flow, "a": a.run_id, "b": b.run_id, "a_ref": a.ref, "b_ref": b.ref,
        "tolerance": tolerance, "out": compare_prefix(a.flow, a.run_id, b.run_id)}, store)
    named = {r.ref: f" ({r.ref})" if r.ref != r.run_id else "" for r in (a, b)}
    print(f"{a.flow}: A {a.run_id}{named[a.ref]} .. B {b.run_id}{named[b.ref]}")
    cmp = comparer(a.flow)
    for line in summary_lines(m.metrics, cmp.primary) + cmp.summary(m.metrics):
        print(f"  {line}")
    _print_report(store, m.outputs["report.html"])
    if args.fail_on_regression and m.metrics["verdict"]["regression"]:
        print(f"regression: {m.metrics['verdict']['text']}", file=sys.stderr)
        return 4
    return 0


def _print_report(store, key: str) -> None:
    local = store.local_path(key)
    print(f"report: {local if local is not None else store.url(key)}")


def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute a finished run's steps and compare them with what is stored."""
    from flows.verify import verify_run

    known = flows()
    if args.flow not in known:
        raise VisionflowsError(f"unknown flow {args.flow!r}{did_you_mean(args.flow, known)}; "
                               f"use one of: {', '.join(sorted(known))}")
    store = _open_checked_store(args.store)
    results = verify_run(store.uri, args.flow, args.run, steps=args.steps,
                         tolerance=args.tolerance, launcher=args.launcher)
    return 0 if all(c.verdict in ("identical", "within tolerance", "skipped")
                    for c in results) else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from flows.doctor import run_doctor, run_settings

    if args.settings:
        return run_settings()
    prefect_env()
    return run_doctor(args.store, docker=not args.no_docker)


def build_parser() -> argparse.ArgumentParser:
    questions = ", ".join(flows())  # every question's flow, installed ones included
    parser = argparse.ArgumentParser(prog="visionflows", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one question's flow now")
    run.add_argument("flow", metavar="FLOW",
                     help=f"which question: {questions}, or all (every "
                          "question, then the final report)")
    run.add_argument("--profile", default="smoke", help="smoke (default) or full")
    run.add_argument("--store", default=None,
                     help="file://DIR or s3://bucket/prefix (default $VF_STORE or "
                          "file://./artifacts)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key (dotted for nested; JSON values), repeatable")
    run.add_argument("--launcher", default=setting("VF_LAUNCHER"),
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
    run.add_argument("--link-expiry", default=None, metavar="DURATION", help=LINK_HELP)
    run.add_argument("--no-progress", action="store_true",
                     help="no live progress bars on the terminal (log lines only); also "
                          "VF_NO_PROGRESS=1")
    run.add_argument("--offline", action="store_true",
                     help="no downloads (VF_OFFLINE=1): inputs come from the config, the "
                          "store's mirror (visionflows mirror) or the local cache")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="build the final comparison report from the store")
    rep.add_argument("--store", default=None, help="store URI (default $VF_STORE or ./artifacts)")
    rep.add_argument("--link-expiry", default=None, metavar="DURATION", help=LINK_HELP)
    rep.set_defaults(func=cmd_report)
    srv = sub.add_parser("serve", help="serve every flow's nightly deployment (needs a server)")
    srv.add_argument("--flows", nargs="*", help="which flows (default: all)")
    srv.add_argument("--profile", default="full", help="default profile of scheduled runs")
    srv.add_argument("--store", default=None, help="default store of scheduled runs")
    srv.add_argument("--limit", type=int, default=1, help="flow runs at once (default 1)")
    srv.add_argument("--paused", action="store_true", help="register schedules paused")
    srv.add_argument("--ray-address", default=raw("VF_RAY_ADDRESS"),
                     help="also serve each question's nightly-ray deployment (paused), its "
                          "steps on this Ray cluster (docs/ray.md); default $VF_RAY_ADDRESS")
    srv.add_argument("--list", action="store_true",
                     help="only list the deployments (flow/name, schedule, overrides); no "
                          "server needed")
    srv.set_defaults(func=cmd_serve)
    mir = sub.add_parser("mirror", help="download every input the full profiles need into "
                                        "the store (for air-gapped runs)")
    mir.add_argument("--store", default=None,
                     help="store to fill (default $VF_STORE or file://./artifacts)")
    mir.add_argument("--questions", nargs="+", default=None, metavar="Q",
                     help=f"which questions (comma-separated or listed; default all): "
                          f"{questions}")
    mir.add_argument("--list", action="store_true",
                     help="only list what would be mirrored (name, questions, source); no "
                          "store or network needed")
    mir.add_argument("--q4-export", default=None, metavar="URL",
                     help="also mirror the Q4 Roboflow export from this URL (${VAR} is read "
                          "from the environment; the query string is never recorded)")
    mir.add_argument("--no-progress", action="store_true", help="no progress bars")
    mir.set_defaults(func=cmd_mirror)
    cmp = sub.add_parser("compare", help="what changed between two runs of a question "
                                         "(or --trend Q: its last runs)")
    cmp.add_argument("refs", nargs="*", metavar="RUN",
                     help="A and B: run ids, champion, latest or latest~N (N runs before "
                          "the latest); differences are B - A")
    cmp.add_argument("--question", default=None,
                     help="the question (its flow name); needed when no run id is given")
    cmp.add_argument("--store", default=None,
                     help="store URI (default $VF_STORE or file://./artifacts)")
    cmp.add_argument("--profile", default=None,
                     help="profile of champion and latest~N (default: the other run's "
                          "profile for champion, every profile for latest~N)")
    cmp.add_argument("--tolerance", type=float, default=None,
                     help="regression tolerance of the verdict (default: B's "
                          "regression_tolerance, else 0)")
    cmp.add_argument("--fail-on-regression", action="store_true",
                     help="exit 4 when B is worse than A by more than the tolerance")
    cmp.add_argument("--trend", default=None, metavar="Q",
                     help="instead: the trend page of question Q (last runs of a profile, "
                          "champion changes, regressions)")
    cmp.add_argument("--last", type=int, default=20, help="runs in the trend (default 20)")
    cmp.set_defaults(func=cmd_compare)
    ver = sub.add_parser("verify", help="recompute a finished run's steps (cache off) and "
                         "compare with what is stored: exit 0 only when all agree")
    ver.add_argument("flow", metavar="FLOW", help=f"which question: {questions}")
    ver.add_argument("run", nargs="?", default="latest", metavar="RUN_ID",
                     help="a run id of that flow, or latest (default)")
    ver.add_argument("--steps", default=None, metavar="GLOB",
                     help="only the steps whose name matches, e.g. 'train-b32*'")
    ver.add_argument("--tolerance", type=float, default=0.0, metavar="X",
                     help="largest difference of a metric that still agrees (default 0: exact)")
    ver.add_argument("--store", default=None,
                     help="store URI (default $VF_STORE or ./artifacts), as given to run")
    ver.add_argument("--launcher", default=setting("VF_LAUNCHER"),
                     choices=LAUNCHER_CHOICES, help="how the steps are recomputed")
    ver.set_defaults(func=cmd_verify)
    doctor = sub.add_parser("doctor", help="check Prefect API, store, Docker and GPUs; say "
                                           "what to fix")
    doctor.add_argument("--store", default=None,
                        help="store to check (default $VF_STORE or file://./artifacts)")
    doctor.add_argument("--no-docker", action="store_true", help="skip the Docker checks")
    doctor.add_argument("--settings", action="store_true",
                        help="list every VF_* setting instead (type, default, current value "
                             "with secrets masked, help); exit 1 when a value is invalid")
    doctor.set_defaults(func=cmd_doctor)
    from flows.submit import add_submit_parser

    add_submit_parser(sub, run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tasks.core.log import redact, setup_cli_logging
    from tasks.core.settings import unknown_in_env

    for warning in unknown_in_env():  # a typo'd VF_* variable would be silently ignored
        print(warning, file=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.command != "run":  # under a flow, Prefect's handlers show our logger
            setup_cli_logging()
        return args.func(args)
    except VisionflowsError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
