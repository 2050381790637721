"""The UIs in a real browser (Debian's headless Chromium), as a new user meets them: the ``llm_lifecycle``
form submitted with only the training data filled starts a run that succeeds; its model version then
shows on the "LLM lifecycle" page of the Airflow UI (with its figures and links) and its MLflow run shows
its dataset, the Airflow run that made it and its figures; every DAG that takes params opens a form
whose defaults are valid. Screenshots land in the test stack's ``screenshots/`` (the README's pictures)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from lifecycle.airflow_client import call, dag_ids
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from tests.browser import airflow_login, chromium, screenshot, type_into, until

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


def _runs(s: Settings, dag_id: str) -> dict[str, dict[str, Any]]:
    got = call(s, "GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=-id")["dag_runs"]
    return {r["dag_run_id"]: r for r in got}


def _open_form(d: Any, base: str, dag_id: str) -> Any:
    """Open the DAG's page and its Trigger dialog; the dialog's own Trigger button."""
    from selenium.webdriver.common.by import By

    d.get(f"{base}/dags/{dag_id}")
    opener = until(lambda: d.find_element(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"), what="Trigger Dag")
    opener.click()
    until(lambda: d.find_elements(By.XPATH, "//*[text()='Run Parameters']"), what=f"{dag_id}'s Run Parameters")
    return until(lambda: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"][-1])


def _wait_run(s: Settings, dag_id: str, before: set[str], timeout: float) -> dict[str, Any]:
    new = lambda: [r for i, r in _runs(s, dag_id).items() if i not in before]  # noqa: E731
    assert wait_for(lambda: bool(new()), timeout=30) == "ok", f"the form started no {dag_id} run"
    run = new()[0]
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
    assert wait_for(lambda: call(s, "GET", path)["state"] in ("success", "failed"), timeout=timeout) == "ok"
    tis = call(s, "GET", path + "/taskInstances")["task_instances"]
    return {**call(s, "GET", path), "tasks": {t["task_id"]: t["state"] for t in tis}}


def test_a_run_from_the_form_with_only_the_training_data_succeeds_and_shows_in_airflow_and_mlflow(
    stack: Settings, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    lines = (REPO / "data/toy/train.jsonl").read_text().splitlines()[:20]  # the form's 5 epochs stay short
    lines.append(json.dumps({"instruction": f"form test {uuid.uuid4()}", "output": "ok"}))  # a new dataset
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert wait_for(lambda: "llm_lifecycle" in dag_ids(stack), timeout=120) == "ok"
    call(stack, "PATCH", "/api/v2/dags/llm_lifecycle", {"is_paused": False})  # the test stack creates DAGs paused
    before = set(_runs(stack, "llm_lifecycle"))
    with chromium(1600, 1000) as d:
        base = airflow_login(d, stack)
        trigger = _open_form(d, base, "llm_lifecycle")
        assert not trigger.is_enabled(), "the training data is required"
        for optional in ("eval_path", "base_model"):
            assert d.find_element(By.NAME, f"element_{optional}").get_attribute("value") == ""
        type_into(d.find_element(By.NAME, "element_dataset_path"), str(data))
        until(trigger.is_enabled, what="an enabled Trigger button once the training data is filled")
        screenshot(d, stack, "airflow-trigger-form")
        d.execute_script("arguments[0].scrollIntoView()", trigger)
        trigger.click()
        run = _wait_run(stack, "llm_lifecycle", before, timeout=900)
        call(stack, "PATCH", "/api/v2/dags/llm_lifecycle", {"is_paused": True})  # as the stack left it
        assert run["conf"]["dataset_path"] == str(data)
        assert run["conf"]["eval_path"] is None and run["conf"]["base_model"] is None
        assert run["state"] == "success", run
        tasks = run["tasks"]
        assert all(tasks.pop(t) == "success" for t in ("ingest", "validate", "fine_tune", "evaluate", "promote"))
        mlflow_run_id, version, dataset_id = _made_by(stack, run["dag_run_id"])
        _lifecycle_page_shows(d, base, stack, mlflow_run_id, version)
        _mlflow_run_shows(d, stack, mlflow_run_id, run["dag_run_id"], dataset_id)


def _made_by(s: Settings, dag_run_id: str) -> tuple[str, int, str]:
    """The MLflow run, registered version and dataset the DAG run made (Mongo training_runs names its
    Airflow run)."""
    from lifecycle import registry
    from lifecycle.store import TRAINING_RUNS, Store

    with Store.connect(s) as store:
        doc = store.db[TRAINING_RUNS].find_one({"airflow.run_id": dag_run_id})
    assert doc is not None and doc["status"] == "succeeded", doc
    version = registry.version_for_run(registry.client(s.mlflow_tracking_uri), s.model_name, doc["mlflow_run_id"])
    assert version is not None
    return str(doc["mlflow_run_id"]), int(version.version), str(doc["dataset_id"])


def _lifecycle_page_shows(d: Any, base: str, s: Settings, mlflow_run_id: str, version: int) -> None:
    """The Airflow UI's "LLM lifecycle" page (nav item -> iframe) names the version as champion or
    challenger, links to it and its run in MLflow, and shows its two figures."""
    from selenium.webdriver.common.by import By

    d.get(base + "/")
    until(lambda: d.find_element(By.XPATH, "//*[text()='LLM lifecycle']"), what="the nav item").click()
    until(lambda: "/plugin/llm-lifecycle" in d.current_url, what="the page's route")
    d.switch_to.frame(until(lambda: d.find_element(By.TAG_NAME, "iframe"), what="the page's frame"))
    cards = until(lambda: [c for c in d.find_elements(By.CSS_SELECTOR, ".card")
                           if f"{s.model_name} v{version} " in c.text + " "], what=f"v{version}'s card")  # fmt: skip
    card = cards[0]
    assert card.get_attribute("data-alias") in ("champion", "challenger")
    hrefs = {a.get_attribute("href") for a in card.find_elements(By.TAG_NAME, "a")}
    assert f"{s.mlflow_tracking_uri}/#/models/{s.model_name}/versions/{version}" in hrefs
    assert f"{s.mlflow_tracking_uri}/#/runs/{mlflow_run_id}" in hrefs
    images = card.find_elements(By.TAG_NAME, "img")
    assert len(images) == 2
    for img in images:  # drawn from MLflow through the page: loaded, not a broken image
        until(lambda img=img: int(img.get_attribute("naturalWidth") or 0) > 500, what=img.get_attribute("alt"))
    # the model's champion, whichever version it is, with its link
    from lifecycle import registry

    champion = registry.version_by_alias(registry.client(s.mlflow_tracking_uri), s.model_name, registry.CHAMPION)
    shown = [c for c in d.find_elements(By.CSS_SELECTOR, ".card[data-alias=champion]")
             if c.text.startswith(f"champion: {s.model_name} ")]  # fmt: skip
    if champion is None:  # the gate kept every version out (a few eval items rarely prove an improvement)
        assert not shown, [c.text for c in shown]
    else:
        top = [c for c in shown if c.text.startswith(f"champion: {s.model_name} v{champion.version} ")]
        assert top and f"/#/models/{s.model_name}/versions/{champion.version}" in top[0].get_attribute("innerHTML")
    d.execute_script("arguments[0].scrollIntoView()", card)
    d.switch_to.default_content()
    screenshot(d, s, "airflow-lifecycle-page")


def _mlflow_run_shows(d: Any, s: Settings, mlflow_run_id: str, dag_run_id: str, dataset_id: str) -> None:
    """The MLflow run page names its dataset (id and digest) and the Airflow run that trained it; its
    figures open."""
    import hashlib

    from selenium.webdriver.common.by import By

    d.get(f"{s.mlflow_tracking_uri}/#/runs/{mlflow_run_id}")  # MLflow redirects to the run in its experiment
    until(lambda: "/experiments/" in d.current_url, what="the run page")
    body = lambda: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
    until(lambda: "Trained by Airflow DAG run" in body(), timeout=30, what="the run's description")
    digest = hashlib.sha256((s.datasets_dir / dataset_id / "train.jsonl").read_bytes()).hexdigest()[:16]
    until(lambda: d.find_elements(By.XPATH, f"//span[contains(., '{dataset_id} ({digest})')]"),
          what="the dataset and its digest in the Datasets panel")  # fmt: skip
    until(lambda: dag_run_id[:20] in body(), what="the Airflow run id")
    screenshot(d, s, "mlflow-run")
    run_page = d.current_url.split("?")[0]
    for figure in ("evaluation.png", "training_curves.png"):
        d.get(f"{run_page}/artifactPath/figures/{figure}")
        until(lambda: any(int(i.get_attribute("naturalWidth") or 0) > 500 for i in d.find_elements(By.TAG_NAME, "img")),
              timeout=30, what=f"{figure} in MLflow's artifact view")  # fmt: skip
        screenshot(d, s, f"mlflow-{figure.removesuffix('.png')}")


def test_every_dag_with_params_opens_a_form_whose_defaults_are_valid(stack: Settings) -> None:
    ids = sorted(dag_ids(stack))
    with_params = [i for i in ids if call(stack, "GET", f"/api/v2/dags/{i}/details").get("params")]
    assert {"llm_lifecycle_kafka", "llm_lifecycle_retrain", "llm_curate", "llm_rollout"} <= set(with_params)
    with chromium() as d:
        base = airflow_login(d, stack)
        for dag_id in with_params:
            if dag_id == "llm_lifecycle":
                continue  # needs its training data: the test above
            trigger = _open_form(d, base, dag_id)
            assert until(trigger.is_enabled, timeout=5, what=f"{dag_id}: Trigger enabled with the defaults")
        # llm_curate is safe to run from its form (the test stack's threshold leaves nothing to curate)
        before = set(_runs(stack, "llm_curate"))
        trigger = _open_form(d, base, "llm_curate")
        d.execute_script("arguments[0].scrollIntoView()", trigger)
        trigger.click()
        run = _wait_run(stack, "llm_curate", before, timeout=300)
    assert run["state"] == "success", run
