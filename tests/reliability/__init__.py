"""Tests of the reliability part."""
