"""``PrefixKVConnector``: the vLLM v1 KV connector (``KVConnectorBase_V1``) over prefixkv's
tiers. vLLM makes one in its scheduler (role SCHEDULER: :mod:`.scheduler`) and one in each
worker (role WORKER: :mod:`.worker`), in different processes; both open the configured
tiers and agree on block names through the fingerprint, computed by each from the same
model files and KV cache specs. This module is the only one that imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import vllm
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from prefixkv.integrations.vllm.plan import StepPlan
from prefixkv.integrations.vllm.scheduler import SchedulerSide
from prefixkv.integrations.vllm.settings import (
    connector_fingerprint,
    open_tiers,
    parse_settings,
    tier_key,
    weights_digest,
)
from prefixkv.integrations.vllm.worker import WorkerSide, log
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tiers.seal import seal_for


@dataclass(frozen=True)
class PrefixKVMetadata(KVConnectorMetadata):  # type: ignore[misc]  # vLLM's class is untyped here
    plan: StepPlan


def _model_folder(model: str) -> Path:
    """The local folder of ``model`` (a path, or a Hugging Face id already downloaded)."""
    path = Path(model)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, local_files_only=True))


class PrefixKVConnector(KVConnectorBase_V1):  # type: ignore[misc]  # vLLM's class is untyped here
    """Saves the prompts' full KV blocks to the tiers and loads them back."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        if len(kv_cache_config.kv_cache_groups) != 1:
            # a record is one block of every layer: one group of layers sharing block ids
            raise ValueError("the prefixkv connector supports models with one KV cache group")
        transfer = vllm_config.kv_transfer_config
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size * parallel.pipeline_parallel_size > 1:
            # each worker holds a shard of every block: records would need the rank in
            # their names (and the fingerprint), which they do not have yet
            raise ValueError("the prefixkv connector supports one worker (no TP or PP) only")
        settings = parse_settings(transfer.kv_connector_extra_config or {})
        if transfer.kv_load_failure_policy != "recompute":
            log.warning(
                "prefixkv: kv_load_failure_policy is %r: a record failing verification fails "
                'its request; set "kv_load_failure_policy": "recompute" to recompute it',
                transfer.kv_load_failure_policy,
            )
        key = tier_key(settings)
        self._tiers = open_tiers(settings, key)
        self._seal = seal_for(key)
        model = vllm_config.model_config
        specs = repr([(g.layer_names, g.kv_cache_spec) for g in kv_cache_config.kv_cache_groups])
        # torch.compile's fused kernels may round otherwise than eager ones: part of the name
        compiled = vllm_config.compilation_config
        versions = (
            f"vllm {vllm.__version__}; torch {torch.__version__}; "
            f"compilation {compiled.mode!s} {compiled.backend}"
        )
        self._fingerprint = connector_fingerprint(
            weights_digest(_model_folder(model.model)), versions, str(model.dtype), specs
        )
        block_size = vllm_config.cache_config.block_size
        self._scheduler: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        self._failed: set[int] = set()
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = SchedulerSide(
                BlockNamer(self._fingerprint, block_size, key), self._tiers
            )
        log.info("prefixkv: %s connector over %s, fingerprint %s", role.name,
                 ", ".join(t.name for t in self._tiers), self._fingerprint.hex())  # fmt: skip

    # --- worker -----------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._worker = WorkerSide(self._tiers, self._fingerprint, self._seal, kv_caches)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if self._worker is not None and isinstance(meta, PrefixKVMetadata):
            self._failed |= self._worker.load(meta.plan.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None  # loads are complete when start_load_kv returns

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        return None  # whole blocks are saved after the forward pass (wait_for_save)

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        if self._worker is not None and isinstance(meta, PrefixKVMetadata):
            self._worker.save(meta.plan.saves)

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed = self._failed, set()
        return failed

    def shutdown(self) -> None:
        for tier in self._tiers:
            tier.close()

    # --- scheduler --------------------------------------------------------------------

    def get_num_new_matched_tokens(
        self, request: Any, num_computed_tokens: int
    ) -> tuple[int, bool]:
        assert self._scheduler is not None, "vLLM calls this on the scheduler's connector"
        if not self._kv_transfer_config.is_kv_consumer:  # kv_producer: saves only
            return 0, False
        return self._scheduler.offer(request, num_computed_tokens), False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.allocated(request.request_id, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> PrefixKVMetadata:
        assert self._scheduler is not None
        plan = self._scheduler.plan(scheduler_output)
        if not self._kv_transfer_config.is_kv_producer:  # kv_consumer: loads only
            plan = StepPlan(plan.loads, ())
        return PrefixKVMetadata(plan)

    def request_finished(
        self, request: Any, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        if self._scheduler is not None:
            self._scheduler.forget((request.request_id,))
        return False, None
