"""Fixtures for the provider adapter tests."""

from __future__ import annotations

import pytest

from tests.orchestrator.providers.providers_fakes import FakeProvider


@pytest.fixture
def fake() -> FakeProvider:
    """A fresh scripted provider."""
    return FakeProvider()
