"""The benchmark: `make bench` (see run.py). Not part of the installed package."""
