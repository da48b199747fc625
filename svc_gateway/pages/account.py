"""The shopper's account: registering, logging in and out, the profile and the password."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiMapping

from shopkit.client_address import client_behind_hops
from shopkit.errors import UpstreamUnavailable
from shopkit.keys import SETTINGS
from svc_gateway.pages.access import Redirect, local_path, require_user, session_of
from svc_gateway.pages.backend import BackendRefused, call_backend, call_backend_or_raise
from svc_gateway.pages.cart import merge_guest_cart
from svc_gateway.pages.forms import ShowForm, submit_form
from svc_gateway.pages.rendering import render

REGISTER_FIELDS = {
    "email": "Email",
    "password": "Password",
    "password_confirm": "Password again",
    "first_name": "First name",
    "last_name": "Last name",
}
LOGIN_FIELDS = {"email": "Email", "password": "Password"}
PROFILE_FIELDS = {"first_name": "First name", "last_name": "Last name"}
PASSWORD_FIELDS = {
    "current_password": "Current password",
    "password": "New password",
    "password_confirm": "New password again",
}


def _next_of(data: MultiMapping[Any]) -> str:
    return local_path(data.get("next"), "/")


def _called(user: dict[str, Any]) -> str:
    """What the shop calls a shopper in a greeting."""
    return user["first_name"] or user["email"]


def _over_the_form(refusal: BackendRefused) -> dict[str, str]:
    return {"_form": refusal.message}


def _account_form(request: web.Request, template: str) -> web.Response:
    """The login or registration form; someone already logged in goes on to ``next``."""
    next_path = _next_of(request.query)
    if session_of(request).user is not None:
        raise Redirect(next_path)
    return render(request, template, {"values": {}, "errors": {}, "next": next_path})


def _account_form_again(
    request: web.Request, template: str, values: dict[str, str], next_path: str
) -> ShowForm:
    """The login or registration form as it was sent (passwords left out), with the errors."""

    async def show(errors: dict[str, str], status: int) -> web.Response:
        context = {"values": values, "errors": errors, "next": next_path}
        return render(request, template, context, status=status)

    return show


def _shopper_address(request: web.Request) -> dict[str, str]:
    """Headers naming the shopper's address to the user service, which limits logins by it
    and remembers where each account registered and logged in (README "Login limits")."""
    return {
        "X-Forwarded-For": client_behind_hops(request, request.app[SETTINGS].trusted_proxy_hops)
    }


async def register_page(request: web.Request) -> web.Response:
    return _account_form(request, "register.html")


async def register(request: web.Request) -> web.Response:
    form = await request.post()
    values = {name: str(form.get(name, "")) for name in ("email", "first_name", "last_name")}
    password = str(form.get("password", ""))
    next_path = _next_of(form)
    show_form = _account_form_again(request, "register.html", values, next_path)
    if password != form.get("password_confirm", ""):
        return await show_form({"password_confirm": "The two passwords are not the same."}, 400)
    return await submit_form(
        request,
        "user",
        "POST",
        "/api/users/register",
        json={**values, "password": password},
        # The shopper's address, not ours: it becomes a known address of the account.
        headers=_shopper_address(request),
        as_shopper=False,
        show_form=show_form,
        fields=REGISTER_FIELDS,
        shown_refusals={
            409: lambda _: {"email": "An account with this email already exists. Log in instead?"}
        },
        logs_in=True,
        success=lambda data: f"Welcome, {_called(data['user'])}! Your account is ready.",
        then=lambda: merge_guest_cart(request),
        redirect_to=next_path,
    )


async def login_page(request: web.Request) -> web.Response:
    return _account_form(request, "login.html")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    values = {"email": str(form.get("email", ""))}
    next_path = _next_of(form)
    return await submit_form(
        request,
        "user",
        "POST",
        "/api/users/login",
        json={"email": values["email"], "password": str(form.get("password", ""))},
        # The shopper's address, not ours: the user service limits failed logins by it.
        headers=_shopper_address(request),
        as_shopper=False,
        show_form=_account_form_again(request, "login.html", values, next_path),
        fields=LOGIN_FIELDS,
        # Over the form, in the same words for an unknown email and a bad password.
        shown_refusals={401: _over_the_form, 429: _over_the_form},
        logs_in=True,
        success=lambda data: f"Welcome back, {_called(data['user'])}.",
        then=lambda: merge_guest_cart(request),
        redirect_to=next_path,
    )


async def logout(request: web.Request) -> web.Response:
    """Log out everywhere: the user service ends every token of this user (so a copy of the
    cookie stops working too), then this browser forgets its own."""
    session = session_of(request)
    if session.user is not None:
        try:
            reply = await call_backend(request, "user", "POST", "/api/users/logout")
            ended = reply.status in (200, 401)  # 401: that token had already ended
        except UpstreamUnavailable:
            ended = False
        session.log_out()
        session.end_guest_cart()  # the next guest on this browser starts a cart of its own
        if ended:
            session.flash("info", "You have logged out. See you soon!")
        else:
            session.flash(
                "error",
                "You are logged out in this browser, but your other sessions could not be "
                "ended right now: log out again later, or change your password.",
            )
    raise Redirect("/")


async def _profile_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    password_errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    profile = (await call_backend_or_raise(request, "user", "GET", "/api/users/profile"))["data"]
    context = {
        "profile": profile,
        "values": values or profile,
        "errors": errors or {},
        "password_errors": password_errors or {},
    }
    return render(request, "profile.html", context, status=status)


async def profile_page(request: web.Request) -> web.Response:
    require_user(request, "Log in to see your profile.")
    return await _profile_page(request)


async def update_profile(request: web.Request) -> web.Response:
    require_user(request)
    form = await request.post()
    values = {name: str(form.get(name, "")) for name in PROFILE_FIELDS}
    return await submit_form(
        request,
        "user",
        "PUT",
        "/api/users/profile",
        json=values,
        show_form=lambda errors, status: _profile_page(
            request, values=values, errors=errors, status=status
        ),
        fields=PROFILE_FIELDS,
        success=lambda _: "Your name is saved.",
        redirect_to="/profile",
    )


async def change_password(request: web.Request) -> web.Response:
    require_user(request)
    form = await request.post()
    current, new = str(form.get("current_password", "")), str(form.get("password", ""))
    errors: dict[str, str] = {}
    if not current:
        errors["current_password"] = "Enter your current password."
    if new != form.get("password_confirm", ""):
        errors["password_confirm"] = "The two new passwords are not the same."
    if errors:
        return await _profile_page(request, password_errors=errors, status=400)
    return await submit_form(
        request,
        "user",
        "PUT",
        "/api/users/profile",
        json={"current_password": current, "password": new},
        show_form=lambda errors, status: _profile_page(
            request, password_errors=errors, status=status
        ),
        fields=PASSWORD_FIELDS,
        shown_refusals={403: lambda _: {"current_password": "This is not your current password."}},
        # Every other session just ended; this browser goes on with the fresh token.
        logs_in=True,
        success=lambda _: "Your password is changed.",
        redirect_to="/profile",
    )
