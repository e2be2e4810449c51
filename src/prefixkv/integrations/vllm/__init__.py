"""A vLLM v1 KV connector over prefixkv's tiers (disk, Redis): vLLM saves the KV blocks of
the prompts it computes as prefixkv records (named by the model's fingerprint and the
prefix, verified on load), and loads them back for prompts it never computed, after a
restart or on another replica sharing the Redis server.

Loaded by vLLM itself, out of tree::

    --kv-transfer-config '{"kv_connector": "PrefixKVConnector",
        "kv_connector_module_path": "prefixkv.integrations.vllm", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"disk_dir": "/var/cache/prefixkv-vllm"}}'

Only ``connector`` imports vLLM; it is imported on first use of ``PrefixKVConnector``, so
the other modules (settings, plans, the scheduler's bookkeeping) import without vLLM.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PrefixKVConnector"]


def __getattr__(name: str) -> Any:
    if name == "PrefixKVConnector":
        from prefixkv.integrations.vllm.connector import PrefixKVConnector

        return PrefixKVConnector
    raise AttributeError(name)
