"""The ``reverie`` command line."""
