"""The STOW-RS endpoint: the HTTP app (:mod:`.endpoint`), the streaming multipart parser
(:mod:`.multipart`) and what stores each part in the spool (:mod:`.receiver`)."""
