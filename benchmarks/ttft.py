"""Run ``prefixkv bench``'s ttft benchmark (same as the CLI subcommand); see its --help."""

import sys

from prefixkv.bench.ttft import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
