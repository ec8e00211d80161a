"""Tests of the core part."""
