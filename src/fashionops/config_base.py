"""The base of every ``params.yaml`` section: a pydantic model that forbids unknown keys, so a typo
is an error naming ``section.key`` (:mod:`fashionops.config`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
