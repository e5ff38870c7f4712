"""``engram bench``: each capability measured through engram and a baseline in one run."""
