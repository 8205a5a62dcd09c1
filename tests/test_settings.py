"""The one table of ``VF_*`` settings: complete (every name in the code is declared, every
declared name is used), read at call time, listed by ``visionflows doctor --settings`` and
``docs/settings.md``, and a typo'd variable gets a did-you-mean warning from the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import settings as S
from tasks.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# code, scripts and infra (docs are not scanned: they may name a variable in prose)
SCANNED = ("tasks", "flows", "images", "infra", "bench", "tests", "reports", ".ci/run",
           "Makefile", "prefect.yaml", "pyproject.toml", ".dockerignore")
DECLARATION = ROOT / "tasks" / "core" / "settings.py"
THIS = Path(__file__).resolve()
NAME = re.compile(r"(?<![A-Za-z0-9_])VF_[A-Z0-9_]+")
REGENERATE = "python -m tasks.core.settings --markdown > docs/settings.md"


def scanned_files() -> list[Path]:
    out = []
    for entry in SCANNED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        out += [f for f in files if f.is_file() and "__pycache__" not in f.parts
                and f.suffix not in (".md", ".pyc", ".png", ".jpg", ".pt")
                and f.resolve() not in (DECLARATION, THIS)]
    return out


def names_in_code() -> dict[str, set[str]]:
    """Every ``VF_*`` name in the scanned files -> where."""
    found: dict[str, set[str]] = {}
    for f in scanned_files():
        for name in NAME.findall(f.read_text(errors="ignore")):
            found.setdefault(name, set()).add(str(f.relative_to(ROOT)))
    return found


def test_the_scan_sees_the_code():
    """The scanner finds names in Python, shell, compose and CI files (so the two
    completeness tests below cannot pass by scanning nothing)."""
    found = names_in_code()
    assert "tasks/core/store.py" in found["VF_STORE"]
    assert "images/build-local-base.sh" in found["VF_DEBIAN_SUITE"]
    assert ".ci/run" in found["VF_CI_RAY"]
    assert "infra/docker-compose.yml" in found["VF_TASK_IMAGE"]


def test_every_vf_name_in_the_code_is_declared():
    """A name ending in ``_`` (``VF_DOCKER_*``, ``VF_IMAGE_<FAMILY>``) is a prefix: some
    declared name must start with it."""
    declared = S.table()
    missing = {name: sorted(where) for name, where in names_in_code().items()
               if name not in declared and not (
                   name.endswith("_") and any(d.startswith(name) for d in declared))}
    assert not missing, (f"VF_* names used but not declared in tasks/core/settings.py "
                         f"(add them there, then run `{REGENERATE}`): {missing}")


def test_every_declared_setting_is_used_somewhere():
    used = set(names_in_code())
    unused = [name for name in S.table() if name not in used]
    assert not unused, (f"declared in tasks/core/settings.py but read nowhere (remove them, "
                        f"then run `{REGENERATE}`): {unused}")


# scripts whose own default differs on purpose: (file, variable) -> why
SCRIPT_DEFAULTS = {("bench/gpu_check.sh", "VF_OFFLINE"): "the GPU check runs offline"}


def test_the_scripts_defaults_are_the_declared_ones():
    """``${VF_X:-default}`` in a shell script or compose file gives the declared default, so
    the table does not describe another default than the one used (``${VF_X:-}`` is only
    "unset is empty" under ``set -u``)."""
    pattern = re.compile(r"\$\{(VF_[A-Z0-9_]+):-([^}$]+)\}")
    checked, wrong = 0, []
    for f in scanned_files():
        if f.suffix == ".py":
            continue
        for name, value in pattern.findall(f.read_text(errors="ignore")):
            where = str(f.relative_to(ROOT))
            if (where, name) in SCRIPT_DEFAULTS:
                continue
            checked += 1
            if S.table()[name].default != S.setting(name, {name: value}):
                wrong.append(f"{where}: {name}:-{value!r}, declared {S.table()[name].default!r}")
    assert checked >= 8 and not wrong, (checked, wrong)


def test_the_table_is_the_pydantic_settings_class(monkeypatch):
    """One definition: the table is ``Settings``' fields, and ``Settings()`` (pydantic-settings
    reading the environment) agrees with :func:`setting` variable by variable."""
    assert [i.field for i in S.table().values()] == list(S.Settings.model_fields)
    for name in [k for k in os.environ if k.startswith("VF_")]:
        monkeypatch.delenv(name)
    env = {"VF_STORE": "s3://b/p", "VF_S3_MAX_ATTEMPTS": "7", "VF_OFFLINE": "yes",
           "VF_RETRY_DELAY_S": "0.5", "VF_K8S_MINIO": "0", "VF_CI_RAY": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    whole = S.Settings()
    for name, info in S.table().items():
        assert S.setting(name) == getattr(whole, info.field), name
    assert (whole.store, whole.s3_max_attempts, whole.offline, whole.retry_delay_s,
            whole.k8s_minio, whole.ci_ray) == ("s3://b/p", 7, True, 0.5, "0", "1")


def test_every_setting_has_a_group_help_and_a_listed_type():
    for name, info in S.table().items():
        assert info.group in S.GROUPS and info.scope in S.SCOPES, name
        assert len(info.help) > 10 and "\n" not in info.help, name
        assert info.type and info.shown, name
    assert S.table()["VF_TEST_S3_ENDPOINT"].scope == "test"
    assert S.table()["VF_CI_DOCKER"].scope == "ci"
    assert S.table()["VF_PARENT_PID"].scope == "internal"


def test_setting_reads_the_environment_at_call_time(monkeypatch):
    monkeypatch.delenv("VF_S3_MAX_ATTEMPTS", raising=False)
    assert S.setting("VF_S3_MAX_ATTEMPTS") == 5
    monkeypatch.setenv("VF_S3_MAX_ATTEMPTS", "9")
    assert S.setting("VF_S3_MAX_ATTEMPTS") == 9
    monkeypatch.setenv("VF_S3_MAX_ATTEMPTS", "  ")  # empty counts as unset
    assert S.setting("VF_S3_MAX_ATTEMPTS") == 5
    assert S.raw("VF_S3_MAX_ATTEMPTS") is None
    assert S.setting("VF_STORE", {"VF_STORE": " s3://x/y "}) == "s3://x/y"
    assert S.setting("VF_STORE", {}) == "file://./artifacts"


@pytest.mark.parametrize("text,value", [("1", True), ("true", True), ("YES", True),
                                        ("on", True), ("0", False), ("false", False),
                                        ("no", False), ("off", False)])
def test_flags(text, value):
    assert S.setting("VF_OFFLINE", {"VF_OFFLINE": text}) is value
    assert S.setting("VF_REFRESH", {"VF_REFRESH": text}) is value


def test_a_bad_value_names_the_variable_and_the_fix():
    with pytest.raises(ConfigError, match=r"VF_OFFLINE='maybe' is not a valid flag: use 1 or "
                                          r"0 .*no downloads"):
        S.setting("VF_OFFLINE", {"VF_OFFLINE": "maybe"})
    with pytest.raises(ConfigError, match=r"VF_S3_MAX_ATTEMPTS='five' is not a valid int"):
        S.setting("VF_S3_MAX_ATTEMPTS", {"VF_S3_MAX_ATTEMPTS": "five"})
    assert S.check_all({"VF_RAY_GPU_MAX": "lots", "VF_STORE": "s3://b/p"}).keys() == {
        "VF_RAY_GPU_MAX"}


def test_an_undeclared_name_is_a_programming_error():
    with pytest.raises(KeyError, match="VF_STOER is not declared .*did you mean VF_STORE"):
        S.setting("VF_STOER")


def test_unknown_variables_get_a_did_you_mean():
    env = {"VF_STOER": "x", "VF_STORE": "file://y", "VF_ZQXJ": "1", "PATH": "/bin"}
    warnings = S.unknown_in_env(env)
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: VF_STOER is not a visionflows setting; did you "
                                  "mean VF_STORE?")
    assert warnings[1].startswith("warning: VF_ZQXJ is not a visionflows setting (")


def test_listing_masks_secrets_and_shows_every_setting():
    env = {"VF_TASKS_SECRET_KEY": "hunter2-secret", "VF_TASKS_ACCESS_KEY": "vf-tasks",
           "VF_STORE": "s3://b/p"}
    text = S.listing(env)
    assert "hunter2" not in text and "vf-tasks" not in text
    assert "VF_TASKS_SECRET_KEY (text; default unset) = ***" in text
    assert "VF_STORE (text; default file://./artifacts) = s3://b/p" in text
    assert all(f"  {name} (" in text for name in S.table())


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VF_")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**base, **env})


def test_doctor_settings_through_the_cli():
    res = cli("doctor", "--settings", env={"VF_TASKS_SECRET_KEY": "hunter2-secret",
                                           "VF_S3_MAX_ATTEMPTS": "3"})
    assert res.returncode == 0, res.stderr
    assert "hunter2" not in res.stdout + res.stderr
    assert "VF_TASKS_SECRET_KEY (text; default unset) = ***" in res.stdout
    assert "VF_S3_MAX_ATTEMPTS (int; default 5) = 3" in res.stdout
    assert "attempts per S3 call" in res.stdout
    assert res.stdout.count("  VF_") == len(S.table())
    assert "[test]" in res.stdout and "[ci; read by .ci/run]" in res.stdout
    bad = cli("doctor", "--settings", env={"VF_RETRY_DELAY_S": "soon"})
    assert bad.returncode == 1
    assert "VF_RETRY_DELAY_S (seconds; default 5) = soon INVALID" in bad.stdout
    assert "fix: VF_RETRY_DELAY_S='soon' is not a valid seconds" in bad.stdout


def test_a_typo_in_the_environment_warns_once_and_is_not_an_error():
    res = cli("doctor", "--settings", env={"VF_STOER": "file:///tmp/x", "VF_OFLINE": "1"})
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: VF_")]
    assert lines == [
        "warning: VF_OFLINE is not a visionflows setting; did you mean VF_OFFLINE? "
        "(`visionflows doctor --settings` lists them all)",
        "warning: VF_STOER is not a visionflows setting; did you mean VF_STORE? "
        "(`visionflows doctor --settings` lists them all)"]
    # a failing command still fails for its own reason, with the warning before it
    res = cli("run", "nope", env={"VF_STOER": "x"})
    assert res.returncode == 2
    assert "did you mean VF_STORE?" in res.stderr and "unknown flow 'nope'" in res.stderr


def test_docs_settings_md_is_up_to_date():
    doc = ROOT / "docs" / "settings.md"
    assert doc.is_file(), f"docs/settings.md is missing: run `{REGENERATE}`"
    assert doc.read_text() == S.markdown(), f"docs/settings.md is stale: run `{REGENERATE}`"
    assert all(f"`{name}`" in doc.read_text() for name in S.table())
