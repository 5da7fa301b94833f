"""Tests of the Runware sandbox."""
