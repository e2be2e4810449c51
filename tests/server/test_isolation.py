"""Tenant isolation and authentication, in-process over the fake engine (and one real
process for keys given through the environment).

A request's namespace is (tenant of its API key, its cache_salt): two requests share cached
prefixes only if both match, so one tenant never gets hits from another's prompts.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from prefixkv.server import ServerSettings

from .conftest import TINY_ARGS, App, running_app
from .fake_engine import FakeEngine
from .harness import ServerProcess

KEYS = ("key-of-ana", "key-of-bo")
PROMPT: Any = [
    {"role": "system", "content": "You guard the vault of the old bank. Never tell the code."},
    {"role": "user", "content": "What is the code?"},
]


def cached_tokens(client: openai.OpenAI, salt: str | None = None) -> int:
    extra = {} if salt is None else {"cache_salt": salt}
    reply = client.chat.completions.create(
        model="fake",
        messages=PROMPT,
        max_tokens=2,
        temperature=0,
        extra_body=extra,
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    return reply.usage.prompt_tokens_details.cached_tokens or 0


def test_cache_salt_values_never_share_hits(app: App) -> None:
    client = app.openai()
    assert cached_tokens(client, "tenant-a") == 0
    assert cached_tokens(client, "tenant-a") > 0  # same salt: hits
    assert cached_tokens(client, "tenant-b") == 0  # another salt: a cold cache
    assert cached_tokens(client, "tenant-a-") == 0  # no prefix games between salts
    assert cached_tokens(client) == 0  # no salt is a namespace of its own
    assert cached_tokens(client, "") > 0  # ... the same as the empty salt
    assert cached_tokens(client, "tenant-b") > 0


@pytest.fixture(scope="module")
def keyed() -> Iterator[App]:
    with running_app(api_keys=KEYS, max_tokens_limit=64) as app:
        yield app


@pytest.mark.process
def test_keys_from_the_environment(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two keys through the environment, as the CLI documents; stopped with SIGINT; the keys
    never reach the log."""
    log = tmp_path_factory.mktemp("logs") / "keyed-server.log"
    env = {"PREFIXKV_API_KEY": ",".join(KEYS), "PREFIXKV_MODEL": str(tiny_model_dir)}
    server = ServerProcess(TINY_ARGS, log, env=env, api_key=KEYS[0]).wait_ready()
    try:
        assert server.get("/v1/models", headers={}).status_code == 401
        for key in KEYS:
            assert [m.id for m in server.client(key).models.list()] == ["tiny"]
    finally:
        assert server.stop(signal.SIGINT) == 0, server.output()
    assert KEYS[0] not in server.output() and KEYS[1] not in server.output()


ENDPOINTS = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/fake"),
    ("GET", "/v1/cache/stats"),
    ("POST", "/v1/cache/reset"),
    ("GET", "/metrics"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("key", [None, "wrong-key", KEYS[0] + "x"])
def test_every_endpoint_but_health_needs_a_key(
    keyed: App, method: str, path: str, key: str | None
) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if method == "GET":
        response = keyed.http.get(path, headers=headers)
    else:
        response = keyed.http.post(path, headers=headers, json={"model": "fake", "prompt": "hi"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_is_open_and_keys_work(keyed: App) -> None:
    assert keyed.http.get("/health").json() == {"status": "ok"}
    for key in KEYS:
        assert keyed.http.get("/v1/models", headers=keyed.headers(key)).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        keyed.openai("not-a-key").models.list()
    assert [m.id for m in keyed.openai().models.list()] == ["fake"]


def test_keys_are_tenants_that_never_share_hits(keyed: App) -> None:
    ana, bo = keyed.openai(KEYS[0]), keyed.openai(KEYS[1])
    assert cached_tokens(ana) == 0
    assert cached_tokens(ana) > 0
    assert cached_tokens(bo) == 0  # same prompt, same (empty) salt, other key
    assert cached_tokens(bo, "shared") == 0
    assert cached_tokens(ana, "shared") == 0  # a salt does not cross tenants either


ADMIN = "key-of-the-operator"


def test_metrics_need_the_admin_key() -> None:
    with running_app(api_keys=KEYS, admin_keys=(ADMIN,)) as app:
        refused = app.http.get("/metrics", headers=app.headers(KEYS[0]))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "admin_key_required"
        assert app.http.get("/metrics", headers=app.headers(ADMIN)).status_code == 200


def stats(app: App, key: str) -> dict[str, Any]:
    response = app.http.get("/v1/cache/stats", headers=app.headers(key))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_a_tenant_sees_and_resets_only_its_own_namespaces() -> None:
    with running_app(api_keys=KEYS, admin_keys=(ADMIN,)) as app:
        ana, bo = app.openai(KEYS[0]), app.openai(KEYS[1])
        cached_tokens(ana)
        before = stats(app, KEYS[0])
        assert before["scope"] == "tenant"
        assert "free_blocks" not in before and "reserved_blocks" not in before
        for salt in ("x", "y", "x"):  # Bo's traffic, as it happens
            cached_tokens(bo, salt)
        after = stats(app, KEYS[0])
        for field in ("queries", "query_tokens", "hit_tokens", "used_blocks", "inserted_blocks"):
            assert after[field] == before[field], field  # nothing of Bo's shows
        assert stats(app, KEYS[1])["queries"] == 3
        reset = app.http.post("/v1/cache/reset", json={}, headers=app.headers(KEYS[0]))
        assert reset.json() == {"evicted_blocks": before["used_blocks"], "scope": "tenant"}
        assert cached_tokens(bo, "x") > 0  # Ana's reset left Bo's blocks alone
        assert cached_tokens(ana) == 0
        whole = stats(app, ADMIN)
        assert whole["scope"] == "all" and whole["queries"] == 6 and "free_blocks" in whole


def test_a_tenant_within_its_share_keeps_its_blocks() -> None:
    """--tenant-share: a flood from one tenant evicts its own blocks, not another's."""
    engine = FakeEngine(capacity_blocks=64, tenant_share=0.5)
    with running_app(engine, api_keys=KEYS, max_tokens_limit=64) as app:
        ana, bo = app.openai(KEYS[0]), app.openai(KEYS[1])
        cached_tokens(bo, "keep")
        held = stats(app, KEYS[1])["used_blocks"]
        assert 0 < held <= 32
        for i in range(40):  # far more than the whole cache
            cached_tokens(ana, f"flood-{i}")
        assert stats(app, KEYS[1])["used_blocks"] == held
        assert cached_tokens(bo, "keep") > 0
        assert stats(app, KEYS[0])["evicted_blocks"] > 0


def test_a_global_reset_needs_the_admin_key() -> None:
    with running_app(api_keys=KEYS, admin_keys=(ADMIN,)) as app:
        cached_tokens(app.openai(KEYS[1]))
        response = app.http.post(
            "/v1/cache/reset", json={"scope": "all"}, headers=app.headers(KEYS[0])
        )
        assert response.status_code == 403
        assert cached_tokens(app.openai(KEYS[1])) > 0  # untouched
        response = app.http.post(
            "/v1/cache/reset", json={"scope": "all"}, headers=app.headers(ADMIN)
        )
        assert response.status_code == 200 and response.json()["evicted_blocks"] > 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_cross_site_simple_post_cannot_reset(app: App, content_type: str | None) -> None:
    """What a web page can send without a CORS preflight: no JSON body, so no reset."""
    cached_tokens(app.openai(), "csrf")
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = app.http.post("/v1/cache/reset", content=b"scope=all", headers=headers)
    assert response.status_code == 415
    assert cached_tokens(app.openai(), "csrf") > 0


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8000", True),
        ("localhost", True),
        ("[::1]:8000", True),
        ("attacker.example", False),
        ("attacker.example:8000", False),
        ("127.0.0.1.attacker.example", False),
        ("", False),
    ],
)
def test_the_host_header_must_name_the_server(host: str, allowed: bool) -> None:
    """DNS rebinding: a page under another name reaching a loopback server is refused."""
    with running_app(
        allowed_hosts=ServerSettings.__dataclass_fields__["allowed_hosts"].default
    ) as app:
        response = app.http.get("/v1/models", headers={"Host": host})
        if allowed:
            assert response.status_code == 200
        else:
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "invalid_host"


@pytest.mark.parametrize("header", [None, "Bearer anything", f"Bearer {ADMIN}"])
def test_the_anonymous_caller_is_never_the_admin(header: str | None) -> None:
    """Without keys every caller is the anonymous tenant: its own stats, its own reset, no
    global reset; whatever key it sends (OpenAI clients always send one) changes nothing."""
    headers = {} if header is None else {"Authorization": header}
    with running_app(public_metrics=False) as app:
        cached_tokens(app.openai(), "mine")
        own = app.http.get("/v1/cache/stats", headers=headers).json()
        assert own["scope"] == "tenant" and own["used_blocks"] > 0
        assert "free_blocks" not in own and "tiers" not in own
        for path, kwargs in (
            ("/v1/cache/reset", {"json": {"scope": "all"}}),
            ("/metrics", {}),
        ):
            call = app.http.post if path.endswith("reset") else app.http.get
            refused = call(path, headers=headers, **kwargs)
            assert refused.status_code == 403, path
            error = refused.json()["error"]
            assert error["code"] == "admin_key_required" and "--admin-key" in error["message"]
            assert error["type"] == "invalid_request_error"
        assert cached_tokens(app.openai(), "mine") > 0  # the refused reset evicted nothing
        reset = app.http.post("/v1/cache/reset", json={}, headers=headers)
        assert reset.json() == {"evicted_blocks": own["used_blocks"], "scope": "tenant"}


def test_public_metrics_open_metrics_only() -> None:
    """A keyless server on loopback (``public_metrics``) serves /metrics to anyone; the
    whole-cache stats and the global reset stay closed."""
    with running_app(public_metrics=True) as app:
        assert app.http.get("/metrics").status_code == 200
        assert app.http.get("/v1/cache/stats").json()["scope"] == "tenant"
        refused = app.http.post("/v1/cache/reset", json={"scope": "all"})
        assert refused.status_code == 403


@pytest.mark.parametrize("keys", [{"api_keys": KEYS}, {"admin_keys": (ADMIN,)}])
def test_public_metrics_need_a_keyless_server(keys: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="public_metrics"):
        ServerSettings(model_names=("m",), public_metrics=True, **keys)
