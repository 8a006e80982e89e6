"""Collectors: plugins that measure one thing each and know nothing of each other."""
