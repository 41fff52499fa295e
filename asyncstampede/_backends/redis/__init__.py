"""The Redis backend: commands and scripts, the request connection, the lock watchers.

``backend`` sends every command, ``scripts`` holds the Lua, ``mux`` is the
auto-pipelined request connection, ``listener`` wakes waiters (client
tracking), ``errors`` maps every failure, ``client`` checks and builds
clients, and ``wire`` is the only module that touches redis-py internals.
"""
