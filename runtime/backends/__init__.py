"""Backends: small runners behind one interface (see base.Backend)."""
