"""The contract between the API and the workers: settings, Redis keys and queues, job
payloads, the token-stream protocol, cancel flags, the worker registry and the model worker
base. Imports redis, rq and pydantic only — never Flask, never mlx."""
