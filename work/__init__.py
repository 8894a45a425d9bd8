"""Long-running work kept for polling: documents (a vision job per page) and batches of the
OpenAI Batch API, their files and their status records, and the bookkeeping job functions
that fan them out and collect their results. Imported by the API and run by any worker."""
