"""The research reader: point-in-time, as-of, quarantine-aware reads of a storage root.

```python
from cryptorun_daemon.reader import open_store

store = open_store("/var/lib/cryptorun/eu-central")
table = store.read("trade", start, end, symbols=["BTC-USD"], as_of=knowledge_time)
for batch in store.batches("trade", start, end):  # bounded memory
    ...
```

Modules: :mod:`.request` (the checked request), :mod:`.selection` (which
partition versions), :mod:`.unify` (one schema), :mod:`.quarantine`
(sidecars), :mod:`.symbols` (one spelling per market), :mod:`.ordering`
(time order across overlapping parts), :mod:`.store` (the facade),
:mod:`.http` (``GET /v1/read``). The command is ``cli/cmd_read.py``.
The rules are explained for researchers in ``docs/DATA_FACADE.md``.
"""

from cryptorun_daemon.reader.request import ReadRequest
from cryptorun_daemon.reader.store import METADATA_KEY, BatchStream, ReadSummary, Store, open_store

__all__ = ["METADATA_KEY", "BatchStream", "ReadRequest", "ReadSummary", "Store", "open_store"]
