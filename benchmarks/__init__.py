"""Speed and memory benchmarks of Harmon (scripts: `bench_generate.py`, `bench_understand.py`)."""
