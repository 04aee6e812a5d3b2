"""DNSSEC: zone keys, online signing of the answers geodns gives, compact denial.

`keys` reads and writes key files (no other geodns import); `sign` turns a
canonical RRset into an RRSIG (pure); `cache` keeps signatures by RRset;
`denial` builds the NSEC records of RFC 9824 compact answers; `zone` signs a
resolved answer into prepared wire bodies for the answer cache.
"""
