"""Build hook for the three small C extensions; everything else is in pyproject.toml.

Both are optional: without a compiler or Python headers the install still
succeeds and geodns runs on pure Python, slower but the same answers.

- `geodns.dns._mmsg` (recvmmsg/sendmmsg): without it the UDP transport falls
  back to uvloop datagrams, about 1.5x slower per query.
- `geodns.geo._tree` (MaxMind DB search-tree walk): without it every GeoIP
  lookup decodes its record, about 4x slower on a cache miss.
- `geodns.dns._scan` (the common shape of a query): without it the same rules
  run in Python, about 3x slower per parse.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("geodns.dns._mmsg", ["geodns/dns/_mmsg.c"], optional=True, extra_compile_args=["-O2"]),
        Extension("geodns.dns._scan", ["geodns/dns/_scan.c"], optional=True, extra_compile_args=["-O2"]),
        Extension("geodns.geo._tree", ["geodns/geo/_tree.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
