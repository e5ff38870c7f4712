"""Local-first policies: who may call what, on which namespace, and which provider may see which data.

* :mod:`.model` — the policy file format (pydantic); :mod:`.loader` — TOML in, problems with
  file, line and key out;
* :mod:`.engine` — decisions (deny overrides, obligations, privacy mode, egress);
* :mod:`.redact` — the redact obligation; :mod:`.ratelimit` — token buckets for egress limits;
* :mod:`.service` — the Policy part: the request chain's method guard, reload, ``policy.*`` methods.

See docs/policy.md.
"""
