"""Tests of the applications (the medblip command)."""
