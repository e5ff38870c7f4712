"""Params and results of ``token.create``, ``token.list`` and ``token.revoke`` (the wire contract)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from engram.server.methods import Params, Result

__all__ = ["TokenCreateParams", "TokenCreated", "TokenInfo", "TokenListResult", "TokenNameParams", "TokenRevokeResult"]

TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TokenCreateParams(Params):
    name: str = Field(pattern=TOKEN_NAME, description="A name for the token, unique among the tokens (letters, digits, . _ -).")
    uid: int | None = Field(
        default=None, ge=0, le=2**32 - 2, description="The user the token acts as: the policy decides for it as for this uid."
    )
    owner: bool = Field(
        default=False, description="Act as the daemon's own user (owner-only methods included); instead of uid."
    )
    expires_in: float | None = Field(
        default=None, gt=0, le=10 * 366 * 86_400, description="Seconds until the token stops working (default: never)."
    )


class TokenNameParams(Params):
    name: str = Field(pattern=TOKEN_NAME, description="The token's name.")


class TokenInfo(BaseModel):
    name: str
    uid: int = Field(description="The user the token acts as.")
    user: str | None = Field(description="That user's name, when the system knows it.")
    created_at: str = Field(description="ISO 8601, UTC.")
    expires_at: str | None = Field(description="ISO 8601, UTC; null: never.")
    expired: bool


class TokenCreated(Result):
    token: str = Field(description="The bearer token. Shown this once: only its SHA-256 is kept.")
    info: TokenInfo


class TokenListResult(Result):
    tokens: list[TokenInfo]


class TokenRevokeResult(Result):
    name: str
    revoked: bool = Field(description="Always true: an unknown name is -32002.")
