"""``python -m fer_edge.benchmarks``: the benchmark scripts of this package, and the commands for the rest."""
import sys

from fer_edge.benchmarks import scripts_text

print("fer-edge benchmarks. Latency, accuracy and parity of exported artifacts: `fer-edge bench`, `fer-edge devices`,\n"
      f"`fer-edge report merge`. The benchmark scripts (each takes --help):\n{scripts_text()}", file=sys.stdout)
sys.exit(0)
