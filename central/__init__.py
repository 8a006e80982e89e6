"""What central runs: Grafana dashboards, Prometheus rules and their tests (see docs/central.md)."""
