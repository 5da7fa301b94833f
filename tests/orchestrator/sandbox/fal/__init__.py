"""Tests of the fal sandbox."""
