"""The review station's routes: :mod:`.pages` (the browser's), :mod:`.api` (a reporting system's),
and :mod:`.rules`, which both follow (UIDs, worklist filters, decisions, errors to HTTP statuses)."""
