"""extproc: aigw's data plane, a gRPC external processor behind Envoy's ext_proc filter.

Per request it authenticates the `sk-aig-` key, checks and routes the model to its provider and
swaps in the provider's credentials (docs/internals.md, "Envoy ↔ extproc"). Start it with
`python -m extproc [--config FILE]`.
"""

from extproc.gateway import Gateway
from extproc.policies import PolicyStore
from extproc.server import create_server

__all__ = ["Gateway", "PolicyStore", "create_server"]
