"""The shipped price catalogs (TOML data files, one per provider API)."""
