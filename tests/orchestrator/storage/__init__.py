"""Tests of the storage backends and image handling."""
