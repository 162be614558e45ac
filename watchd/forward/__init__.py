"""Forwarding events to NATS JetStream: `[[forward]]` in the configuration.

Each forwarder runs in a child process of its own (`child`, started and restarted by the
daemon's `supervise`), which reads the daemon's events over its Unix socket like any other
subscriber (`source`) and publishes them with pipelined acknowledgements (`publisher`).
`subjects` maps hosts and watches to subject tokens. Nothing here imports the NATS client
library but `publisher`, so the daemon runs without it when nothing is forwarded.
"""
