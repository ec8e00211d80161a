"""Tests of the training part."""
