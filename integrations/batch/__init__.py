"""Archive-scale captioning on Ray Data (``medblip batch``): the library's pipeline stages as Ray
tasks and actors, and a results table with one row per input file.

- :mod:`.manifest`: the inputs (folders, or a ``.csv`` / ``.jsonl`` / ``.parquet`` manifest with a
  ``path`` column) and ``--resume`` tables.
- :mod:`.stages`: the Ray UDFs (read selection facts, prepare, the caption actor, write SRs).
- :mod:`.results`: the results table's columns, writing it atomically, and the summary.
- :mod:`.job`: starting or joining Ray and wiring the stages into one streaming Ray Data job.

Needs the ``batch`` extra (``ray[data]``, pandas, pyarrow); nothing here is imported by the library.
"""
