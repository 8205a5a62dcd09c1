"""The flow side of comparisons: every flow run, after promotion, compares itself with the
champion it was measured against (``report.compare``), links that comparison in its report
and Prefect artifacts, and with ``fail_on_regression`` ends Failed when it is worse than
that champion by more than ``regression_tolerance``.

The champion measured against is the one before this run's promotion (``model.promote``
records ``champion_run_id`` and ``champion_value``). Q3 keeps no champion: its runs are
compared with the previous finished run of the same profile, and never fail on regression.

Order at the end of a flow: report (with the planned comparison's link) -> promote ->
``finish_run``: flow manifest -> comparison -> flow manifest again (with the comparison) ->
artifacts -> ``RegressionError`` (exit code 4) when the switch is on and the run regressed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.common import run_step, write_flow_manifest
from tasks.core.config import Config
from tasks.core.layout import compare_prefix
from tasks.core.promote import champion_question, read_champion
from tasks.core.runtime import git_commit
from tasks.core.store import Store, join
from tasks.questions import question_flow
from tasks.reporting.compare import RegressionError
from tasks.reporting.runs import finished_runs


def code_identity(steps: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """The code a run ran: the git commit, and what its steps' manifests record they ran
    under (their identity: per-file code hashes, package versions, image)."""
    steps = [m for m in steps if m]
    names = sorted({m["task"] for m in steps if m.get("task")})
    source: dict[str, str] = {}
    versions: dict[str, Any] = {}
    for m in steps:
        parts = (m.get("identity") or {}).get("parts") or {}
        source.update(parts.get("code") or {})
        env = parts.get("environment") or {}
        versions.update(env.get("packages") or {})
        for key in ("python", "image"):
            if env.get(key):
                versions[key] = env[key]
    return {"git_commit": git_commit(), "tasks": names, "source": dict(sorted(source.items())),
            "versions": dict(sorted(versions.items()))}


def plan_comparison(flow: str, profile: str, run_id: str, st: Store) -> dict[str, Any] | None:
    """Before the report: the run this one will be compared with (the champion now, or for
    a question without champions the previous run) and where that comparison will be, for
    the report to link (a ``ComparisonLink``); None when there is nothing to compare with."""
    champ, _ = read_champion(st, champion_question(flow, profile))
    if champ is not None:
        a, against = str(champ["run_id"]), "the champion"
    elif not _keeps_champion(flow):
        previous = [m for m in finished_runs(st, flow, profile) if m["run_id"] != run_id]
        if not previous:
            return None
        a, against = str(previous[-1]["run_id"]), "the previous run"
    else:
        return None
    if a == run_id:
        return None
    return {"a": a, "b": run_id, "key": join(compare_prefix(flow, a, run_id), "report.html"),
            "against": against}


def _keeps_champion(flow: str) -> bool:
    return question_flow(flow).keeps_champion


def finish_run(flow: str, cfg: Config, run_id: str, result: dict[str, Any],
               steps: Iterable[dict[str, Any] | None], st: Store, launcher: str,
               planned: dict[str, Any] | None) -> dict[str, Any]:
    """Write the flow manifest, compare with the champion, record and publish the
    comparison; raise :class:`RegressionError` when the run regressed and the config says
    ``fail_on_regression`` (everything is written by then)."""
    log = get_run_logger()
    result["code"] = code_identity(steps)
    result["manifest"] = write_flow_manifest(st, flow, run_id, result)
    champion = result.get("champion") or {}
    if _keeps_champion(flow):
        against = champion.get("champion_run_id")
        what = "the champion"
    else:
        against, what = (planned or {}).get("a"), "the previous run"
    if not against or against == run_id:
        log.info("%s run %s: nothing to compare with (no %s)", flow, run_id,
                 what.removeprefix("the "))
        return result
    tolerance = float(getattr(cfg, "regression_tolerance", 0.0))
    targets = [against]
    if planned and planned["a"] != against:  # a concurrent run promoted in between
        log.warning("the champion changed while this run finished (%s when the report was "
                    "written, %s at promotion): comparing with both", planned["a"], against)
        targets.append(planned["a"])
    done = {}
    name = "compare-champion" if what == "the champion" else "compare-previous"
    for a in targets:
        done[a] = run_step(name if a == against else "compare-planned", "report.compare", {
            "question": flow, "a": a, "b": run_id,
            "a_ref": "champion" if what == "the champion" else "previous run", "b_ref": run_id,
            "tolerance": tolerance, "out": compare_prefix(flow, a, run_id)}, st.uri, launcher)
    main = done[against]
    verdict = main["metrics"]["verdict"]
    comparison = {"against": what, "a": against, "report": main["outputs"],
                  "verdict": verdict, "regression": bool(verdict.get("regression")),
                  "fail_on_regression": bool(getattr(cfg, "fail_on_regression", False)),
                  "config_diff": main["metrics"]["config_diff"]}
    result["comparison"] = comparison
    result["manifest"] = write_flow_manifest(st, flow, run_id, result)
    publish_comparison(flow, run_id, comparison, st)
    html = main["outputs"]["report.html"]
    where = st.local_path(html) or st.url(html)
    log.info("%s run %s vs %s %s: %s (%s)", flow, run_id, what, against, verdict["text"], where)
    if comparison["regression"] and comparison["fail_on_regression"]:
        raise RegressionError(
            f"{flow} run {run_id} regressed against {what} {against}: {verdict['text']} "
            f"(fail_on_regression is on). Everything is written; comparison: {where}; "
            f"manifest: {st.url(result['manifest'])}")
    return result


def publish_comparison(flow: str, run_id: str, comparison: dict[str, Any], st: Store) -> None:
    """A markdown artifact with the verdict and the comparison's location, and a link
    artifact where the location is a link."""
    key = flow.replace("_", "-")
    html = comparison["report"]["report.html"]
    url = st.url(html)
    local = st.local_path(html)
    verdict = comparison["verdict"]
    diff = comparison["config_diff"]
    text = (f"# {flow} run {run_id} vs {comparison['against']} {comparison['a']}\n\n"
            f"**{verdict.get('outcome', '?')}**: {verdict.get('text', '')}\n\n"
            f"- Config keys that differ: "
            + (", ".join(f"`{d['key']}` {d['a']!r} -> {d['b']!r}" for d in diff) or "none")
            + f"\n- Comparison (HTML): `{url}`\n"
            + (f"- Open locally: file://{local}\n" if local is not None else ""))
    create_markdown_artifact(markdown=text, key=f"{key}-comparison",
                             description=f"{flow} run {run_id} compared with "
                                         f"{comparison['against']}")
    link = f"file://{local}" if local is not None else url
    if link.startswith(("http://", "https://", "file://")):
        create_link_artifact(link=link, link_text=f"comparison with {comparison['against']}",
                             key=f"{key}-comparison-link")
