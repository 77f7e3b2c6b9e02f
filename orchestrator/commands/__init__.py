"""One module per CLI verb (see orchestrator.cli)."""
