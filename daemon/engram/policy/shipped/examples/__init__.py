"""Commented example policy files (package data; ``policies/examples/`` mirrors them)."""
