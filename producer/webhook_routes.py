"""The gateway's webhook routes: register, list, rotate and remove endpoints; read the delivery log.

Each route works as the Client that `client_for(scope)` resolves for the caller: an endpoint is
registered for the caller's tenant (it gets that tenant's events only), another tenant's endpoint
is a 404 like an unknown id, and the log shows the tenant's own deliveries (an admin key: all).
Registering, rotating and removing need `submit`; listing endpoints and deliveries needs `read`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any

import anyio
import fastapi
from fastapi import APIRouter, Body, FastAPI, Query
from fastapi.params import Depends

from db.engine import session_factory
from db.models import DeliveryStatus
from producer.batch_routes import ClientFor, same_client
from producer.client import Client
from producer.tenants import Scope
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


def include_webhook_routes(app: FastAPI, client: Client, *, client_for: ClientFor | None = None,
                           dependencies: Sequence[Depends] = (), settings: WebhookSettings | None = None) -> None:
    """Serve /v1/webhooks on `app` behind `dependencies`, each route as the Client that `client_for`
    gives the caller (without it, `client` for everyone); errors answer through the batch error handler."""
    settings = settings or WebhookSettings()
    sessions = session_factory(client.database_url)
    callers = client_for or same_client(client)
    manager, reader = fastapi.Depends(callers(Scope.SUBMIT)), fastapi.Depends(callers(Scope.READ))
    router = APIRouter(prefix=WEBHOOKS_PATH, tags=["webhooks"], dependencies=list(dependencies),
                       responses={401: {"description": "missing or unknown API key"},
                                  403: {"description": "the key lacks the route's scope"}})

    @router.post("/endpoints", status_code=201, response_model=EndpointView)
    async def add_endpoint(request: EndpointRequest, caller: Client = manager) -> EndpointView:
        """Register a URL for the events of the types given of the caller's tenant's jobs and batches;
        the secret is shown only now."""
        return await anyio.to_thread.run_sync(partial(register, sessions, settings, request, tenant=caller.tenant))

    @router.get("/endpoints", response_model=list[EndpointView])
    async def get_endpoints(caller: Client = reader) -> list[EndpointView]:
        return await anyio.to_thread.run_sync(partial(list_endpoints, sessions, visible_tenant=caller.visible_tenant))

    @router.post("/endpoints/{endpoint_id}/rotate", response_model=EndpointView,
                 responses={404: {"description": "no such endpoint"}})
    async def rotate_secret(endpoint_id: str, grace_s: Annotated[float, Body(embed=True)] = 24 * 3600.0,
                            caller: Client = manager) -> EndpointView:
        """A new secret; the old one still signs (a second signature) for `grace_s` seconds."""
        return await anyio.to_thread.run_sync(partial(rotate, sessions, endpoint_id, grace_s=grace_s,
                                                      visible_tenant=caller.visible_tenant))

    @router.delete("/endpoints/{endpoint_id}", responses={404: {"description": "no such endpoint"}})
    async def delete_endpoint(endpoint_id: str, caller: Client = manager) -> dict[str, Any]:
        await anyio.to_thread.run_sync(partial(remove, sessions, endpoint_id, visible_tenant=caller.visible_tenant))
        return {"id": endpoint_id, "deleted": True}

    @router.get("/deliveries", response_model=list[DeliveryView])
    async def get_deliveries(subject_id: str | None = None, status: DeliveryStatus | None = None,
                             limit: Annotated[int, Query(ge=1, le=200)] = 50, caller: Client = reader) -> list[DeliveryView]:
        """The latest deliveries, each with its attempts (status code, latency, error excerpt)."""
        return await anyio.to_thread.run_sync(partial(deliveries, sessions, subject_id=subject_id, status=status, limit=limit,
                                                      visible_tenant=caller.visible_tenant))

    app.include_router(router)


__all__ = ["WEBHOOKS_PATH", "include_webhook_routes"]
