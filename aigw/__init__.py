"""aigw: what the data plane (extproc) and the control plane share — configuration, keys,
money, the Redis keyspace, key policies, the error envelope — and the `aigw` command line."""

__version__ = "0.1.0"
