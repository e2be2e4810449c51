"""``/tokenize`` and ``/detokenize`` in-process over the fake engine: the same keys as the
generation endpoints, and 400s naming the field (the real server's answers are checked in
test_real_sampling.py)."""

from __future__ import annotations

from .conftest import running_app

KEY = "sk-tokenize-test"


def test_tokenize_needs_the_same_key_as_the_completions() -> None:
    with running_app(api_keys=(KEY,)) as app:
        for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [5]})):
            assert app.http.post(path, json=body).status_code == 401
            assert app.http.post(path, json=body, headers=app.headers("wrong")).status_code == 401
        said = app.http.post("/tokenize", json={"prompt": "hi"}, headers=app.headers())
        assert said.status_code == 200
        assert said.json()["count"] == len(said.json()["tokens"]) == 2


def test_tokenize_refuses_bad_bodies_naming_the_field() -> None:
    cases = [
        ("/tokenize", {"prompt": ["a"]}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"messages": []}, "messages"),
        ("/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (
            "/tokenize",
            {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": 1},
            "add_generation_prompt",
        ),
        ("/tokenize", {"prompt": "hi", "model": "gpt-17"}, "model"),
        ("/detokenize", {"tokens": "5"}, "tokens"),
        ("/detokenize", {"tokens": [5, -1]}, "tokens"),
        ("/detokenize", {"tokens": [5, True]}, "tokens"),
    ]
    with running_app() as app:
        for path, body, param in cases:
            response = app.http.post(path, json=body)
            assert response.status_code in (400, 404), (body, response.text)
            assert response.json()["error"]["param"] == param, body
        chat = app.http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
        bare = app.http.post(
            "/tokenize",
            json={"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": False},
        )
        assert bare.json()["tokens"] == chat.json()["tokens"][: bare.json()["count"]]
        assert bare.json()["count"] < chat.json()["count"]
