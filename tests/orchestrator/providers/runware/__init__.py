"""Tests of the Runware adapter."""
