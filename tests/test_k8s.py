"""The Kubernetes work pool, offline: each ``nightly-k8s`` deployment's Job rendered as the
worker renders it (prefect-kubernetes' own job configuration class, from the pool's base
job template and the deployment's job variables as ``prefect deploy`` computes them, for a
fake flow run), every Job and every manifest under ``infra/k8s`` validated against the
Kubernetes OpenAPI schemas (``kubernetes-validate``), the resource numbers checked against
the questions' resource tables, the security settings, the worker's RBAC, and the overlay
``infra/k8s/deploy.sh`` applies (secrets from ``infra/.env``)."""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.deployments import NIGHTLY
from flows.launchers.container import SCRATCH, WRITABLE_ENV
from flows.launchers.images import default_image
from flows.work_pools import (
    DEADLINE_MARGIN_S,
    GPU_TOLERATION,
    LOG_ALLOWANCE,
    image_pull_secrets,
    job_needs,
    k8s_cpu,
    k8s_quantity,
    limits_table,
    load_pools,
    needs_table,
)
from tasks.core.errors import ConfigError
from tests.k8s_support import API_URL, ROOT, deployed, flow_name, resolve

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("prefect_kubernetes")

K8S = ROOT / "infra" / "k8s"
TEMPLATE = K8S / "base-job-template.json"
K8S_VERSION = "1.30.0"
POOL = "visionflows-k8s"
# Prefect's default template puts these two Job fields in the pod spec, and its manifest
# check requires them there; the API server drops them (an "unknown field" warning).
PREFECT_POD_FIELDS = {"completions": 1, "parallelism": 1}
SECRETISH = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL|VF_STORE)", re.IGNORECASE)
GOOD_ENV = {"MINIO_ROOT_USER": "vf-admin", "MINIO_ROOT_PASSWORD": "a-real-admin-password-42",
            "VF_BUCKET": "vf-bucket", "VF_TASKS_ACCESS_KEY": "vf-tasks",
            "VF_TASKS_SECRET_KEY": "a-real-tasks-secret-42",
            "PREFECT_DB_PASSWORD": "a-real-db-password-42",
            "PREFECT_AUTH_STRING": "vf:a-real-prefect-password-42"}


def question_table(flow: str):
    """The question's own resource table and step kinds, read straight from its plan."""
    import importlib

    from tasks.plans import FLOW_CONFIGS

    plan = importlib.import_module(FLOW_CONFIGS[flow].__module__)
    return plan.RESOURCES, set(plan.STEP_KINDS.values())


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def pod_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]["spec"]]
    if obj["kind"] == "Pod":
        return [spec]
    return []


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            # a RayCluster is KubeRay's custom resource: its pod templates and fields are
            # validated in tests/test_kuberay.py
            if doc and doc.get("kind") not in ("Kustomization", "RayCluster"):
                out.append((str(path.relative_to(ROOT)), doc))
    return out


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def jobs(template) -> dict[str, dict]:
    """flow name -> the rendered Job manifest and env of its nightly-k8s deployment."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    out = {}
    for dep in deployed(POOL):
        cfg = resolve(KubernetesWorkerJobConfiguration, template, dep, "kubernetes")
        out[flow_name(dep["entrypoint"])] = {"job": cfg.job_manifest, "deployment": dep,
                                             "namespace": cfg.namespace}
    return out


def container(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


# -- the derivation ----------------------------------------------------------------------


def test_job_needs_follow_the_resource_tables():
    q4 = job_needs("q4-yolo")
    assert (q4.gpus, q4.pack, q4.cpus) == (1, 1, 8)  # YOLOv5x trains on one whole GPU
    assert q4.memory == (32 + 8) << 30 and q4.shm == 8 << 30  # train: 32g + 8g /dev/shm
    q1 = job_needs("q1-mlp")
    assert (q1.gpus, q1.gpu_share, q1.pack) == (1, 0.25, 4)  # 4 cells share the one GPU
    assert q1.cpus == 4 * 2 and q1.memory == 4 * (4 + 1) << 30 and q1.shm == 4 << 30
    assert job_needs("q3-segmentation").gpus == 1
    report = job_needs("report")
    assert (report.gpus, report.cpus, report.memory) == (0, 1, 3 << 30)
    # every question: whole GPUs = the largest step's share rounded up, from its own table
    for flow in NIGHTLY:
        if flow == "report":
            continue
        table, kinds = question_table(flow)
        share = max(table.for_kind(k).gpus for k in kinds)
        assert job_needs(flow).gpus == math.ceil(share), flow
    # overrides of the table move the numbers: a half share packs 2, two GPUs stay whole
    half = job_needs("q1-cnn", overrides={"resources": {"train": {"gpus": 0.5},
                                                         "evaluate": {"gpus": 0.5}}})
    assert (half.gpus, half.pack, half.cpus) == (1, 2, 4)
    two = job_needs("q4-yolo", overrides={"resources": {"train": {"gpus": 2}}})
    assert (two.gpus, two.pack) == (2, 1)
    cpu = job_needs("q1-mlp", profile="smoke")  # the smoke profile takes the GPUs away
    assert (cpu.gpus, cpu.pack, cpu.cpus) == (0, 1, 2)
    # q2 packs its models (`parallel`): half shares put both on one GPU
    q2 = job_needs("q2-transfer", overrides={"resources": {"train": {"gpus": 0.5},
                                                            "evaluate": {"gpus": 0.5}}})
    assert (q2.gpus, q2.pack) == (1, 2)
    # q3 has no `parallel` (one segment step): a share there cannot pack
    q3 = job_needs("q3-segmentation", overrides={"resources": {"evaluate": {"gpus": 0.5}}})
    assert (q3.gpus, q3.pack) == (1, 1)
    with pytest.raises(ConfigError, match="unknown flow"):
        job_needs("q9-nothing")


def test_deployment_doc_shows_the_derived_needs():
    assert needs_table() in (ROOT / "docs" / "deployment.md").read_text()


@pytest.mark.parametrize(("size", "text"), [(40 << 30, "40Gi"), (1536 << 20, "1536Mi"),
                                            ((1 << 30) + 1, "1025Mi")])
def test_k8s_quantity(size, text):
    assert k8s_quantity(size) == text


@pytest.mark.parametrize(("cpus", "text"), [(8, "8"), (1.5, "1500m"), (0.25, "250m"),
                                            (2.0001, "2001m")])
def test_k8s_cpu(cpus, text):
    assert k8s_cpu(cpus) == text


# -- the base job template ---------------------------------------------------------------


def test_template_keeps_prefect_defaults_and_every_variable_is_used(template):
    from prefect.utilities.templating import find_placeholders
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours, theirs = template["variables"]["properties"], default["variables"]["properties"]
    replaced = {"cpu_request", "cpu_limit", "memory_request", "memory_limit"}  # -> cpu, memory
    changed_default = {"namespace": "visionflows", "service_account_name":
                       "visionflows-flow-run", "finished_job_ttl": 86400,
                       "env": {"PREFECT_API_AUTH_STRING": None}}
    for name, schema in theirs.items():
        if name in replaced:
            assert name not in ours
            continue
        mine = dict(ours[name])
        if name in changed_default:
            assert mine.pop("default") == changed_default[name]
            mine.pop("description")
            schema = {k: v for k, v in schema.items() if k not in ("default", "description")}
        assert mine == schema, name
    added = set(ours) - set(theirs)
    assert added == {"gpu_count", "cpu", "memory", "shm_size", "node_selector", "tolerations",
                     "store_secret_name", "scratch_size", "ephemeral_storage",
                     "active_deadline_seconds", "image_pull_secrets", "auth_secret_name"}
    assert template["variables"]["definitions"] == default["variables"]["definitions"]
    # the job configuration keeps every default key; the placeholders and the variables
    # match one to one (no dead variable, no placeholder without a variable)
    assert set(template["job_configuration"]) == set(default["job_configuration"])
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used == set(ours)


def test_template_is_a_valid_prefect_kubernetes_configuration(template):
    """With every variable at its default, the template renders and passes
    prefect-kubernetes' own manifest checks."""
    import asyncio

    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    cfg = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        template, {"image": "example/visionflows-tasks:1"}, client=object()))
    c = container(cfg.job_manifest)
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "4Gi", "ephemeral-storage": "11Gi"},
        "limits": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": 0,
                   "ephemeral-storage": "11Gi"}}
    assert cfg.namespace == "visionflows" == load_pools().get(POOL).namespace
    spec = cfg.job_manifest["spec"]
    # even a run with no job variables ends: 7 h at most, and is cleaned up a day later
    assert spec["activeDeadlineSeconds"] == 25200 and spec["ttlSecondsAfterFinished"] == 86400
    assert spec["template"]["spec"]["imagePullSecrets"] == []


# -- the rendered Jobs -------------------------------------------------------------------


def test_one_nightly_k8s_job_per_flow(jobs):
    assert set(jobs) == set(NIGHTLY)
    for flow, r in jobs.items():
        dep = r["deployment"]
        assert dep["name"] == load_pools().get(POOL).deployment == "nightly-k8s"
        assert dep["pull"] == []  # the flows come from the image
        assert r["job"]["metadata"]["labels"]["prefect.io/flow-name"] == flow
        assert r["job"]["metadata"]["namespace"] == r["namespace"] == "visionflows"


def test_rendered_jobs_validate_against_the_kubernetes_schema(jobs):
    for flow, r in jobs.items():
        job = copy.deepcopy(r["job"])
        pod = job["spec"]["template"]["spec"]
        for field, value in PREFECT_POD_FIELDS.items():
            assert pod.pop(field) == value, flow
        validate(job)
        # with Prefect's two fields the non-strict schema (what the API server applies)
        # accepts it as it is
        kubernetes_validate.validate(r["job"], K8S_VERSION, strict=False)


def test_rendered_jobs_ask_for_the_resource_table(jobs):
    expected_gpus = {"q1-mlp": 1, "q1-cnn": 1, "q2-transfer": 1, "q3-segmentation": 1,
                     "q4-yolo": 1, "report": 0}
    for flow, r in jobs.items():
        c = container(r["job"])
        res = c["resources"]
        n = job_needs(flow)
        assert res["limits"]["nvidia.com/gpu"] == expected_gpus[flow] == n.gpus, flow
        assert res["requests"] == {"cpu": k8s_cpu(n.cpus), "memory": k8s_quantity(n.memory),
                                   "ephemeral-storage": k8s_quantity(n.scratch + LOG_ALLOWANCE)}
        assert {k: v for k, v in res["limits"].items() if k != "nvidia.com/gpu"} == \
            res["requests"], flow  # Guaranteed QoS: requests = limits
        pod = r["job"]["spec"]["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": k8s_quantity(n.shm)}
        mount = next(m for m in c["volumeMounts"] if m["name"] == "dshm")
        assert mount["mountPath"] == "/dev/shm"
        assert pod["tolerations"] == ([GPU_TOLERATION] if n.gpus else [])
        scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
        assert scratch["emptyDir"] == {"sizeLimit": k8s_quantity(n.scratch)}
    q4 = container(jobs["q4-yolo"]["job"])["resources"]
    assert q4["limits"] == {"cpu": "8", "memory": "40Gi", "nvidia.com/gpu": 1,
                            "ephemeral-storage": "21Gi"}
    q1 = jobs["q1-mlp"]
    assert container(q1["job"])["resources"]["limits"]["memory"] == "20Gi"
    # the sweep packs its cells on the one GPU: parallel = floor(1 / 0.25); the nightly
    # regression switch rides along (Q3 keeps no champion)
    assert q1["deployment"]["parameters"]["overrides"] == {"parallel": 4,
                                                           "fail_on_regression": True}
    assert jobs["q4-yolo"]["deployment"]["parameters"]["overrides"] == {
        "fail_on_regression": True}
    assert jobs["q3-segmentation"]["deployment"]["parameters"]["overrides"] == {}


def test_rendered_jobs_end(jobs):
    """A stuck Job cannot hold a GPU for good: its deadline is the flow's time limit from
    the question's resource table plus the margin, and finished Jobs are cleaned up."""
    expected_hours = {"q1-mlp": 12, "q1-cnn": 12, "q2-transfer": 24, "q3-segmentation": 6,
                      "q4-yolo": 30, "report": 2}
    for flow, r in jobs.items():
        spec = r["job"]["spec"]
        table = question_table(flow)[0] if flow != "report" else None
        if table is not None:
            assert table.flow_time_limit_s == expected_hours[flow] * 3600, flow
        assert spec["activeDeadlineSeconds"] == expected_hours[flow] * 3600 + \
            DEADLINE_MARGIN_S, flow
        # the deadline outlasts the longest single step: the step's own limit fires first
        if table is not None:
            _, kinds = question_table(flow)
            longest = max(table.for_kind(k).time_limit_s for k in kinds)
            assert spec["activeDeadlineSeconds"] > longest, flow
        assert spec["ttlSecondsAfterFinished"] == 86400
        assert spec["template"]["spec"]["imagePullSecrets"] == []
    q4 = jobs["q4-yolo"]["job"]["spec"]["template"]["spec"]
    assert next(v for v in q4["volumes"] if v["name"] == "scratch")["emptyDir"] == \
        {"sizeLimit": "20Gi"}
    assert limits_table() in (ROOT / "docs" / "deployment.md").read_text()


def test_a_deadline_or_pull_secret_given_at_deploy_or_run_time(template, monkeypatch):
    """``VF_IMAGE_PULL_SECRETS`` at ``prefect deploy`` names the registry Secret; a run may
    still set its own deadline and scratch (``-jv``); bad names are refused."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    monkeypatch.setenv("VF_IMAGE_PULL_SECRETS", "regcred, mirror-creds")
    dep = next(d for d in deployed(POOL) if flow_name(d["entrypoint"]) == "q4-yolo")
    cfg = resolve(KubernetesWorkerJobConfiguration, template, dep, "kubernetes",
                  flow_run_job_variables={"active_deadline_seconds": 600,
                                          "scratch_size": "50Gi"})
    spec = cfg.job_manifest["spec"]
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"},
                                                            {"name": "mirror-creds"}]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in \
        spec["template"]["spec"]["volumes"]
    job = copy.deepcopy(cfg.job_manifest)
    for field in PREFECT_POD_FIELDS:
        job["spec"]["template"]["spec"].pop(field)
    validate(job)
    with pytest.raises(ConfigError, match="'Reg_Cred' is not a Kubernetes Secret name"):
        image_pull_secrets({"VF_IMAGE_PULL_SECRETS": "Reg_Cred"})
    assert image_pull_secrets({}) == []


def test_rendered_jobs_run_the_flow_in_the_task_image_of_this_code(jobs):
    image = default_image()
    assert re.fullmatch(r"visionflows-tasks:\d+\.\d+\.\d+-[0-9a-f]{12}", image)
    for flow, r in jobs.items():
        c = container(r["job"])
        assert c["image"] == image, flow
        # the task image's entrypoint is `python -m tasks`: the flow-run command runs as is
        assert c["command"] + c["args"] == ["/usr/bin/env", "prefect", "flow-run", "execute"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["PREFECT_API_URL"] == API_URL  # the worker's, handed on
        assert env["PREFECT__FLOW_NAME"] == flow
        params = r["deployment"]["parameters"]
        if flow != "report":
            assert params["profile"] == "full" and params["launcher"] == "local"


def test_rendered_jobs_take_credentials_from_the_secret_only(jobs):
    for flow, r in jobs.items():
        env = container(r["job"])["env"]
        from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env
                       if "valueFrom" in e}
        for required in ("VF_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert from_secret[required] == {"name": "visionflows-store", "key": required}
        assert from_secret["VF_S3_ENDPOINT_URL"]["optional"] is True
        for e in env:  # nothing secret-looking as a literal value
            if SECRETISH.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (flow, e)
        assert not r["deployment"]["work_pool"]["job_variables"].get("env")


def test_the_workers_auth_string_reaches_flow_runs_only_by_secret(template):
    """Prefect hands every setting of the worker to the Job it creates; the worker holds
    the API's auth string, so without care it would be a literal in the Job (`kubectl
    describe`). The template's `env` default drops it; the pod reads it from the Secret."""
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    secret = "vf:the-workers-auth-string-42"
    for dep in deployed(POOL):
        with temporary_settings(updates={PREFECT_API_AUTH_STRING: secret}):
            cfg = resolve(KubernetesWorkerJobConfiguration, template, dep, "kubernetes")
        assert secret not in json.dumps(cfg.job_manifest)
        env = [e for e in container(cfg.job_manifest)["env"]
               if e["name"] == "PREFECT_API_AUTH_STRING"]
        assert env == [{"name": "PREFECT_API_AUTH_STRING", "valueFrom": {"secretKeyRef": {
            "name": "prefect-auth", "key": "auth-string", "optional": True}}}]
        labels = cfg.job_manifest["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "flow-run"  # the NetworkPolicies'


def test_network_policies_let_only_workers_and_flow_runs_in():
    found = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    flow_run = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "flow-run"}}}
    worker = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prefect-worker"}}}

    def sources(name: str, port: int) -> list[dict]:
        policy = found[("NetworkPolicy", name)]["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        target = policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        assert target == name  # it selects the pods of that name
        return rule["from"]

    assert sources("prefect-server", 4200) == [worker, flow_run]
    assert sources("minio", 9000) == [flow_run, {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "minio-init"}}}]
    assert sources("postgres", 5432) == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "prefect-server"}}}]
    # the selected pods carry those labels
    for kind, name in (("Deployment", "prefect-server"), ("StatefulSet", "minio"),
                       ("StatefulSet", "postgres"), ("Deployment", "prefect-worker")):
        labels = found[(kind, name)]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name


def test_server_runs_on_postgres_with_auth_from_secrets():
    found = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    assert ("PersistentVolumeClaim", "prefect-data") not in found  # no SQLite volume
    server = found[("Deployment", "prefect-server")]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in server["containers"][0]["env"]}
    for part in ("driver", "host", "port", "user", "name", "password"):
        ref = env[f"PREFECT_SERVER_DATABASE_{part.upper()}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "prefect-db", "key": part}
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env
    assert env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
        "name": "prefect-auth", "key": "auth-string"}
    assert not [v for v in server.get("volumes", []) if "persistentVolumeClaim" in v]
    worker = found[("Deployment", "prefect-worker")]["spec"]["template"]["spec"]
    wenv = {e["name"]: e for e in worker["containers"][0]["env"]}
    assert wenv["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
        "name": "prefect-auth", "key": "auth-string"}
    pg = found[("StatefulSet", "postgres")]["spec"]
    (claim,) = pg["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in
              pg["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    penv = {e["name"]: e for e in pg["template"]["spec"]["containers"][0]["env"]}
    assert penv["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "prefect-db",
                                                                      "key": "password"}


def test_rendered_jobs_are_locked_down(jobs):
    for flow, r in jobs.items():
        job = r["job"]
        # a preempted pod: Prefect reschedules the run (AwaitingRetry), Kubernetes does not
        assert job["spec"]["backoffLimit"] == 0
        pod = job["spec"]["template"]["spec"]
        c = container(job)
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["serviceAccountName"] == "visionflows-flow-run"
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        # the read-only root: every folder the task image writes is on an emptyDir, as
        # under the docker launcher (WRITABLE_ENV, all inside its /tmp tmpfs)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert all("emptyDir" in volumes[name] for name in mounts.values())
        assert mounts[SCRATCH] and c["workingDir"] == SCRATCH
        for var, path in WRITABLE_ENV.items():
            assert env[var] == path and Path(path).is_relative_to(SCRATCH), var
        assert_restricted(pod, flow)


def test_flow_run_job_variables_override_the_deployment(template):
    """A run started with `-jv gpu_count=2` asks for two GPUs; the rest stays."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    dep = next(d for d in deployed(POOL) if flow_name(d["entrypoint"]) == "q4-yolo")
    cfg = resolve(KubernetesWorkerJobConfiguration, template, dep, "kubernetes",
                  flow_run_job_variables={"gpu_count": 2, "node_selector":
                                          {"nvidia.com/gpu.product": "NVIDIA-H100"}})
    pod = cfg.job_manifest["spec"]["template"]["spec"]
    assert container(cfg.job_manifest)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container(cfg.job_manifest)["resources"]["limits"]["memory"] == "40Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}


# -- the manifests -----------------------------------------------------------------------


def assert_restricted(pod: dict, where: str) -> None:
    """The "restricted" Pod Security Standard, which the namespace enforces."""
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), (where, key)
    psc = pod.get("securityContext", {})
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert not any("hostPath" in v for v in pod.get("volumes", [])), where
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, (where, c["name"])
        assert sc.get("runAsUser", psc.get("runAsUser")) not in (None, 0), (where, c["name"])
        assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], (where, c["name"])
        assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
        assert not sc.get("privileged"), (where, c["name"])


def test_manifests_validate_and_meet_the_restricted_standard():
    found = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in found}
    assert {("Namespace", "visionflows"), ("StatefulSet", "minio"), ("Service", "minio"),
            ("StatefulSet", "postgres"), ("Service", "postgres"), ("Job", "minio-init"),
            ("NetworkPolicy", "prefect-server"), ("NetworkPolicy", "minio"),
            ("NetworkPolicy", "postgres"),
            ("Deployment", "prefect-server"), ("Service", "prefect-server"),
            ("Deployment", "prefect-worker"), ("ServiceAccount", "prefect-worker"),
            ("Role", "prefect-worker"), ("RoleBinding", "prefect-worker"),
            ("ServiceAccount", "visionflows-flow-run")} <= kinds
    for path, doc in found:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "visionflows", (path, doc["kind"])
        for pod in pod_specs(doc):
            assert_restricted(pod, f"{path}:{doc['metadata']['name']}")
            for c in pod["containers"]:  # every long-running container has probes
                if doc["kind"] != "Job":
                    assert c.get("readinessProbe") and c.get("livenessProbe"), (path, c["name"])
                for e in c.get("env", []):
                    if SECRETISH.search(e["name"]) and e["name"] != "MC_CONFIG_DIR":
                        assert "secretKeyRef" in e.get("valueFrom", {}), (path, e["name"])
    ns = next(d for _, d in found if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_statefulset_keeps_minio_data_on_a_volume_claim():
    sts = next(d for _, d in manifests() if d["kind"] == "StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in
              sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    job = next(d for _, d in manifests() if d["kind"] == "Job")
    # refusing the example passwords (exit 2) fails the bucket Job at once
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "/bin/sh", "/etc/visionflows/init.sh"]


def test_worker_rbac_reaches_jobs_pods_and_logs_in_its_namespace_only():
    found = [d for _, d in manifests()]
    assert not [d for d in found if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [d for d in found if d["kind"] == "Role"]
    (binding,) = [d for d in found if d["kind"] == "RoleBinding"]
    grants = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames tricks
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb)
                    grants.add((group, resource, verb))
    assert grants == {("batch", "jobs", v) for v in ("get", "list", "watch", "create",
                                                     "delete")} | \
        {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prefect-worker",
                                    "namespace": role["metadata"]["namespace"]}]
    worker = next(d for d in found if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "prefect-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "prefect-worker"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    # prefect-kubernetes' observer watches cluster-wide unless told otherwise
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == "visionflows"
    flow_sa = next(d for d in found if d["kind"] == "ServiceAccount"
                   and d["metadata"]["name"] == "visionflows-flow-run")
    assert flow_sa["automountServiceAccountToken"] is False
    assert all(s["name"] != "visionflows-flow-run" for s in binding["subjects"])


# -- the overlay deploy.sh applies ---------------------------------------------------------


def kubectl() -> str | None:
    return shutil.which("kubectl")


def test_overlay_refuses_example_and_short_secrets(tmp_path):
    from flows.k8s import write_overlay

    example = dict(line.split("=", 1) for line in
                   (ROOT / "infra" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    with pytest.raises(ConfigError, match="VF_TASKS_SECRET_KEY is still the example value"):
        write_overlay(tmp_path / "a", example)
    with pytest.raises(ConfigError, match="MINIO_ROOT_PASSWORD is still the example value"):
        write_overlay(tmp_path / "b", {**example, "VF_TASKS_SECRET_KEY": "x" * 20})
    with pytest.raises(ConfigError, match="shorter than 12"):
        write_overlay(tmp_path / "c", {**GOOD_ENV, "MINIO_ROOT_PASSWORD": "short"})
    with pytest.raises(ConfigError, match="needs VF_STORE"):
        write_overlay(tmp_path / "d", {**GOOD_ENV, "VF_K8S_MINIO": "0"})
    with pytest.raises(ConfigError, match="PREFECT_AUTH_STRING's password is still the example"):
        write_overlay(tmp_path / "e", {**GOOD_ENV, "PREFECT_AUTH_STRING":
                                       example["PREFECT_AUTH_STRING"]})
    with pytest.raises(ConfigError, match="PREFECT_AUTH_STRING must be user:password"):
        write_overlay(tmp_path / "f", {**GOOD_ENV, "PREFECT_AUTH_STRING": "no-colon-here-42"})
    with pytest.raises(ConfigError, match="PREFECT_DB_PASSWORD is still the example value"):
        write_overlay(tmp_path / "g", {**GOOD_ENV, "PREFECT_DB_PASSWORD":
                                       example["PREFECT_DB_PASSWORD"]})
    with pytest.raises(ConfigError, match="VF_K8S_POSTGRES=0 needs PREFECT_DB_HOST"):
        write_overlay(tmp_path / "h", {**GOOD_ENV, "VF_K8S_POSTGRES": "0"})
    for d in "abcdefgh":  # nothing written before the checks pass
        assert not list((tmp_path / d).glob("*"))


def test_overlay_writes_the_auth_and_database_secrets(tmp_path):
    from flows.k8s import write_overlay

    out = write_overlay(tmp_path / "o", GOOD_ENV)
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    names = {g["name"]: g["envs"] for g in kust["secretGenerator"]}
    assert names["prefect-auth"] == ["prefect-auth.env"]
    assert names["prefect-db"] == ["prefect-db.env"]
    assert any(r.endswith("postgres") for r in kust["resources"])
    auth = (out / "prefect-auth.env").read_text()
    assert auth == "auth-string=vf:a-real-prefect-password-42\n"
    db = dict(line.split("=", 1) for line in (out / "prefect-db.env").read_text().splitlines())
    assert db == {"driver": "postgresql+asyncpg",
                  "host": "postgres.visionflows.svc.cluster.local", "port": "5432",
                  "user": "prefect", "name": "prefect", "password": "a-real-db-password-42"}
    assert oct((out / "prefect-db.env").stat().st_mode & 0o777) == "0o600"
    # an existing database: no StatefulSet, its address in the Secret
    out = write_overlay(tmp_path / "x", {**GOOD_ENV, "VF_K8S_POSTGRES": "0",
                                         "PREFECT_DB_HOST": "db.example.org",
                                         "PREFECT_DB_NAME": "prefect_prod"})
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert not any(r.endswith("postgres") for r in kust["resources"])
    db = dict(line.split("=", 1) for line in (out / "prefect-db.env").read_text().splitlines())
    assert (db["host"], db["name"], db["port"]) == ("db.example.org", "prefect_prod", "5432")


def render_overlay(out: Path, env: dict) -> list[dict]:
    from flows.k8s import write_overlay

    write_overlay(out, env)
    res = subprocess.run([kubectl(), "kustomize", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.mark.skipif(kubectl() is None, reason="kubectl (for its kustomize) is not installed")
def test_overlay_renders_valid_objects_with_secrets_only_in_secrets(tmp_path):
    objs = render_overlay(tmp_path / "o", {**GOOD_ENV, "VF_REGISTRY": "reg.example/vf/"})
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for o in objs:
        validate(o)
    store = {k: base64.b64decode(v).decode() for k, v in
             by[("Secret", "visionflows-store")]["data"].items()}
    assert store == {"VF_STORE": "s3://vf-bucket/vf", "AWS_ACCESS_KEY_ID": "vf-tasks",
                     "AWS_SECRET_ACCESS_KEY": GOOD_ENV["VF_TASKS_SECRET_KEY"],
                     "VF_S3_ENDPOINT_URL": "http://minio.visionflows.svc.cluster.local:9000"}
    root = {k: base64.b64decode(v).decode() for k, v in
            by[("Secret", "minio-root")]["data"].items()}
    assert root == {"MINIO_ROOT_USER": "vf-admin",
                    "MINIO_ROOT_PASSWORD": GOOD_ENV["MINIO_ROOT_PASSWORD"]}
    init = by[("ConfigMap", "minio-init")]["data"]
    assert init["init.sh"] == (ROOT / "infra/minio/init.sh").read_text()
    assert init["tasks-policy.json"] == (ROOT / "infra/minio/tasks-policy.json").read_text()
    # no secret in plain text outside the Secrets
    plain = yaml.safe_dump_all([o for o in objs if o["kind"] != "Secret"])
    for secret in (GOOD_ENV["VF_TASKS_SECRET_KEY"], GOOD_ENV["MINIO_ROOT_PASSWORD"],
                   GOOD_ENV["PREFECT_DB_PASSWORD"], GOOD_ENV["PREFECT_AUTH_STRING"]):
        assert secret not in plain
    worker = by[("Deployment", "prefect-worker")]
    image = worker["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "reg.example/vf/" + load_pools().worker_image
    # an existing store: no MinIO, the given URI and endpoint
    objs = render_overlay(tmp_path / "e", {**GOOD_ENV, "VF_K8S_MINIO": "0",
                                           "VF_STORE": "s3://theirs/vf",
                                           "VF_S3_ENDPOINT_URL": "https://s3.example.org"})
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("StatefulSet", "minio") not in kinds and ("Secret", "minio-root") not in kinds
    store = next(o for o in objs if o["metadata"]["name"] == "visionflows-store")
    assert base64.b64decode(store["data"]["VF_STORE"]).decode() == "s3://theirs/vf"


@pytest.mark.skipif(kubectl() is None, reason="kubectl (for its kustomize) is not installed")
def test_deploy_script_renders_and_refuses_examples(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VF_", "MINIO_"))}
    env.update(GOOD_ENV, VF_K8S_RENDER="1", PYTHONPATH=str(ROOT),
               PYTHON=shutil.which("python3") or "python3")
    script = str(K8S / "deploy.sh")
    res = subprocess.run([script], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(res.stdout) if d]
    # the store, MinIO's root account, the API's auth string, the database
    assert kinds.count("Secret") == 4 and kinds.count("StatefulSet") == 2 and "Job" in kinds
    env["VF_TASKS_SECRET_KEY"] = "change-me-tasks-secret"
    res = subprocess.run([script], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert res.returncode == 2 and "still the example value" in res.stderr
    assert "kind:" not in res.stdout
