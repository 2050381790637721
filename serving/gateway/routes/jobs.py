"""Queued inference via Kafka: ``POST /v1/jobs`` (202, the job queued on ``lifecycle.inference-requests``)
and ``GET /v1/jobs/{id}`` (status and the results so far)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from serving.gateway.body import body_doc, json_body
from serving.gateway.errors import APIError
from serving.gateway.jobs import item_cost, job_items
from serving.gateway.protocol import Job, JobRequest
from serving.gateway.routes.deps import ERRORS, CompletionsDep, KeyId
from serving.gateway.security import authorize

router = APIRouter(prefix="/v1/jobs", dependencies=[Depends(authorize)], responses=ERRORS)


@router.post("", status_code=202, response_model=Job, openapi_extra=body_doc(JobRequest))
async def create_job(
    body: Annotated[JobRequest, Depends(json_body(JobRequest))], completions: CompletionsDep, request: Request,
    key: KeyId,
) -> Job:  # fmt: skip
    model = completions.model(body.model)
    items = job_items(body)
    request.app.state.guard.spend(key, sum(item_cost(it) for it in items))
    return Job.model_validate(await request.app.state.jobs.create(items, model, key))


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: str, request: Request, key: KeyId) -> Job:
    """A job is read by the key that created it (or an admin key); to any other key it does not exist."""
    job = await request.app.state.jobs.get(job_id)
    if job is None or (job.get("owner") and job["owner"] != key and key not in request.app.state.guard.admins):
        raise APIError(404, f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
    return Job.model_validate(job)
