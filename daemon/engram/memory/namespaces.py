"""Namespaces: who sees which memories.

Every memory belongs to one namespace. A request that names none works in its caller's own,
``uid:<uid>`` (the uid the kernel reports for the socket peer), so two users of one machine never
see each other's memories. Naming another namespace is for the daemon's owner (its uid) and
root; anyone else gets -32001 ``namespace_denied``. The policy engine may widen this later by
replacing :meth:`NamespacePolicy.allowed`.
"""

from __future__ import annotations

import os

from engram.errors import PolicyDenied
from engram.principal import Principal

__all__ = ["NamespacePolicy", "default_namespace"]


def default_namespace(principal: Principal) -> str:
    return f"uid:{principal.uid}"


class NamespacePolicy:
    def __init__(self, owner_uid: int | None = None) -> None:
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid

    def allowed(self, principal: Principal, namespace: str) -> bool:
        return namespace == default_namespace(principal) or principal.uid in (self.owner_uid, 0)

    def resolve(self, principal: Principal, requested: str | None) -> str:
        namespace = requested or default_namespace(principal)
        if not self.allowed(principal, namespace):
            raise PolicyDenied(
                f"namespace {namespace!r} belongs to someone else; uid {principal.uid} may use only "
                f"{default_namespace(principal)!r}",
                reason="namespace_denied",
                namespace=namespace,
                uid=principal.uid,
            )
        return namespace
