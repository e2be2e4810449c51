"""prefixkv inside engines people already run: each integration lives in its own
subpackage and is imported only by that engine's environment (see README, "vLLM")."""
