"""tests/unit: the gateway's pure parts, in-process only -- no services, no network, no
subprocess (`make unit`, seconds). Nothing here may use the session fixtures of tests/conftest.py
that start PostgreSQL, Redis, vLLM or a gateway."""
