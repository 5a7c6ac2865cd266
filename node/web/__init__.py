"""``ainode web``: the dashboard (server-rendered pages), its JSON API, ``/health`` and ``/metrics``.

See ``docs/dashboard.md``. Everything that shows studies needs the configured token (Bearer header for the API,
a signed session cookie for the pages); ``/health`` and ``/metrics`` are open and carry no patient data.
"""
