"""Fan-out without a cluster: the runner choice and its refusals, steps submitted through
Prefect's thread pool at most ``parallel`` at once, the resource table in Ray's options
and in the subprocess and docker launchers' limits, and where a task ran in its manifest.
The cluster tests are in ``test_ray.py``."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

import pytest
from prefect import flow

from flows.fanout import RETRIES, Steps, clamped, fits, ray_options, step_threads, unfit
from flows.launchers.child_process import SubprocessOptions
from flows.launchers.container import DockerOptions, container_spec
from flows.runners import (
    INSTALL_HINT,
    RayUnavailableError,
    check_cluster_setup,
    choose_runner,
    require_ray,
    worker_runtime_env,
)
from tasks.core.errors import ConfigError
from tasks.core.resources import Resources, ResourceTable
from tasks.core.runtime import provenance, ray_context

ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-42"}


# ------------------------------------------------------------------ choosing the runner

@pytest.mark.parametrize("flag,address,env,expected", [
    (None, None, {}, ("thread", None)),
    ("ray", None, {}, ("ray", None)),
    (None, "ray://head:10001", {}, ("ray", "ray://head:10001")),
    (None, None, {"VF_RAY_ADDRESS": "10.0.0.5:6379"}, ("ray", "10.0.0.5:6379")),
    (None, None, {"VF_TASK_RUNNER": "ray"}, ("ray", None)),
    ("ray", "auto", {}, ("ray", "auto")),
    ("thread", None, {"VF_TASK_RUNNER": "ray"}, ("thread", None)),
])
def test_choose_runner(flag, address, env, expected):
    assert choose_runner(flag, address, env) == expected


@pytest.mark.parametrize("flag,address,match", [
    ("dask", None, "unknown task runner 'dask'"),
    ("thread", "ray://head:10001", "needs --task-runner ray"),
    ("ray", "head", "use ray://HOST:10001"),
    ("ray", "http://head:8265", "use ray://HOST:10001"),
])
def test_choose_runner_refuses_with_the_fix(flag, address, match):
    with pytest.raises(ConfigError, match=match):
        choose_runner(flag, address, {})


def test_a_folder_store_is_refused_with_a_cluster(tmp_path):
    with pytest.raises(ConfigError, match="cannot see from its nodes.*s3://BUCKET/PREFIX"):
        check_cluster_setup("ray://127.0.0.1:10001", f"file://{tmp_path}", {})
    check_cluster_setup(None, f"file://{tmp_path}", {})  # a local Ray shares this machine


def test_a_remote_cluster_must_reach_the_store_and_the_api():
    remote = "ray://10.0.0.5:10001"
    with pytest.raises(ConfigError, match="VF_S3_ENDPOINT_URL=http://127.0.0.1:9000"):
        check_cluster_setup(remote, "s3://b/p", {"VF_S3_ENDPOINT_URL": "http://127.0.0.1:9000"},
                            api_url="http://10.0.0.2:4200/api")
    with pytest.raises(ConfigError, match="the temporary local Prefect server.*"
                                          "VF_RAY_PREFECT_API_URL"):
        check_cluster_setup(remote, "s3://b/p", {}, api_url=None)
    with pytest.raises(ConfigError, match="localhost:4200"):
        check_cluster_setup(remote, "s3://b/p", {}, api_url="http://localhost:4200/api")
    check_cluster_setup(remote, "s3://b/p", {"VF_S3_ENDPOINT_URL": "http://minio:9000"},
                        api_url="http://10.0.0.2:4200/api")
    # a cluster on this machine (or a port-forward) reaches loopback services
    check_cluster_setup("127.0.0.1:6379", "s3://b/p", {"VF_S3_ENDPOINT_URL": "http://127.0.0.1:9"})


def test_a_port_forwarded_cluster_with_remote_nodes_needs_cluster_side_urls():
    """A loopback address (a port-forward) whose nodes are elsewhere: loopback URLs are
    refused naming the cluster-side setting, which then goes to the workers."""
    from flows.runners import check_nodes_reach

    fwd, nodes = "ray://127.0.0.1:10001", ["10.1.2.3", "10.1.2.4"]
    loop = {"VF_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    with pytest.raises(ConfigError, match=r"VF_S3_ENDPOINT_URL=http://127.0.0.1:9000 .*"
                                          r"\(10.1.2.3, 10.1.2.4\).*set VF_RAY_S3_ENDPOINT_URL"):
        check_nodes_reach(nodes, fwd, loop, api_url="http://10.0.0.2:4200/api")
    inside = {**loop, "VF_RAY_S3_ENDPOINT_URL": "http://minio.vf.svc:9000"}
    with pytest.raises(ConfigError, match="127.0.0.1:4200/api is this machine's loopback: "
                                          "set VF_RAY_PREFECT_API_URL"):
        check_nodes_reach(nodes, fwd, inside, api_url="http://127.0.0.1:4200/api")
    both = {**inside, "VF_RAY_PREFECT_API_URL": "http://prefect.vf.svc:4200/api"}
    check_nodes_reach(nodes, fwd, both, api_url="http://127.0.0.1:4200/api")
    check_nodes_reach(["127.0.0.1"], fwd, loop, api_url=None)  # all on this machine
    env = worker_runtime_env("http://127.0.0.1:4200/api", env=both)["env_vars"]
    assert env["VF_S3_ENDPOINT_URL"] == "http://minio.vf.svc:9000"
    assert env["PREFECT_API_URL"] == "http://prefect.vf.svc:4200/api"


def test_steps_no_node_holds_are_refused_and_an_autoscaler_gets_a_bounded_wait():
    from flows.runners import check_fit
    from tasks.plans import resolve_config

    cfg = resolve_config("q1-cnn", "smoke", {"resources": {"train": {"cpus": 2,
                                                                      "memory": "4g"}}})
    small = [{"CPU": 1.0, "memory": 8 * 2.0**30}, {"CPU": 1.0, "memory": 2 * 2.0**30}]
    with pytest.raises(ConfigError) as err:
        check_fit("q1-cnn", cfg, lambda: small, wait_s=0)
    assert str(err.value) == (
        "q1-cnn: train steps need 2 CPUs, 0 GPUs and 4g memory, and no Ray node holds that "
        "(the largest: 1 CPUs, 0 GPUs, 8.0 GiB of 2 node(s)); lower it (--set "
        "resources.train.cpus=... / .gpus=... / .memory=...) or add a node that large; "
        "nothing ran")
    big = {"CPU": 4.0, "memory": 16 * 2.0**30}
    seen = iter([small, small, [*small, big]])  # an autoscaler adds a node on the third look
    asked: list = []
    assert check_fit("q1-cnn", cfg, lambda: next(seen), wait_s=30,
                     request=asked.append) == [*small, big]
    assert asked == [{"CPU": 2.0, "memory": 4.0 * 2**30}]  # the autoscaler, asked once
    start = datetime.now().timestamp()
    with pytest.raises(ConfigError, match="train steps need 2 CPUs"):
        check_fit("q1-cnn", cfg, lambda: small, wait_s=0.5)
    assert datetime.now().timestamp() - start < 5


def test_ray_token_comes_from_the_environment_or_rays_token_file(tmp_path):
    from flows.runners import ray_auth_token, use_ray_auth
    from flows.submit import auth_headers

    file = tmp_path / "auth_token"
    file.write_text("from-file\n")
    assert ray_auth_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(file)}) \
        == "from-env"
    assert ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(file)}) == "from-file"
    assert ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}) is None
    assert auth_headers({"RAY_AUTH_TOKEN": "t0k"}) == {"Authorization": "Bearer t0k"}
    env = {"RAY_AUTH_TOKEN_PATH": str(file)}
    assert use_ray_auth(env) and env["RAY_AUTH_MODE"] == "token"
    env = {"RAY_AUTH_TOKEN": "x", "RAY_AUTH_MODE": "disabled"}  # the user's choice stands
    assert not use_ray_auth(env) and env["RAY_AUTH_MODE"] == "disabled"


def test_submit_refuses_bad_input_before_contacting_a_cluster(tmp_path, capsys):
    from flows.cli import main

    cases = [
        (["--ray-address", "ray://h:10001", "q1-mlp"], "the Ray dashboard's address"),
        (["--ray-address", "http://127.0.0.1:9", "q1-mlp", "--store", f"file://{tmp_path}"],
         "is a folder on this machine"),
        (["--ray-address", "http://127.0.0.1:9", "q1-mlp", "--task-runner", "thread"],
         "drop --task-runner/--ray-address"),
        (["--ray-address", "http://127.0.0.1:9", "q1-mlp", "--set", "epochs=-1"], "epochs"),
        (["--ray-address", "http://127.0.0.1:9", "--status", "j", "--stop", "j"],
         "one of --status/--logs/--stop"),
        (["--ray-address", "http://127.0.0.1:9", "q1-mlp", "--store", "s3://b/p"],
         "the Ray dashboard at http://127.0.0.1:9 does not answer"),
    ]
    for args, message in cases:
        code = main(["submit", *args])
        err = capsys.readouterr().err
        assert code in (1, 2) and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def test_the_driver_refuses_a_cluster_environment_unlike_the_submitters(capsys):
    from flows.submit import driver_main, local_versions

    wrong = {**local_versions(), "torch": "0.0.1"}
    assert driver_main([__import__("json").dumps(wrong), "run", "q1-mlp"]) == 3
    err = capsys.readouterr().err
    assert "torch 0.0.1 here" in err and "nothing ran" in err


def test_submitted_job_environment_has_cluster_side_urls_and_the_job(monkeypatch):
    from flows.submit import job_env

    env = {**ENV, "VF_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
           "VF_RAY_S3_ENDPOINT_URL": "http://minio.vf.svc:9000",
           "VF_RAY_PREFECT_API_URL": "http://prefect.vf.svc:4200/api", "UNRELATED": "x"}
    v = job_env("vf-q1-mlp-r1-1", env)
    assert v["VF_S3_ENDPOINT_URL"] == "http://minio.vf.svc:9000"
    assert v["PREFECT_API_URL"] == "http://prefect.vf.svc:4200/api"
    assert v["VF_RAY_JOB_ID"] == "vf-q1-mlp-r1-1" and v["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert v["AWS_SECRET_ACCESS_KEY"] == ENV["AWS_SECRET_ACCESS_KEY"] and "UNRELATED" not in v


def test_cli_refuses_a_folder_store_with_a_cluster_before_anything_runs(tmp_path, capsys):
    from flows.cli import main

    store = tmp_path / "store"
    code = main(["run", "q1-mlp", "--ray-address", "ray://127.0.0.1:10001",
                 "--store", f"file://{store}"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot see from its nodes" in err and "s3://" in err
    assert not store.exists()


def test_missing_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    from flows.cli import main

    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if not installed
    with pytest.raises(RayUnavailableError, match=r"pip install -e '\.\[ray\]'"):
        require_ray()
    store = tmp_path / "store"
    assert main(["run", "q1-mlp", "--task-runner", "ray", "--store", f"file://{store}"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray and prefect-ray" in err and INSTALL_HINT in err
    assert not store.exists()


def test_worker_environment_carries_code_api_and_store_settings(monkeypatch):
    for k, v in {**ENV, "VF_S3_ENDPOINT_URL": "http://minio:9000", "HOME": "/root",
                 "UNRELATED": "x", "VF_CACHE_DIR": "/home/me/.cache/vf"}.items():
        monkeypatch.setenv(k, v)
    assert worker_runtime_env("http://x/api", local=True)["env_vars"]["VF_CACHE_DIR"] == \
        "/home/me/.cache/vf"  # a Ray on this machine shares its folders, a cluster does not
    env = worker_runtime_env("http://10.0.0.2:4200/api")
    assert "VF_CACHE_DIR" not in env["env_vars"]
    assert {os.path.basename(p) for p in env["py_modules"]} == {"tasks", "flows", "reports"}
    assert all(os.path.isdir(p) for p in env["py_modules"])
    v = env["env_vars"]
    assert v["PREFECT_API_URL"] == "http://10.0.0.2:4200/api"
    assert v["AWS_SECRET_ACCESS_KEY"] == ENV["AWS_SECRET_ACCESS_KEY"]
    assert v["VF_S3_ENDPOINT_URL"] == "http://minio:9000" and v["VF_GIT_COMMIT"]
    assert "UNRELATED" not in v and "HOME" not in v


# ------------------------------------------------------------------ the resource table

def test_ray_options_come_from_the_table():
    res = Resources(cpus=2, memory="4g", gpus=0.25, shm="1g", time_limit_s=60)
    assert ray_options(res, RETRIES["train"]) == {
        "num_cpus": 2, "num_gpus": 0.25, "memory": 4 * 2**30, "max_retries": 1,
        "retry_exceptions": False}
    assert step_threads(res) == 2 and step_threads(Resources(cpus=0.5)) == 1


def test_a_step_no_node_can_hold_is_named_with_the_fix():
    res = Resources(cpus=8, memory="32g", gpus=1)
    nodes = [{"CPU": 4.0, "GPU": 2.0, "memory": 16 * 2**30}, {"CPU": 16.0, "memory": 64 * 2**30}]
    assert not any(fits(res, n) for n in nodes)
    msg = unfit("train", res, nodes)
    assert msg and "8 CPUs, 1 GPUs and 32g" in msg and "--set resources.train.cpus" in msg
    assert unfit("train", Resources(cpus=4, memory="8g", gpus=1), nodes) is None
    # on the Ray started for a run (this machine) such a step runs with what it has
    small = clamped(res, {"CPU": 2.0, "memory": 3 * 2**30})
    assert (small.cpus, small.gpus, small.memory_bytes) == (2, 0, 3 * 2**30)
    assert fits(small, {"CPU": 2.0, "memory": 3 * 2**30})


def test_subprocess_limits_from_the_table_unless_set(tmp_path):
    res = Resources(cpus=1, memory="3g", time_limit_s=120)
    opts = SubprocessOptions.from_env({}).with_resources(res)
    assert (opts.timeout_s, opts.memory) == (120, "3g")
    opts = SubprocessOptions.from_env({"VF_TASK_MEMORY": "1g", "VF_TASK_TIMEOUT_S": "none"}
                                      ).with_resources(res)
    assert (opts.timeout_s, opts.memory) == (None, "1g")  # explicit settings win


def test_docker_limits_and_gpu_requests_from_the_table():
    res = Resources(cpus=2, memory="6g", gpus=0.25, shm="3g", time_limit_s=900)
    opts = DockerOptions.from_env({}).with_resources(res)
    assert (opts.memory, opts.shm_size, opts.cpus, opts.timeout_s, opts.gpus) == \
        ("6g", "3g", 2, 900, 1)  # a share of a GPU asks for a whole device
    spec = container_spec("classifier.train", {"device": "cuda"}, "s3://b/p", opts, env=ENV,
                          extra_env={"OMP_NUM_THREADS": "2"})
    assert spec["mem_limit"] == spec["memswap_limit"] == "6g" and spec["shm_size"] == "3g"
    assert spec["nano_cpus"] == 2 * 10**9
    assert [dict(r)["Count"] for r in spec["device_requests"]] == [1]
    assert spec["environment"]["OMP_NUM_THREADS"] == "2"
    env_wins = DockerOptions.from_env({"VF_DOCKER_MEMORY": "16g", "VF_DOCKER_GPUS": "none",
                                       "VF_DOCKER_SHM_SIZE": "8g"}).with_resources(res)
    assert (env_wins.memory, env_wins.gpus, env_wins.shm_size, env_wins.cpus) == \
        ("16g", "none", "8g", 2)
    no_gpu = DockerOptions.from_env({}).with_resources(Resources(gpus=0))
    assert no_gpu.gpus == "auto"  # from the config's device, as without a table


def test_every_question_names_a_kind_for_each_of_its_tasks():
    from tasks.q1 import plan as q1
    from tasks.q2 import plan as q2
    from tasks.q3 import plan as q3
    from tasks.q4 import plan as q4
    from tasks.registry import TASKS

    for plan in (q1, q2, q3, q4):
        assert set(plan.STEP_KINDS.values()) <= set(RETRIES)
        assert set(plan.STEP_KINDS) <= set(TASKS)
        assert isinstance(plan.RESOURCES, ResourceTable)


# ------------------------------------------------------------------ where a task ran

def test_provenance_says_where_a_task_ran(monkeypatch):
    import torch

    prov = provenance()
    assert prov["pid"] == os.getpid() and prov["hostname"]
    assert prov["threads"] == torch.get_num_threads()
    assert prov["device"] == "cpu" or prov["device"].startswith("cuda")
    assert prov["ray"] is None and ray_context() is None
    # a task's child process inside a Ray worker reads what its worker passed on
    monkeypatch.setenv("VF_RAY_NODE_ID", "ab" * 28)
    monkeypatch.setenv("VF_RAY_WORKER_PID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert ray_context() == {"node_id": "ab" * 28, "worker_pid": 4242, "gpu_ids": ["1"]}


def test_local_launcher_applies_the_step_threads(tmp_path):
    import torch

    from flows.launchers import launch

    before = torch.get_num_threads()
    m = launch("selftest.sleep", {"out": "runs/t/s", "seconds": 0}, f"file://{tmp_path}",
               "local", env={"OMP_NUM_THREADS": "1"})
    assert m.provenance["threads"] == 1
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------ steps on the thread pool

class _Cfg:
    def __init__(self, parallel: int):
        self.parallel = parallel
        self.resources = ResourceTable()


@flow(name="fanout-test")
def _sleeps(store: str, parallel: int, n: int) -> list[dict[str, Any]]:
    steps = Steps(_Cfg(parallel), store, "local", {"selftest.sleep": "evaluate"})
    futures = [steps.submit(f"sleep-{i}", "selftest.sleep",
                            {"out": f"runs/fan/{parallel}/s{i}", "seconds": 1.0})
               for i in range(n)]
    return [f.result() for f in futures]  # in order


def _most_at_once(manifests: list[dict]) -> int:
    events = []
    for m in manifests:
        events += [(datetime.fromisoformat(m["started_at"]), 1),
                   (datetime.fromisoformat(m["finished_at"]), -1)]
    most = now = 0
    for _, step in sorted(events):
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("parallel", [1, 2])
def test_thread_pool_runs_at_most_parallel_steps_in_order(prefect_harness, tmp_path, parallel):
    store = f"file://{tmp_path}"
    out = _sleeps(store, parallel, 4)
    assert [m["prefix"] for m in out] == [f"runs/fan/{parallel}/s{i}" for i in range(4)]
    assert _most_at_once(out) == parallel


class _FakeJobs:
    """A JobSubmissionClient stand-in: logs that end in Ctrl-C, or a job that ends."""

    def __init__(self, chunks, interrupt=False, status="RUNNING", message=""):
        self.chunks, self.interrupt, self.status, self.message = chunks, interrupt, status, message
        self.stopped = False

    async def tail_job_logs(self, job_id):
        for c in self.chunks:
            yield c
        if self.interrupt:
            raise KeyboardInterrupt

    def get_job_info(self, job_id):
        from types import SimpleNamespace

        return SimpleNamespace(status=self.status, message=self.message, metadata={})

    def get_job_status(self, job_id):
        return self.status

    def stop_job(self, job_id):
        self.stopped, self.status = True, "STOPPED"
        return True


def test_submit_follow_ctrl_c_detaches_or_stops(capsys, monkeypatch):
    from flows.submit import follow

    url = "http://head:8265"
    jobs = _FakeJobs(["epoch 1\n"], interrupt=True)
    assert follow(jobs, url, "vf-job-1", interactive=False) == 0
    out = capsys.readouterr()
    assert "epoch 1" in out.out and not jobs.stopped
    assert ("detached from Ray job vf-job-1; it keeps running. follow it with: visionflows "
            "submit --ray-address http://head:8265 --logs vf-job-1; stop it with: "
            "visionflows submit --ray-address http://head:8265 --stop vf-job-1") in out.err
    jobs = _FakeJobs([], interrupt=True)
    monkeypatch.setattr("builtins.input", lambda prompt: "s")
    assert follow(jobs, url, "vf-job-2", interactive=True) == 0
    assert jobs.stopped and "Ray job vf-job-2: STOPPED" in capsys.readouterr().err


def test_submit_follow_reports_the_outcome_or_a_lost_head(capsys):
    from flows.submit import JobError, follow

    assert follow(_FakeJobs(["done\n"], status="SUCCEEDED"), "http://h:8265", "j") == 0
    assert follow(_FakeJobs([], status="STOPPED"), "http://h:8265", "j") == 130
    with pytest.raises(JobError, match="Ray job j failed: exit code 3"):
        follow(_FakeJobs([], status="FAILED", message="exit code 3"), "http://h:8265", "j")
    with pytest.raises(JobError, match="lost the Ray cluster at http://h:8265 while following "
                                       "job j .*resubmit with --run-id r1"):
        follow(_FakeJobs([], status="RUNNING"), "http://h:8265", "j", run_id="r1")
