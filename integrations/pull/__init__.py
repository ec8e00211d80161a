"""``medblip pull``: find studies in an archive, retrieve them, caption them and send the reports
back (:mod:`.dicomweb`: QIDO-RS and WADO-RS in, STOW-RS out). Like the services, a pull assembles
the other rooms' parts (the delivery sinks), so it sits above them."""
