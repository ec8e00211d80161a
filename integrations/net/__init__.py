"""Network plumbing more than one room needs: pynetdicom's private hooks in one checked place
(:mod:`.pynetdicom_compat`, for the Storage SCP and SCU) and the guarded HTTP server that times
out idle and slow clients (:mod:`.httpserve`, for the STOW-RS endpoint and the review station)."""
