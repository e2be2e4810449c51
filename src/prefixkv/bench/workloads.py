"""Deterministic prompt workloads: chat, RAG, batch and multi-turn.

Text is composed from seeded templates about fictional places, so every run (and every
machine) sees the same prompts without shipping a corpus. Sizes are stated in tokens of the
default model's tokenizer, measured by the runner, not assumed here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

Message = dict[str, str]

_PLACES = [
    "Arvale",
    "Brenmoor",
    "Caskwell",
    "Dunmere",
    "Elsford",
    "Fallowmere",
    "Glenhaven",
    "Harrowgate",
]
_THINGS = [
    "bridge",
    "library",
    "harbour",
    "market",
    "observatory",
    "mill",
    "garden",
    "railway station",
]
_TRADES = ["wool", "salt", "timber", "glass", "copper", "tea", "paper", "cider"]
_ADJ = ["old", "narrow", "busy", "quiet", "famous", "crumbling", "restored", "tiny"]
_SENTENCES = [
    "The {adj} {thing} of {place} was built in {year} by a guild of {trade} merchants.",
    "Visitors to {place} often remark that the {thing} is {adj} but well kept.",
    "In {year}, a flood damaged the {thing}, and the {trade} trade paid for its repair.",
    "{place} exported {trade} to {other} for {n} years before the route closed.",
    "The council of {place} meets every {n} days in the hall beside the {thing}.",
    "A {adj} footpath links the {thing} of {place} with the hills above {other}.",
    "Records from {year} list {n} families in {place} working in {trade}.",
    "The mayor of {other} once called the {thing} of {place} the finest in the region.",
]

SYSTEM_PROMPT = (
    "You are Quill, the help desk assistant of the Northern Archive. Answer in one or two short "
    "sentences. Be precise and polite. If a question is about opening hours, say that the "
    "archive opens at nine and closes at five on weekdays, and is closed on public holidays. If "
    "a question is about borrowing, explain that documents never leave the reading room, but "
    "copies can be ordered at the front desk for a small fee. If a question is about research "
    "help, offer to book a thirty minute appointment with an archivist. Never invent catalogue "
    "numbers. When you are unsure, say so and suggest writing to the archive by post. Keep a "
    "friendly tone, avoid jargon, and do not use lists or headings in your answers. The reading "
    "room has forty desks, free wireless internet and power sockets at every seat. Lockers for "
    "coats and bags are in the basement; pens are not allowed near original documents, so ask "
    "visitors to bring pencils. Groups larger than six people must book a week in advance."
)

USER_QUESTIONS = [
    "When are you open on Mondays?",
    "Can I take a map home with me?",
    "How do I order a copy of a letter?",
    "Is the archive open on public holidays?",
    "Can someone help me trace my family history?",
    "Do I need an appointment to visit?",
    "How much does a copy cost?",
    "Can I bring my laptop?",
    "What should I do if I cannot find a record?",
    "Who can I write to with a question?",
    "Are photographs allowed in the reading room?",
    "Can I book a research session for Friday?",
    "Do you keep newspapers from the last century?",
    "How long does a copy order take?",
    "Is there a cafe in the building?",
    "Can children visit the archive?",
]

BATCH_INSTRUCTION = (
    "You are labelling customer feedback for a quality report. Classify the sentiment of the "
    "customer review below as positive, negative or mixed. Reviews that praise one thing and "
    "criticise another are mixed. Answer with that single word only, in lower case."
)

_PREAMBLES = [
    "Hello, I am planning a visit next week with two colleagues from the university.",
    "Good morning, I am writing a local history book and need some advice from you.",
    "Hi there, my grandmother lived in this county and I would like to learn more.",
    "Dear archive, I am a student working on a project about old shipping routes.",
]

REVIEWS = [
    "The delivery was late but the product works perfectly.",
    "Terrible support, I want a refund.",
    "Absolutely love it, would buy again!",
    "It broke after two days.",
    "Decent value for the price.",
    "The colour is not what the picture showed.",
    "Fast shipping and great packaging.",
    "Customer service solved my problem in minutes.",
    "Too expensive for what you get.",
    "Works as described, nothing special.",
    "The manual is confusing but the device is great.",
    "I am never ordering from this shop again.",
    "Five stars, my kids love it.",
    "Arrived damaged, the replacement was fine.",
    "Battery life is shorter than advertised.",
    "Exactly what I needed for my kitchen.",
]


def document(seed: int, sentences: int = 55) -> str:
    """A paragraph of about 20 tokens per sentence (≈1,100 tokens for the default 55)."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        template = rng.choice(_SENTENCES)
        place, other = rng.sample(_PLACES, 2)
        out.append(
            template.format(
                adj=rng.choice(_ADJ),
                thing=rng.choice(_THINGS),
                place=place,
                other=other,
                trade=rng.choice(_TRADES),
                year=rng.randrange(1600, 1950),
                n=rng.randrange(2, 90),
            )
        )
    return " ".join(out)


def rag_question(seed: int) -> str:
    rng = random.Random(seed)
    return f"According to the document, what do we know about the {rng.choice(_THINGS)} of {rng.choice(_PLACES)}?"


@dataclass(frozen=True)
class Request:
    """One prompt of a workload; ``group`` names what it shares with others (doc, chat...)."""

    messages: tuple[tuple[str, str], ...]
    group: str

    def chat(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.messages]


def chat_workload(requests: int = 16) -> list[Request]:
    """One ~200-token system prompt, many different ~30-token user messages."""
    return [
        Request(
            (
                ("system", SYSTEM_PROMPT),
                ("user", USER_QUESTIONS[i % len(USER_QUESTIONS)] + f" (ticket {i})"),
            ),
            "chat",
        )
        for i in range(requests)
    ]


def _user_message(i: int) -> str:
    """About 30 tokens: a preamble, a question and a ticket number."""
    question = USER_QUESTIONS[i % len(USER_QUESTIONS)]
    return f"{_PREAMBLES[i % len(_PREAMBLES)]} {question} (ticket {1000 + i})"


def rag_workload(documents: int = 4, questions: int = 3, sentences: int = 55) -> list[Request]:
    """Several ~1,000-token documents, several questions each, documents interleaved."""
    docs = [document(100 + d, sentences) for d in range(documents)]
    return [
        Request(
            (
                ("system", "Answer the question using only the document."),
                ("user", f"Document:\n{docs[d]}\n\nQuestion: {rag_question(1000 * d + q)}"),
            ),
            f"doc{d}",
        )
        for q in range(questions)
        for d in range(documents)
    ]


def batch_workload(requests: int = 16) -> list[Request]:
    """A ~50-token instruction in front of many short inputs."""
    return [
        Request((("user", f"{BATCH_INSTRUCTION}\n\nReview: {REVIEWS[i % len(REVIEWS)]}"),), "batch")
        for i in range(requests)
    ]


def multiturn_user_turns(conversations: int = 2, turns: int = 8) -> list[list[str]]:
    """User messages of each conversation; replies come from the model as it runs."""
    return [
        [
            f"{USER_QUESTIONS[(c * 5 + t) % len(USER_QUESTIONS)]} Please also mention {_PLACES[(c + t) % 8]}."
            for t in range(turns)
        ]
        for c in range(conversations)
    ]


def document_qa_workload(
    clients: int, per_client: int, documents: int = 3, sentences: int = 36, seed: int = 0
) -> list[Request]:
    """``clients * per_client`` questions about ``documents`` long documents (≈700 tokens for
    the default 36 sentences), in the order a round-robin driver hands them out.

    Request ``k * clients + c`` is client ``c``'s ``k``-th question, always about document
    ``c % documents``, so each client keeps asking about one document and several clients
    share each one. ``seed`` picks a fresh set of documents and questions, so that runs
    against the same server do not find each other's documents already cached.
    """
    docs = [document(10_000 * (seed + 1) + d, sentences) for d in range(documents)]
    return [
        Request(
            (
                ("system", "Answer the question using only the document."),
                (
                    "user",
                    f"Document:\n{docs[c % documents]}\n\n"
                    f"Question: {rag_question(10_000 * (seed + 1) + 100 * c + k)}",
                ),
            ),
            f"doc{c % documents}",
        )
        for k in range(per_client)
        for c in range(clients)
    ]
