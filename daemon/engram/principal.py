"""Who is asking: the identity of a client, as the kernel reports it for the socket's peer."""

from __future__ import annotations

import pwd

from pydantic import BaseModel, ConfigDict


class Principal(BaseModel):
    """A connected client, from SO_PEERCRED (Linux) or getpeereid/LOCAL_PEERCRED (macOS).

    ``uid``, ``gid`` and ``pid`` come from the kernel, not from the client, so they can be trusted
    for access decisions; ``user`` is looked up from ``uid``. ``client`` is the exception: a name
    the client declared for itself (``system.hello``), unverified, so policies may use it only to
    narrow what the verified identity may do.
    """

    model_config = ConfigDict(frozen=True)

    uid: int
    gid: int
    pid: int | None = None
    user: str | None = None
    client: str | None = None

    @classmethod
    def from_ids(cls, uid: int, gid: int, pid: int | None) -> "Principal":
        try:
            user: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = None
        return cls(uid=uid, gid=gid, pid=pid, user=user)
