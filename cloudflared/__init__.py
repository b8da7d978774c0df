"""cloudflared, the optional Cloudflare tunnel in front of Traefik (config.yml, render.py)."""
