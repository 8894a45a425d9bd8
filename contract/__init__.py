"""The contract between the API and the workers, imported by every process: settings, Redis
keys and queue names, the shared context, job payloads, enqueueing and cancelling, the
token-stream protocol, the worker registry, model references, manager commands and the rule
for a job's outcome. Imports redis, rq and pydantic only — never Flask, never mlx."""
