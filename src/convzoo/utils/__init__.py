"""Infrastructure every layer may use: atomic file writes, digests and downloads (:mod:`.fileio`), text
tables (:mod:`.tables`) and typed values from JSON or command-line text (:mod:`.typed`)."""
