"""The ways in: the HTTP API and the command-line interface."""
