"""The aigw benchmark: the full gateway against plain Envoy and peer gateways (LiteLLM proxy,
Portkey) on one machine, in one run, against the same fake provider; and the control plane's
sub-account creation rate and usage-ingestion throughput. See bench/README.md.
"""
