"""Capacity what-if (``prefixkv simulate``): a request log (``prefixkv serve --request-log``)
replayed through the real prefix index at other cache sizes and eviction policies.

- :mod:`.records`: reading the log into :class:`~.records.LoggedRequest` records
- :mod:`.replay`: one cache configuration replayed over them (RAM, and a disk tier below it)
- :mod:`.report`: the table and the PNG curve

Needs NumPy only, like the index; the curve needs matplotlib (the ``[bench]`` extra).
"""
