"""Tests of the provider sandboxes."""
