"""Sign in with an operator token, sign out. The sign-in form is protected by a double-submit cookie:
there is no session yet whose CSRF token it could carry."""

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from services.console.accounts import csrf_matches
from services.console.pages import render
from services.console.security import SESSION_COOKIE, SignedIn
from services.console.state import Console

router = APIRouter()
LOGIN_CSRF_COOKIE = "ft_console_login_csrf"


def _safe_next(target: str) -> str:
    # Only paths on this site: an absolute or protocol-relative URL would make sign-in an open redirect.
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _login_page(request: Request, next_path: str, error: str = "", status_code: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", {"next": next_path, "login_csrf": token, "error": error}, status_code
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict")
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    return _login_page(request, _safe_next(next))


@router.post("/login")
def login(
    request: Request,
    console: Console,
    token: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    if not csrf_matches(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token):
        return _login_page(request, _safe_next(next), "The form expired: sign in again.", 403)
    opened = console.accounts.sign_in(token)
    if opened is None:
        return _login_page(request, _safe_next(next), "That token is unknown or revoked.", 401)
    _, cookie = opened
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(console.settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=console.settings.secure_cookies,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, console: Console, _: SignedIn) -> Response:
    console.accounts.sign_out(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/")
def home(_: SignedIn) -> Response:
    return RedirectResponse("/datasets", status_code=303)
