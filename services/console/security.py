"""Who is asking: the session cookie, the CSRF token on every state-changing request, and the admin role.

CSRF: each session has its own random token; pages put it in forms (field `csrf_token`) and console.js sends
it as the X-CSRF-Token header. A POST without the session's token is refused before its handler runs."""

from typing import Annotated

from fastapi import Depends, Request

from services.console.accounts import Session, csrf_matches
from services.console.state import Console

SESSION_COOKIE = "ft_console_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


class SignInRequired(Exception):
    """No live session: pages redirect to the sign-in page, API calls get 401."""


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def current_session(request: Request, console: Console) -> Session:
    cookie = request.cookies.get(SESSION_COOKIE)
    session = console.accounts.session(cookie) if cookie else None
    if session is None:
        raise SignInRequired()
    request.state.session = session
    return session


async def checked_session(request: Request, console: Console) -> Session:
    """The session, and for anything but GET/HEAD the proof that the request came from its own pages."""
    session = current_session(request, console)
    if request.method not in ("GET", "HEAD"):
        given = request.headers.get(CSRF_HEADER)
        content_type = request.headers.get("content-type", "")
        if given is None and content_type.startswith("application/x-www-form-urlencoded"):
            # Small forms only: the body is cached, so the handler still reads it. Uploads send the header.
            given = str((await request.form()).get(CSRF_FIELD) or "")
        if not csrf_matches(session.csrf_token, given):
            raise Forbidden("the request has no valid CSRF token: reload the page and try again")
    return session


def admin_session(session: Annotated[Session, Depends(checked_session)]) -> Session:
    if not session.operator.is_admin:
        raise Forbidden(f"{session.operator.name} is a read-only operator: this needs the admin role")
    return session


SignedIn = Annotated[Session, Depends(checked_session)]
Admin = Annotated[Session, Depends(admin_session)]
