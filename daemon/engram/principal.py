"""Who is asking: the identity of a client, as the kernel reports it for the socket's peer."""

from __future__ import annotations

import pwd

from pydantic import BaseModel, ConfigDict, Field


class Principal(BaseModel):
    """A connected client, from SO_PEERCRED (Linux) or getpeereid/LOCAL_PEERCRED (macOS).

    ``uid``, ``gid`` and ``pid`` come from the kernel, not from the client, so they can be trusted
    for access decisions; ``user`` is looked up from ``uid``. ``client`` is the exception: a name
    the client declared for itself (``system.hello``), unverified, so policies may use it only to
    narrow what the verified identity may do.

    A caller of the HTTP gateway has no peer credentials: the bearer token it presented stands for
    them. Its principal is the uid (and that user's gid) the token was created for, ``pid`` None,
    ``via`` "http" and ``token`` the token's name, so that logs and the audit log say which token
    acted. Both stay unset (and out of dumps) for the socket's clients.
    """

    model_config = ConfigDict(frozen=True)

    uid: int
    gid: int
    pid: int | None = None
    user: str | None = None
    client: str | None = None
    via: str | None = Field(default=None, exclude_if=lambda value: value is None)
    token: str | None = Field(default=None, exclude_if=lambda value: value is None)

    @classmethod
    def from_ids(cls, uid: int, gid: int, pid: int | None) -> "Principal":
        try:
            user: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = None
        return cls(uid=uid, gid=gid, pid=pid, user=user)
