"""Tests of the fal adapter."""
