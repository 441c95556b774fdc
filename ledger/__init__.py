"""The ledger: the system of record (tables, migrations, use cases) and the settings."""
