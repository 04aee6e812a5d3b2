"""Build hook for the one C extension; everything else is in pyproject.toml.

`geodns.dns._mmsg` (recvmmsg/sendmmsg) is optional: without a compiler or
Python headers the install still succeeds and the UDP transport falls back to
plain asyncio datagrams, about 1.5x slower per query.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("geodns.dns._mmsg", ["geodns/dns/_mmsg.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
