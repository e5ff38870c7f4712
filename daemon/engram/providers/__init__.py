"""Calling providers safely: timeouts, circuit breakers, fallback chains, policy egress.

``service.Providers`` is the part; ``breaker``, ``settings``, ``events`` and the built-in ``onnx``
provider are imported from their modules (the settings are read by ``engram.config``, so this
package imports nothing at its top).
"""
