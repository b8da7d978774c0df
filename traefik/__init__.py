"""Traefik, the node's edge: static configuration (static.py) and routing labels (routing.py)."""
