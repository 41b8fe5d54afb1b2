"""The FastAPI application of one controller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from esc import __version__
from esc.api import problems, spec
from esc.api.query import reject_unknown_query
from esc.api.routes import activity, deployments, ha, monitoring, node, system, vims
from esc.engine.controller import Controller
from esc.security import FailureBudget


def create_app(controller: Controller, *, manage_lifecycle: bool = True) -> FastAPI:
    """The API of `controller`; it starts and stops the controller with the app
    unless the caller manages the controller's life itself."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            controller.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                controller.stop()

    app = FastAPI(
        title="ESC northbound API",
        version=__version__,
        description="Elastic Services Controller: deployments of VNFs as durable transactions.",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.controller = controller
    api = controller.settings.api
    app.state.auth_failures = FailureBudget(api.max_auth_failures, api.auth_failure_window)
    problems.install(app)
    # Added first, so it runs inside BodySizeLimit and reads a bounded body.
    app.add_middleware(problems.JsonDepthLimit, raw=node.UPLOADS)
    app.add_middleware(
        problems.BodySizeLimit,
        limit=controller.settings.api.max_body_bytes,
        own_bound=node.UPLOADS,
    )
    app.add_middleware(problems.NulInUrl)
    app.add_middleware(problems.NodeHeader, node=controller.settings.node.name)
    app.include_router(system.router)
    app.include_router(deployments.router)
    app.include_router(activity.router)
    app.include_router(monitoring.router)
    app.include_router(ha.router)
    app.include_router(vims.router)
    app.include_router(node.router)

    spec.install(app)
    return app
