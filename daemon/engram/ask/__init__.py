"""The ask part: ``route.ask``, a question answered with the user's memories as context.

It orchestrates three other parts through the interfaces it declares in :mod:`engram.ask.ports`
(memory for context and the exchange, the router for a generate route and the pattern cache, the
providers for the generate chain); runtime.py hands them to it when it makes it.

- :mod:`engram.ask.service`: :class:`~engram.ask.service.Ask`, the ``route.ask`` method.
- :mod:`engram.ask.prompt`: context lines, the prompt and its budget, concept names in a question.
- :mod:`engram.ask.api`: its params and result; :mod:`engram.ask.cli`: ``engram ask``.

Its settings are the ``router.ask`` section of the configuration (:mod:`engram.router.settings`),
where they are checked against the routes.
"""
