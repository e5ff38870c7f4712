"""Tasks: plans of tool calls that the daemon runs in the background and keeps across restarts."""
