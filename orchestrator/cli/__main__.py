"""`python -m orchestrator.cli` runs the command line (used where the script is not on PATH)."""

from orchestrator.cli import main

main()
