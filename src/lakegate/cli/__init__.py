"""The ``lakegate`` command line."""
