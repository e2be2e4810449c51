"""Run ``prefixkv bench``'s serve_load benchmark (same as the CLI subcommand); see its --help."""

import sys

from prefixkv.bench.serve_load import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
