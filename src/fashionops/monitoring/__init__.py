"""Drift monitoring: what the models saw (:func:`record_observations` into the observation log,
``monitor.store``), the training reference it is compared with, and ``fashionops drift``
(:mod:`fashionops.monitoring.drift`)."""

from __future__ import annotations

from fashionops.monitoring.record import record_observations

__all__ = ["record_observations"]
