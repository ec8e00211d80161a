"""Reports out: the delivery loop (:mod:`.loop`: the output folder, retries with a capped backoff,
the study quiet time, the review hold) and the destinations in :mod:`.sinks`."""
