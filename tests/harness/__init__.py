"""Test harness shared by unit and integration tests (real servers on loopback).

One module per job: ``wait`` (poll a condition), ``net`` (free ports, a fault-
injecting TCP relay), ``daemons`` (region configs, in-process and subprocess
daemons), ``admin`` (the admin API and /metrics as a client), ``partitions`` (a
peer's partition endpoints), ``testdata`` (synthetic Parquet partitions, also
used by bench/), ``etcd`` and ``tools`` (real external servers and binaries).
"""
