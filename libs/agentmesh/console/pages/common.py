"""Helpers every page module uses: paging through list RPCs, form posts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from agentmesh.console.views import render

#: Largest page any list RPC of the mesh accepts (the saga and task lists' bound).
PAGE_SIZE = 500


async def collect(
    call: Callable[..., Awaitable[Any]], items: str, *, limit: int, **fields: Any
) -> tuple[list[Any], bool]:
    """Items of a paged list RPC, following next_page_token up to `limit`.

    Args:
        call: a generated list method (`client.list_sagas`, ...).
        items: the response's repeated field (`"sagas"`).
        limit: most items read.
        fields: the request's other fields, and `metadata`.

    Returns:
        (items, True when more were left unread).

    Raises:
        AgentMeshError: the RPC's status.
    """
    out: list[Any] = []
    token = ""
    while len(out) < limit:
        resp = await call(page_size=min(PAGE_SIZE, limit - len(out)), page_token=token, **fields)
        batch = list(getattr(resp, items))
        out.extend(batch)
        token = resp.next_page_token
        if not token or not batch:
            return out, False
    return out[:limit], True


def cross_site(request: Request) -> Response | None:
    """The refusal of a form post from another site, None for a same-origin one.

    Browsers send `Origin` (or at least `Referer`) with a form post; a post
    whose origin is another host is a forged request on the caller's token.
    """
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    if not origin or origin == "null":
        return None  # a non-browser client (curl) or a privacy mode: nothing to forge
    if urlsplit(origin).netloc == request.headers.get("host", ""):
        return None
    return render(
        request, "status.html",
        {"code": "PERMISSION_DENIED", "reason": "CROSS_SITE_POST", "violations": [],
         "message": f"form posted from {origin!r}, not from this console"},
        status_code=403,
    )


def see_other(url: str) -> RedirectResponse:
    """303 to `url`: after a post, the browser GETs the page again."""
    return RedirectResponse(url, status_code=303)


def enum_value(enum: Any, prefix: str, name: str) -> int | None:
    """The number of `prefix + name` in `enum` (a proto EnumTypeWrapper), None if
    `name` is empty or unknown (a filter left open or a hand-made URL)."""
    if not name:
        return None
    try:
        return int(enum.Value(prefix + name.upper()))
    except ValueError:
        return None


def enum_choices(enum: Any, prefix: str) -> list[str]:
    """The value names of `enum` without `prefix` and without UNSPECIFIED."""
    return [n.removeprefix(prefix) for n in enum.keys() if not n.endswith("_UNSPECIFIED")]
