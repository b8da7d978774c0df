#!/usr/bin/env python
"""The local dev node: `start` (default), `stop`, `status`.

    make dev        # = .venv/bin/python scripts/dev.py start
    source .dev/env # OPENAI_BASE_URL and OPENAI_API_KEY for the official openai client
"""

from __future__ import annotations

import sys

from scripts.devnode import node


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "start"
    if command == "start":
        info = node.start()
        embeddings = f"""
  curl -s {info['base_url']}/embeddings \\
    -H "Authorization: Bearer {info['key']}" -H "Content-Type: application/json" \\
    -d '{{"model": "{info['embedding_model']}", "input": "Hello!"}}'
""" if info["embedding_model"] else ""
        print(f"""
llm-node dev node is up.
  API key:   {info['key']}
  Base URL:  {info['base_url']}
  Env file:  {info['env_file']}   (source it for the openai client)

  curl -s {info['base_url']}/chat/completions \\
    -H "Authorization: Bearer {info['key']}" -H "Content-Type: application/json" \\
    -d '{{"model": "{info['model']}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 16}}'
{embeddings}
Stop it with: make dev-stop""")
        return 0
    if command == "stop":
        stopped = node.stop()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if command == "status":
        for name, pid in node.status().items():
            print(f"{name:14} {f'running (pid {pid})' if pid else 'stopped'}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
