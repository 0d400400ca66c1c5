"""The gateway's webhook routes: register, list, rotate and remove endpoints; read the delivery log."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, FastAPI, Query
from fastapi.params import Depends

from db.engine import session_factory
from db.models import DeliveryStatus
from producer.client import Client
from producer.webhook_endpoints import (
    DeliveryView,
    EndpointRequest,
    EndpointView,
    deliveries,
    list_endpoints,
    register,
    remove,
    rotate,
)
from producer.webhooks import WebhookSettings

WEBHOOKS_PATH = "/v1/webhooks"


def include_webhook_routes(app: FastAPI, client: Client, *, dependencies: Sequence[Depends] = (),
                           settings: WebhookSettings | None = None) -> None:
    """Serve /v1/webhooks on `app` behind `dependencies`; errors answer through the batch error handler."""
    settings = settings or WebhookSettings()
    sessions = session_factory(client.database_url)
    router = APIRouter(prefix=WEBHOOKS_PATH, tags=["webhooks"], dependencies=list(dependencies),
                       responses={401: {"description": "missing or unknown API key"}})

    @router.post("/endpoints", status_code=201, response_model=EndpointView)
    async def add_endpoint(request: EndpointRequest) -> EndpointView:
        """Register a URL for every job's and batch's events of the types given; the secret is shown only now."""
        return await anyio.to_thread.run_sync(partial(register, sessions, settings, request))

    @router.get("/endpoints", response_model=list[EndpointView])
    async def get_endpoints() -> list[EndpointView]:
        return await anyio.to_thread.run_sync(partial(list_endpoints, sessions))

    @router.post("/endpoints/{endpoint_id}/rotate", response_model=EndpointView)
    async def rotate_secret(endpoint_id: str, grace_s: Annotated[float, Body(embed=True)] = 24 * 3600.0) -> EndpointView:
        """A new secret; the old one still signs (a second signature) for `grace_s` seconds."""
        return await anyio.to_thread.run_sync(partial(rotate, sessions, endpoint_id, grace_s=grace_s))

    @router.delete("/endpoints/{endpoint_id}")
    async def delete_endpoint(endpoint_id: str) -> dict[str, Any]:
        await anyio.to_thread.run_sync(partial(remove, sessions, endpoint_id))
        return {"id": endpoint_id, "deleted": True}

    @router.get("/deliveries", response_model=list[DeliveryView])
    async def get_deliveries(subject_id: str | None = None, status: DeliveryStatus | None = None,
                             limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[DeliveryView]:
        """The latest deliveries, each with its attempts (status code, latency, error excerpt)."""
        return await anyio.to_thread.run_sync(partial(deliveries, sessions, subject_id=subject_id, status=status, limit=limit))

    app.include_router(router)


__all__ = ["WEBHOOKS_PATH", "include_webhook_routes"]
