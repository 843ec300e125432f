"""What an alert says and whether to send it (pure): severity, cooldown, email, webhook."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Literal

from pipelines.contracts.dates import readable_utc
from pipelines.contracts.score_result import ScoreResult
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
    """One line per top SHAP feature: value against its typical value, and its push."""
    lines = []
    for item in readable_explanation(result.explanation)[:top_k]:
        value, typical = item.get("value"), item.get("typical")
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
    top = ", ".join(f"{e.get('feature')}={_fmt(e.get('value'))} (typ {_fmt(e.get('typical'))})"
                    for e in readable_explanation(result.explanation)[:3])
    text = (f"{alert_subject(result, level)}: score {result.score:.3f} > "
            f"{result.threshold:.3f}; session {result.session_id}; {top or 'no explanation'}; "
            f"model v{result.model_version}")
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                    "text": f"{text}\n<{dashboard_url}|dashboard>"}}]}
