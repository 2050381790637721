"""Promote: register the candidate, move ``champion`` when it wins, else mark it ``challenger``.

    lifecycle promote --run MLFLOW_RUN_ID [--margin 0.05] [--confidence 0.95] [--tolerance 0.25]
    lifecycle promote --rollback

Gate: candidate and baseline (the champion, or the base model when there is none) were scored on the
same eval items; a paired test (training/gate.py: exact McNemar on binary scores, bootstrap on
continuous ones) must say the candidate is better by more than ``margin`` at ``confidence``, and its
perplexity may not be worse than the baseline's by more than ``tolerance`` (relative). The decision,
its reason and its evidence (n, effect, CI, p-value) are kept in Mongo ``model_configs``, as tags on
the model version and in the ModelRegistered / ModelPromoted events.

With ``LIFECYCLE_ROLLOUT_POLICY`` (or the DAG param ``rollout_policy``) ``shadow`` or ``canary`` and a
champion to compare with, a version that passes becomes ``challenger`` and a rollout starts
(lifecycle/rollout.py): live traffic decides whether it becomes champion.

Kafka and the alias move together through an outbox in Mongo: the ``ModelPromoted`` event (with a
fixed event id) is stored first, then published and acknowledged (acks=all), and only then is the
alias moved and the outbox entry marked done. If Kafka is down the command fails and says so, and
the alias has not moved; re-running publishes the same event (consumers drop it if they saw it) and
moves the alias. Re-running a finished promotion changes nothing and publishes nothing.

The alias moves under a lease in Mongo and only from the champion the evaluation compared against
(lifecycle/champion.py): a candidate evaluated against v3 is not promoted over v4 (evaluate it again),
and of two promotions racing one wins. Artifacts are identified by the digests recorded at training
(lifecycle/digests.py), never by the run's tags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException

from lifecycle import champion as champion_alias
from lifecycle import digests as artifact_digests
from lifecycle import events, forget, lineage, registry, rollout, topics
from lifecycle.lease import LeaseError
from lifecycle.settings import Settings
from lifecycle.store import EVALUATIONS, MODEL_CONFIGS, Store, now
from lifecycle.v1 import events_pb2
from training.gate import GateError, GateResult, paired_gate

Report = Callable[[str], None]


class PromotionError(RuntimeError):
    """Promotion could not be completed; the message says what state things are in."""


@dataclass
class Decision:
    promote: bool
    reason: str
    gate: GateResult | None = None


@dataclass
class PromotionResult:
    model_name: str
    version: int
    alias: str
    promoted: bool
    reason: str
    event_id: str = ""
    already_done: bool = False
    gate: dict[str, Any] = field(default_factory=dict)
    rollout: str = ""  # the rollout this promotion started (shadow/canary policy), else ""


def decide(evaluation: dict[str, Any], margin: float, tolerance: float, confidence: float = 0.95) -> Decision:
    """The champion/challenger gate as a pure function of an evaluation report (per-item scores of
    both models on the same items, and their metrics)."""
    scores = evaluation.get("scores")
    if not scores:
        raise PromotionError("the evaluation has no per-item scores (made by an older version); evaluate again")
    try:
        gate = paired_gate(
            scores["candidate"], scores["baseline"], binary=bool(evaluation.get("binary")), margin=margin,
            confidence=confidence, metric=str(evaluation.get("gate_metric", "score")),
        )  # fmt: skip
    except GateError as exc:
        raise PromotionError(f"the gate cannot compare the evaluation's scores: {exc}") from None
    if not gate.promote:
        return Decision(False, gate.reason, gate)
    candidate, baseline = evaluation["candidate"]["metrics"], evaluation["baseline"]["metrics"]
    ppl_c, ppl_b = candidate.get("perplexity"), baseline.get("perplexity")
    if ppl_c is not None and ppl_b is not None and ppl_c > ppl_b * (1 + tolerance):
        return Decision(False, f"perplexity {ppl_c:.2f} regresses past {ppl_b:.2f} x (1 + {tolerance})", gate)
    return Decision(True, gate.reason, gate)


def gate_evidence(decision: Decision) -> dict[str, Any]:
    """The gate's figures as kept in Mongo and events (empty when there is no gate result)."""
    if decision.gate is None:
        return {}
    g = decision.gate
    return {"metric": g.metric, "test": g.test, "n": g.n, "candidate": g.candidate, "baseline": g.baseline,
            "effect": g.effect, "ci_low": g.ci_low, "ci_high": g.ci_high, "p_value": g.p_value,
            "confidence": g.confidence, "margin": g.margin}  # fmt: skip


def latest_evaluation(store: Store, mlflow_run_id: str) -> dict[str, Any]:
    doc = store.db[EVALUATIONS].find_one({"candidate.run_id": mlflow_run_id}, sort=[("created_at", -1)])
    if doc is None:
        raise PromotionError(
            f"run {mlflow_run_id} has no evaluation; run `lifecycle evaluate --run {mlflow_run_id}` first"
        )
    return doc


def promote(
    settings: Settings,
    store: Store,
    mlflow_run_id: str,
    *,
    margin: float = 0.0,
    tolerance: float = 0.25,
    confidence: float = 0.95,
    report: Report = print,
) -> PromotionResult:
    mc = registry.client(settings.mlflow_tracking_uri)
    name = settings.model_name
    evaluation = latest_evaluation(store, mlflow_run_id)
    cand_metrics = evaluation["candidate"]["metrics"]
    champion = registry.version_by_alias(mc, name, registry.CHAMPION)
    if champion is not None and forget.tainted_by(settings, store, name, champion.version):
        # the champion learned from a deleted record: a replacement need not be better, only not worse
        margin = min(margin, -settings.taint_margin)
        report(f"champion v{champion.version} is tainted: the gate asks for non-inferiority (margin {margin:+g})")
    decision = decide(evaluation, margin, tolerance, confidence)
    evidence = gate_evidence(decision)
    run = mc.get_run(mlflow_run_id)
    recorded = artifact_digests.recorded(store, mlflow_run_id)
    if recorded is None:
        raise PromotionError(f"run {mlflow_run_id} has no artifact record in Mongo (trained by an older version?); "
                             "train it again")  # fmt: skip
    digests = recorded.files
    tags = {f"{registry.DIGEST_TAG_PREFIX}{k}": v for k, v in digests.items()}
    version, created = registry.register(mc, name, evaluation["candidate"]["model_uri"], mlflow_run_id, tags)
    number = int(version.version)
    if created:
        report(f"registered {name} version {number}")
        registered = events.new_event(
            events_pb2.ModelRegistered, model_name=name, version=number, run_id=mlflow_run_id,
            source=evaluation["candidate"]["model_uri"], metrics=cand_metrics, gate=evidence,
        )  # fmt: skip
        _publish_soft(settings, name, registered, report)

    tainted = forget.tainted_by(settings, store, name, number, mlflow_run_id)
    if tainted:
        mc.set_model_version_tag(name, str(number), lineage.TAINT_TAG, tainted)
        raise PromotionError(f"{name} version {number} is tainted: its run trained on a record deleted by {tainted}; "
                             "it cannot be promoted")  # fmt: skip
    # One outbox entry per evaluation: the same promotion re-run finds it; a version evaluated again
    # (after a rollback, against another champion) is a new promotion.
    outbox_id = f"{name}:{number}:promote:{evaluation['created_at'].timestamp():.3f}"
    pending = store.get(MODEL_CONFIGS, outbox_id)
    at = int(champion.version) if champion is not None else 0
    if pending is not None and pending.get("state") == "done":
        if at != number:
            now_at = f"v{at}" if at else "none"
            raise PromotionError(f"{name} version {number} was promoted on this evaluation and is not champion now "
                                 f"(champion: {now_at}); evaluate it again to promote it again")  # fmt: skip
        return PromotionResult(name, number, registry.CHAMPION, True, pending["reason"], pending["event_id"], True)

    if pending is None:
        if at == number:
            return PromotionResult(name, number, registry.CHAMPION, True, "already champion", already_done=True)
        mc.set_model_version_tag(name, str(number), "lifecycle.decision", decision.reason[:5000])
        mc.update_model_version(name, str(number), description=describe(run.data.tags, evaluation, decision))
        for key, value in evidence.items():
            mc.set_model_version_tag(name, str(number), f"lifecycle.gate.{key}", str(value))
        if not decision.promote:
            mc.set_registered_model_alias(name, registry.CHALLENGER, str(number))
            store.db[MODEL_CONFIGS].replace_one(
                {"_id": f"{name}:{number}:decision"},
                {"_id": f"{name}:{number}:decision", "model_name": name, "version": number, "promoted": False,
                 "reason": decision.reason, "metrics": cand_metrics, "gate": evidence, "at": now()},
                upsert=True,
            )  # fmt: skip
            report(f"version {number} stays challenger: {decision.reason}")
            return PromotionResult(name, number, registry.CHALLENGER, False, decision.reason, gate=evidence)
        baseline = int(evaluation["baseline"].get("version") or 0)
        if at != baseline:  # the gate compared with another champion than the one in place now
            raise PromotionError(_moved(name, number, at, baseline, mlflow_run_id))
        if settings.rollout_policy != "direct" and champion is not None:
            return _start_rollout(settings, store, name, number, at, decision, evidence, report)
        event = events.new_event(
            events_pb2.ModelPromoted, model_name=name, version=number, alias=registry.CHAMPION,
            run_id=mlflow_run_id, metrics=cand_metrics, reason=decision.reason, digests=digests,
            previous_version=baseline, gate=evidence,
        )  # fmt: skip
        # The event is kept as its JSON text: digests are keyed by file names, which contain dots.
        pending = {"_id": outbox_id, "model_name": name, "version": number, "state": "pending",
                   "reason": decision.reason, "gate": evidence, "event_json": events.encode(event).decode(),
                   "event_id": events.to_dict(event)["event_id"], "at": now()}  # fmt: skip
        store.insert_once(MODEL_CONFIGS, pending)
    event = events.decode(pending["event_json"])
    try:  # under the alias lease: publish, then move the alias only if it is still where the gate compared
        champion_alias.move(settings, store, name, number, expected=event.previous_version,
                            before=lambda: events.publish(settings, topics.MODEL_EVENTS, name, event))  # fmt: skip
    except events.PublishError as exc:
        raise PromotionError(
            f"{exc}; champion NOT moved (version {number} is queued in the outbox; re-run promote to finish)"
        ) from None
    except champion_alias.AliasMoved:
        store.update(MODEL_CONFIGS, outbox_id, {"state": "superseded"})
        raise PromotionError(_moved(name, number, champion_alias.current(settings, name), event.previous_version,
                                    mlflow_run_id)) from None  # fmt: skip
    except (LeaseError, MlflowException, OSError) as exc:  # OSError: requests' connection errors
        raise PromotionError(f"{type(exc).__name__}: {exc}; champion NOT moved (re-run promote to finish)") from None
    challenger = registry.version_by_alias(mc, name, registry.CHALLENGER)
    if challenger is not None and int(challenger.version) == number:  # the challenger it was is the champion now
        mc.delete_registered_model_alias(name, registry.CHALLENGER)
    store.update(MODEL_CONFIGS, outbox_id, {"state": "done", "done_at": now()})
    store.db[MODEL_CONFIGS].update_one(
        {"_id": name},
        {"$push": {"champions": {"version": number, "at": now(), "event_id": pending["event_id"]}}},
        upsert=True,
    )
    report(f"version {number} is champion: {pending['reason']}")
    return PromotionResult(name, number, registry.CHAMPION, True, pending["reason"], pending["event_id"],
                           gate=pending.get("gate") or evidence)  # fmt: skip


def _moved(name: str, number: int, at: int, baseline: int, run_id: str) -> str:
    now_at, was = (f"v{at}" if at else "no champion"), (f"v{baseline}" if baseline else "the base model")
    return (
        f"{name}'s champion is {now_at} now, but version {number} was evaluated against {was}: champion NOT "
        f"moved; run `lifecycle evaluate --run {run_id}` again, then promote"
    )


def describe(run_tags: dict[str, str], evaluation: dict[str, Any], decision: Decision) -> str:
    """A version's description in the registry (Markdown): what it was trained on, by which Airflow run,
    how it scored against the baseline, and the gate's decision."""
    base = evaluation["baseline"]
    label = base["kind"] + (f" v{base['version']}" if base.get("version") else "")
    cand, ref = evaluation["candidate"]["metrics"], base["metrics"]
    scores = ", ".join(f"{k} {cand[k]:.3f} (vs {ref[k]:.3f})" for k in ("accuracy", "token_f1", "perplexity")
                       if k in cand and k in ref)  # fmt: skip
    dataset, run = run_tags.get("dataset_id", "?"), run_tags.get("lifecycle.run_id", "?")
    lines = [f"Trained on dataset `{dataset}` (training run `{run}`)."]
    if url := run_tags.get("lifecycle.airflow.url"):
        lines.append(
            f"Airflow: [{run_tags.get('lifecycle.airflow.dag_id')} / {run_tags.get('lifecycle.airflow.run_id')}]({url})"
        )
    lines.append(
        f"Evaluation on {evaluation['items']} items of `{evaluation['dataset_id']}` against the {label}: {scores}."
    )
    lines.append(f"Gate: {'promote' if decision.promote else 'keep as challenger'}: {decision.reason}")
    return "\n\n".join(lines)[:5000]


def _start_rollout(
    settings: Settings, store: Store, name: str, number: int, champion: int, decision: Decision,
    evidence: dict[str, Any], report: Report,
) -> PromotionResult:  # fmt: skip
    """The gate passed under a shadow/canary policy: the version becomes challenger and meets live
    traffic; ``champion`` moves only when the rollout decides (lifecycle/rollout.py)."""
    mc = registry.client(settings.mlflow_tracking_uri)
    mc.set_registered_model_alias(name, registry.CHALLENGER, str(number))
    doc = rollout.start(settings, store, name, number, champion, settings.rollout_policy, reason=decision.reason)
    stage = doc["stages"][doc["stage"]]
    why = f"{settings.rollout_policy} rollout started against v{champion} ({stage['kind']} at {stage['share']:.0%})"
    report(f"version {number} is challenger: {decision.reason}; {why}")
    return PromotionResult(name, number, registry.CHALLENGER, False, f"{decision.reason}; {why}", gate=evidence,
                           rollout=doc["_id"])  # fmt: skip


def _publish_soft(settings: Settings, key: str, msg: Any, report: Report) -> None:
    """Informational events (ModelRegistered) must not block the registry; say when they fail."""
    try:
        events.publish(settings, topics.MODEL_EVENTS, key, msg)
    except events.PublishError as exc:
        report(f"warning: {exc}")


def rollback(
    settings: Settings, store: Store, *, reason: str = "manual rollback", report: Report = print
) -> PromotionResult:
    """Move ``champion`` back to the version that held it before, and publish ``ModelRolledBack``."""
    mc = registry.client(settings.mlflow_tracking_uri)
    name = settings.model_name
    current = registry.version_by_alias(mc, name, registry.CHAMPION)
    if current is None:
        raise PromotionError(f"{name} has no champion to roll back")
    champions = (store.get(MODEL_CONFIGS, name) or {}).get("champions", [])
    earlier = [h["version"] for h in champions if h["version"] != int(current.version)]
    if not earlier:
        raise PromotionError(
            f"{name} version {current.version} is the only champion it has had; nothing to roll back to"
        )
    target = earlier[-1]
    event = events.new_event(
        events_pb2.ModelRolledBack, model_name=name, version=target, alias=registry.CHAMPION,
        from_version=int(current.version), reason=reason,
    )  # fmt: skip
    try:
        champion_alias.move(settings, store, name, target, expected=int(current.version),
                            before=lambda: events.publish(settings, topics.MODEL_EVENTS, name, event))  # fmt: skip
    except events.PublishError as exc:
        raise PromotionError(f"{exc}; champion NOT moved back") from None
    except (champion_alias.AliasMoved, LeaseError) as exc:
        raise PromotionError(f"{exc}; champion NOT moved back") from None
    # Read-modify-write instead of $pull: FerretDB does not apply $pull with a condition document.
    kept = [h for h in champions if h["version"] != int(current.version)]
    store.update(MODEL_CONFIGS, name, {"champions": kept})
    report(f"champion rolled back from version {current.version} to {target}")
    return PromotionResult(name, target, registry.CHAMPION, True, reason, events.to_dict(event)["event_id"])
