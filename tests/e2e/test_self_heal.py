"""Self-healing, as it happens: a promotion that breaks every client (the new version no longer
takes a column they send) is rolled back by the running server itself, once, audited with
its figures, and the answers come back; DORA counts the failed change and its restore."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_breast_cancer

from tests.e2e.conftest import (
    FLYWHEEL_BIN,
    copy_folder,
    flywheel,
    start_serve,
    stop_serve,
    write_settings,
)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow


def test_a_bad_promotion_is_rolled_back_by_the_server(
    tmp_path: Path, cancer_champion: Path
) -> None:
    # `cancer_folder`, v1 (`family: logreg`, `cv_folds: 0`) trained and promoted: a copy of
    # the session's `cancer_champion`
    tmp_path = copy_folder(cancer_champion, tmp_path / "work")
    write_settings(
        tmp_path,
        serving={"poll_interval_s": 0.5},
        rollout={"poll_s": 0.3, "heal_window_s": 1.0, "heal_min_requests": 20},
    )
    frame = load_breast_cancer(as_frame=True).frame
    # v2 no longer takes `mean radius`, which every client sends: each request now fails
    (tmp_path / "params.yaml").write_text(
        "family: logreg\ncv_folds: 0\ndrop_columns: [mean radius]\n"
    )
    flywheel(tmp_path, "train")

    port = free_port()
    server = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], tmp_path, port)
    records = json.loads(frame.drop(columns=["target"]).head(5).to_json(orient="records"))
    statuses: list[tuple[float, int, str | None]] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def ask() -> None:
                answer = client.post("/v1/predict", json={"records": records})
                version = answer.json().get("version") if answer.status_code == 200 else None
                statuses.append((time.monotonic(), answer.status_code, version))

            def promote_and_wait(reason: str) -> float:
                flywheel(tmp_path, "promote", "2", "--reason", reason)
                promoted = time.monotonic()
                deadline = promoted + 60
                while time.monotonic() < deadline:
                    ask()
                    recent = statuses[-20:]
                    if statuses[-1][0] > promoted + 1 and all(
                        s == 200 and v == "1" for _, s, v in recent
                    ):
                        break
                    time.sleep(0.02)
                return promoted

            for _ in range(30):
                ask()
            assert {s for _, s, _ in statuses} == {200}
            promoted = promote_and_wait("retrained without mean radius")
            healed = len(statuses)
            # the same version promoted again is watched afresh (it was healed only once
            # per version number, for ever)
            again = promote_and_wait("try v2 again")
    finally:
        err = stop_serve(server)
    second = [(s, v) for t, s, v in statuses[healed:] if t > again]
    assert any(s != 200 for s, _ in second), "v2 was not served again"
    assert all(s == 200 and v == "1" for s, v in second[-20:]), (second[-30:], err[-2000:])
    statuses = statuses[:healed]
    after = [(s, v) for t, s, v in statuses if t > promoted]
    failed = sum(s != 200 for s, _ in after)
    assert failed > 0, "the bad champion was served"  # it was, for a moment
    assert all(s == 200 and v == "1" for s, v in after[-20:]), (after[-30:], err[-2000:])

    history = json.loads(flywheel(tmp_path, "registry", "history", "--json").stdout)
    actions = [e["action"] for e in history]
    assert actions[-6:] == ["promote", "rollback", "self_heal"] * 2, actions
    assert {e["who"] for e in history[-5:-3] + history[-2:]} == {"flywheel-self-heal"}
    heal = history[-4]
    assert heal["from_version"] == "2" and heal["to_version"] == "1"
    assert "self-heal: champion v2 error rate" in heal["reason"]
    figures = json.loads(heal["reason"].splitlines()[-1])
    assert figures["errors"] >= 20 and figures["error_rate"] > 0.05
    listed = json.loads(flywheel(tmp_path, "registry", "list", "--json").stdout)
    assert "champion" in next(v for v in listed if v["version"] == "1")["aliases"]

    dora = json.loads(flywheel(tmp_path, "registry", "dora", "--json").stdout)
    assert dora["change_failure_rate"] == pytest.approx(2 / 3)  # 2 rollbacks / 3 deployments
    assert dora["self_heals"] == 2
    assert 0 < dora["time_to_restore_seconds"]["median"] < 60, dora
    print(f"self-heal: {failed} failed answers of {len(after)} after the bad promotion")


def test_after_a_restart_a_client_s_unknown_field_does_not_heal_a_new_champion(
    tmp_path: Path, cancer_champion: Path
) -> None:
    """v2 (the same inputs as v1) promoted while no server ran; a server started then never
    served v1, yet v1 would refuse the client's unknown field alike: the server reads v1's
    inputs from the registry at start, so those refusals are the client's and do not roll
    the new champion back (they did: 100% errors, healed on the first window)."""
    tmp_path = copy_folder(cancer_champion, tmp_path / "work")
    write_settings(
        tmp_path,
        serving={"poll_interval_s": 0.5},
        rollout={"poll_s": 0.3, "heal_window_s": 1.0, "heal_min_requests": 20},
    )
    flywheel(tmp_path, "train")
    flywheel(tmp_path, "promote", "2", "--reason", "retrained")
    frame = load_breast_cancer(as_frame=True).frame
    records = json.loads(frame.drop(columns=["target"]).head(2).to_json(orient="records"))
    wrong = [{**r, "customer_id": i} for i, r in enumerate(records)]

    port = free_port()
    server = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], tmp_path, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            refused = 0
            deadline = time.monotonic() + 4  # four heal windows
            while time.monotonic() < deadline:
                answer = client.post("/v1/predict", json={"records": wrong})
                refused += answer.status_code in (400, 422)
                time.sleep(0.01)
            ok = client.post("/v1/predict", json={"records": records})
    finally:
        err = stop_serve(server)
    assert refused >= 60, refused
    assert ok.status_code == 200 and ok.json()["version"] == "2", (ok.text, err[-2000:])
    actions = [
        e["action"] for e in json.loads(flywheel(tmp_path, "registry", "history", "--json").stdout)
    ]
    assert "self_heal" not in actions, (actions, err[-2000:])
