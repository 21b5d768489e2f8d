"""The bundle contract: the manifest, opening and verifying a bundle directory, and its summary (glsnet info)."""
