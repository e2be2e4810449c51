"""Run ``prefixkv bench``'s index_ops benchmark (same as the CLI subcommand); see its --help."""

import sys

from prefixkv.bench.index_ops import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
