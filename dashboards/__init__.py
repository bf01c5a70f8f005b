"""Grafana dashboards as code and assembly reports (later issues)."""
