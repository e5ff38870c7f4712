"""Namespaces: who sees which memories.

Every memory belongs to one namespace. A request that names none works in its caller's own,
``uid:<uid>`` (the uid the kernel reports for the socket peer), so two users of one machine never
see each other's memories. Naming another namespace is for the daemon's owner (its uid) and
root; anyone else gets -32001 ``namespace_denied``. Forgetting a whole namespace is an admin
action, owner-only by default. In the daemon the policy decides both: it is the
:class:`NamespaceDecider` handed to memory when it is made.
"""

from __future__ import annotations

import os
from typing import Protocol

from engram.errors import PolicyDenied
from engram.principal import Principal

__all__ = ["NamespaceDecider", "NamespacePolicy", "default_namespace"]


def default_namespace(principal: Principal) -> str:
    return f"uid:{principal.uid}"


class NamespaceDecider(Protocol):
    """What decides namespaces in the daemon (engram.policy.service.Policy)."""

    def namespace_allowed(self, principal: Principal, method: str | None, namespace: str) -> bool: ...

    def admin_action_allowed(self, principal: Principal, action: str) -> bool: ...


class NamespacePolicy:
    def __init__(self, owner_uid: int | None = None, decider: NamespaceDecider | None = None) -> None:
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self._decider = decider

    def allowed(self, principal: Principal, method: str | None, namespace: str) -> bool:
        """May ``principal``, calling ``method`` (None: no request), use ``namespace``?"""
        if self._decider is not None:
            return self._decider.namespace_allowed(principal, method, namespace)
        return namespace == default_namespace(principal) or principal.uid in (self.owner_uid, 0)

    def admin_allowed(self, principal: Principal, action: str) -> bool:
        """May ``principal`` take an admin action (``memory.forget_all``)? Without a decider,
        the owner and root only."""
        if self._decider is not None:
            return self._decider.admin_action_allowed(principal, action)
        return principal.uid in (self.owner_uid, 0)

    def require_admin(self, principal: Principal, action: str) -> None:
        if not self.admin_allowed(principal, action):
            raise PolicyDenied(
                f"{action} may only be done by the daemon's owner unless a policy grants it",
                reason="policy_denied",
                action=action,
                uid=principal.uid,
            )

    def resolve(self, principal: Principal, method: str | None, requested: str | None) -> str:
        namespace = requested or default_namespace(principal)
        if not self.allowed(principal, method, namespace):
            raise PolicyDenied(
                f"namespace {namespace!r} belongs to someone else; uid {principal.uid} may use only "
                f"{default_namespace(principal)!r}",
                reason="namespace_denied",
                namespace=namespace,
                uid=principal.uid,
            )
        return namespace
