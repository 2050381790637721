"""Rollouts end to end on the real stack and serving tier: a version that passes the gate under the
canary policy becomes challenger and answers a sticky share of users; every answer says which version
gave it; users' feedback rolls back a bad challenger (the split surviving a gateway kill -9 on the
way) and promotes a good one (the split surviving a worker kill -9); a shadow stage mirrors answers to
the challenger for the record only; decisions are made once and events applied once."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle import events, registry, rollout, topics
from lifecycle.settings import Settings
from lifecycle.stack import process
from lifecycle.stack.serving import gateway_url, start_serving
from lifecycle.store import INFERENCE_LOG, ROLLOUTS, TALLIES, Store
from lifecycle.v1 import events_pb2
from serving.gateway.rollouts import bucket
from serving.worker.model_events import ModelEventConsumer
from tests.kafka_read import read_topic
from tests.serving.worker.test_hot_swap import served, train_and_promote
from training.promote import promote

pytestmark = pytest.mark.stack
ROLLOUT_ENV = {"LIFECYCLE_ROLLOUT_POLICY": "canary", "LIFECYCLE_ROLLOUT_STEPS": "50,100",
               "LIFECYCLE_ROLLOUT_MIN_REQUESTS": "4", "LIFECYCLE_ROLLOUT_MARGIN": "0.5",
               "LIFECYCLE_ROLLOUT_SHADOW_SHARE": "1"}  # fmt: skip
USERS = [f"user-{i}" for i in range(16)]


@pytest.fixture(scope="module")
def tier(stack: Settings, tiny_llama_dir: Path, start_serving: Any) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ROLLOUT_ENV.items():
            mp.setenv(k, v)
        with start_serving(tiny_llama_dir, 18500, "rollout") as s:
            yield s


def ask(s: Settings, user: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": f"hello from {user}"}], "max_tokens": 4, "user": user}
    r = httpx.post(gateway_url(s) + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r


def rate(s: Settings, answer: httpx.Response, rating: int, **extra: str) -> dict[str, Any]:
    r = httpx.post(gateway_url(s) + "/v1/feedback",
                   json={"response_id": answer.json()["id"], "rating": rating, **extra}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def state(s: Settings, store: Store, rid: str) -> str:
    doc = store.get(ROLLOUTS, rid)
    return doc["state"] if doc else ""


def rollout_events(s: Settings, rid: str) -> list[dict[str, Any]]:
    found = read_topic(s, topics.MODEL_EVENTS, lambda m, v: v.get("rollout_id") == rid)
    return sorted(({**v, "seq": v.get("seq", 0)} for v in found), key=lambda v: v["seq"])  # proto3 JSON omits 0


def test_a_disliked_challenger_is_rolled_back_and_a_gateway_restart_keeps_the_split(
    tier: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    s = tier
    with Store.connect(s) as store:
        first = train_and_promote(s, store, tiny_llama_dir, toy_dataset, tmp_path / "a", seed=0)
        assert promote(s, store, first.mlflow_run_id, margin=-1.0).alias == "champion"  # no champion: direct
        assert process.wait_for(lambda: served(s) == ["1", "1"], timeout=120, interval=0.2) == "ok"
        second = train_and_promote(s, store, tiny_llama_dir, toy_dataset, tmp_path / "b", seed=1)
        res = promote(s, store, second.mlflow_run_id, margin=-1.0)
        rid = f"{s.model_name}:2"
        assert res.alias == "challenger" and "canary rollout started" in res.reason, res.reason
        mc = registry.client(s.mlflow_tracking_uri)
        assert registry.version_by_alias(mc, s.model_name, "challenger").version == "2"
        rollout.control(s, store, s.model_name, "pause")  # hold the split while it is looked at

        expected = {u: "2" if bucket(rid, u) < 0.5 else "1" for u in USERS}
        assert set(expected.values()) == {"1", "2"}
        a_challenger_user = next(u for u in USERS if expected[u] == "2")
        assert process.wait_for(lambda: ask(s, a_challenger_user).json()["model_version"] == "2", timeout=30) == "ok"
        answers = {u: ask(s, u) for u in USERS}
        assert {u: r.headers["x-lifecycle-model-version"] for u, r in answers.items()} == expected
        for r in answers.values():
            body = r.json()
            assert r.headers["x-lifecycle-response-id"] == body["id"]
            assert body["model_version"] == r.headers["x-lifecycle-model-version"]
            assert (
                len(body["weights_digest"]) == 64 and body["weights_digest"] == r.headers["x-lifecycle-weights-digest"]
            )

        # kill -9 of the gateway mid-rollout: the one started after it routes the same users the same way.
        # (Its inference log is written in batches: wait until these answers are in, as feedback needs them.)
        ids = [r.json()["id"] for r in answers.values()]
        logged = lambda: store.db[INFERENCE_LOG].count_documents({"_id": {"$in": ids}}) == len(ids)  # noqa: E731
        assert process.wait_for(logged, timeout=30, interval=0.2) == "ok"
        pid = process.read_pid(s.run_dir / "gateway.pid")
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        gone = lambda: process.read_pid(s.run_dir / "gateway.pid") is None  # noqa: E731 - dead, not dying
        assert process.wait_for(gone, timeout=30, interval=0.1) == "ok"
        start_serving(s, 2, str(tiny_llama_dir), threads=1, report=print)
        assert process.wait_for(lambda: ask(s, a_challenger_user).json()["model_version"] == "2", timeout=30) == "ok"
        assert {u: ask(s, u).headers["x-lifecycle-model-version"] for u in USERS} == expected

        bad = httpx.post(
            gateway_url(s) + "/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": -1}, timeout=30
        )
        assert bad.status_code == 404 and bad.json()["error"]["param"] == "response_id"

        # Users dislike every challenger answer: rolled back (paused holds steps, never a rollback).
        for r in answers.values():
            receipt = rate(s, r, -1 if r.json()["model_version"] == "2" else 1)
            assert receipt["version"] == r.json()["model_version"]
        assert process.wait_for(lambda: state(s, store, rid) == "rolled_back", timeout=180, interval=0.3) == "ok"
        assert process.wait_for(lambda: ask(s, a_challenger_user).json()["model_version"] == "1", timeout=30) == "ok"
        assert {ask(s, u).json()["model_version"] for u in USERS} == {"1"}
        listed = httpx.get(gateway_url(s) + "/v1/rollouts", params={"model": s.model_name}, timeout=30).json()["data"]
        assert listed[0]["id"] == rid and listed[0]["state"] == "rolled_back"
        late = httpx.post(gateway_url(s) + f"/v1/rollouts/{s.model_name}/resume", timeout=30)
        assert late.status_code == 409 and "rolled_back" in late.text, late.text
        doc = rollout.load(store, rid)
        assert doc is not None and "negative rate" in doc["decisions"][-1]["reason"], doc["decisions"][-1]
        # at least once: an event not yet marked published may be sent again by a tick, same id and seq
        assert sorted({(e["type"], e["seq"]) for e in rollout_events(s, rid)}, key=lambda t: t[1]) == [
            ("RolloutStarted", 0), ("RolloutRolledBack", 1)]  # fmt: skip
        assert registry.version_by_alias(mc, s.model_name, "champion").version == "1"
        assert registry.version_by_alias(mc, s.model_name, "challenger") is None
        assert served(s) == ["1", "1"]


def test_a_liked_challenger_steps_up_and_is_promoted(
    tier: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    s = tier
    with Store.connect(s) as store:
        third = train_and_promote(s, store, tiny_llama_dir, toy_dataset, tmp_path / "c", seed=2)
        res = promote(s, store, third.mlflow_run_id, margin=-1.0)
        assert res.alias == "challenger", res.reason
        rid = f"{s.model_name}:3"
        codes: list[int] = []

        # kill -9 of a worker mid-rollout, users asking all along: no failed request, no decision, and
        # the worker started after it answers each user with the version the rollout says.
        rollout.control(s, store, s.model_name, "pause")
        expected = {u: "3" if bucket(rid, u) < 0.5 else "1" for u in USERS}
        challenger_user = next(u for u in USERS if expected[u] == "3")
        assert process.wait_for(lambda: ask(s, challenger_user).json()["model_version"] == "3", timeout=30) == "ok"
        seq = (rollout.load(store, rid) or {})["seq"]
        stop = threading.Event()
        during: list[tuple[str, str]] = []

        failed: list[BaseException] = []

        def keep_asking() -> None:
            try:
                while not stop.is_set():
                    for u in USERS[:4]:
                        during.append((u, ask(s, u).json()["model_version"]))  # ask() asserts the 200
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
                failed.append(exc)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            assert process.wait_for(lambda: len(during) >= 4, timeout=60, interval=0.1) == "ok"
            pidfile = sorted(s.run_dir.glob("worker-*.pid"))[0]
            pid = process.read_pid(pidfile)
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            assert process.wait_for(lambda: process.read_pid(pidfile) is None, timeout=30, interval=0.1) == "ok"
            asked = len(during)
            assert process.wait_for(lambda: len(during) >= asked + 8, timeout=60, interval=0.1) == "ok"
            start_serving(s, 2, str(tiny_llama_dir), threads=1, report=print)
            assert process.wait_for(lambda: served(s) == ["1", "1"], timeout=120, interval=0.2) == "ok"
        finally:
            stop.set()
            asker.join()
        assert not failed, failed
        assert all(version == expected[u] for u, version in during), during
        assert {u: ask(s, u).headers["x-lifecycle-model-version"] for u in USERS} == expected
        after = rollout.load(store, rid) or {}
        assert after["seq"] == seq and after["state"] == "running" and after["paused"] is True
        rollout.control(s, store, s.model_name, "resume")

        def round_of_users() -> bool:
            for u in USERS:
                r = ask(s, u)
                codes.append(r.status_code)
                rate(s, r, 1)
            return state(s, store, rid) == "promoted"

        assert process.wait_for(round_of_users, timeout=300, interval=0.1) == "ok"
        assert process.wait_for(lambda: served(s) == ["3", "3"], timeout=120, interval=0.2) == "ok"
        assert {ask(s, u).json()["model_version"] for u in USERS} == {"3"}
        assert set(codes) == {200}
        assert [e["type"] for e in rollout_events(s, rid)] == ["RolloutStarted", "RolloutStepped", "RolloutPromoted"]
        assert (
            registry.version_by_alias(registry.client(s.mlflow_tracking_uri), s.model_name, "champion").version == "3"
        )
        promoted = read_topic(s, topics.MODEL_EVENTS, lambda m, v: v.get("event_id") == f"{rid}:promoted")
        assert len(promoted) == 1 and promoted[0]["type"] == "ModelPromoted" and promoted[0]["previous_version"] == 1


def test_a_decision_is_made_once_when_two_deciders_race_and_a_repeated_event_is_applied_once(stack: Settings) -> None:
    s = stack
    name = f"race-{os.getpid()}-{threading.get_ident() % 10000}"
    with Store.connect(s) as store:
        started = rollout.start(s, store, name, 2, 1, "canary")
        results: list[bool] = []
        threads = [threading.Thread(target=lambda: results.append(rollout._decide(
            s, store, started, "RolloutRolledBack", "rolled_back", "race"))) for _ in range(4)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True]
        doc = rollout.load(store, f"{name}:2")
        assert doc is not None and [d["type"] for d in doc["decisions"]] == ["RolloutStarted", "RolloutRolledBack"]
        assert doc["state"] == "rolled_back" and doc["seq"] == 1
        assert all(d["published"] for d in doc["decisions"])

    loads: list[str] = []
    follower = ModelEventConsumer(s.model_copy(update={"model_name": name}), "w-race", lambda: "1",
                                  lambda slot: None, lambda n, v: loads.append(v))  # fmt: skip
    first = events.decode(doc["decisions"][0]["event_json"])
    stepped = events.new_event(events_pb2.RolloutStepped, model_name=name, version=2, rollout_id=f"{name}:2", seq=1,
                               stage="canary", share=0.25)  # fmt: skip
    for event in (first, first, stepped, first, stepped):
        follower.handle(events.encode(event))
    assert loads == ["2", "2"]  # the start and the step, each once


def test_a_shadow_stage_answers_users_with_the_champion_and_records_the_challengers_answer(tier: Settings) -> None:
    s = tier
    with Store.connect(s) as store:
        mc = registry.client(s.mlflow_tracking_uri)
        champion = int(registry.version_by_alias(mc, s.model_name, "champion").version)
        doc = rollout.start(s, store, s.model_name, 1, champion, "shadow", reason="test: shadow")
        rollout.control(s, store, s.model_name, "pause")  # mirror, never step
        rid = doc["_id"]
        log = store.db[INFERENCE_LOG]

        def mirrored(answer: httpx.Response) -> dict[str, Any] | None:
            return log.find_one({"shadow_of": answer.json()["id"]})

        early: list[httpx.Response] = []

        def seen() -> bool:  # the gateway follows the record within a second; the log is written in batches
            early.append(ask(s, USERS[0]))
            return any(mirrored(a) for a in early)

        assert process.wait_for(seen, timeout=60, interval=0.5) == "ok"
        answers = [ask(s, u) for u in USERS[:8]]
        assert {a.json()["model_version"] for a in answers} == {str(champion)}  # users never see the challenger
        assert process.wait_for(lambda: all(mirrored(a) for a in answers), timeout=120, interval=0.3) == "ok"
        for a in answers:
            shadow = mirrored(a)
            assert shadow is not None
            assert (shadow["_id"], shadow["version"], shadow["arm"], shadow["rollout"]) == (
                f"{a.json()['id']}:shadow",
                "1",
                "shadow",
                rid,
            )
            assert shadow["finish_reason"] in ("stop", "length") and shadow["completion_tokens"] >= 1
            assert 0.0 <= shadow["agreement"] <= 1.0  # word F1 with the user's answer, measured by the gateway
            user = log.find_one({"_id": a.json()["id"]})
            assert user is not None and user["arm"] == "champion" and user["version"] == str(champion)

        def tallied() -> bool:  # the decision reads counts kept as the log is written, equal to the log's
            counts = (store.get(TALLIES, rid) or {}).get("s0", {})
            return all(counts.get(arm, {}).get("requests") == log.count_documents({"rollout": rid, "arm": arm})
                       for arm in ("champion", "shadow"))  # fmt: skip

        assert process.wait_for(tallied, timeout=30, interval=0.3) == "ok"
        challenger, _, stage_n = rollout.evidence(store, store.get(ROLLOUTS, rid) or {}, 4)
        assert challenger.agreement_n == stage_n == log.count_documents({"rollout": rid, "arm": "shadow"})
        rate(s, answers[0], -1)
        receipt = rate(s, answers[0], 1, correction="Hello there.")  # a second verdict replaces the first
        _, champion_arm, _ = rollout.evidence(store, store.get(ROLLOUTS, rid) or {}, 4)
        assert (champion_arm.rated, champion_arm.negative, champion_arm.positive) == (1, 0, 1)  # in the counts too
        answer_id = answers[0].json()["id"]
        assert receipt["published"] is True
        announced = read_topic(s, topics.FEEDBACK, lambda m, v: v.get("response_id") == answer_id)
        assert [(e["rating"], e.get("correction", ""), e["arm"], e["rollout_id"]) for e in announced] == [
            (-1, "", "champion", rid), (1, "Hello there.", "champion", rid)]  # fmt: skip
        metrics = httpx.get(gateway_url(s) + "/metrics", timeout=10).text
        assert 'lifecycle_gateway_shadow_requests_total{outcome="mirrored"}' in metrics
        rollout.control(s, store, s.model_name, "abort")
        assert state(s, store, rid) == "aborted"
        assert registry.version_by_alias(mc, s.model_name, "champion").version == str(champion)
