"""Traefik, the node's edge: static configuration (static.py) and its file-provider routes (routing.py)."""
