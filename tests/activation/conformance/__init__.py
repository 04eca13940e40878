"""Local stand-ins for the platforms Crumb pushes segments to, over real HTTP on loopback.

Each one checks requests the way the platform documents them and rejects anything off-spec, can
be scripted to answer 429 (with Retry-After), 5xx and per-item failures, and records exactly what
it accepted so tests can assert what reached the "platform".
"""
