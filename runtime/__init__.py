"""The worker runtime every worker kind shares: the batching rq worker (admission), the
engine thread that owns the model, step writes, stop strings, the heartbeat and the worker
process and its command line. Never imports Flask or mlx: each worker kind brings its engine."""
