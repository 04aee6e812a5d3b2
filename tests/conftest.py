"""Test-wide setup. This file also puts `tests/` on sys.path, so suites share `netutil`."""
