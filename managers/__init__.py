"""Managers: one process per machine and venv that starts and supervises the workers of one
kind, taking load commands from Redis, and the placement rule they share."""
