"""Search over whole architectures from the rank files, and export of the choice."""
