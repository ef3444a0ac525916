"""Seeded Jepsen-style fault injection: a 3-region cluster in network namespaces.

Test-harness code, never shipped: ``scripts/chaos.sh --seed N --duration S``
(``python -m tests.chaos.run``). Modules, one job each:

- ``netns.py``: network namespaces, veth pairs, addresses, links up/down, tmpfs;
- ``cluster.py``: etcd, Kraken test servers, fault proxies and daemons in them;
- ``fault_proxy.py``: userspace TCP proxy per inter-region link (latency,
  bandwidth, stall, half-open), controlled over a unix socket;
- ``nemesis.py``: the seeded fault schedule and how each fault is applied;
- ``history.py``: the JSON-lines history of faults and client operations;
- ``observer.py``: scrapes ``/metrics`` and ``/v1/status`` during the run;
- ``journal_archive.py``: copies rolled hot journal segments before the sealer trims them;
- ``checker.py``: the invariants, judged from history, journals, partitions, epochs;
- ``report.py``: ``report.json`` and the timeline picture;
- ``run.py``: the command line tying them together.
"""
