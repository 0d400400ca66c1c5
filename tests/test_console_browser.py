"""The console in a real browser (Playwright driving Debian's chromium) against a real gateway served
by uvicorn, a worker, Redis and the databases: log in, read, filter, retry, and the refusals."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from producer import Client
from producer.gateway import GatewaySettings, create_app
from producer.tenants import DEFAULT_TENANT
from producer.worker_process import WorkerProcess
from tests.helpers import unique_text
from tests.live_gateway import serve
from tests.services import service_missing

CHROMIUM = os.environ.get("TEXTQ_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("TEXTQ_TEST_ARTIFACTS", Path(__file__).resolve().parent / "artifacts")) / "console"
KEY = "console-key-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        service_missing("playwright (the dev extra)", exc)
    if not Path(CHROMIUM).exists():
        service_missing("chromium", FileNotFoundError(CHROMIUM))
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def gateway(worker: WorkerProcess, client: Client) -> Iterator[str]:
    with serve(create_app(client, GatewaySettings(keys=[KEY]))) as url:
        yield url


@pytest.fixture()
def page(browser: Any, gateway: str) -> Iterator[Any]:
    context = browser.new_context(base_url=gateway)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


def _shot(page: Any, name: str, backend_name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{backend_name}-{name}.png"), full_page=True)


def _log_in(page: Any) -> None:
    page.goto("/console/")
    assert page.url.endswith("/console/login")
    page.fill("input[name=api_key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/")


def test_the_console_end_to_end(page: Any, client: Client, gateway: str, backend: Any) -> None:
    xss = f"<script>window.pwned=1</script>{unique_text()}"
    ok = client.wait_many([client.submit({"text": t, "model": "echo"}).id for t in (xss, unique_text("fine"))], timeout=60)
    flaky = client.wait_many([client.submit({"text": unique_text("FLAKY"), "model": "flaky"}).id for _ in range(3)],
                             timeout=60)
    assert {v.status for v in flaky} == {"failed"} and {v.status for v in ok} == {"succeeded"}

    # The overview's numbers are the jobs table's: read before and after the page, since jobs of other
    # tests on the shared worker may finish in between; as the key's tenant sees them (other tests' tenants' jobs are not shown).
    as_shown = client.for_tenant(DEFAULT_TENANT)
    before = {m.model: m for m in as_shown.overview().models}["flaky"]
    _log_in(page)
    cookie = next(c for c in page.context.cookies() if c["name"] == "textq_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    assert KEY not in cookie["value"] and KEY not in page.content()
    assert client.database_url not in page.content()
    row = page.locator("#models tr[data-model=flaky]")
    shown_failed, shown_succeeded = int(row.locator(".failed").inner_text()), int(row.locator(".succeeded").inner_text())
    after = {m.model: m for m in as_shown.overview().models}["flaky"]
    assert before.succeeded_last_hour <= shown_succeeded <= after.succeeded_last_hour
    assert min(before.failed_last_hour, after.failed_last_hour) <= shown_failed
    assert shown_failed <= max(before.failed_last_hour, after.failed_last_hour)
    page.wait_for_selector("#throughput .uplot")
    legend = page.locator("#latency .u-legend").inner_text()  # both percentiles of a model that had jobs succeed
    assert "echo p50" in legend and "echo p95" in legend, legend
    _shot(page, "overview", backend.name)

    # Filter the list, open a job: the hostile text is shown as text and never runs.
    page.goto("/console/jobs?model=echo&text=" + "window.pwned")
    assert page.locator("#jobs tbody tr").count() == 1
    assert "<script>window.pwned=1</script>" in page.locator("#jobs td.text").inner_text()
    _shot(page, "jobs", backend.name)
    page.click("#jobs a")
    assert xss in page.locator("#input").inner_text()
    assert page.evaluate("window.pwned") is None
    _shot(page, "job", backend.name)

    # Retry one failed job from its page and watch it succeed.
    page.goto(f"/console/jobs/{flaky[0].id}")
    page.click("#retry")
    page.wait_for_url(f"**/console/jobs/{flaky[0].id}")
    assert "first try of" in page.locator("#previous-error").inner_text()
    assert client.wait(flaky[0].id, timeout=60).status == "succeeded"
    page.reload()
    assert page.locator("#status").inner_text() == "succeeded"

    # Bulk retry by filter: the group's count first, then all of it.
    page.goto("/console/failed")
    _shot(page, "failed", backend.name)
    group = page.locator("#groups tr", has_text="flaky").filter(has_text="ValueError")
    group.locator("button[value='1']").click()
    assert page.locator("#message").inner_text().startswith("2 failed jobs match")
    page.locator("#groups tr", has_text="flaky").filter(has_text="ValueError").locator(".retry-group").click()
    assert page.locator("#message").inner_text().startswith("retried 2 of 2")
    assert {v.status for v in client.wait_many([v.id for v in flaky[1:]], timeout=60)} == {"succeeded"}

    # Refusals: a forged cookie, a POST without the CSRF token.
    forged = requests.get(f"{gateway}/console/", cookies={"textq_console": cookie["value"][:-4] + "0000"},
                       allow_redirects=False)
    assert forged.status_code == 303 and forged.headers["location"].endswith("/console/login")
    no_csrf = requests.post(f"{gateway}/console/retry", data={"model": "flaky"}, cookies={"textq_console": cookie["value"]},
                         allow_redirects=False)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    hostile = requests.get(f"{gateway}/console/jobs", params={"status": "<b>", "cursor": "%00"},
                        cookies={"textq_console": cookie["value"]}, timeout=30)
    assert hostile.status_code == 422 and "<b>" not in hostile.text

    if os.environ.get("TEXTQ_UPDATE_DOCS_SCREENSHOTS"):
        docs = Path(__file__).resolve().parent.parent / "docs" / "console"
        docs.mkdir(exist_ok=True)
        for shot in ARTIFACTS.glob(f"{backend.name}-*.png"):
            shutil.copy(shot, docs / shot.name.removeprefix(f"{backend.name}-"))
