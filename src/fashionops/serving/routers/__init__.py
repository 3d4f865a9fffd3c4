"""The API's routers, one per group of endpoints; ``ROUTERS`` is what the app includes, in order."""

from __future__ import annotations

from fastapi import APIRouter

from fashionops.serving.routers import classify, health, items, pages, search

ROUTERS: tuple[APIRouter, ...] = (classify.router, search.router, items.router, health.router, pages.router)
