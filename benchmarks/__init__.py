"""Benchmarks run by hand (``python -m benchmarks`` from the repository root, or ``make bench``).

``benchmarks.speed``: exactflow against zuko, nflows and normflows on equivalent flows;
``benchmarks.peers``: those flows, built in each library.
"""
