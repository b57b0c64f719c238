"""The mesh console (`agentmesh console`, issue 26) in a real browser against
real daemons.

The five daemons run as processes on one Redis DB with bearer auth on
(`tok-ops` is the admin `ops`, `tok-view` the role-less `viewer`), the bus
on its memory backend; one SDK test agent (`noop`, each action 300 ms,
action `explode` always FAILED_PRECONDITION) registers through the registry.
The console runs as `python -m agentmesh.cli.main console --port 0` with
`--token tok-ops`; Playwright drives Debian's headless chromium
(`AGENTMESH_TEST_CHROMIUM`, default /usr/bin/chromium, never a downloaded
browser). A browser context that sends `Authorization: Bearer tok-view` is
the viewer calling through the same console.

Each page renders real data made by the test through the SDK; a saga started
while the list is open appears and its timeline follows it live (no reload)
to COMPLETED; a compensated saga shows its compensations in reverse order;
a dead letter is redriven from the UI; the viewer's stop of the admin's swarm
gets the PERMISSION_DENIED status page with the API's own message. Each page
is saved as a screenshot under build/console-screenshots/ (gitignored).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from agentmesh.client import Client
from agentmesh.runtime.errors import PermissionDenied
from tests.infra import flush_db
from tests.procs import ROOT, DaemonProcess, ProcessGroup, daemon, testing_agent

pytestmark = [pytest.mark.e2e]

CONSOLE_DB = 10
ADMIN, VIEWER = "tok-ops", "tok-view"
AGENT_ID = "agent-console-1"
SHOTS = ROOT / "build" / "console-screenshots"
CHROMIUM = os.environ.get("AGENTMESH_TEST_CHROMIUM", "/usr/bin/chromium")
T = TypeVar("T")


class Mesh:
    """The started processes, and SDK calls on a loop thread of their own:
    Playwright's sync API keeps an event loop running in the test's thread,
    so the tests' mesh actions run beside it."""

    def __init__(self, targets: dict[str, str], console: DaemonProcess) -> None:
        self.targets = targets
        self.console = console
        self.url = f"http://127.0.0.1:{console.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[Client], Awaitable[T]], token: str = ADMIN,
             timeout_s: float = 60.0) -> T:
        """`fn(client)` on a fresh Client with `token`, waited for up to `timeout_s`."""

        async def go() -> T:
            async with Client(**self.targets, token=token) as c:
                return await fn(c)

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def mesh(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    logs = tmp_path_factory.mktemp("console")
    url = flush_db(redis_server.url_for_db(CONSOLE_DB))
    tokens = logs / "tokens.json"
    tokens.write_text(json.dumps({
        ADMIN: {"identity": "ops", "roles": ["admin"]},
        VIEWER: "viewer",
    }))
    auth = ["--auth-tokens-file", str(tokens), "--auth-token", ADMIN]
    group = ProcessGroup()
    try:
        registry = group.start(daemon("registry", logs, "--redis-url", url, *auth))
        reg = ["--registry-target", registry.target]
        swarm = group.start(daemon("swarm", logs, "--redis-url", url, *auth, *reg))
        router = group.start(daemon("router", logs, "--redis-url", url, *auth, *reg))
        bus = group.start(daemon("bus", logs, "--backend", "memory", "--redis-url", url,
                                 *auth, *reg))
        saga = group.start(daemon("saga", logs, "--redis-url", url, *auth, *reg,
                                  "--swarm-target", swarm.target))
        group.start(testing_agent(
            "noop", logs, "--registry-target", registry.target, "--token", ADMIN,
            "--delay-ms", "300", "--fail-actions", "explode", "--heartbeat-interval-s", "1",
            agent_id=AGENT_ID,
        ))
        targets = {"registry": registry.target, "router": router.target, "bus": bus.target,
                   "saga": saga.target, "swarm": swarm.target}
        console = group.start(DaemonProcess(
            ["-m", "agentmesh.cli.main", "--token", ADMIN,
             *(f"--{d}={t}" for d, t in targets.items()),
             "console", "--port", "0", "--rate-limiter", "console-limiter",
             "--jaeger-url", "http://127.0.0.1:16686",
             "--bus-metrics-url", f"http://127.0.0.1:{bus.metrics_port}/metrics"],
            logs / "console.log",
        ))
        m = Mesh(targets, console)
        try:
            yield m
        finally:
            m.close()
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def browser(mesh: Mesh) -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") or os.environ.get("AGENTMESH_REQUIRE_INFRA"):
            pytest.fail(f"{CHROMIUM} missing: .ci/install.sh installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} missing")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def saga_def(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "compensation_strategy": "COMPENSATION_STRATEGY_BACKWARD",
            "steps": steps}


def chain(*names: str, comp: bool = True) -> list[dict[str, Any]]:
    return [{"name": n, "agent_id": AGENT_ID, "action": f"do_{n}",
             "compensation_action": f"undo_{n}" if comp else "",
             "depends_on": [names[i - 1]] if i else []} for i, n in enumerate(names)]


def wait_saga(mesh: Mesh, saga_id: str, timeout_s: float = 30.0) -> Any:
    return mesh.call(lambda c: c.wait_saga(saga_id, timeout_s=timeout_s))


# ---- the live saga --------------------------------------------------------------
def test_saga_started_during_the_test_appears_and_its_timeline_follows_it_live(
    mesh: Mesh, page: Any
) -> None:
    page.goto(f"{mesh.url}/sagas")
    # Eight steps of 300 ms: the saga still runs when its page opens.
    steps = chain("collect", "validate", "enrich", "calculate", "review", "report", "sign",
                  "publish")
    started = mesh.call(lambda c: c.start_saga(definition=saga_def("console-live", steps)))
    saga_id = started.saga.saga_id
    page.reload()  # the list is server-rendered: a reload shows the new saga
    row = page.locator(f'#sagas tr[data-saga-id="{saga_id}"]')
    row.wait_for()
    assert "console-live" in row.inner_text()
    row.get_by_role("link", name=saga_id).click()
    page.wait_for_url(f"**/sagas/{saga_id}")
    # Opened while it runs: the page is not final yet.
    assert page.locator("#timeline").get_attribute("data-stream")
    assert page.locator("#saga-state").inner_text() != "COMPLETED"
    page.evaluate("window.__noReload = true")
    page.locator('#timeline li[data-type="SAGA_COMPLETED"]').wait_for()
    assert page.locator("#saga-state").inner_text() == "COMPLETED"
    assert page.evaluate("window.__noReload") is True  # updated in place, never reloaded
    seqs = [int(s) for s in page.locator("#timeline li").evaluate_all(
        "els => els.map(e => e.dataset.sequence)")]
    assert seqs == list(range(1, len(seqs) + 1))  # each event once, in order
    completed = page.locator('#timeline li[data-type="STEP_COMPLETED"]').evaluate_all(
        "els => els.map(e => e.dataset.step)")
    assert completed == ["collect", "validate", "enrich", "calculate", "review", "report",
                         "sign", "publish"]
    assert "has ended: COMPLETED" in page.locator("#live-status").inner_text()
    assert page.locator("#cancel-form").count() == 0
    # The steps table, rendered with the page, is re-read once the saga ended.
    statuses = page.locator("#steps tbody tr td:nth-child(2)")
    statuses.filter(has_text="COMPLETED").nth(7).wait_for()
    assert statuses.all_inner_texts() == ["COMPLETED"] * 8
    shot(page, "saga-live-completed")


def test_the_cancel_button_cancels_a_running_saga(mesh: Mesh, page: Any) -> None:
    steps = chain(*(f"s{i}" for i in range(12)))
    saga_id = mesh.call(
        lambda c: c.start_saga(definition=saga_def("console-cancel", steps))
    ).saga.saga_id
    page.goto(f"{mesh.url}/sagas/{saga_id}")
    page.get_by_label("Reason").fill("operator stop")
    page.get_by_role("button", name="Cancel saga").click()
    page.wait_for_url(f"**/sagas/{saga_id}")  # the 303 back to the saga
    # Followed live to the end: the cancel is logged with its reason, then undone.
    page.locator('#timeline li[data-type="SAGA_CANCELLED"]').wait_for()
    assert "operator stop" in page.locator(
        '#timeline li[data-type="CANCEL_REQUESTED"]').inner_text()
    assert page.locator("#saga-state").inner_text() == "CANCELLED"
    assert wait_saga(mesh, saga_id).state == 7  # SAGA_STATE_CANCELLED


def test_compensated_saga_shows_its_compensations_in_order(mesh: Mesh, page: Any) -> None:
    steps = [*chain("reserve", "charge", "ship"),
             {"name": "explode", "agent_id": AGENT_ID, "action": "explode",
              "depends_on": ["ship"]}]
    saga_id = mesh.call(
        lambda c: c.start_saga(definition=saga_def("console-compensated", steps))
    ).saga.saga_id
    assert wait_saga(mesh, saga_id).state == 5  # SAGA_STATE_COMPENSATED
    page.goto(f"{mesh.url}/sagas?state=COMPENSATED")
    page.locator(f'#sagas tr[data-saga-id="{saga_id}"]').wait_for()
    page.goto(f"{mesh.url}/sagas/{saga_id}")
    assert page.locator("#saga-state").inner_text() == "COMPENSATED"
    undone = page.locator('#timeline li.compensation[data-type="STEP_COMPENSATED"]')
    assert undone.evaluate_all("els => els.map(e => e.dataset.step)") == [
        "ship", "charge", "reserve"]
    failed = page.locator('#timeline li[data-type="STEP_FAILED"]')
    assert "FAILED_PRECONDITION" in failed.inner_text()
    kinds = page.locator("#timeline li").evaluate_all("els => els.map(e => e.dataset.type)")
    assert kinds.index("STEP_FAILED") < kinds.index("COMPENSATION_STARTED") < kinds.index(
        "COMPENSATION_COMPLETED") < kinds.index("SAGA_COMPENSATED")
    assert page.locator('#steps tr[data-step="ship"]').inner_text().count("COMPENSATED") == 1
    shot(page, "saga-compensated")


# ---- every page with real data ----------------------------------------------------
def test_each_page_renders_real_data(mesh: Mesh, page: Any, browser: Any) -> None:
    async def setup(c: Client) -> dict[str, Any]:
        task = await c.schedule_task(task_type="console-report", agent_id=AGENT_ID,
                                     payload={"year": 2026}, priority="PRIORITY_HIGH")
        await c.wait_task(task.task.task_id, timeout_s=20)
        queued = await c.schedule_task(
            task_type="console-later", agent_id=AGENT_ID, priority="PRIORITY_LOW",
            not_before=datetime.now(UTC) + timedelta(hours=1))
        swarm = await c.deploy_swarm({
            "objective": "console sphere", "behavior": "BEHAVIOR_SWARMING",
            "agents_required": 12, "max_iterations": 40, "seed": 3,
            "builtin": {"function": "BENCHMARK_FUNCTION_SPHERE", "space": {"dimensions": 3}},
        }, wait=True, timeout_s=30)
        await c.create_circuit_breaker(breaker={"name": "console-breaker",
                                                "failure_threshold": 3, "open_duration": "5s",
                                                "half_open_max_calls": 1})
        await c.create_rate_limiter(limiter={"name": "console-limiter", "max_requests": 10,
                                             "window": "1s"})
        await c.publish(message={"topic": "console.events",
                                 "payload": {"struct_value": {"text": "hi"}}})
        return {"task": task.task.task_id, "queued": queued.task.task_id,
                "swarm": swarm.swarm_id}

    ids = mesh.call(setup)

    page.goto(f"{mesh.url}/")
    page.wait_for_url("**/agents")
    # Keyboard: the first Tab reaches the skip link, Enter moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    row = page.locator(f'#agents tr[data-agent-id="{AGENT_ID}"]')
    assert "ACTIVE" in row.inner_text() and "noop" in row.inner_text()
    page.get_by_label("Capability").select_option("noop")
    page.get_by_role("button", name="Filter").click()
    assert page.locator("#agents tbody tr").count() == 1
    shot(page, "agents")
    page.get_by_label("Search").fill("no-such-agent")
    page.get_by_label("Search").press("Enter")  # the keyboard submits the filter
    assert "No agents match" in page.locator("#agents").inner_text()
    page.goto(f"{mesh.url}/agents/{AGENT_ID}")
    assert "REGISTERED" in page.locator("#history").inner_text()
    # Heartbeats (every 1 s) arrive live, newest first, each a newer timestamp.
    beats = page.locator("#heartbeats tbody tr.heartbeat")
    beats.nth(2).wait_for()
    stamps = beats.locator("time").evaluate_all("els => els.map(e => e.dateTime)")
    assert stamps[:3] == sorted(stamps[:3], reverse=True) and len(set(stamps[:3])) == 3
    shot(page, "agent")

    page.goto(f"{mesh.url}/tasks")
    assert page.locator('#queue tr[data-priority="LOW"] td').inner_text() == "1"
    assert "COMPLETED" in page.locator(f'#tasks tr[data-task-id="{ids["task"]}"]').inner_text()
    shot(page, "tasks")
    page.goto(f"{mesh.url}/tasks/{ids['task']}")
    states = page.locator("#history tbody tr td:nth-child(2)").all_inner_texts()
    assert states[0] == "PENDING" and states[-1] == "COMPLETED", states
    shot(page, "task")

    page.goto(f"{mesh.url}/swarms/{ids['swarm']}")
    assert "COMPLETED" in page.locator("dl.facts").inner_text()
    plot = page.locator("svg.plot")
    assert plot.get_attribute("role") == "img"
    points = (plot.locator("polyline").get_attribute("points") or "").split()
    assert len(points) >= 10
    assert page.locator("#roles tbody tr").count() >= 1
    shot(page, "swarm")
    page.goto(f"{mesh.url}/swarms")
    assert page.locator(f'#swarms tr[data-swarm-id="{ids["swarm"]}"]').count() == 1

    page.goto(f"{mesh.url}/router")
    assert "CLOSED" in page.locator('#breakers tr[data-breaker="console-breaker"]').inner_text()
    assert "10" in page.locator('#limiters tr[data-limiter="console-limiter"]').inner_text()
    shot(page, "router")

    page.goto(f"{mesh.url}/bus")
    assert page.locator('#topics tr[data-topic="console.events"]').count() == 1
    shot(page, "bus")

    # The read-only pages work without JavaScript (the saga page included).
    nojs = browser.new_context(java_script_enabled=False)
    try:
        p2 = nojs.new_page()
        sagas = mesh.call(lambda c: c.list_sagas(page_size=1)).sagas
        p2.goto(f"{mesh.url}/sagas/{sagas[0].saga_id}")
        assert p2.locator("#timeline li").count() >= 3
        p2.goto(f"{mesh.url}/agents")
        assert p2.locator(f'#agents tr[data-agent-id="{AGENT_ID}"]').count() == 1
    finally:
        nojs.close()


# ---- dead letters -------------------------------------------------------------------
def test_dead_letter_redrive_from_the_ui(mesh: Mesh, page: Any) -> None:
    topic = f"console.orders.{uuid.uuid4().hex[:6]}"

    async def dead_letter(c: Client) -> None:
        await c.publish(message={"topic": topic, "payload": {"struct_value": {"text": "order 1"}}})

        async def refuse() -> None:
            # Nack every delivery until the bus gives up on the message.
            async with c.subscribe(topic, group="console-billing", auto_ack=False,
                                   max_deliveries=1) as sub:
                async for msg in sub:
                    await msg.nack(delay_ms=0)

        consumer = asyncio.create_task(refuse())
        try:
            for _ in range(150):
                if (await c.list_dead_letters(topic=topic)).dead_letters:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("the message was not dead-lettered")
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    mesh.call(dead_letter)
    page.goto(f"{mesh.url}/bus")
    page.locator(f'#topics tr[data-topic="{topic}"]').get_by_role(
        "link", name="dead letters").click()
    page.wait_for_url(f"**/bus/topics/{topic}")
    letters = page.locator("#dead-letters tbody tr[data-message-id]")
    assert letters.count() == 1
    shot(page, "dead-letters")
    page.get_by_role("button", name="Redrive dead letters").click()
    assert re.search(r"Redriven 1 dead letter\b", page.get_by_role("status").inner_text())
    assert "No pending dead letters" in page.locator("#dead-letters").inner_text()
    shot(page, "dead-letters-redriven")

    async def redelivered(c: Client) -> list[str]:
        texts = []
        async with c.subscribe(topic, group="console-audit", start_position="earliest") as sub:
            async for msg in sub:
                texts.append(str(msg.payload))
                if len(texts) == 2:
                    break
        return texts

    got = mesh.call(lambda c: asyncio.wait_for(redelivered(c), 15))
    assert len(got) == 2 and all("order 1" in t for t in got)  # the original and its redrive
    assert mesh.call(lambda c: c.list_dead_letters(topic=topic)).dead_letters == []


# ---- PERMISSION_DENIED ---------------------------------------------------------------
def test_a_token_without_the_role_gets_the_permission_denied_page(
    mesh: Mesh, browser: Any
) -> None:
    swarm = mesh.call(lambda c: c.deploy_swarm({
        "objective": "console long run", "behavior": "BEHAVIOR_SWARMING",
        "agents_required": 8, "max_iterations": 1_000_000, "convergence_threshold": 1e-300,
        "spread_threshold": 1e-300,  # never converges: it runs until stopped
        "seed": 5, "timeout": "60s",
        "builtin": {"function": "BENCHMARK_FUNCTION_RASTRIGIN", "space": {"dimensions": 8}},
    }))
    try:
        with pytest.raises(PermissionDenied) as api:
            mesh.call(lambda c: c.stop_swarm(swarm_id=swarm.swarm_id), token=VIEWER)
        ctx = browser.new_context(extra_http_headers={"Authorization": f"Bearer {VIEWER}"})
        try:
            page = ctx.new_page()
            page.goto(f"{mesh.url}/swarms/{swarm.swarm_id}")  # reading is allowed
            with page.expect_response(lambda r: r.url.endswith("/stop")) as posted:
                page.get_by_role("button", name="Stop swarm").click()
            # The 303 after a post is followed; a refusal answers the post itself.
            assert posted.value.status == 403
            heading = page.get_by_role("heading", level=1)
            assert heading.inner_text() == "PERMISSION_DENIED"
            assert page.locator(".status .message").inner_text() == api.value.message
            shot(page, "permission-denied")
        finally:
            ctx.close()
        state = mesh.call(lambda c: c.get_swarm(swarm_id=swarm.swarm_id)).swarm.state
        assert state in (1, 2)  # still PENDING/RUNNING: the viewer stopped nothing
    finally:
        mesh.call(lambda c: c.stop_swarm(swarm_id=swarm.swarm_id))
