"""Tests of the orchestrator package, one folder per subpackage."""
