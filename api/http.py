"""HTTP plumbing of the REST API: A1111-style JSON errors for everything our routes raise,
a cap on the body before it is read into memory, NaN/Infinity refused with a sentence, and
HTTP Basic login (--api-auth, or the app's own login when it has one)."""
from __future__ import annotations

import json
import logging
import secrets
from http import HTTPStatus

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.exceptions import HTTPException

from pipelines.core.errors import StudioError

from .errors import ApiError

log = logging.getLogger("sd-studio.api")

MAX_BODY_BYTES = 100 * 1024 * 1024  # init image + mask + ControlNet images, base64
ANONYMOUS = "api"  # without a login every API client is one caller, as in A1111


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A1111's error shape ({error, detail, body, errors}), with a sentence, never a class name."""
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return JSONResponse({"error": reason, "detail": message, "body": "", "errors": message},
                        status_code=status, headers=headers)


def _validation_message(errors: list) -> str:
    parts = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        location = ".".join(str(p) for p in error.get("loc", ())[1:]) or "body"
        text = str(error.get("msg", "invalid"))[:200]
        parts.append(f"{location}: {text}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "Invalid request: " + "; ".join(parts) + more + "."


def _reject_constant(name: str):
    raise ValueError(name)


async def _read_capped(request: Request) -> bytes | JSONResponse:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return error_response(413, f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return error_response(413, f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette reuses it when FastAPI parses the JSON
    return body


class ApiRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request):
            if request.method in ("POST", "PUT", "PATCH"):
                body = await _read_capped(request)
                if isinstance(body, JSONResponse):
                    return body
                try:
                    json.loads(body or b"null", parse_constant=_reject_constant)
                except ValueError as error:
                    if str(error) in ("NaN", "Infinity", "-Infinity"):
                        return error_response(422, f"{error} is not a number JSON allows: send a finite number.")
                    # other decoding errors: FastAPI's validation reports them
            try:
                return await handler(request)
            except ApiError as error:
                return error_response(error.status, error.message, error.headers)
            except RequestValidationError as error:
                return error_response(422, _validation_message(error.errors()))
            except StudioError as error:
                return error_response(422, str(error))
            except HTTPException as error:
                return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))
            except Exception as error:  # noqa: BLE001 — the client gets a sentence, the log the details
                log.error("API request %s failed", request.url.path, exc_info=error)
                return error_response(500, "The server failed to process this request; the server log has the details.")

        return guarded


def parse_accounts(text: str) -> list[tuple[str, str]]:
    """A1111's --api-auth: 'user:pass' or 'user1:pass1,user2:pass2'."""
    accounts = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        user, sep, password = item.partition(":")
        if not sep or not user:
            raise ValueError("--api-auth takes user:password pairs separated by commas")
        accounts.append((user, password))
    return accounts


def caller_dependency(settings):
    """The caller's name (their login), checked against --api-auth and the app's own login
    (Settings.auth, when the app has one); without either, every client is one caller."""
    accounts = parse_accounts(getattr(settings, "api_auth", "")) + [tuple(a) for a in (getattr(settings, "auth", None) or ())]
    basic = HTTPBasic(auto_error=False)

    def caller(credentials: HTTPBasicCredentials | None = Depends(basic)) -> str:
        if not accounts:
            return ANONYMOUS
        if credentials is not None:
            given = (credentials.username.encode(), credentials.password.encode())
            for user, password in accounts:
                # compare every account in full: the time taken says nothing about which matched
                user_ok = secrets.compare_digest(given[0], user.encode())
                if user_ok & secrets.compare_digest(given[1], password.encode()):
                    return credentials.username
        raise ApiError(401, "Incorrect username or password.", {"WWW-Authenticate": "Basic"})

    return caller
