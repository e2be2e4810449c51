"""KV cache events (the ``[server]`` extra: pyzmq, msgspec): every block the RAM cache and
the tiers below it start and stop holding, published in vLLM's KV event format over
ZeroMQ with sequence numbers and replay (``prefixkv serve --kv-events``).

- :mod:`.wire`: the schema (vLLM's ``KVEventBatch``, ``BlockStored``, ``BlockRemoved``,
  ``AllBlocksCleared``) and the media (RAM ``CPU``, disk and Redis ``STORAGE``)
- :mod:`.publisher`: :class:`KVEventPublisher`, the queue, the thread, PUB and replay
- :mod:`.translate`: pool ids and tier names to named events; :mod:`.sinks`: the hooks
- :mod:`.attach`: wiring a publisher to a cache
"""

from prefixkv.events.attach import attach, namer_for
from prefixkv.events.publisher import KVEventPublisher, PublisherCounts

__all__ = ["KVEventPublisher", "PublisherCounts", "attach", "namer_for"]
