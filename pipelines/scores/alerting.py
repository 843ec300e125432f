"""What an alert says and whether to send it (pure): severity, cooldown, email, webhook.

Three kinds of alert: an anomalous session (a score result, contract §5), a station
alert event (a station that went silent, keeps failing or delivers less, §5a) and a live
alert (a fault in a charger's telemetry while the car is plugged in, §5b).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Literal

from pipelines.contracts.dates import readable_utc
from pipelines.contracts.live_alert import LiveAlertMessage
from pipelines.contracts.score_result import ScoreResult
from pipelines.contracts.station_alert import StationAlertMessage
from pipelines.data.features import readable_explanation

Severity = Literal["minor", "major", "critical"]


@dataclass(frozen=True)
class SeverityPolicy:
    """Severity from how far the score is above the threshold, as a fraction of it."""

    major_margin: float = 0.05
    critical_margin: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.major_margin <= self.critical_margin:
            raise ValueError("need 0 <= major_margin <= critical_margin, got "
                             f"{self.major_margin} and {self.critical_margin}")


def severity(score: float, threshold: float, policy: SeverityPolicy = SeverityPolicy()) -> Severity:
    """Severity of an anomaly: the score's excess over the threshold, relative to it."""
    excess = (score - threshold) / max(abs(threshold), 1e-9)
    if excess >= policy.critical_margin:
        return "critical"
    if excess >= policy.major_margin:
        return "major"
    return "minor"


def in_cooldown(last_sent_ts: float | None, now_ts: float, cooldown_s: float) -> bool:
    """True while the station's last delivered alert is younger than the cooldown."""
    return last_sent_ts is not None and now_ts - last_sent_ts < cooldown_s


def _when(ts: float | None) -> str:
    return "-" if ts is None else readable_utc(ts)


def alert_subject(result: ScoreResult, level: Severity) -> str:
    return (f"[evguard] {level.upper()} anomaly at station {result.station_id} "
            f"(site {result.site_id})")


def explanation_lines(result: ScoreResult, top_k: int = 5) -> list[str]:
    """One line per top SHAP feature: value against its typical value, and its push; for a
    broken validation rule, the rule."""
    lines = []
    for item in readable_explanation(result.explanation)[:top_k]:
        value, typical = item.get("value"), item.get("typical")
        if item.get("rule"):
            lines.append(f"  {item.get('feature', '?'):<24} {_fmt(value):>10}  "
                         f"breaks the rule: {item['rule']}")
            continue
        contribution = item.get("contribution")
        lines.append(f"  {item.get('feature', '?'):<24} {_fmt(value):>10}  "
                     f"typical {_fmt(typical):>10}  contribution {_fmt(contribution, '+.3f'):>8}")
    return lines or ["  (no explanation in the result)"]


def _fmt(value: object, spec: str = ".3g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def alert_body(result: ScoreResult, level: Severity, dashboard_url: str) -> str:
    """Plain-text body: session key values, score vs threshold, top features, model."""
    kwh = "-" if result.kwh_delivered is None else f"{result.kwh_delivered:.2f} kWh"
    return "\n".join([
        f"evguard flagged a {level} anomaly in an EV charging session.",
        "",
        "Session",
        f"  session ID       {result.session_id}",
        f"  station / space  {result.station_id} / {result.space_id or '-'}",
        f"  site             {result.site_id}",
        f"  connected        {_when(result.connection_ts)}",
        f"  energy           {kwh}",
        "",
        f"Score {result.score:.4f} against threshold {result.threshold:.4f} (higher = worse)",
        "",
        "Top contributing features (value vs typical)",
        *explanation_lines(result),
        "",
        (f"Model {result.model_name} version {result.model_version} "
         f"(features {result.feature_version or '-'}), scored {_when(result.scored_ts)}"),
        "",
        f"Dashboard: {dashboard_url}",
        ("Further anomalies of this station are not emailed during the cooldown; "
         "they are listed on the dashboard."),
    ])


def compose_email(result: ScoreResult, level: Severity, sender: str, recipients: list[str],
                  dashboard_url: str) -> EmailMessage:
    """The alert email of one anomalous result."""
    msg = EmailMessage()
    msg["Subject"] = alert_subject(result, level)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Message-ID"] = make_msgid(domain="evguard")
    msg["X-Evguard-Session"] = result.session_id
    msg["X-Evguard-Model-Version"] = result.model_version
    msg.set_content(alert_body(result, level, dashboard_url))
    return msg


def webhook_payload(result: ScoreResult, level: Severity, dashboard_url: str) -> dict:
    """Slack-compatible JSON (`text` plus one section block) for an incoming webhook."""
    top = ", ".join(f"{e.get('feature')}={_fmt(e.get('value'))} "
                    + (f"(breaks: {e['rule']})" if e.get("rule")
                       else f"(typ {_fmt(e.get('typical'))})")
                    for e in readable_explanation(result.explanation)[:3])
    text = (f"{alert_subject(result, level)}: score {result.score:.3f} > "
            f"{result.threshold:.3f}; session {result.session_id}; {top or 'no explanation'}; "
            f"model v{result.model_version}")
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                    "text": f"{text}\n<{dashboard_url}|dashboard>"}}]}


# ---- station alerts ------------------------------------------------------------
KIND_MEANING = {
    "silent": "no session for longer than its own arrival rate makes plausible",
    "failing": "too many of its last sessions failed (almost no energy, or unreadable)",
    "degraded": "it delivers persistently less power than its own history",
}


def station_alert_subject(event: StationAlertMessage) -> str:
    """Names the station, its site and the kind; a closing event says it recovered."""
    where = f"station {event.station_id} (site {event.site_id})"
    if event.is_open:
        return f"[evguard] {event.kind.upper()} {where}"
    return f"[evguard] RECOVERED {where}: no longer {event.kind}"


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _metric_lines(metrics: dict[str, float]) -> list[str]:
    return [f"  {name:<24} {_fmt(value):>10}" for name, value in sorted(metrics.items())]


def station_alert_body(event: StationAlertMessage, dashboard_url: str) -> str:
    """Plain-text body: what is wrong and the evidence (open), or that it recovered (closed)."""
    worker = f" by worker {event.worker}" if event.worker else ""
    if event.is_open:
        summary = (f"evguard opened a station alert: station {event.station_id} at site "
                   f"{event.site_id} is {event.kind}: {KIND_MEANING.get(event.kind, event.kind)}.")
        head = [summary,
                "", f"  {event.evidence}", "",
                f"  open since       {_when(event.opened_ts)}"]
        tail = ("You get one email when it recovers; while it stays open it is not emailed "
                "again.")
    else:
        summary = (f"Station {event.station_id} at site {event.site_id} has recovered: its "
                   f"{event.kind} alert is closed after {_duration(event.at_ts - event.opened_ts)}.")
        head = [summary,
                "", f"  {event.evidence}", "",
                f"  opened           {_when(event.opened_ts)}",
                f"  closed           {_when(event.at_ts)}"]
        tail = "Nothing more to do for this alert."
    return "\n".join([
        *head,
        f"  detected         {_when(event.detected_ts)}{worker}",
        "",
        "Figures",
        *(_metric_lines(event.metrics) or ["  (none in the alert)"]),
        "",
        f"Alert {event.alert_id}. {tail}",
        f"Dashboard: {dashboard_url}",
    ])


def compose_station_email(event: StationAlertMessage, sender: str, recipients: list[str],
                          dashboard_url: str) -> EmailMessage:
    """The email of one station alert event (open, or recovered)."""
    msg = EmailMessage()
    msg["Subject"] = station_alert_subject(event)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Message-ID"] = make_msgid(domain="evguard")
    msg["X-Evguard-Station-Alert"] = event.alert_id
    msg["X-Evguard-Station-Alert-Status"] = event.status
    msg.set_content(station_alert_body(event, dashboard_url))
    return msg


def station_webhook_payload(event: StationAlertMessage, dashboard_url: str) -> dict:
    """Slack-compatible JSON of a station alert event, like `webhook_payload`."""
    text = f"{station_alert_subject(event)}: {event.evidence}; alert {event.alert_id}"
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                    "text": f"{text}\n<{dashboard_url}|dashboard>"}}]}


# ---- live alerts -----------------------------------------------------------------
LIVE_KIND_MEANING = {
    "no_current": "its relay is closed but no current flows",
    "overcurrent": "it draws more current than it is offered",
    "meter_frozen": "its energy register stopped while power flows",
    "meter_backwards": "its energy register runs backwards",
    "overtemperature": "it is overheating",
    "faulted": "the connector reported a fault",
    "silent": "the charger went silent during a transaction",
    "never_unplugged": "the car stays plugged in long after charging ended",
}


def live_cooldown_key(event: LiveAlertMessage) -> tuple[str, int, str]:
    """What a live alert's cooldown is kept per: (charge point, connector, kind)."""
    return event.charge_point_id, event.connector_id, event.kind


def live_alert_subject(event: LiveAlertMessage) -> str:
    """Names the fault, the connector and its site."""
    return (f"[evguard] LIVE {event.kind.upper().replace('_', ' ')} on {event.connector} "
            f"(site {event.site_id or '-'})")


def readable_delay(seconds: float) -> str:
    """A delay as people read it: `1.4 s`, `3 min 20 s`, `2.5 h`."""
    if seconds < 0:
        return f"-{readable_delay(-seconds)}"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return _duration(seconds)


def live_alert_body(event: LiveAlertMessage, now: float, dashboard_url: str,
                    closed_ts: float | None = None) -> str:
    """Plain-text body of an open live alert: what, where, since when (charger time), the
    evidence, and how long after its first telltale sample arrived this is sent.

    Args:
        now: the time the email is composed (the delay runs from `first_received_ts` to it).
        closed_ts: the charger time the episode closed, if that is already known.
    """
    transaction = f", transaction {event.transaction_id}" if event.transaction_id else ""
    processor = f" by processor {event.processor}" if event.processor else ""
    delay = readable_delay(now - event.first_received_ts)
    summary = (f"evguard caught a live fault on charger {event.charge_point_id}, connector "
               f"{event.connector_id} at site {event.site_id or '-'}{transaction}: "
               f"{event.kind.replace('_', ' ')}, {LIVE_KIND_MEANING.get(event.kind, event.kind)}.")
    since = _when(event.first_sample_ts)
    times = [f"  since            {since} (charger time of the first telltale sample)",
             f"  detected         {_when(event.at_ts)} (charger time){processor}"]
    if closed_ts is not None:
        times.append(f"  closed           {_when(closed_ts)} (charger time: it cleared "
                     f"before this email)")
    times.append(f"  sample arrived   {_when(event.first_received_ts)}; this email {delay} later")
    return "\n".join([
        summary, "", f"  {event.evidence}", "", *times,
        "",
        "Figures",
        *(_metric_lines(event.metrics) or ["  (none in the alert)"]),
        "",
        (f"Alert {event.alert_id}. It is not emailed again while it stays open, nor is a new "
         "episode of the same connector and fault during the cooldown; both are listed on the "
         "dashboard."),
        f"Dashboard: {dashboard_url}",
    ])


def compose_live_email(event: LiveAlertMessage, sender: str, recipients: list[str],
                       dashboard_url: str, now: float,
                       closed_ts: float | None = None) -> EmailMessage:
    """The email of an open live alert (see `live_alert_body`)."""
    msg = EmailMessage()
    msg["Subject"] = live_alert_subject(event)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Message-ID"] = make_msgid(domain="evguard")
    msg["X-Evguard-Live-Alert"] = event.alert_id
    msg["X-Evguard-Live-Kind"] = event.kind
    msg.set_content(live_alert_body(event, now, dashboard_url, closed_ts))
    return msg


def live_webhook_payload(event: LiveAlertMessage, dashboard_url: str, now: float) -> dict:
    """Slack-compatible JSON of an open live alert, like `webhook_payload`."""
    text = (f"{live_alert_subject(event)}: {event.evidence}; since "
            f"{_when(event.first_sample_ts)}; {readable_delay(now - event.first_received_ts)} "
            f"after the first telltale sample arrived; alert {event.alert_id}")
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                    "text": f"{text}\n<{dashboard_url}|dashboard>"}}]}
