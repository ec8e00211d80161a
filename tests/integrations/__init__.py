"""Tests of the integrations part."""
