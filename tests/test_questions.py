"""Questions are descriptors (tasks.core.descriptor), found by tasks.questions: the built-ins and
the ``visionflows.questions`` entry points. Every registry is built from them; a question
installed as a package of its own runs, reports, compares, mirrors and deploys with no edit
to visionflows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from tasks import questions as discovery
from tasks.core.descriptor import load
from tasks.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_FLOWS = ["q1-mlp", "q1-cnn", "q2-transfer", "q3-segmentation", "q4-yolo"]


@pytest.fixture
def fresh_discovery():
    discovery.questions.cache_clear()
    yield
    discovery.questions.cache_clear()


def test_every_registry_is_built_from_the_descriptors():
    from flows.deployments import nightly
    from flows.registry import flows
    from tasks.catalog import parse_questions
    from tasks.comparers import comparer
    from tasks.plans import flow_configs, profiles, step_kinds
    from tasks.registry import all_tasks
    from tasks.reporting.final import every_question, question_titles

    specs = discovery.question_flows()
    assert list(specs) == BUILTIN_FLOWS  # report order
    assert list(flows()) == list(flow_configs()) == list(profiles()) == BUILTIN_FLOWS
    assert every_question() == list(parse_questions(None)) == BUILTIN_FLOWS
    assert list(nightly()) == [*BUILTIN_FLOWS, "report"]
    tasks = all_tasks()
    for name, spec in specs.items():
        assert flow_configs()[name] is spec.config_class()
        assert set(profiles()[name]) == {"smoke", "full"}, name
        assert comparer(name).question == name
        assert load(spec.flow).name == name  # the Prefect flow's own name
        assert set(step_kinds(name)) <= set(tasks), name
        assert question_titles()[name] == spec.title
        assert nightly()[name].cron == spec.nightly.cron
    # one title per question: the flow's result and the final report say the same
    assert question_titles()["q2-transfer"] == "Q2: transfer learning on STL10 (ResNet18, VGG16)"
    assert discovery.cached_tasks() == {"classifier.train", "classifier.evaluate",
                                        "transfer.train", "transfer.finetune", "yolo.train",
                                        "yolo.evaluate"}
    assert [f.name for f in specs.values() if not f.keeps_champion] == ["q3-segmentation"]


class _EP:
    """An entry point as importlib.metadata gives it (name, value, load)."""

    def __init__(self, name: str, value: str, obj=None, error: Exception | None = None):
        self.name, self.value, self._obj, self._error = name, value, obj, error

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def test_visionflows_own_entry_points_are_read_once(monkeypatch, fresh_discovery):
    eps = [_EP("q1", "tasks.q1.question:QUESTION", error=AssertionError("not loaded twice"))]
    monkeypatch.setattr(discovery, "_entry_points", lambda: eps)
    assert [q.name for q in discovery.questions()] == ["q1", "q2", "q3", "q4"]


def test_a_broken_entry_point_is_named_with_the_fix(monkeypatch, fresh_discovery):
    monkeypatch.setattr(discovery, "_entry_points", lambda: [
        _EP("course", "course_q.question:QUESTION", error=ModuleNotFoundError("course_q"))])
    with pytest.raises(ConfigError, match=r"entry point 'course' = 'course_q.question:"
                                          r"QUESTION' .*cannot be loaded.*fix or uninstall"):
        discovery.questions()
    monkeypatch.setattr(discovery, "_entry_points", lambda: [
        _EP("course", "course_q:THING", obj={"name": "x"})])
    with pytest.raises(ConfigError, match="names a dict, not a tasks.core.descriptor.Question"):
        discovery.questions()


def test_a_flow_or_task_name_taken_twice_is_refused(monkeypatch, fresh_discovery):
    from dataclasses import replace

    q4 = load("tasks.q4.question:QUESTION")
    clash = replace(q4, name="course", tasks={"course.x": "course:x"})
    monkeypatch.setattr(discovery, "_entry_points",
                        lambda: [_EP("course", "course:QUESTION", obj=clash)])
    with pytest.raises(ConfigError, match=r"flow q4-yolo is defined twice: by "
                                          r"tasks.q4.question:QUESTION and by entry point"):
        discovery.questions()
    report = replace(q4, name="course", tasks={},
                     flows=(replace(q4.flows[0], name="report"),))
    monkeypatch.setattr(discovery, "_entry_points",
                        lambda: [_EP("course", "course:QUESTION", obj=report)])
    with pytest.raises(ConfigError, match="flow report is defined twice"):
        discovery.questions()
    promote = replace(q4, name="course", flows=(), tasks={"model.promote": "course:x"})
    monkeypatch.setattr(discovery, "_entry_points",
                        lambda: [_EP("course", "course:QUESTION", obj=promote)])
    discovery.questions.cache_clear()
    from tasks.registry import all_tasks

    with pytest.raises(ConfigError, match="defines task.s. model.promote, which visionflows "
                                          "itself defines"):
        all_tasks()


def test_pyproject_declares_the_builtins_in_the_entry_point_group():
    import tomllib

    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())
    group = spec["project"]["entry-points"][discovery.ENTRY_POINT_GROUP]
    assert tuple(group.values()) == discovery.BUILTIN


# ---------------------------------------------------------------- an installed question

TINY = {
    "tinyq/__init__.py": '"""A question outside visionflows: share of draws below one half."""\n',
    "tinyq/question.py": '''
        from tasks.core.descriptor import Nightly, Question, QuestionFlow

        QUESTION = Question(
            name="tinyq",
            tasks={"tiny.count": "tinyq.task:count"},
            flows=(QuestionFlow(
                name="tiny-count", title="Tiny: draws below one half",
                flow="tinyq.flow:tiny_count", config="tinyq.task:TinyFlowConfig",
                profiles="tinyq.task:PROFILES", comparer="tinyq.task:COMPARER",
                resources="tinyq.task:RESOURCES", step_kinds="tinyq.task:STEP_KINDS",
                nightly=Nightly("45 4 * * *", "Tiny question, nightly"),
                mirror="tinyq.task:mirror_entries", keeps_champion=False),),
        )
        ''',
    "tinyq/task.py": '''
        import random

        from pydantic import Field

        from tasks.core.config import Config
        from tasks.core.resources import Resources, ResourceTable, resources_field
        from tasks.core.runtime import Manifest, TaskRun
        from tasks.core.store import Store
        from tasks.inputs.mirror_index import Entry
        from tasks.reporting.compare import Cell, Comparer, RunInfo
        from tasks.reporting.render import Report, Section, Table, write_report

        RESOURCES = ResourceTable(evaluate=Resources(cpus=1, memory="1g"))
        STEP_KINDS = {"tiny.count": "evaluate", "report.compare": "report"}


        class CountConfig(Config):
            out: str
            n: int = Field(200, gt=0)
            seed: int = 0
            run_id: str = ""
            profile: str = "smoke"
            comparison: dict | None = None  # the planned comparison (not shown here)


        class TinyFlowConfig(Config):
            n: int = Field(200, gt=0)
            seed: int = 0
            resources: ResourceTable = resources_field(RESOURCES)


        PROFILES = {"smoke": {"n": 200}, "full": {"n": 100000}}


        def count(cfg: CountConfig, store: Store) -> Manifest:
            """Draw ``n`` numbers (seeded), report the share below one half."""
            with TaskRun("tiny.count", cfg, store, cfg.out) as run:
                rng = random.Random(cfg.seed)
                share = sum(rng.random() < 0.5 for _ in range(cfg.n)) / cfg.n
                report = Report("Tiny: draws below one half", sections=[Section(
                    "Result", tables=[Table(["metric", "value"], [["test/accuracy", share]])])],
                    why="Random draws: nothing to reproduce.")
                run.outputs.update(write_report(report, store, cfg.out))
                summary = [{"question": "tiny-count", "variant": f"n={cfg.n}", "status": "ok",
                            "metric": "test/accuracy", "value": share, "time_s": None,
                            "run": cfg.run_id}]
                comparison = [{"question": "tiny-count", "item": "share below 1/2",
                               "ours": share, "reference": 0.5, "kind": "score"}]
                return run.finish({"test/accuracy": share, "summary": summary,
                                   "comparison": comparison})


        class TinyComparer(Comparer):
            question = "tiny-count"
            cell_label = "draw"

            def cells(self, store, run: RunInfo):
                return {"all": Cell("all", [{"test/accuracy": run.manifest["metrics"][
                    "test/accuracy"]}])}


        COMPARER = TinyComparer()


        def mirror_entries():
            return [Entry("tiny/numbers.txt", "https://example.org/tiny/numbers.txt",
                          ("tiny-count",), "tiny's numbers (an example entry)")]
        ''',
    "tinyq/flow.py": '''
        from prefect import flow

        from flows.question_run import QuestionRun

        FLOW = "tiny-count"


        @flow(name=FLOW)
        def tiny_count(profile="smoke", store=None, overrides=None, launcher="local",
                       run_id=None, refresh=False):
            run = QuestionRun.start(FLOW, profile, store, overrides, launcher, run_id)
            report = run.report("tiny.count", {"n": run.cfg.n, "seed": run.cfg.seed})
            share = report["metrics"]["test/accuracy"]
            run.publish([{"metric": "test/accuracy", "value": share}])
            return run.finish({"metrics": {"test/accuracy": share},
                               "summary": [f"share below 1/2: {share:.3f}"]}, [report])
        ''',
    "tinyq-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinyq\nVersion: 0.1\n",
    "tinyq-0.1.dist-info/entry_points.txt":
        "[visionflows.questions]\ntiny = tinyq.question:QUESTION\n",
}


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory) -> Path:
    """A folder holding the tiny question as an installed distribution (its package and a
    ``.dist-info`` with the entry point), as ``pip install`` would leave it."""
    site = tmp_path_factory.mktemp("site")
    for rel, text in TINY.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(textwrap.dedent(text).lstrip())
    return site


def test_the_tiny_distribution_declares_its_question(tiny_site):
    dist = metadata.Distribution.at(tiny_site / "tinyq-0.1.dist-info")
    assert [(e.group, e.name, e.value) for e in dist.entry_points] == [
        (discovery.ENTRY_POINT_GROUP, "tiny", "tinyq.question:QUESTION")]


def test_an_installed_question_runs_reports_compares_mirrors_and_deploys(
        tiny_site, prefect_harness, tmp_path):
    store = f"file://{tmp_path / 'store'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tiny_site)]),
           "PREFECT_API_URL": prefect_harness, "VF_NO_PROGRESS": "1"}

    def cli(*args: str) -> str:
        res = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-3000:])
        return res.stdout

    out = cli("run", "tiny-count", "--store", store, "--json")
    first = json.loads(out[out.index("\n{") + 1:])
    share = first["metrics"]["test/accuracy"]
    assert 0.35 < share < 0.65 and first["run_id"]
    assert f"share below 1/2: {share:.3f}" in out
    # the same question again, another seed: compared with the previous run by itself
    out = cli("run", "tiny-count", "--store", store, "--set", "seed=1", "--json")
    second = json.loads(out[out.index("\n{") + 1:])
    assert second["comparison"]["a"] == first["run_id"]
    out = cli("compare", first["run_id"], second["run_id"], "--question", "tiny-count",
              "--store", store)
    assert "seed" in out and first["run_id"] in out and second["run_id"] in out
    out = cli("report", "--store", store)
    assert "tiny-count: ok" in out
    final = Path(out.strip().splitlines()[-1].removeprefix("final report: file://"))
    md = final.with_name("report.md").read_text()
    assert "## Tiny: draws below one half" in md
    assert "| tiny-count | n=200 | ok | test/accuracy |" in md
    assert "| q1-mlp | not run |" in md  # the built-ins are still there
    # the listings, one process: no store, server or network needed
    res = subprocess.run([sys.executable, "-c", (
        "import contextlib\nfrom flows.cli import main\n"
        "for argv in (['mirror', '--list'], ['serve', '--list'], ['run', '--help']):\n"
        "    print('== ' + ' '.join(argv), flush=True)\n"
        "    with contextlib.suppress(SystemExit):\n"
        "        assert main(argv) == 0\n")], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    mirror, serve, run_help = res.stdout.split("== ")[1:]
    assert "tiny/numbers.txt  (tiny-count)  https://example.org/tiny/numbers.txt" in mirror
    assert "fashion-mnist/" in mirror
    assert "tiny-count/nightly  45 4 * * * UTC  Tiny question, nightly" in serve
    assert serve.splitlines()[-1].startswith("report/nightly")
    assert "q4-yolo, tiny-count, or all" in " ".join(run_help.split())
