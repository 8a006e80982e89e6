"""Sinks: plugins that deliver spooled heartbeats somewhere. They never import collectors."""
