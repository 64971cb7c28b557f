"""Speed and memory benchmarks; each writes JSON + Markdown into benchmarks/results/."""
