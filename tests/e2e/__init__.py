"""End-to-end tests: whole running systems (worker processes, the API, both sandboxes)."""
