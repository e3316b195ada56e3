"""Bearer-token checks and JSON error replies for the HTTP API's /api/... routes. Invariant: a
handler made with `Gate.guard(scope)` runs only for a token that holds `scope` (401 without a
valid token, 403 with one that lacks the scope); every error body is JSON naming the problem."""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

from aiohttp import web

from mta.auth.tokens import Token, TokenDB

log = logging.getLogger("mta.http")

Handler = Callable[[web.Request, Token], Awaitable[web.StreamResponse]]


def error(status: int, text: str, **fields) -> web.Response:
    """{"error": text, ...fields} with `status`."""
    return web.json_response({"error": text, **fields}, status=status)


class Gate:
    def __init__(self, tokens: TokenDB):
        self.tokens = tokens

    def check(self, request: web.Request, scope: str) -> Token | web.Response:
        """The request's token when it holds `scope`, else the 401/403 reply to send."""
        header = request.headers.get("Authorization", "")
        kind, _, presented = header.partition(" ")
        presented = presented.strip()
        if kind.lower() != "bearer" or not presented:
            resp = error(401, "a bearer token is required (Authorization: Bearer <token>; see mta http token add)")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="mta"'
            return resp
        token = self.tokens.lookup(presented)
        if token is None:
            log.warning("http %s %s from %s: unknown token", request.method, request.path, request.remote)
            resp = error(401, "unknown or revoked token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="mta", error="invalid_token"'
            return resp
        if scope not in token.scopes:
            return error(403, f"token {token.name!r} lacks the {scope!r} scope",
                         scopes=list(token.scopes))
        return token

    def guard(self, scope: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            token = self.check(request, scope)
            if isinstance(token, web.Response):
                return token
            return await handler(request, token)

        return guarded


async def json_body(request: web.Request) -> object | web.Response:
    """The request's JSON document, or the reply to send: 413 over the application's
    client_max_size (http.max_body), 400 for bad JSON. The content type is not checked
    (curl -d sends form-encoded): the body is what counts."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:  # its text gives both sizes
        return error(413, f"request body over http.max_body: {e.text}")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        return error(400, "body: not UTF-8")
    except ValueError as e:
        return error(400, f"body: invalid JSON: {e}")
