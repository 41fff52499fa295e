"""Stores: the `Backend` protocol (``base``), its messages, embedded (``memory``) and Redis."""
