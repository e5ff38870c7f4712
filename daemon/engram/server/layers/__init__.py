"""The generic layers of the request chain (:mod:`engram.server.chain`), one job each.

* :mod:`.events` — ``request.received`` and ``request.completed`` on the bus, the debug log line;
* :mod:`.tracing` — the OpenTelemetry server span of the request, its trace id;
* :mod:`.metrics` — requests in flight, requests by method and outcome, their duration;
* :mod:`.errors` — anything but an RPCError becomes -32603, logged with its traceback;
* :mod:`.access` — an unknown method is -32601; the guards (the policy) decide who may call what;
* :mod:`.params` — the params, validated by the method's model;
* :mod:`.deadline` — the handler under the method's timeout or ``server.request_timeout``.

Layers that belong to a part live with it: the audit record in :mod:`engram.audit.layer`, the
foreground-activity count in :mod:`engram.sleep.activity`. The order is the composition root's
(:mod:`engram.runtime`).
"""
