"""Which Prometheus registry a scrape serves, for extproc's and the control plane's exporters.

With `$PROMETHEUS_MULTIPROC_DIR` set (by `aigw up`, before the processes start: prometheus_client
chooses its storage at import) every process writes its metrics to files there, and a scrape
serves the sum over all of them; without it, a process serves its own.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_VAR: Final = "PROMETHEUS_MULTIPROC_DIR"


def scrape_registry() -> CollectorRegistry:
    """Every process's sum in multiprocess mode, else this process's own registry."""
    if not os.environ.get(MULTIPROC_DIR_VAR):
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged
