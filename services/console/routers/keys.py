"""API key pages (admin role): the keys with their usage, create (the secret is shown on the reply page,
once, never stored by the console nor put in a URL), revoke."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from services.console.pages import render
from services.console.security import Admin
from services.console.serving_keys import SCOPES, KeyForm, KeysServing
from services.console.state import Console

router = APIRouter(prefix="/keys")


def serving(console: Console) -> KeysServing:
    settings = console.settings
    return KeysServing(
        settings.gateway_url, settings.gateway_admin_token.get_secret_value(), settings.rpc_timeout_seconds
    )


def _keys_page(request: Request, keys: KeysServing, created: dict[str, object] | None = None) -> Response:
    context = {"configured": keys.configured, "scopes": SCOPES, "created": created, "listing": None}
    if keys.configured:
        context["listing"] = keys.listing()
    response = render(request, "keys.html", context)
    if created:
        response.headers["Cache-Control"] = "no-store"  # the page holds a secret: no copy in any cache
    return response


@router.get("")
def list_keys(request: Request, console: Console, _: Admin) -> Response:
    return _keys_page(request, serving(console))


@router.post("")
def create_key(request: Request, console: Console, _: Admin, form: Annotated[KeyForm, Form()]) -> Response:
    keys = serving(console)
    created = keys.create(form)
    return _keys_page(request, keys, created)


@router.post("/{key_id}/revoke")
def revoke_key(console: Console, _: Admin, key_id: str) -> Response:
    serving(console).revoke(key_id)
    return RedirectResponse("/keys", status_code=303)
