"""``tool_choice`` ``required`` and a named function, enforced: the grammar (llguidance's
Lark, :mod:`prefixkv.engine.grammar`) whose only sentences are Hermes call blocks, so that the
reply is a call whatever the model would rather write.

Each block is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, the JSON
written as the history renders past calls (``json.dumps``' separators, ``name`` first), its
``name`` one the choice allows (any declared function for ``required``, the named one
otherwise) and its ``arguments`` following that function's parameter schema. For
``required`` with ``parallel_tool_calls`` (the default) one or more blocks, a newline apart;
otherwise exactly one. The reply ends when the grammar is complete (one block), or when the
model stops after any complete block; :mod:`prefixkv.server.tool_calls` then parses the blocks as usual.
"""

from __future__ import annotations

import json
from typing import Any

from prefixkv.engine.request import GrammarSpec
from prefixkv.server.tool_history import CLOSE, OPEN
from prefixkv.server.tools import ToolSpec

PARAM = "tool_choice"  # the field a schema that does not compile is reported under
# The JSON as tool_history renders past calls: no free whitespace, ", " and ": " separators.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def tool_grammar(tools: ToolSpec) -> GrammarSpec | None:
    """The grammar forcing ``tools``' choice, or None when the model may answer in text
    (``auto``, ``none``)."""
    schema = tools.forced_schema()
    if schema is None:
        return None
    call = json.dumps(f"{OPEN}\n") + " body " + json.dumps(f"\n{CLOSE}")
    # A named choice is one call of it (as OpenAI and vLLM answer it); ``required`` takes
    # as many as parallel_tool_calls allows.
    several = tools.parallel and tools.choice == "required"
    more = f" ({json.dumps(chr(10))} call)*" if several else ""
    body: dict[str, Any] = {**schema, "x-guidance": _JSON_STYLE}
    lines = [f"start: call{more}", f"call: {call}", f"body: %json {json.dumps(body)}"]
    return GrammarSpec("lark", "\n".join(lines), PARAM)
