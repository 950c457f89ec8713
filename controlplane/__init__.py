"""The control plane: REST API for parent accounts and their sub-accounts (API.md §6).

PostgreSQL is the source of truth (`store`); the `projector` is the only writer of key policies
to Redis, where the data plane reads them. Entry points: `create_app`, `migrate`,
`create_parent_account`, `ensure_first_parent`.
"""
