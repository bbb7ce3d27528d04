"""Shared data helpers: records (the synthesized row, read one best row per id), SFT text, tables."""
