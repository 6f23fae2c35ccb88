"""``python -m fer_edge.benchmarks``: the benchmark scripts of this package, and the commands for the rest."""
import sys

from fer_edge.benchmarks import scripts_text

TEXT = ("fer-edge benchmarks. Latency, accuracy and parity of exported artifacts: `fer-edge bench`, `fer-edge devices`,\n"
        f"`fer-edge report merge`. The benchmark scripts (each takes --help):\n{scripts_text()}")
extra = [a for a in sys.argv[1:] if a not in ("-h", "--help")]
if extra:
    print(f"python -m fer_edge.benchmarks takes no arguments (got {' '.join(extra)}): run one of the scripts.\n{TEXT}",
          file=sys.stderr)
    sys.exit(2)
print(TEXT)
sys.exit(0)
