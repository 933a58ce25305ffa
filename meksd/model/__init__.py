"""Data only: feed records, typed events, room state, deltas.

Nothing here does I/O, reads a clock or logs. Imports are limited to the standard
library, attrs, cattrs and immutables (see ``tests/test_layering.py``).
"""
