"""Sleep: background consolidation of memory while nobody needs the daemon (issue #8)."""
