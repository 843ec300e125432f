"""Delivery of alerts (I/O): SMTP via smtplib, and a Slack-compatible webhook via httpx."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage

import httpx


class DeliveryError(RuntimeError):
    """An alert could not be delivered now; retrying later may succeed."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    starttls: bool = False
    user: str = ""
    password: str = field(default="", repr=False)
    timeout_s: float = 10.0


def send_email(config: SmtpConfig, message: EmailMessage) -> None:
    """Deliver one message.

    Raises:
        DeliveryError: the server is unreachable, refused the login or a recipient,
            or dropped the connection.
    """
    try:
        with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
            if config.starttls:
                smtp.starttls()
            if config.user:
                smtp.login(config.user, config.password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"smtp {config.host}:{config.port}: {exc}") from exc


def post_webhook(url: str, payload: dict, timeout_s: float = 5.0) -> None:
    """POST the payload as JSON.

    Raises:
        DeliveryError: connection failure or a non-2xx answer.
    """
    try:
        resp = httpx.post(url, json=payload, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook: {exc}") from exc
    if resp.status_code >= 300:
        raise DeliveryError(f"webhook answered {resp.status_code}: {resp.text[:200]}")
