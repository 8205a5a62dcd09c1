"""A step's identity covers everything it runs (tasks.core.identity).

The mutation test: for every file under ``tasks/`` (workers included) and every report
template, a copy of the tree with one statement added to that file changes the code part of
the key of exactly the steps that may run it -- every step of its own question, every step
for the shared packages, the report steps for the report code -- and of no step of another
question. The expected sets are written here by role, not computed by the code under test.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
from pathlib import Path

import pytest

import tasks
from tasks.core import identity
from tasks.core.store import open_store
from tasks.registry import TASKS, run_task, task_module

QUESTIONS = ("q1", "q2", "q3", "q4")
# Steps that render reports (they run tasks/reporting and the templates).
REPORT_STEPS = {"classifier.report", "transfer.report", "segment.report", "yolo.report",
                "report.final", "report.compare", "report.trend"}
# Steps that may run every question's code: they load each question's comparer (the
# comparison; the trend and the final report, for each question's cells).
CROSS_QUESTION = {"report.compare", "report.trend", "report.final"}
ALL = set(TASKS)


def question_of(task: str) -> str | None:
    part = task_module(task).split(".")[1]
    return part if part in QUESTIONS else None


def expected_steps(rel: str) -> set[str]:
    """The steps that may run the file at ``rel`` (relative to the project root)."""
    parts = rel.split("/")
    if parts[0] == "reports":  # a report template
        return REPORT_STEPS
    top = parts[1]
    if top in ("core", "ml", "inputs") or top in ("__init__.py", "__main__.py", "registry.py",
                                                   "questions.py"):
        return ALL
    if top in QUESTIONS:
        return {t for t in ALL if question_of(t) == top} | CROSS_QUESTION
    if top == "reporting":
        return REPORT_STEPS
    if top == "comparers.py":
        return CROSS_QUESTION
    if top == "selftest.py":
        return {t for t in ALL if t.startswith("selftest.")}
    if top in ("catalog.py", "plans.py"):  # flow-level: they shape configs, run no step
        return set()
    raise AssertionError(f"no expectation for {rel}: add one")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the project's tasks tree and report templates."""
    root = tmp_path_factory.mktemp("tree")
    src = Path(tasks.__file__).resolve().parent
    shutil.copytree(src, root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(src.parent / "reports" / "templates", root / "reports" / "templates")
    return root


def code_keys(root: Path) -> dict[str, dict[str, str]]:
    return {t: identity.code_identity(task_module(t), root / "tasks") for t in sorted(ALL)}


def mutated(path: Path) -> str:
    """The file with one statement added (a comment-only change would not count)."""
    text = path.read_text()
    if path.suffix == ".py":
        return text + "\n_vf_mutation_probe = 1\n"
    return text + "\n{% set vf_mutation_probe = 1 %}\n"


def test_every_module_changes_exactly_the_keys_of_the_steps_that_may_run_it(tree):
    base = code_keys(tree)
    files = sorted(p for p in (tree / "tasks").rglob("*.py") if "__pycache__" not in p.parts)
    files += sorted((tree / "reports" / "templates").glob("*.j2"))
    assert len(files) > 60, "the copy holds the whole tree"
    tried = 0
    for path in files:
        rel = path.relative_to(tree).as_posix()
        original = path.read_text()
        path.write_text(mutated(path))
        try:
            now = code_keys(tree)
        finally:
            path.write_text(original)
        changed = {t for t in ALL if now[t] != base[t]}
        assert changed == expected_steps(rel), rel
        for t in changed:  # and the change is explained by that very file
            assert identity.explain({"code": base[t]}, {"code": now[t]}) == [f"{rel} changed"]
        for t in ALL - changed:
            assert rel not in base[t] or now[t] == base[t]
        tried += 1
    assert code_keys(tree) == base  # every file restored
    assert tried == len(files)
    print(f"mutation test: {tried} files tried")


def test_a_comment_or_docstring_edit_changes_no_key(tree):
    base = code_keys(tree)
    path = tree / "tasks" / "q4" / "worker.py"
    original = path.read_text()
    path.write_text("# a new comment\n" + original.replace('"""', '"""Reworded. ', 1))
    try:
        assert code_keys(tree) == base
    finally:
        path.write_text(original)


def _static_closure(root: Path, module: str) -> set[str]:
    """Project modules ``module`` imports, transitively, by import statements (an
    independent reading of the tree: module granularity, no units)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        rel = Path(*name.split("."))
        path = root / f"{rel}.py"
        if not path.is_file():
            path = root / rel / "__init__.py"
            if not path.is_file():
                continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names if a.name.startswith("tasks"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.startswith("tasks"):
                    todo.append(base)
                    todo.extend(f"{base}.{a.name}" for a in node.names)
    return seen


def test_every_module_a_step_imports_is_part_of_its_key():
    root = Path(tasks.__file__).resolve().parent.parent
    for name in sorted(ALL):
        module = task_module(name)
        files = identity.code_identity(module)
        for mod in _static_closure(root, module):
            rel = Path(*mod.split("."))
            path = f"{rel.as_posix()}.py"
            if not (root / path).is_file():
                path = f"{rel.as_posix()}/__init__.py"
            assert path in files, (name, path)


def test_the_worker_started_by_name_is_part_of_the_training_key():
    files = identity.code_identity("tasks.q4.yolo")
    assert "tasks/q4/worker.py" in files
    assert not any(f.startswith(("tasks/q1/", "tasks/q2/", "tasks/q3/")) for f in files)


def test_environment_and_device_are_part_of_the_key(tmp_path):
    st = open_store(f"file://{tmp_path}/s")
    cfg = {"out": "runs/x/train", "epochs": 1, "device": "auto"}
    ident = identity.of_step("classifier.train", cfg, st)
    parts = ident.parts
    assert parts["device"] == "cpu"  # auto resolves: no GPU here
    pkgs = parts["environment"]["packages"]
    for name in ("torch", "torchvision", "numpy", "pillow", "ultralytics", "prefect"):
        assert name in pkgs and pkgs[name] != "not installed", name
    assert parts["environment"]["python"].split()[-1].startswith("3.")
    # under the docker launcher the image stands for the code and the environment
    in_image = identity.of_step("classifier.train", cfg, st, image_id="sha256:aaa")
    other = identity.of_step("classifier.train", cfg, st, image_id="sha256:bbb")
    assert in_image.parts["environment"] == {"image": "sha256:aaa"}
    assert "code" not in in_image.parts
    assert len({ident.key, in_image.key, other.key}) == 3
    assert identity.explain(in_image.parts, other.parts) == [
        "image changed: sha256:aaa -> sha256:bbb"]


def test_an_installed_version_change_is_seen_by_the_next_step(monkeypatch):
    before = identity.dependency_versions()
    real = identity.metadata.distribution

    class Fake:
        def __init__(self, dist):
            self.dist = dist
            self.version = "99.0" if dist.metadata["Name"].lower() == "numpy" else dist.version
            self.requires = dist.requires

    monkeypatch.setattr(identity.metadata, "distribution", lambda n: Fake(real(n)))
    monkeypatch.setattr(identity, "_site_signature", lambda: ("after an install",))
    after = identity.dependency_versions()
    assert after["numpy"] == "99.0" and before["numpy"] != "99.0"
    assert identity.explain({"environment": {"packages": before}},
                            {"environment": {"packages": after}}) == [
        f"numpy version changed: {before['numpy']} -> 99.0"]


def test_local_files_count_by_content(tmp_path):
    st = open_store(f"file://{tmp_path}/s")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    cfg = {"out": "runs/x/t", "weights": str(weights), "device": "cpu"}
    a = identity.of_step("transfer.train", cfg, st)
    weights.write_bytes(b"two")
    b = identity.of_step("transfer.train", cfg, st)
    assert a.key != b.key
    assert identity.explain(a.parts, b.parts) == ["local file 'weights' changed"]
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "x.bin").write_bytes(b"1")
    c = identity.of_step("fashion-mnist.fetch", {"source": "download",
                                                 "mirror": str(folder)}, st)
    (folder / "x.bin").write_bytes(b"2")
    d = identity.of_step("fashion-mnist.fetch", {"source": "download",
                                                 "mirror": str(folder)}, st)
    assert c.parts["files"] != d.parts["files"]


def test_a_generated_dataset_version_follows_its_generator(tree):
    from tasks.q1.data import FetchConfig

    cfg = FetchConfig(source="generate", n_train=50, n_test=20)
    assert cfg.version.startswith("synthetic-")
    gen = identity.code_digest("tasks.q1.data", tree / "tasks")
    path = tree / "tasks" / "q1" / "data.py"
    original = path.read_text()
    path.write_text(original.replace("base = np.random.default_rng(12345)",
                                     "base = np.random.default_rng(54321)", 1))
    try:
        assert identity.code_digest("tasks.q1.data", tree / "tasks") != gen
    finally:
        path.write_text(original)
    assert identity.code_digest("tasks.q1.data", tree / "tasks") == gen
    train = tree / "tasks" / "q1" / "train.py"  # training code is not the generator
    original = train.read_text()
    train.write_text(original + "\n_vf_mutation_probe = 1\n")
    try:
        assert identity.code_digest("tasks.q1.data", tree / "tasks") == gen
    finally:
        train.write_text(original)


# ---------------------------------------------------------------- at a prefix

def _train_cfg(data: str, out: str) -> dict:
    from tasks.q1.train import TrainConfig

    return TrainConfig(out=out, data=data, epochs=1, device="cpu").model_dump(mode="json")


@pytest.fixture()
def small(tmp_path):
    uri = f"file://{tmp_path / 's'}"
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 100,
                                            "n_test": 50}, uri).prefix
    return uri, data


def _forge_identity(st, prefix: str, field: str = "basis") -> None:
    """Make the result at ``prefix`` look computed under other code."""
    m = st.get_json(f"{prefix}/manifest.json")
    m["identity"][field] = "0" * 20
    m["identity"]["parts"]["code"]["tasks/q1/train.py"] = "0" * 16
    st.put_json(f"{prefix}/manifest.json", m)


def test_a_result_of_other_code_at_the_prefix_is_recomputed_not_returned(small, caplog):
    uri, data = small
    st = open_store(uri)
    cfg = _train_cfg(data, "runs/q/R1/train-a")
    first = run_task("classifier.train", cfg, uri)
    assert first.identity and first.identity["key"]
    again = run_task("classifier.train", cfg, uri)
    assert again.finished_at == first.finished_at  # same identity: reused
    _forge_identity(st, cfg["out"])
    caplog.clear()
    third = run_task("classifier.train", cfg, uri)
    assert third.finished_at != first.finished_at  # recomputed from scratch
    assert third.identity["key"] == first.identity["key"]
    assert "computed under another identity" in caplog.text
    assert "tasks/q1/train.py changed" in caplog.text
    trashed = [k for k in st.list("trash") if k.endswith("train-a/manifest.json")]
    assert len(trashed) == 1  # kept aside, not deleted


def test_a_result_of_an_older_visionflows_is_not_trusted(small, caplog):
    uri, data = small
    st = open_store(uri)
    cfg = _train_cfg(data, "runs/q/R2/train-a")
    first = run_task("classifier.train", cfg, uri)
    m = st.get_json(f"{cfg['out']}/manifest.json")
    m.pop("identity")
    st.put_json(f"{cfg['out']}/manifest.json", m)
    st.delete(f"{cfg['out']}/identity.json")
    again = run_task("classifier.train", cfg, uri)
    assert again.finished_at != first.finished_at
    assert "records no identity" in caplog.text


def test_a_checkpoint_of_other_code_is_not_continued(small, caplog):
    """An interrupted run (last.pt, no manifest) resumed after a code change starts over."""
    uri, data = small
    st = open_store(uri)
    caplog.set_level(logging.INFO)
    cfg = {**_train_cfg(data, "runs/q/R3/train-a"), "epochs": 2}
    run_task("classifier.train", cfg, uri)
    st.delete(f"{cfg['out']}/manifest.json")  # as if stopped after the last checkpoint
    marker = st.get_json(f"{cfg['out']}/identity.json")
    marker["basis"] = "0" * 20
    marker["parts"]["code"]["tasks/ml/loop.py"] = "0" * 16
    st.put_json(f"{cfg['out']}/identity.json", marker)
    caplog.clear()
    run_task("classifier.train", cfg, uri)
    assert "resuming" not in caplog.text
    assert "left by another identity" in caplog.text and "tasks/ml/loop.py changed" in caplog.text
    # the same identity resumes: delete the manifest again, keep the (now right) marker
    st.delete(f"{cfg['out']}/manifest.json")
    caplog.clear()
    run_task("classifier.train", cfg, uri)
    assert "resuming" in caplog.text


def test_cache_record_refuses_a_manifest_of_another_key(small, caplog):
    from tasks.core import cache

    uri, data = small
    st = open_store(uri)
    cfg = _train_cfg(data, "runs/q/R4/train-a")
    m = run_task("classifier.train", cfg, uri)
    parts = cache.components("classifier.train", cfg, st)
    assert cache.record(st, "classifier.train", "q/a", parts, m) is not None
    edited = json.loads(json.dumps(parts))
    edited["code"]["tasks/q1/train.py"] = "f" * 16  # the flow saw other code
    assert cache.record(st, "classifier.train", "q/b", edited, m) is None
    assert "tasks/q1/train.py changed" in caplog.text


def test_a_miss_against_an_older_entry_is_a_few_reasons_not_one_per_package():
    code = {f"tasks/q1/m{i}.py": f"h{i}" for i in range(30)}
    packages = {f"pkg{i}": "1.0" for i in range(200)}
    new = {"config": {"lr": 1}, "code": code,
           "environment": {"python": "CPython 3.11.7", "packages": packages}, "device": "cpu"}
    old = {"config": {"lr": 1}, "code": code, "environment": {"python": "CPython 3.11.7"},
           "device": "cpu"}
    assert identity.explain(old, new) == [
        "package versions not recorded by the earlier result"]
    assert identity.explain({"config": {"lr": 1}}, new) == [
        "code not recorded by the earlier result (an older visionflows)",
        "environment not recorded by the earlier result (an older visionflows)",
        "device changed: None -> cpu"]
    changed = {**new, "code": {k: v + "x" for k, v in code.items()}}
    reasons = identity.explain(new, changed)
    assert len(reasons) == identity.REASONS_SHOWN + 1 and reasons[-1] == "and 20 more"
    assert reasons[0] == "tasks/q1/m0.py changed"
