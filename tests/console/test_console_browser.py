"""The console in a real browser (Debian's Chromium, headless) against a real `flywheel
serve` on a loop that has run: every view shows the loop's own figures (read back through
the CLI and the API), the prediction form answers, an admin action changes the registry and
lands in the ledger, and nothing is shown without the token."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.console.conftest import ADMIN, WINDOW_ROWS, World, login, shoot

pytestmark = pytest.mark.integration


def test_models_view_shows_versions_card_lineage_and_ledger(world: World, page) -> None:
    versions = json.loads(world.cli("registry", "list", "--json").stdout)
    login(page, world.url, "models")
    page.wait_for_selector("#version-detail #card h2")
    table = page.inner_text("#versions")
    for v in versions:
        assert f"v{v['version']}" in table
    assert "champion" in page.inner_text('#versions tr[data-version="1"]')
    assert "challenger" in page.inner_text('#versions tr[data-version="2"]')
    # the champion's card, gates and lineage (snapshot -> run -> version)
    card = page.inner_text("#card")
    assert "cancer" in card and "roc_auc" in card.lower()
    gates = page.inner_text("#gates")
    assert "min_metric" in gates and "pass" in gates and "0.500" in gates  # gates.min_metrics
    chain = page.inner_text("#lineage")
    lineage = json.loads(world.cli("lineage", "1", "--json").stdout)
    assert lineage["snapshot"]["id"][:16] in chain and "version v1" in chain
    # the ledger, then filtered by action
    page.wait_for_selector("#audit")
    history = json.loads(world.cli("registry", "history", "--json").stdout)
    assert f"{len(history)} entries" in page.inner_text("#ledger")
    page.select_option("#audit-action", "register")
    page.wait_for_selector("#ledger >> text=2 entries")
    assert page.locator("#audit tr").count() == 3  # header + two registrations
    shoot(page, world, "models")


def test_live_view_updates_with_traffic_and_shows_the_rollout(world: World, page) -> None:
    login(page, world.url, "live")
    page.wait_for_selector('#protocols [data-protocol="rest"]')
    before = page.inner_text('#protocols [data-protocol="rest"]')
    with httpx.Client(base_url=world.url) as http:  # traffic while the page is open
        row = {"records": [dict.fromkeys(_inputs(world), 1.0)]}
        for _ in range(40):
            assert http.post("/v1/predict", json=row).status_code == 200
    page.wait_for_function(
        "(b) => document.querySelector('#protocols [data-protocol=\"rest\"]').innerText !== b",
        arg=before,
        timeout=10_000,
    )  # updated without a reload
    status = httpx.get(
        f"{world.url}/admin/rollout", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    assert f"of v{status['rollout']['challenger']} against v{status['rollout']['champion']}" in (
        page.inner_text("#rollout")
    )
    assert page.inner_text("#rollout-status") == status["rollout"]["status"]
    arms = page.inner_text("#arms")
    assert "champion" in arms and "challenger" in arms
    assert "v1" in page.inner_text("#served")
    page.wait_for_timeout(2500)  # a second reading: the rps series has points
    assert page.locator("#view svg polyline").count() >= 2
    shoot(page, world, "live")


def test_monitoring_view_shows_drift_per_window_and_distributions(world: World, page) -> None:
    login(page, world.url, "monitoring")
    page.wait_for_selector("#distribution svg")
    windows = page.locator("#windows tr").count() - 1
    assert windows >= 3  # 300 rows in windows of WINDOW_ROWS, before the rollout's traffic
    # the drifted feature leads the heat map and is outlined in the drifted window
    assert page.input_value("#feature-pick") == "mean radius"
    drifted = page.locator('#heatmap rect[data-feature="mean radius"][stroke="#111827"]').count()
    assert drifted >= 1
    text = page.inner_text("#windows")
    assert "100.0%" in text  # label completeness: every row was labelled
    assert "importance-weighted share" in text  # the drifted window's reason
    assert (
        "reference" in page.inner_text("#distribution")
        or page.locator("#distribution rect").count() > 4
    )
    assert str(WINDOW_ROWS) in text
    shoot(page, world, "monitoring")


def test_try_it_answers_with_the_version(world: World, page) -> None:
    login(page, world.url, "try")
    fields = page.locator("#try-form input").count()
    assert fields == len(_inputs(world))
    # the contract's range is on the field
    assert page.get_attribute('input[name="mean radius"]', "min") is not None
    page.click("#try-form button")
    page.wait_for_selector("#answer-version")
    assert page.inner_text("#prediction") in ("0", "1")
    assert page.inner_text("#answer-version").startswith("cancer v")
    assert page.locator("#probabilities tr").count() == 2
    shoot(page, world, "try")


def test_an_action_changes_the_registry_and_lands_in_the_ledger(world: World, page) -> None:
    login(page, world.url, "actions")
    shoot(page, world, "actions")
    # no stray text: a `null` the page passed to replaceChildren showed as the word "null"
    lines = [line.strip() for line in page.locator("#view").inner_text().splitlines()]
    assert "null" not in lines[:4], lines[:4]
    page.on("dialog", lambda d: d.accept())
    # a reason is required: an empty one is refused by the page and nothing is audited
    before = json.loads(world.cli("registry", "history", "--json").stdout)
    page.fill('form[data-action="rollout/pause"] input[name="reason"]', "holiday freeze")
    page.click('form[data-action="rollout/pause"] button')
    page.wait_for_selector("#action-result >> text=Pause done")
    after = json.loads(world.cli("registry", "history", "--json").stdout)
    assert len(after) == len(before) + 1
    assert after[-1]["action"] == "rollout_pause"
    assert after[-1]["reason"].startswith("holiday freeze")
    status = json.loads(world.cli("rollout", "status", "--json").stdout)
    assert status["rollout"]["status"] == "paused"
    # roll back: the champion moves and the ledger has it
    page.fill('form[data-action="rollout/abort"] input[name="reason"]', "stop the canary")
    page.click('form[data-action="rollout/abort"] button')
    page.wait_for_selector("#action-result >> text=Abort done")
    page.fill('form[data-action="promote"] input[name="version"]', "2")
    page.fill('form[data-action="promote"] input[name="reason"]', "v2 by the console")
    page.click('form[data-action="promote"] button')
    page.wait_for_selector("#action-result >> text=Promote done")
    versions = json.loads(world.cli("registry", "list", "--json").stdout)
    assert "champion" in next(v for v in versions if v["version"] == "2")["aliases"]
    last = json.loads(world.cli("registry", "history", "--json").stdout)[-1]
    assert (last["action"], last["to_version"], last["reason"]) == (
        "promote",
        "2",
        "v2 by the console",
    )


def test_without_the_token_nothing_is_shown(world: World, page) -> None:
    for path in ("/ui/api/models", "/ui/api/live", "/ui/api/audit", "/ui/api/monitoring"):
        assert httpx.get(world.url + path).status_code == 401, path
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(world.url + "/ui/api/models", headers=wrong).status_code == 403
    act = httpx.post(world.url + "/ui/api/actions/rollback", json={"reason": "x"})
    assert act.status_code == 401
    page.goto(f"{world.url}/ui/#models")
    page.wait_for_selector("#login[open]")
    assert "token is needed" in page.inner_text("#view")
    assert page.locator("#versions").count() == 0
    page.fill("#login-token", "wrong-token")
    page.click("#login-go")
    page.wait_for_selector("#login[open]")
    assert page.locator("#versions").count() == 0


def _inputs(world: World) -> list[str]:
    models = httpx.get(world.url + "/v1/models").json()
    return [i["name"] for i in models[0]["inputs"]]
