"""The driver's own choices: client counts, the reference setting, per-count workloads."""

from __future__ import annotations

import argparse

import pytest

from prefixkv.bench import servers
from prefixkv.bench.serve_load import client_counts, parser, reference_name, workloads


def test_client_counts_keep_order_and_drop_repeats() -> None:
    assert client_counts("1,4, 16,64,4") == [1, 4, 16, 64]


@pytest.mark.parametrize("text", ["", "0", "1,-2", "two"])
def test_client_counts_refuse(text: str) -> None:
    with pytest.raises((ValueError, argparse.ArgumentTypeError)):
        client_counts(text)


def test_defaults_match_the_issue() -> None:
    args = parser().parse_args([])
    assert args.clients == [1, 4, 16, 64] and args.max_tokens == 32 and args.settings == "auto"


def _setting(name: str, kind: str = servers.PREFIXKV) -> servers.Setting:
    return servers.Setting(name, kind, (), "test")


def test_reference_prefers_the_serial_setting_then_prefixkv() -> None:
    tf, ours = _setting("tf-cb", servers.TRANSFORMERS), _setting("prefixkv")
    assert reference_name([tf, ours, _setting("prefixkv-serial")]) == "prefixkv-serial"
    assert reference_name([tf, ours]) == "prefixkv"
    assert reference_name([tf]) == "tf-cb"


def test_each_client_count_gets_its_own_documents() -> None:
    work = workloads(parser().parse_args(["--clients", "1,2", "--requests-per-client", "2"]))
    assert [len(work[1]), len(work[2])] == [2, 4]
    assert work[1][0].messages != work[2][0].messages


def test_n_rounds_ask_about_documents_of_their_own() -> None:
    from prefixkv.bench.serve_n import n_workload

    args = parser().parse_args(["--clients", "1,4", "--n", "8"])
    assert args.n == 8 and args.n_rounds == 3
    rounds = n_workload(args.n_rounds, args.sentences)
    documents = [r.messages[1][1].split("\n\nQuestion")[0] for r in rounds]
    assert len(rounds) == 6 and len(set(documents)) == 6
    earlier = {
        r.messages[1][1].split("\n\nQuestion")[0] for rs in workloads(args).values() for r in rs
    }
    assert earlier.isdisjoint(documents)  # nothing the client counts cached
