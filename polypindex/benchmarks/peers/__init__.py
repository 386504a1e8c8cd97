"""PolypIndex beside a vector database (Chroma), over the same HTTP client (docs/results.md).

- :mod:`.workload`: the client side, shared by every system: one client's latencies,
  concurrent clients' throughput, the interleaved schedule and the summary ratios;
- :mod:`.systems`: each system's server and requests (PolypIndex's real app over a
  benchmark world, Chroma's ``chroma run`` from its own virtualenv);
- :mod:`.run`: the command line (``make bench-peers``), the JSON result and its table.
"""
