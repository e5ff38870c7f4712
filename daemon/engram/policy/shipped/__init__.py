"""Policy files shipped with engram (package data; ``policies/`` at the top of a checkout mirrors them)."""
