"""The Ray task runner of scheduled runs (``nightly-ray`` deployments): prefect-ray's
``RayTaskRunner`` connected through :func:`flows.runners.ray_session`, so a deployment's flow
run gets what a ``visionflows run --task-runner ray`` gets: the cluster's token, the checks
(the cluster answers; store and Prefect URLs the nodes reach; steps that fit a node, by
:class:`flows.fanout.Steps`), this code and the steps' settings in Ray's runtime environment.

Each question's flow on this runner is a module attribute here, its flow name with ``_`` for
``-`` (made when first asked for, for every question the registry knows, installed ones
included): the ``nightly-ray`` deployments' entrypoints (``flows/ray_runner.py:<attr>``),
which a flow-run process loads. The cluster's address is read when a run starts:
``VF_RAY_ADDRESS`` (set by ``visionflows serve --ray-address``). Imports ``prefect_ray``:
only loaded where a Ray runner is asked for.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect_ray import RayTaskRunner

from flows.registry import flows, load_flow
from flows.runners import address_host, ray_session
from tasks.core.errors import ConfigError
from tasks.core.settings import raw


class ClusterRayTaskRunner(RayTaskRunner):
    """``RayTaskRunner`` on the cluster at ``address`` (``ray://HEAD:10001``, ``HOST:6379``
    or ``auto``; default ``VF_RAY_ADDRESS`` when the run starts), connected for the flow run
    by :func:`ray_session`."""

    def __init__(self, address: str | None = None, **kwargs: Any):
        super().__init__(address=address, **kwargs)
        self._stack: contextlib.ExitStack | None = None

    def duplicate(self) -> ClusterRayTaskRunner:
        return type(self)(self.address, init_kwargs=self.init_kwargs)

    def __enter__(self) -> ClusterRayTaskRunner:
        import ray

        if ray.is_initialized():  # inside a Ray worker (a step's task engine): that Ray
            self._stack = None
            return super().__enter__()
        address = self.address or raw("VF_RAY_ADDRESS")
        if not address:
            raise ConfigError("a nightly-ray run needs the Ray cluster's address: set "
                              "VF_RAY_ADDRESS (ray://HEAD:10001, HOST:6379 or auto), e.g. "
                              "visionflows serve --ray-address ray://HEAD:10001")
        address_host(address)  # its form
        self.address = address
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(ray_session(address))
        try:
            return super().__enter__()  # Ray is initialised: it uses that session
        except BaseException:
            self._stack.close()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            if self._stack is not None:
                self._stack.close()


def attr(flow: str) -> str:
    """The module attribute of ``flow`` on Ray here (``-`` -> ``_``)."""
    return flow.replace("-", "_")


def entrypoint(flow: str) -> str:
    return f"flows/ray_runner.py:{attr(flow)}"


_MADE: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """The flow of the question whose :func:`attr` is ``name``, on the Ray runner."""
    by_attr = {attr(f): f for f in flows()}
    if name not in by_attr:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _MADE:
        _MADE[name] = load_flow(by_attr[name]).with_options(task_runner=ClusterRayTaskRunner())
    return _MADE[name]
