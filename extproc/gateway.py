"""What every stream processor of one extproc process shares, built once from the configuration:
the model catalogue and listing, the upstream replies, the policy store, admission and
settlement over the limits store, the clock, and the parents' own provider keys (BYOK; None
leaves BYOK out, e.g. in tests that do not need it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aigw.catalog import ModelCatalog
from aigw.config import GatewayConfig
from aigw.pricing import PriceTable
from extproc.admission import Admission
from extproc.byok import ProviderKeyCache
from extproc.limits import LimitStore
from extproc.listing import ModelListing
from extproc.policies import PolicyStore
from extproc.settlement import Settler
from extproc.upstreams import Upstream, build_upstreams


@dataclass(frozen=True, slots=True)
class Gateway:
    catalog: ModelCatalog
    listing: ModelListing
    upstreams: dict[str, Upstream]
    policies: PolicyStore
    admission: Admission
    settler: Settler
    clock: Callable[[], float]
    byok: ProviderKeyCache | None = None

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        policies: PolicyStore,
        limits: LimitStore,
        clock: Callable[[], float] = time.time,
        byok: ProviderKeyCache | None = None,
    ) -> Gateway:
        catalog = ModelCatalog(config)
        return cls(
            catalog=catalog,
            listing=ModelListing(catalog),
            upstreams=build_upstreams(config.providers),
            policies=policies,
            admission=Admission(
                limits, PriceTable(config), config.fee_percent, lambda: int(clock() * 1000)
            ),
            settler=Settler(limits),
            clock=clock,
            byok=byok,
        )

    def now_ms(self) -> int:
        return int(self.clock() * 1000)
