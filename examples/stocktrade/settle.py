"""Trade settlement, the stateless step of the seed example: an AWS Lambda handler for the
self-managed Kafka event, as it would run on Lambda. It reads each enriched trade of
`user_trades` (written by the processor's join) and returns one TradeSettlement per trade; the
runner produces them to `trade-settlements`, where the processor counts them per minute.

The dispositions are a stand-in for a real settlement system's answers, decided from the trade
alone so that the outcome can be checked:

* Rejected  - the trade's user is unknown (the LEFT JOIN found no USERS row: no region);
* Flagged   - a short sale, held for review;
* Pending   - a trade of more than $20,000, settling after a manual check;
* Completed - everything else.

Run it with `sluice run pipeline.yaml` (which starts `python3 -m awslambdaric settle.handler`
beside this file; `pip install awslambdaric` first), or package it into a Lambda base image
for the cluster.
"""

import base64
import json

LARGE_TRADE_CENTS = 2_000_000


def settle(trade):
    """The disposition of one trade and why."""
    amount = int(trade.get("QUANTITY") or 0) * int(trade.get("PRICE") or 0)
    if not trade.get("REGIONID"):
        return amount, "Rejected", "unknown user"
    if trade.get("SIDE") == "SHORT":
        return amount, "Flagged", "short sale held for review"
    if amount > LARGE_TRADE_CENTS:
        return amount, "Pending", "large trade awaiting a manual check"
    return amount, "Completed", "settled"


def handler(event, context):
    settlements = []
    for records in event["records"].values():
        for record in records:
            userid = base64.b64decode(record["key"]).decode() if "key" in record else None
            trade = json.loads(base64.b64decode(record["value"])) if "value" in record else {}
            amount, disposition, reason = settle(trade)
            settlements.append({
                "key": userid,
                "value": {
                    "SYMBOL": trade.get("SYMBOL"),
                    "ACCOUNT": trade.get("ACCOUNT"),
                    "AMOUNT": amount,
                    "DISPOSITION": disposition,
                    "REASON": reason,
                },
            })
    return {"records": settlements}
