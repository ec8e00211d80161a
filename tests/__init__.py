"""The test suite: one folder per package (core, training, integrations) plus reliability; shared
helpers in :mod:`tests.support`."""
