"""The flywheel, measured: users' corrections on a fictional domain become the next champion, three
times over, with no step taken by hand — against the running local stack.

    LIFECYCLE_CURATE_MIN_FEEDBACK=72 lifecycle up        # curation starts once a cycle's feedback is in
    .venv/bin/python bench/flywheel.py [--cycles 3] [--plot bench/flywheel.png]

The domain: eight invented islands, three facts each (harbour keeper, main export, lantern-festival
month) — 24 facts no base model knows. The held-out set asks each fact in two phrasings no user
uses (48 items, scored by contains-match of the short answer); it is the eval split of every
version, so the gate and this table score the same items.

Run it on a stack of its own (its registered model is the stack's ``LIFECYCLE_MODEL_NAME``, which
curation trains). Seed: a champion trained through ``llm_lifecycle`` (promoted by hand if the gate
keeps it out) on 64 records of the toy world (data/toy) with the held-out set as its eval split — it
knows Thandfusnu, not the islands. Then each cycle: scripted users ask all 24 facts in their three
phrasings (``--phrasings``; users ask the same things again) through the gateway, judge each answer
(contains the fact: +1; else -1 with the right sentence as correction) and send ``POST
/v1/feedback``. Everything after that is the platform's: ``FeedbackReceived`` events start
``llm_curate`` once ``LIFECYCLE_CURATE_MIN_FEEDBACK`` items wait; it curates them into records
extending the champion's dataset version and publishes ``TrainingDataArrived``;
``llm_lifecycle_kafka`` ingests, trains (its default recipe), evaluates against the champion, gates
(paired test) and promotes under the stack's ``LIFECYCLE_ROLLOUT_POLICY``. A cycle ends when that
run has finished and, if it promoted, the gateway serves the new version. Reported per cycle: the
champion's held-out accuracy after it, the gate's decision and evidence, the records added, and the
cycle's wall time (first question to the new version served). Curated records accumulate: each cycle
extends the newest curated dataset version built on the champion's, whether or not the gate let its
model through. Baseline: the seed champion's accuracy, measured on the same items by the same gate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lifecycle import registry  # noqa: E402
from lifecycle.airflow_client import call, dag_ids, trigger_and_wait  # noqa: E402
from lifecycle.settings import Settings, load_settings  # noqa: E402
from lifecycle.stack import serving  # noqa: E402
from lifecycle.stack.process import wait_for  # noqa: E402
from lifecycle.store import EVALUATIONS, Store  # noqa: E402

ISLANDS = {  # island: (harbour keeper, main export, festival month)
    "Ostravel": ("Ida Fenwhistle", "blue salt", "March"),
    "Brennoch": ("Tobin Marrowby", "copper kelp", "October"),
    "Quillaby": ("Sera Vantgold", "glass beads", "June"),
    "Tessmarra": ("Olek Drummond", "smoked eel", "January"),
    "Vaudrin": ("Mirela Osk", "whale oil", "August"),
    "Eskelund": ("Pavo Lindqvist", "amber resin", "May"),
    "Morrowgate": ("Hana Petrel", "wool cloth", "November"),
    "Pellith": ("Corin Ashdown", "sea lavender", "July"),
}
# Users' phrasings, one per cycle; the held-out ones are never asked by users.
USER_Q = [
    ("Who keeps the harbour on {i}?", "What does {i} export?", "When is the lantern festival on {i}?"),
    ("Name the harbour keeper of {i}.", "Name the main export of {i}.",
     "In which month does {i} hold its lantern festival?"),
    ("Who is in charge of the {i} harbour?", "What goods leave {i} by ship?",
     "What month is the {i} lantern festival?"),
]  # fmt: skip
HELD_OUT_Q = [
    ("Who is {i}'s harbour keeper?", "What is {i}'s chief export?",
     "During which month is {i}'s lantern festival held?"),
    ("Tell me who runs the harbour of {i}.", "Which product is {i} known for exporting?",
     "Tell me the month of the lantern festival on {i}."),
]  # fmt: skip
SENTENCE = ("The harbour keeper of {i} is {a}.", "{i} mainly exports {a}.", "The lantern festival on {i} is in {a}.")


def facts() -> list[tuple[str, int, str]]:
    return [(i, k, answers[k]) for i, answers in ISLANDS.items() for k in range(3)]


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """The seed's training records (toy world) and the held-out eval set (the islands)."""
    toy = (REPO / "data/toy/train.jsonl").read_text().splitlines()[:64]
    (folder / "seed.jsonl").write_text("\n".join(toy) + "\n")
    held = [{"messages": [{"role": "user", "content": q[k].format(i=i)}, {"role": "assistant", "content": f"{a}."}],
             "answer": a} for q in HELD_OUT_Q for i, k, a in facts()]  # fmt: skip
    (folder / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    return folder / "seed.jsonl", folder / "heldout.jsonl"


def runs(s: Settings, dag: str) -> dict[str, dict[str, Any]]:
    found = call(s, "GET", f"/api/v2/dags/{dag}/dagRuns?limit=100&order_by=-start_date")["dag_runs"]
    return {r["dag_run_id"]: r for r in found}


def champion(s: Settings) -> Any:
    return registry.version_by_alias(registry.client(s.mlflow_tracking_uri), s.model_name, registry.CHAMPION)


def evaluation_of(s: Settings, run_id: str) -> dict[str, Any]:
    with Store.connect(s) as store:
        doc = store.db[EVALUATIONS].find_one({"candidate.run_id": run_id}, sort=[("created_at", -1)])
    return doc or {}


def served(s: Settings) -> set[str]:
    workers = httpx.get(serving.gateway_url(s) + "/readyz", timeout=10).json().get("workers", [])
    return {w.get("version", "") for w in workers}


def questions(phrasings: int) -> list[tuple[str, int, str, str]]:
    """(island, fact kind, answer, question): every fact in the users' first ``phrasings`` phrasings."""
    return [(i, k, a, USER_Q[p][k].format(i=i)) for p in range(phrasings) for i, k, a in facts()]


def ask_all(s: Settings, phrasings: int) -> tuple[int, int]:
    """Users ask every fact in their phrasings and rate the answers; (right, asked)."""
    right = 0
    url = serving.gateway_url(s)
    asked = questions(phrasings)
    for i, k, a, q in asked:
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": 24, "temperature": 0,
                "user": f"user-{uuid.uuid4().hex[:6]}"}  # fmt: skip
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        r.raise_for_status()
        answer = r.json()["choices"][0]["message"]["content"]
        ok = a.lower() in answer.lower()
        right += ok
        fb: dict[str, Any] = {"response_id": r.json()["id"], "rating": 1 if ok else -1}
        if not ok:
            fb["correction"] = SENTENCE[k].format(i=i, a=a)
        deadline = time.monotonic() + 30  # the answer reaches the inference log in a batch
        while (got := httpx.post(url + "/v1/feedback", json=fb, timeout=30)).status_code == 404:
            if time.monotonic() > deadline:
                got.raise_for_status()
            time.sleep(0.2)
        got.raise_for_status()
    return right, len(asked)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--phrasings", type=int, default=3, choices=(1, 2, 3), help="users' phrasings of each fact")
    ap.add_argument("--seed-steps", type=int, default=40, help="max_steps of the seed champion's training")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one cycle may take")
    ap.add_argument("--plot", default="", help="write the accuracy-per-cycle plot here (PNG)")
    args = ap.parse_args()
    s = load_settings()  # the stack's registered model: curation trains the model the settings name
    per_cycle = len(questions(args.phrasings))
    if s.curate_min_feedback != per_cycle:
        sys.exit(f"LIFECYCLE_CURATE_MIN_FEEDBACK={s.curate_min_feedback}: start the stack with "
                 f"LIFECYCLE_CURATE_MIN_FEEDBACK={per_cycle} (the answers users rate per cycle)")  # fmt: skip
    for dag in ("llm_lifecycle", "llm_curate", "llm_lifecycle_kafka"):
        if wait_for(lambda d=dag: d in dag_ids(s), timeout=120) != "ok":
            sys.exit(f"DAG {dag} is not in Airflow at {s.airflow_port}")
        call(s, "PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-"))
    seed, heldout = write_inputs(tmp)

    t0 = time.monotonic()
    run = trigger_and_wait(s, "llm_lifecycle", {"dataset_path": str(seed), "eval_path": str(heldout),
                           "dataset_name": "flywheel", "max_steps": args.seed_steps, "promotion_margin": -1.0},
                           timeout=args.timeout)  # fmt: skip
    if run["state"] != "success":
        sys.exit(f"seed run {run['dag_run_id']}: {run['state']} {run.get('tasks')}")
    if champion(s) is None:  # the gate kept it out (its perplexity on the islands is worse than the base's)
        from training.promote import promote

        mc = registry.client(s.mlflow_tracking_uri)
        seed_version = max(mc.search_model_versions(f"name = '{s.model_name}'"), key=lambda v: int(v.version))
        with Store.connect(s) as store:  # the seed is the starting point, whatever the gate says
            promote(s, store, seed_version.run_id, margin=-1.0, tolerance=1e9, report=print)
    first = champion(s)
    ev = evaluation_of(s, first.run_id)
    accuracy = ev["candidate"]["metrics"]["accuracy"]
    rows = [{"cycle": 0, "champion": f"v{first.version}", "accuracy": accuracy, "decision": "seed (toy world)",
             "records": 0, "asked_right": "", "wall_s": time.monotonic() - t0}]  # fmt: skip
    print(f"seed champion v{first.version}: held-out accuracy {rows[0]['accuracy']:.3f} ({rows[0]['wall_s']:.0f} s)")
    serving.start_serving(s, 1, threads=0, report=lambda m: None)
    try:
        for cycle in range(1, args.cycles + 1):
            rows.append(one_cycle(s, cycle, args.phrasings, args.timeout))
            r = rows[-1]
            print(f"cycle {cycle}: champion {r['champion']} accuracy {r['accuracy']:.3f} ({r['decision']}), "
                  f"{r['records']} records, users right {r['asked_right']}, {r['wall_s']:.0f} s")  # fmt: skip
    finally:
        serving.stop_serving(s, report=lambda m: None)
    table(rows)
    if args.plot:
        plot(rows, Path(args.plot))


def one_cycle(s: Settings, cycle: int, phrasings: int, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    before = set(runs(s, "llm_lifecycle_kafka"))
    current = champion(s)
    assert wait_for(lambda: served(s) == {current.version}, timeout=300, interval=1) == "ok", "champion not served"
    right, asked = ask_all(s, phrasings)

    def finished() -> dict[str, Any] | None:
        for rid, r in runs(s, "llm_lifecycle_kafka").items():
            if rid not in before and r["state"] in ("success", "failed"):
                return r
        return None

    if wait_for(lambda: finished() is not None, timeout=timeout, interval=3) != "ok":
        raise SystemExit(f"cycle {cycle}: no llm_lifecycle_kafka run finished within {timeout:.0f} s")
    dag_run = finished()
    assert dag_run is not None
    now = champion(s)
    mc = registry.client(s.mlflow_tracking_uri)
    latest = max(mc.search_model_versions(f"name = '{s.model_name}'"), key=lambda v: int(v.version))
    ev = evaluation_of(s, latest.run_id)
    gate = (ev.get("candidate") or {}).get("metrics", {}), (ev.get("baseline") or {}).get("metrics", {})
    promoted = now.version != current.version
    if promoted:
        assert wait_for(lambda: served(s) == {now.version}, timeout=300, interval=1) == "ok", "new champion not served"
    dataset = mc.get_run(latest.run_id).data.tags.get("dataset_id", "")
    with Store.connect(s) as store:
        doc = store.get("datasets", dataset) or {}
        parent = store.get("datasets", (doc.get("parents") or [""])[0]) or {}
    added = int(doc.get("train", 0)) - int(parent.get("train", 0))
    accuracy = gate[0].get("accuracy", 0.0) if promoted else gate[1].get("accuracy", 0.0)
    decision = (f"v{latest.version} {'promoted' if promoted else 'kept out'}: {gate[0].get('accuracy', 0):.3f} vs "
                f"{gate[1].get('accuracy', 0):.3f} (run {dag_run['state']})")  # fmt: skip
    return {"cycle": cycle, "champion": f"v{now.version}", "accuracy": accuracy, "decision": decision,
            "records": added, "asked_right": f"{right}/{asked}", "wall_s": time.monotonic() - t0}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> None:
    print("\n| cycle | champion after | held-out accuracy (48 items) | users right (asked) | records added | gate "
          "| wall time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cycle']} | {r['champion']} | {r['accuracy']:.3f} | {r['asked_right'] or '-'} | {r['records']} | "
              f"{r['decision']} | {r['wall_s']:.0f} s |")  # fmt: skip
    base = rows[0]["accuracy"]
    print(f"\nheld-out accuracy after {len(rows) - 1} cycles: {rows[-1]['accuracy']:.3f} vs seed {base:.3f} "
          f"(+{rows[-1]['accuracy'] - base:.3f})")  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["cycle"] for r in rows], [r["accuracy"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['champion']}\n{r['wall_s']:.0f} s", (r["cycle"], r["accuracy"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)  # fmt: skip
    ax.set_xlabel("flywheel cycle (0 = seed champion)")
    ax.set_ylabel("held-out accuracy (48 items)")
    ax.set_ylim(0, 1)
    ax.set_xticks([r["cycle"] for r in rows])
    ax.set_title("Champion accuracy on a new domain, per cycle")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
