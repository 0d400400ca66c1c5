"""Registered webhook endpoints and the delivery log, as views for the gateway and the CLI.

An endpoint belongs to the tenant that registered it and receives the events (of the types it
subscribes to) of that tenant's jobs and batches only. With `visible_tenant`, another tenant's
endpoint is not found, as an unknown id, and only that tenant's deliveries are listed (None: all).
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session, sessionmaker

from db import webhooks as ledger
from db.models import DeliveryStatus, WebhookEndpoint, utcnow
from producer.batch_errors import BatchInputError, BatchNotFoundError
from producer.webhooks import WebhookSettings, WebhookUrlError, check_url, new_secret

MAX_ROTATION_GRACE_S = 7 * 24 * 3600


class EndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=lambda: list(ledger.EVENT_TYPES), min_length=1)

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(ledger.EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r}; known: {', '.join(ledger.EVENT_TYPES)}")
        return events


class EndpointView(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    # Shown once: when the endpoint is created and when its secret is rotated.
    secret: str | None = None
    previous_secret_valid_until: datetime | None = None

    @classmethod
    def of(cls, endpoint: WebhookEndpoint, *, with_secret: bool = False) -> EndpointView:
        return cls(id=endpoint.id, url=endpoint.url, events=endpoint.events.split(","), created_at=endpoint.created_at,
                   secret=endpoint.secret if with_secret else None, previous_secret_valid_until=endpoint.previous_until)


class AttemptView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    response_excerpt: str | None


class DeliveryView(BaseModel):
    webhook_id: str
    event_type: str
    subject_id: str
    url: str
    endpoint_id: str | None
    status: str
    attempts: list[AttemptView]
    next_attempt_at: datetime | None
    created_at: datetime


def register(sessions: sessionmaker[Session], settings: WebhookSettings, request: EndpointRequest, *,
             tenant: str) -> EndpointView:
    try:
        check_url(request.url, settings.allow_hosts)
    except WebhookUrlError as exc:
        raise BatchInputError(str(exc).replace("webhook_url", "url", 1), param="url") from None
    endpoint = WebhookEndpoint(id=f"ep_{uuid.uuid4().hex}", url=request.url, tenant=tenant, events=",".join(request.events),
                               secret=new_secret(), created_at=utcnow())
    with sessions.begin() as session:
        ledger.add_endpoint(session, endpoint=endpoint)
    return EndpointView.of(endpoint, with_secret=True)


def list_endpoints(sessions: sessionmaker[Session], *, visible_tenant: str | None) -> list[EndpointView]:
    with sessions() as session:
        return [EndpointView.of(e) for e in ledger.list_endpoints(session, tenant=visible_tenant)]


def rotate(sessions: sessionmaker[Session], endpoint_id: str, *, visible_tenant: str | None,
           grace_s: Annotated[float, Field(ge=0)] = 24 * 3600.0) -> EndpointView:
    """A new secret; the old one keeps signing (a second signature) for `grace_s`, so receivers can switch."""
    if not 0 <= grace_s <= MAX_ROTATION_GRACE_S:
        raise BatchInputError(f"grace_s must be between 0 and {MAX_ROTATION_GRACE_S}", param="grace_s")
    with sessions.begin() as session:
        if not ledger.rotate_secret(session, endpoint_id=endpoint_id, secret=new_secret(),
                                    previous_until=utcnow() + timedelta(seconds=grace_s), tenant=visible_tenant):
            raise _endpoint_not_found(endpoint_id)
        endpoint = ledger.get_endpoint(session, endpoint_id=endpoint_id)
        assert endpoint is not None
        return EndpointView.of(endpoint, with_secret=True)


def remove(sessions: sessionmaker[Session], endpoint_id: str, *, visible_tenant: str | None) -> None:
    with sessions.begin() as session:
        if not ledger.delete_endpoint(session, endpoint_id=endpoint_id, tenant=visible_tenant):
            raise _endpoint_not_found(endpoint_id)


def _endpoint_not_found(endpoint_id: str) -> BatchNotFoundError:
    return BatchNotFoundError(f"no webhook endpoint with id {endpoint_id!r}", param="endpoint_id")


def deliveries(sessions: sessionmaker[Session], *, subject_id: str | None = None, status: DeliveryStatus | None = None,
               limit: int = 50, visible_tenant: str | None = None) -> list[DeliveryView]:
    """The latest deliveries (of one job or batch, or in one status), each with its attempts."""
    if subject_id is not None:
        with contextlib.suppress(ValueError):  # job ids are stored as 32 hex digits
            subject_id = uuid.UUID(subject_id).hex
    with sessions() as session:
        return [
            DeliveryView(webhook_id=f"msg_{d.id}", event_type=d.event_type, subject_id=d.subject_id, url=d.url,
                         endpoint_id=d.endpoint_id, status=d.status, created_at=d.created_at,
                         next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.PENDING else None,
                         attempts=[AttemptView.model_validate(a) for a in ledger.attempts_of(session, delivery_id=d.id)])
            for d in ledger.deliveries(session, subject_id=subject_id, status=status, limit=limit, tenant=visible_tenant)
        ]


__all__ = ["DeliveryView", "EndpointRequest", "EndpointView", "deliveries", "list_endpoints", "register", "remove", "rotate"]
