"""The ``protlm`` command line (thin: parses arguments, calls library code)."""
