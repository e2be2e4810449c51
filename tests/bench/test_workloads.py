"""The document question workload: deterministic, shaped for a round-robin driver."""

from __future__ import annotations

from prefixkv.bench.workloads import document_qa_workload


def test_document_qa_is_deterministic() -> None:
    assert document_qa_workload(4, 2) == document_qa_workload(4, 2)


def test_document_qa_client_keeps_to_one_document() -> None:
    clients, per_client, documents = 5, 3, 3
    work = document_qa_workload(clients, per_client, documents)
    assert len(work) == clients * per_client
    for c in range(clients):
        mine = work[c::clients]  # what a round-robin driver hands client c
        assert {r.group for r in mine} == {f"doc{c % documents}"}
        assert len({r.messages for r in mine}) == per_client  # different questions


def test_document_qa_clients_share_documents_and_seeds_renew_them() -> None:
    work = document_qa_workload(6, 1, documents=3)
    doc = [r.messages[1][1].split("\n\nQuestion:")[0] for r in work]
    assert doc[0] == doc[3] and doc[0] != doc[1]
    other = document_qa_workload(6, 1, documents=3, seed=1)
    assert other[0].messages[1][1].split("\n\nQuestion:")[0] != doc[0]
