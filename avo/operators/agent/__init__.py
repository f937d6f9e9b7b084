"""agent=avo: the agentic variation operator (loop.py), its tools (tools.py) and its memory (memory.py)."""
