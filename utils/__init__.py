"""Tooling for people (figures, image io); not imported by the ``wrc`` library."""
