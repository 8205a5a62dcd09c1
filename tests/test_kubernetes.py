"""The Kubernetes work pool, offline (there is no cluster here): every ``nightly-k8s``
deployment's Job rendered by prefect-kubernetes' own job configuration from the pool's base
job template and the deployment's ``job_variables``, for a fake flow run, exactly as the worker
would; every rendered Job and every manifest under ``infra/k8s/`` validated against the
Kubernetes OpenAPI schemas (``kubernetes-validate``); the worker's RBAC; ``deploy.sh``
against a recording stand-in for ``kubectl``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect_kubernetes", reason="pip install -e '.[dev]' (prefect-kubernetes)")
kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="pip install -e '.[dev]' (kubernetes-validate)")

from flows.deployments import NIGHTLY, flow_run_size  # noqa: E402
from flows.launchers import images  # noqa: E402
from flows.launchers.container import SCRATCH, WRITABLE_ENV  # noqa: E402
from tasks.core.resources import ResourceTable  # noqa: E402
from tasks.q1 import plan as q1  # noqa: E402
from tasks.q2 import plan as q2  # noqa: E402
from tasks.q3 import plan as q3  # noqa: E402
from tasks.q4 import plan as q4  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
TEMPLATE = K8S / "base-job-template.json"
# the oldest Kubernetes still commonly run, and the newest whose schemas the package ships
VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
API_URL = "http://prefect-server.visionflows.svc:4200/api"
# Prefect's own job manifest puts these two Job fields into the pod spec; prefect-kubernetes
# refuses a template without them, and the API server drops them with a warning.
PREFECT_POD_SPEC_EXTRAS = {"completions": 1, "parallelism": 1}
SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "MINIO_ROOT_PASSWORD", "MINIO_ROOT_USER", "PREFECT_API_KEY")
# Expected GPUs per flow-run pod, straight from each question's resource table: the steps
# of a flow run one after another (Q1 packs `parallel` cells, 1 in full), shares round up.
EXPECTED_GPUS = {
    "q1-mlp": math.ceil(q1.RESOURCES.train.gpus), "q1-cnn": math.ceil(q1.RESOURCES.train.gpus),
    "q2-transfer": int(q2.RESOURCES.train.gpus), "q3-segmentation": int(q3.RESOURCES.evaluate.gpus),
    "q4-yolo": int(q4.RESOURCES.train.gpus), "report": 0}


def k8s_deployments() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    out = {}
    for dep in spec["deployments"]:
        if dep["name"] == "nightly-k8s":
            out[dep["tags"][1]] = dep
    return out


class NoApi:
    """The client the worker would use: rendering these Jobs must not need it."""

    def __getattr__(self, name):
        raise AssertionError(f"rendering a Job called the Prefect API ({name})")


def deployed_job_variables(dep: dict) -> dict:
    """``job_variables`` as `prefect deploy` stores them: the build step's output filled in
    (its image-ref step runs `python -m flows.launchers.images ref`)."""
    from prefect.utilities.templating import apply_values

    step = dep["build"][0]["prefect.deployments.steps.run_shell_script"]
    assert step["id"] == "image-ref"
    assert step["script"] == "python -m flows.launchers.images ref"
    return apply_values(dep["work_pool"]["job_variables"],
                        {"image-ref": {"stdout": images.default_image()}})


def render(flow: str, dep: dict, template: dict | None = None) -> dict:
    """The Job the worker would create for a fake flow run of ``dep``."""
    from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = template or json.loads(TEMPLATE.read_text())
    values = deployed_job_variables(dep)
    flow_obj = Flow(id=uuid.uuid4(), name=flow)
    deployment = DeploymentResponse(id=uuid.uuid4(), name=dep["name"], flow_id=flow_obj.id,
                                    job_variables=values)
    run = FlowRun(id=uuid.uuid4(), name="calm-otter", flow_id=flow_obj.id,
                  deployment_id=deployment.id)
    pool = WorkPool(name="visionflows-k8s", type="kubernetes", base_job_template=template)

    async def go():
        cfg = await KubernetesWorkerJobConfiguration.from_template_and_values(
            template, values, client=NoApi())
        cfg.prepare_for_flow_run(run, deployment=deployment, flow=flow_obj, work_pool=pool,
                                 worker_name="k8s-worker")
        return cfg

    with temporary_settings({PREFECT_API_URL: API_URL}):
        return asyncio.run(go()).job_manifest


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict]:
    deps = k8s_deployments()
    assert set(deps) == set(NIGHTLY), "a nightly-k8s deployment per flow"
    return {flow: render(flow, dep) for flow, dep in deps.items()}


def validate(obj: dict, what: str) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{what} is not a valid {obj.get('kind')} for Kubernetes "
                                 f"{version}: {exc.message} at {list(exc.path)}") from None


def pod_of(job: dict) -> tuple[dict, dict]:
    spec = job["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_rendered_jobs_validate_against_the_kubernetes_schemas(jobs):
    for flow, job in jobs.items():
        assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
        spec = job["spec"]["template"]["spec"]
        # the only fields outside the schema are the two Prefect itself puts there
        for key, value in PREFECT_POD_SPEC_EXTRAS.items():
            assert spec[key] == value
        clean = json.loads(json.dumps(job))
        for key in PREFECT_POD_SPEC_EXTRAS:
            del clean["spec"]["template"]["spec"][key]
        validate(clean, f"the {flow} Job")


def test_a_wrong_job_fails_validation(jobs):
    """The check can fail: a misplaced field and a bad quantity are both caught."""
    job = json.loads(json.dumps(jobs["q4-yolo"]))
    for key in PREFECT_POD_SPEC_EXTRAS:
        del job["spec"]["template"]["spec"][key]
    bad = json.loads(json.dumps(job))
    bad["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(AssertionError, match="gpus"):
        validate(bad, "a Job with an unknown field")
    bad = json.loads(json.dumps(job))
    bad["spec"]["template"]["spec"]["volumes"][1]["emptyDir"]["medium"] = {"size": "8Gi"}
    with pytest.raises(AssertionError):
        validate(bad, "a Job with a wrong emptyDir")


def test_gpu_cpu_memory_and_shm_come_from_the_resource_table(jobs):
    for flow, job in jobs.items():
        _, c = pod_of(job)
        size = flow_run_size(flow)
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        if EXPECTED_GPUS[flow]:
            assert limits["nvidia.com/gpu"] == EXPECTED_GPUS[flow], flow
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                job["spec"]["template"]["spec"]["tolerations"]
        else:
            assert "nvidia.com/gpu" not in limits, flow
        assert requests == {"cpu": limits["cpu"], "memory": limits["memory"]}  # guaranteed QoS
        assert float(limits["cpu"]) == size.cpus
        assert limits["memory"] == f"{size.memory_bytes >> 30}Gi"
    # spot values, read off the tables by hand
    _, c = pod_of(jobs["q4-yolo"])
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert q4.RESOURCES.train.memory == "32g" and q4.RESOURCES.train.shm == "8g"
    _, c = pod_of(jobs["q1-mlp"])
    assert q1.RESOURCES.train.gpus == 0.25  # a share of one GPU: the pod gets a whole one
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1}
    _, c = pod_of(jobs["report"])
    report = ResourceTable().report
    assert c["resources"]["limits"] == {"cpu": str(int(report.cpus)),
                                        "memory": f"{report.memory_bytes >> 30}Gi"}


def test_shm_is_a_memory_emptydir_of_the_table_size(jobs):
    for flow, job in jobs.items():
        spec, c = pod_of(job)
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        shm = vols[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert shm["sizeLimit"] == f"{flow_run_size(flow).shm_bytes >> 30}Gi"
    spec, c = pod_of(jobs["q4-yolo"])
    assert next(v for v in spec["volumes"] if v["name"] == "dshm")["emptyDir"] == {
        "medium": "Memory", "sizeLimit": "8Gi"}


def test_credentials_only_through_secret_key_refs(jobs):
    for flow, job in jobs.items():
        _, c = pod_of(job)
        env = {e["name"]: e for e in c["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert set(env[name]) == {"name", "valueFrom"}, (flow, env[name])
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "visionflows-store-credentials"
        for e in c["env"]:
            if e["name"] in SECRET_NAMES or any(w in e["name"] for w in ("SECRET", "PASSWORD",
                                                                         "TOKEN", "API_KEY")):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (flow, e)
        # non-secret store settings: from the ConfigMap, whole
        assert c["envFrom"] == [{"configMapRef": {"name": "visionflows-store"}}]
        # what the worker adds: the API of the in-cluster server, the flow run's id
        assert env["PREFECT_API_URL"]["value"] == API_URL
        assert env["PREFECT__FLOW_RUN_ID"]["value"]


def test_non_root_with_a_read_only_root_and_writable_scratch(jobs):
    for job in jobs.values():
        spec, c = pod_of(job)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "visionflows-flow-run"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in vols[mounts[SCRATCH]]
        # every path the task image writes to is in the scratch emptyDir, as in the docker
        # launcher's containers (one definition: flows.launchers.container.WRITABLE_ENV)
        env = {e["name"]: e.get("value") for e in c["env"]}
        for name, path in WRITABLE_ENV.items():
            assert env[name] == path and path.startswith(SCRATCH), name
        assert c["workingDir"] == SCRATCH
        # the image's entrypoint is `python -m tasks`: the flow run replaces it
        assert c["command"] == ["/usr/bin/env"]
        assert c["args"] == ["prefect", "flow-run", "execute"]


def test_preemption_is_left_to_prefect(jobs):
    for flow, job in jobs.items():
        assert job["spec"]["backoffLimit"] == 0, flow
        _, c = pod_of(job)
        env = {e["name"]: e.get("value") for e in c["env"]}
        # backoffLimit 0 makes the flow run reschedule itself on SIGTERM (AwaitingRetry)
        assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule", flow
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_image_is_the_task_image_of_this_code(jobs):
    ref = images.default_image()
    assert ref == f"visionflows-tasks:{images.image_tag()}"
    for flow, job in jobs.items():
        _, c = pod_of(job)
        assert c["image"] == ref, flow
        assert job["metadata"]["namespace"] == "visionflows"
        assert job["metadata"]["labels"]["prefect.io/flow-name"] == flow


def test_the_image_ref_build_step_prints_this_codes_image(monkeypatch):
    """The build step's own function (prefect's run_shell_script), with its inputs from
    prefect.yaml, run from the project root as `prefect deploy` runs it (the real deploy is
    in tests/test_work_pools.py)."""
    from prefect.deployments.steps import run_shell_script

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VF_IMAGE_REPOSITORY", "registry.example.org/vf/visionflows-tasks")
    step = dict(k8s_deployments()["q4-yolo"]["build"][0][
        "prefect.deployments.steps.run_shell_script"])
    step.pop("id")
    out = asyncio.run(run_shell_script(**step, stream_output=False))
    assert out["stdout"] == "registry.example.org/vf/visionflows-tasks:" + images.image_tag()


def test_template_keeps_every_default_variable():
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours = json.loads(TEMPLATE.read_text())
    props, default_props = ours["variables"]["properties"], default["variables"]["properties"]
    assert set(default_props) <= set(props)
    # replaced by cpu / memory (request = limit); they refuse a value instead of ignoring it
    superseded = {"cpu_request", "cpu_limit", "memory_request", "memory_limit"}
    changed_defaults = {"namespace": "visionflows", "service_account_name":
                        "visionflows-flow-run"}
    for name, schema in default_props.items():
        if name in superseded:
            assert props[name]["anyOf"] == [{"type": "null"}], name
            assert f"`{name.split('_')[0]}` sets the request and the limit" in \
                props[name]["description"], name
        elif name in changed_defaults:
            assert props[name]["default"] == changed_defaults[name]
        else:
            assert props[name] == schema, name
    assert {"gpu_count", "cpu", "memory", "shm_size", "node_selector", "tolerations",
            "service_account_name"} <= set(props)
    # the job configuration keeps Prefect's keys and placeholders
    for key, value in default["job_configuration"].items():
        if key != "job_manifest":
            assert ours["job_configuration"][key] == value, key


def test_node_selector_tolerations_and_service_account_reach_the_pod():
    dep = json.loads(json.dumps(k8s_deployments()["q4-yolo"]))
    dep["work_pool"]["job_variables"].update(
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        tolerations=[{"key": "spot", "operator": "Equal", "value": "true",
                      "effect": "NoSchedule"}],
        service_account_name="gpu-runner", gpu_count=2, cpu="16", memory="64Gi",
        shm_size="16Gi")
    spec, c = pod_of(render("q4-yolo", dep))
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["tolerations"][0]["key"] == "spot"
    assert spec["serviceAccountName"] == "gpu-runner"
    assert c["resources"]["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": 2}
    assert next(v for v in spec["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] \
        == "16Gi"


def test_job_variables_validate_against_the_pool_schema():
    """What the Prefect server checks when a deployment or a run sets job variables."""
    import jsonschema

    schema = json.loads(TEMPLATE.read_text())["variables"]
    for dep in k8s_deployments().values():
        jsonschema.validate(deployed_job_variables(dep), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"gpu_count": "one"}, schema)
    with pytest.raises(jsonschema.ValidationError):  # superseded by `cpu`: refused, not ignored
        jsonschema.validate({"cpu_request": "2"}, schema)


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{i}", doc))
    return out


def test_every_manifest_validates():
    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    assert {("Namespace", "visionflows"), ("StatefulSet", "minio"), ("Service", "minio"),
            ("Job", "minio-init"), ("Deployment", "prefect-server"),
            ("Service", "prefect-server"), ("PersistentVolumeClaim", "prefect-data"),
            ("Deployment", "prefect-worker"), ("ServiceAccount", "prefect-worker"),
            ("Role", "prefect-worker"), ("RoleBinding", "prefect-worker"),
            ("ServiceAccount", "visionflows-flow-run")} <= kinds
    for what, doc in docs:
        validate(doc, what)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "visionflows", what
    sts = next(d for _, d in docs if d["kind"] == "StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_every_pod_runs_non_root_read_only_with_secrets_by_reference():
    for what, doc in manifests():
        if doc["kind"] not in ("StatefulSet", "Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, what
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, what
            for e in c.get("env", []):
                if any(w in e["name"] for w in ("PASSWORD", "SECRET", "ROOT_USER", "ACCESS_KEY")):
                    assert "secretKeyRef" in e["valueFrom"], (what, e)


def test_worker_role_grants_only_jobs_pods_and_logs_in_its_namespace():
    docs = [d for _, d in manifests()]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] ==
                "prefect-worker")
    grants = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"] and not rule.get("resourceNames")
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                grants.setdefault((group, res), set()).update(rule["verbs"])
    assert grants == {("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
                      ("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get"}}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "prefect-worker"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prefect-worker",
                                    "namespace": "visionflows"}]
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] ==
                  "prefect-worker")
    spec = worker["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "prefect-worker"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    # its observer watches this namespace only: a cluster-wide watch would need a ClusterRole
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == "visionflows"
    # the flow-run pods get no API token at all
    sa = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] ==
              "visionflows-flow-run")
    assert sa["automountServiceAccountToken"] is False


FAKE_KUBECTL = """#!/usr/bin/env bash
# records each call (argv, and stdin when it is a manifest), answers like kubectl would
printf '%s\\n' "$*" >> "$KUBECTL_LOG"
case " $* " in
  *" --dry-run=client "*)   # `create ... -o yaml`: the object it would create
    kind=$2; name=$4; [ "$kind" = secret ] && { kind=Secret; name=$4; } || { kind=ConfigMap; }
    echo "kind: $kind"; echo "name: $name";
    for a in "$@"; do case "$a" in --from-env-file=*|--from-file=*) f=${a#*=}; f=${f#*=};
      echo "data-from: $f"; sed 's/^/  /' "$f";; esac; done;;
  *" apply -f - "*) cat >> "$KUBECTL_LOG.stdin";;
  *" port-forward "*) echo "error: no cluster here" >&2; exit 1;;
esac
exit 0
"""


def run_deploy(tmp_path, env_text: str, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    (tmp_path / "vf.env").write_text(env_text)
    log = tmp_path / "kubectl.log"
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KUBECTL_LOG": str(log),
            "VF_ENV_FILE": str(tmp_path / "vf.env"), **env}
    res = subprocess.run(["bash", str(K8S / "deploy.sh")], capture_output=True, text=True,
                         env=full, timeout=120)
    return res, (log.read_text() if log.exists() else "")


GOOD_ENV = """MINIO_ROOT_USER=admin-1
MINIO_ROOT_PASSWORD=Zq8-root-password-not-example
VF_BUCKET=vf-bucket
VF_TASKS_ACCESS_KEY=vf-tasks
VF_TASKS_SECRET_KEY=Xy7-tasks-secret-not-example
"""


def test_deploy_refuses_the_example_passwords(tmp_path):
    example = (ROOT / "infra" / ".env.example").read_text()
    res, calls = run_deploy(tmp_path, example)
    assert res.returncode == 2
    assert "example value" in res.stderr and "set your own" in res.stderr
    assert calls == ""  # nothing reached the cluster
    res, calls = run_deploy(tmp_path, GOOD_ENV.replace("Zq8-root-password-not-example",
                                                       "change-me-later"))
    assert res.returncode == 2 and "MINIO_ROOT_PASSWORD" in res.stderr and calls == ""


def test_deploy_creates_secrets_from_files_and_applies_in_order(tmp_path):
    # it stops after the cluster objects: this kubectl's port-forward fails at once
    res, calls = run_deploy(tmp_path, GOOD_ENV, VF_WORKER_IMAGE="reg.example/vf/worker:3.9.1")
    assert res.returncode == 2
    assert "not reachable through the port-forward: error: no cluster here" in res.stderr
    lines = calls.splitlines()
    # secrets never on a command line
    for secret in ("Zq8-root-password-not-example", "Xy7-tasks-secret-not-example"):
        assert secret not in calls
    order = [next(i for i, line in enumerate(lines) if what in line) for what in (
        "apply -f " + str(K8S / "namespace.yaml"), "secret generic visionflows-store-credentials",
        "configmap visionflows-store", "secret generic visionflows-minio-root",
        "configmap visionflows-tasks-policy", "delete job minio-init", "minio-init.yaml",
        "rollout status statefulset/minio")]
    assert order == sorted(order), calls
    stdin = (tmp_path / "kubectl.log.stdin").read_text()
    assert "image: reg.example/vf/worker:3.9.1" in stdin  # the worker image override
    assert "VF_STORE=s3://vf-bucket/vf" in stdin
    assert "VF_S3_ENDPOINT_URL=http://minio.visionflows.svc:9000" in stdin
