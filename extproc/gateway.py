"""What every stream processor of one extproc process shares, built once from the configuration:
the model catalogue and listing, the upstream replies, the policy store, admission, the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aigw.catalog import ModelCatalog
from aigw.config import GatewayConfig
from extproc.admission import Admission, AdmitAll
from extproc.listing import ModelListing
from extproc.policies import PolicyStore
from extproc.upstreams import Upstream, build_upstreams


@dataclass(frozen=True, slots=True)
class Gateway:
    catalog: ModelCatalog
    listing: ModelListing
    upstreams: dict[str, Upstream]
    policies: PolicyStore
    admission: Admission
    clock: Callable[[], float]

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        policies: PolicyStore,
        admission: Admission | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Gateway:
        catalog = ModelCatalog(config)
        return cls(
            catalog=catalog,
            listing=ModelListing(catalog),
            upstreams=build_upstreams(config.providers),
            policies=policies,
            admission=admission or AdmitAll(),
            clock=clock,
        )
