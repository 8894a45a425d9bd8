"""gunicorn settings: `gunicorn -c api/gunicorn_conf.py 'api:create_app()'`.

gevent because every streaming client holds a request open for the whole generation:
FACTS.md measured 1,000 open SSE streams in 164 MB with gevent against 220 MB for gthread.
"""

from contract.settings import Settings

_settings = Settings()

bind = f"{_settings.host}:{_settings.api_port}"
worker_class = "gevent"
workers = _settings.web_concurrency
worker_connections = 1000
timeout = 60
graceful_timeout = 20
keepalive = 5
# gunicorn 27 shares ~/.gunicorn/gunicorn.ctl between instances; two servers would clash.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = "info"
# gunicorn's default format plus the request id (api/request_id.py), read from the response
# header; the Authorization header is never logged.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms %({x-request-id}o)s'


def when_ready(server):
    url = f"http://{_settings.host}:{_settings.api_port}"
    server.log.info(
        "\n\n  MLX Inference Server is listening on %s/v1 (OpenAI-compatible)\n"
        "  Try:\n    curl %s/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        '      -d \'{"model": "%s", "temperature": 0, '
        '"messages": [{"role": "user", "content": "What is the capital of France?"}]}\'\n',
        url,
        url,
        _settings.text_model,
    )
    # imported here: importing Flask before gevent patches ssl warns
    from api.apikeys import describe_api_access
    from api.auth import describe_admin_access

    server.log.info("  %s", describe_admin_access(_settings))
    level, line = describe_api_access(_settings)
    server.log.log(level, "  %s", line)
