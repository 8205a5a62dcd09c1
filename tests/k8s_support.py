"""Deployments as ``prefect deploy`` builds them from ``prefect.yaml``, and their flow-run
containers and Jobs rendered as the workers render them, offline: Prefect's own YAML model,
build-step runner and templating; prefect-kubernetes' and prefect-docker's own job
configuration classes, resolved for a fake flow run through a client that serves the
deployment, the flow and the store's Secret block from memory."""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# what a worker in the cluster hands each flow run (its own PREFECT_API_URL)
API_URL = "http://prefect-server.visionflows.svc.cluster.local:4200/api"
STORE_BLOCK = {"VF_STORE": "s3://vf-test-bucket/vf", "VF_S3_ENDPOINT_URL":
               "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "vf-test-access",
               "AWS_SECRET_ACCESS_KEY": "vf-test-secret-0123456789"}


def prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def run_build_steps(steps: list[dict]) -> dict[str, Any]:
    """The outputs of ``steps`` as Prefect's ``run_steps`` collects them (step functions
    found and called by Prefect's own helpers), minus its block and variable lookups in the
    steps' inputs, which need a server (ours have none)."""
    from prefect.deployments.steps.core import (
        _get_function_for_step,
        _get_step_fully_qualified_name_and_inputs,
    )
    from prefect.utilities.templating import apply_values, find_placeholders

    outputs: dict[str, Any] = {}
    for step in steps:
        fqn, inputs = _get_step_fully_qualified_name_and_inputs(step)
        step_id = inputs.pop("id", None)
        assert not [p for p in find_placeholders(str(inputs)) if p.name.startswith("prefect.")]
        inputs = apply_values(apply_values(inputs, outputs), dict(os.environ))
        result = _get_function_for_step(fqn, requires=inputs.pop("requires", None))(**inputs)
        if step_id:
            outputs[step_id] = result
        outputs.update(result)
    return outputs


def deployed(pool: str | None = None) -> list[dict[str, Any]]:
    """Every deployment of ``prefect.yaml`` (on ``pool``) after the deploy-time steps:
    validated by Prefect's own model, the build steps run, their outputs templated in."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.utilities.templating import apply_values

    model = PrefectYamlModel.model_validate(prefect_yaml())
    configs = [d.model_dump(exclude_unset=True, mode="json") for d in model.deployments]
    old = os.getcwd()
    os.chdir(ROOT)  # `prefect deploy` runs in the project folder
    try:
        outputs = run_build_steps(model.build or [])
    finally:
        os.chdir(old)
    out = []
    for cfg in configs:
        cfg = apply_values(cfg, dict(os.environ), remove_notset=False)
        cfg = apply_values(cfg, outputs, skip_prefixes=["ctx."])
        if pool is None or cfg["work_pool"]["name"] == pool:
            out.append(cfg)
    return out


def flow_name(entrypoint: str) -> str:
    from flows.registry import FLOWS, REPORT_FLOW

    module, func = (entrypoint.rsplit(":", 1) if ":" in entrypoint
                    else entrypoint.rsplit(".", 1))
    module = module.removesuffix(".py").replace("/", ".")
    for name, target in {**FLOWS, "report": REPORT_FLOW}.items():
        if target == f"{module}:{func}":
            return name
    raise AssertionError(f"entrypoint {entrypoint!r} is no registered flow")


class FakeClient:
    """What ``resolve_for_flow_run`` asks the Prefect API for, from memory."""

    def __init__(self, deployment, flow, blocks: dict[str, dict] | None = None):
        self.deployment, self.flow, self.blocks = deployment, flow, blocks or {}

    async def read_deployment(self, deployment_id):
        assert deployment_id == self.deployment.id
        return self.deployment

    async def read_flow(self, flow_id):
        assert flow_id == self.flow.id
        return self.flow

    async def read_block_document_by_name(self, name, block_type_slug, **_):
        from prefect.client.schemas.objects import BlockDocument
        from prefect.exceptions import ObjectNotFound

        if (block_type_slug, name) not in self.blocks:
            raise ObjectNotFound(http_exc=Exception(f"no block {block_type_slug}/{name}"))
        return BlockDocument(id=uuid.uuid4(), name=name, data={
            "value": self.blocks[(block_type_slug, name)]}, block_schema_id=uuid.uuid4(),
            block_type_id=uuid.uuid4(), block_type_name=block_type_slug)


def resolve(config_cls, template: dict, dep: dict, pool_type: str,
            flow_run_job_variables: dict | None = None, blocks=None):
    """``config_cls.resolve_for_flow_run`` for a fake flow run of deployment ``dep``: the
    pool's template, the deployment's and the run's job variables, ``prepare_for_flow_run``
    (labels, env, command, image checks), with the worker's PREFECT_API_URL."""
    from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = flow_name(dep["entrypoint"])
    flow = Flow(id=uuid.uuid4(), name=name)
    deployment = DeploymentResponse(
        id=uuid.uuid4(), name=dep["name"], flow_id=flow.id, entrypoint=dep["entrypoint"],
        parameters=dep.get("parameters") or {}, work_pool_name=dep["work_pool"]["name"],
        job_variables=copy.deepcopy(dep["work_pool"].get("job_variables") or {}),
        pull_steps=dep.get("pull"), tags=dep.get("tags") or [])
    flow_run = FlowRun(id=uuid.uuid4(), name="brave-gecko", flow_id=flow.id,
                       deployment_id=deployment.id, parameters=deployment.parameters,
                       job_variables=flow_run_job_variables or {})
    work_pool = WorkPool(name=dep["work_pool"]["name"], type=pool_type,
                         base_job_template=copy.deepcopy(template))
    client = FakeClient(deployment, flow, blocks)
    with temporary_settings({PREFECT_API_URL: API_URL}):
        return asyncio.run(config_cls.resolve_for_flow_run(
            flow_run, client=client, work_pool=work_pool, worker_name="vf-test-worker",
            deployment=deployment))
