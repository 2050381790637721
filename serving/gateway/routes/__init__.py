"""One router per resource; ``attach_routers(app)`` is all ``create_app`` needs of them."""

from __future__ import annotations

from fastapi import FastAPI

from serving.gateway.routes import feedback, generate, health, jobs, lineage, openai, rollouts


def attach_routers(app: FastAPI) -> None:
    for module in (health, openai, generate, jobs, feedback, lineage, rollouts):
        app.include_router(module.router)
