"""``POST /v1/cache/pin`` and ``/v1/cache/unpin`` over the fake engine: a pinned prompt
stays cached under pressure, counts in the tenant's ``pinned_blocks``, expires, is refused
over the tenant's share with a 409 naming why, and only its own tenant can unpin it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import App, running_app
from .fake_engine import BLOCK, FakeEngine

KEYS = ("pin-key-a", "pin-key-b")
DOC = "A long system prompt that every request of this tenant starts with. " * 2


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": DOC}, {"role": "user", "content": question}]


def post(app: App, path: str, body: dict[str, Any], key: str = KEYS[0]) -> Any:
    return app.http.post(path, json=body, headers=app.headers(key))


def stats(app: App, key: str = KEYS[0]) -> dict[str, Any]:
    response = app.http.get("/v1/cache/stats", headers=app.headers(key))
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def test_a_pinned_prompt_stays_cached_until_unpinned() -> None:
    with running_app(FakeEngine(capacity_blocks=160), api_keys=KEYS) as app:
        pinned = post(app, "/v1/cache/pin", {"messages": messages("hi"), "ttl_seconds": 600})
        assert pinned.status_code == 200, pinned.text
        body = pinned.json()
        assert body["pinned_blocks"] == body["prompt_tokens"] // BLOCK > 0
        assert body["pinned_tokens"] == body["pinned_blocks"] * BLOCK
        assert stats(app)["pinned_blocks"] == body["pinned_blocks"]
        assert stats(app, KEYS[1])["pinned_blocks"] == 0  # the other tenant's view
        # The other tenant's traffic fills the pool many times over.
        for i in range(40):
            filler = {"prompt": f"{i} filler text that is not shared " * 4, "max_tokens": 2}
            assert post(app, "/v1/completions", filler, KEYS[1]).status_code == 200
        assert stats(app, KEYS[1])["evicted_blocks"] > 0
        again = post(app, "/v1/chat/completions", {"messages": messages("hi"), "max_tokens": 2})
        usage = again.json()["usage"]
        assert (
            usage["prompt_tokens_details"]["cached_tokens"]
            == (usage["prompt_tokens"] - 1) // BLOCK * BLOCK
        )
        # Only the owner can unpin; then the blocks are ordinary again.
        gone = post(app, "/v1/cache/unpin", {"id": body["id"]}, KEYS[1])
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "id"
        done = post(app, "/v1/cache/unpin", {"id": body["id"]})
        assert done.json() == {
            "id": body["id"],
            "object": "cache.unpin",
            "unpinned_blocks": body["pinned_blocks"],
        }
        assert stats(app)["pinned_blocks"] == 0


def test_a_pin_expires() -> None:
    with running_app(FakeEngine(), api_keys=KEYS) as app:
        pinned = post(app, "/v1/cache/pin", {"prompt": DOC, "ttl_seconds": 0.3}).json()
        assert stats(app)["pinned_blocks"] == pinned["pinned_blocks"] > 0
        time.sleep(0.4)
        assert stats(app)["pinned_blocks"] == 0
        assert post(app, "/v1/cache/unpin", {"id": pinned["id"]}).status_code == 404


def test_over_the_share_is_refused_and_the_server_serves_on() -> None:
    # 100 blocks, a share of 0.1: 10 blocks a tenant may pin; DOC alone is more.
    with running_app(FakeEngine(capacity_blocks=100, tenant_share=0.1), api_keys=KEYS) as app:
        refused = post(app, "/v1/cache/pin", {"prompt": DOC, "ttl_seconds": 60})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "pin_over_share"
        assert "over its share of the pool (--tenant-share) (10 blocks)" in error["message"]
        assert stats(app)["pinned_blocks"] == 0
        small = post(app, "/v1/cache/pin", {"prompt": "short prompt here", "ttl_seconds": 60})
        assert small.status_code == 200 and small.json()["pinned_blocks"] == 4
        reply = post(app, "/v1/completions", {"prompt": DOC, "max_tokens": 2})
        assert reply.status_code == 200


def test_pins_leave_room_for_everyone_else() -> None:
    """Without shares one tenant may pin up to half the pool, then gets a 409; another
    tenant's requests, and its own, still run in the other half."""
    with running_app(FakeEngine(capacity_blocks=48), api_keys=KEYS) as app:
        codes = []
        for i in range(12):
            doc = {"prompt": f"{i:02d} pinned document number {i}, kept.", "ttl_seconds": 600}
            codes.append(post(app, "/v1/cache/pin", doc).status_code)
        assert 409 in codes and codes[: codes.index(409)] == [200] * codes.index(409)
        assert 12 < stats(app)["pinned_blocks"] <= 24  # half of 48
        big = {"prompt": "another tenant's long prompt " * 3, "max_tokens": 4}
        for key in KEYS[::-1]:
            reply = post(app, "/v1/completions", big, key)
            assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == 87


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "abc def ghi"}, "ttl_seconds"),
        ({"prompt": "abc def ghi", "ttl_seconds": 0}, "ttl_seconds"),
        ({"prompt": "abc def ghi", "ttl_seconds": -5}, "ttl_seconds"),
        ({"prompt": "abc def ghi", "ttl_seconds": "60"}, "ttl_seconds"),
        ({"prompt": "abc def ghi", "ttl_seconds": True}, "ttl_seconds"),
        ({"prompt": "abc def ghi", "ttl_seconds": 10**9}, "ttl_seconds"),
        ({"prompt": 5, "ttl_seconds": 60}, "prompt"),
        ({"messages": "hi", "ttl_seconds": 60}, "messages"),
    ],
)
def test_bad_pin_bodies_name_their_field(body: dict[str, Any], param: str) -> None:
    with running_app(FakeEngine(), api_keys=KEYS) as app:
        response = post(app, "/v1/cache/pin", body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert post(app, "/v1/cache/unpin", {}).json()["error"]["param"] == "id"
        assert stats(app)["pinned_blocks"] == 0


def test_nothing_to_pin_is_a_409() -> None:
    with running_app(FakeEngine(), api_keys=KEYS) as app:
        response = post(app, "/v1/cache/pin", {"prompt": "ab", "ttl_seconds": 60})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "nothing_cached"
