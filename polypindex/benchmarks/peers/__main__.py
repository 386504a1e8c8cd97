"""``python -m polypindex.benchmarks.peers``: see :mod:`polypindex.benchmarks.peers.run`."""

from polypindex.benchmarks.peers.run import main

main()
