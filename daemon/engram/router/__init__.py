"""The HRM router: System 1 (pattern cache, fast target), System 2 (slow target), the cascade
between them, and a small assessor that learns when the slow path is needed."""
