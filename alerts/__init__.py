"""Alerting: the health state machine and the hooks it feeds (ntfy, Uptime Kuma)."""
