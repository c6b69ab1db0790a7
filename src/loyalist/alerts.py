"""The event feed as alerts: list the stored events, and deliver them to a webhook once each.

Delivery: one HTTP POST per event with the event as a JSON object (evidence parsed into an object) and the
header `Idempotency-Key: <event_id>`. Connection errors, timeouts, 429 and 5xx answers are retried with
exponential back-off (backoff, 2 x backoff, 4 x backoff ... up to `attempts` tries); any other 4xx answer
is a permanent failure for that event. Each success is recorded at once in the table `event_deliveries`
(event_id, url, delivered_at, attempts, status_code), and events already delivered to a URL are never sent
to it again, so re-running the command (or a crash half-way) delivers every event exactly once per URL
as far as the receiver's 2xx answers tell.

httpx does the HTTP; the retry loop is hand-written because httpx's transport retries cover connection
failures only, not 5xx/429 answers.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field

import httpx
import pandas as pd

from loyalist.store import Store, has_table, write_frame

DELIVERIES = "event_deliveries"
RETRY_STATUS = {429, 500, 502, 503, 504}


def list_events(store: Store, since: dt.date | None = None, types: list[str] | None = None) -> pd.DataFrame:
    """Stored events, oldest first, optionally from `since` (event date) and of the given types."""
    if not has_table(store, "events"):
        return pd.DataFrame(columns=["event_id", "event_date", "customer_id", "type", "reason", "evidence", "action",
                                     "detected_at"])
    e = store.table("events")
    if since is not None:
        e = e.filter(e.event_date >= since)
    if types:
        e = e.filter(e.type.isin(types))
    return e.order_by([e.event_date, e.customer_id, e.type]).execute()


def payload(row: dict) -> dict:
    out = {k: (str(pd.Timestamp(v).date()) if k == "event_date" else
               str(v) if isinstance(v, (pd.Timestamp, dt.datetime)) else v) for k, v in row.items()}
    try:
        out["evidence"] = json.loads(row["evidence"]) if isinstance(row.get("evidence"), str) else row.get("evidence")
    except ValueError:
        pass
    return out


@dataclass
class DeliveryReport:
    url: str
    sent: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(event_id, why) of the events not delivered."""

    def to_dict(self) -> dict:
        return {"url": self.url, "sent": self.sent, "already_delivered": self.already,
                "failed": [{"event_id": e, "error": w} for e, w in self.failed]}


def delivered_ids(store: Store, url: str) -> set[str]:
    if not has_table(store, DELIVERIES):
        return set()
    d = store.table(DELIVERIES)
    return set(d.filter(d.url == url).event_id.execute())


def deliver(store: Store, url: str, events: pd.DataFrame, *, attempts: int = 5, backoff: float = 0.5,
            timeout: float = 10.0, client: httpx.Client | None = None) -> DeliveryReport:
    """POST each event not yet delivered to `url` (see the module docstring)."""
    report = DeliveryReport(url)
    done = delivered_ids(store, url)
    own = client is None
    client = client or httpx.Client(timeout=timeout)
    try:
        for row in events.to_dict("records"):
            if row["event_id"] in done:
                report.already += 1
                continue
            body = payload(row)
            error = "no attempt"
            for attempt in range(1, attempts + 1):
                try:
                    r = client.post(url, json=body, headers={"Idempotency-Key": row["event_id"]})
                    if r.is_success:
                        write_frame(store, DELIVERIES, pd.DataFrame([{
                            "event_id": row["event_id"], "url": url,
                            "delivered_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
                            "attempts": attempt, "status_code": r.status_code}]), replace=False)
                        done.add(row["event_id"])
                        report.sent += 1
                        error = ""
                        break
                    error = f"HTTP {r.status_code}"
                    if r.status_code not in RETRY_STATUS:
                        break
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                if attempt < attempts:
                    time.sleep(backoff * 2 ** (attempt - 1))
            if error:
                report.failed.append((row["event_id"], error))
    finally:
        if own:
            client.close()
    return report
