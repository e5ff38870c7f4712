"""Types on the wire that several parts' APIs share; below the parts, importing none of them.

- :mod:`engram.wire.tensors`: tensors in params and results (the ``dtype``/``shape``/``b64`` or
  ``data`` format) and their codec.
"""
