"""The builders behind ``scripts/build_datasets.py``: :mod:`.sources` (pinned source files,
verified, and their readers), :mod:`.splits` (seeded grouped splits), :mod:`.manifest`
(deterministic output files) and one module per task under :mod:`.tasks`."""
